"""The README's "official vs ours, and why" tables, generated from :mod:`engine.stylize.recipes`.

The official column is :data:`~engine.stylize.recipes.OFFICIAL_SETTINGS` (what ``--preset paper`` sets); the
ours column is read from the engine's own defaults — ``engine stylize``'s :class:`StylizeConfig` and what
``engine head`` trains real models with (:func:`engine.app.pipeline.stylize_config_for`) — so neither column
can go stale. ``python -m engine.app.recipe_table`` prints the tables; ``--write README.md`` replaces the block
between :data:`BEGIN` and :data:`END` (atomically); ``--check README.md`` exits 1 when the README's block is
not what the source gives (a test runs the same check).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io.atomic import write_text
from ..stylize.config import StylizeConfig
from ..stylize.recipes import DIFFERENCES, OFFICIAL_SETTINGS

BEGIN = "<!-- recipe-table:begin (generated: python -m engine.app.recipe_table --write README.md) -->"
END = "<!-- recipe-table:end -->"

_ANGLE_RANGES = ("single_yaw_range", "single_pitch_range", "grid_yaw_range", "grid_pitch_range")


def _fmt(key: str, value: Any) -> str:
    """One value as the README shows it (angles in degrees, switches as on/off)."""
    name = key.rsplit(".", 1)[-1]
    if name in _ANGLE_RANGES:
        lo, hi = (math.degrees(v) for v in value)
        return f"±{hi:g}°" if math.isclose(lo, -hi) else f"{lo:g}°…{hi:g}°"
    if name == "view_pitch":
        return f"{math.degrees(value):g}°"
    if value is None:
        return "the generator's own" if name == "neural_resolution" else "none"
    if name == "official_compat":
        return "DDIM step index" if value else "timestep"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return f"`{value}`" if value else "empty"
    if isinstance(value, int) and value >= 1000:
        return f"{value:,}"
    if isinstance(value, float):
        if 0 < abs(value) < 1e-3:  # 1e-4, not 0.0001
            mantissa, exponent = f"{value:e}".split("e")
            return f"{float(mantissa):g}e{int(exponent)}"
        return f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt("", v) for v in value) + ")"
    return str(value)


def _value(config: StylizeConfig, views: Any, key: str) -> Any:
    if key.startswith("views."):
        return getattr(views, key[len("views."):])
    if key.startswith("distill."):
        return getattr(config.distill, key[len("distill."):])
    return getattr(config, key)


def ours_configs() -> tuple[StylizeConfig, StylizeConfig]:
    """(``engine stylize``'s defaults, what ``engine head`` trains real models with) — the "ours" column."""
    from .pipeline import HeadJob, ModelSources, stylize_config_for

    stylize_default = StylizeConfig(prompt="p", diffusion="d")
    head_default = stylize_config_for(HeadJob(prompt="p"), ModelSources("generator", "diffusion", None, None, None), "p")
    return stylize_default, head_default


def recipe_table() -> str:
    """Both tables as Markdown: the settings (official, ours, why) and the differences that are not one setting."""
    from .pipeline import view_settings

    stylize_default, head_default = ours_configs()
    views = view_settings(head_default)
    lines = ["| setting | official code | ours | why ours differs | official source |", "|---|---|---|---|---|"]
    for s in OFFICIAL_SETTINGS:
        mine = _fmt(s.key, _value(stylize_default, views, s.key))
        head = _fmt(s.key, _value(head_default, views, s.key))
        ours = mine if mine == head else f"{mine} (`stylize`), {head} (`head`)"
        lines.append(f"| {s.label} | {_fmt(s.key, s.official)} | {ours} | {s.why} | {s.source} |")
    lines += ["", "| | official code | ours | `--preset paper` | why |", "|---|---|---|---|---|"]
    for d in DIFFERENCES:
        lines.append(f"| {d.topic} | {d.official} | {d.ours} | {d.paper} | {d.why} |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, table: str, name: str = "README") -> str:
    """``text`` with the block between the markers replaced by ``table``; ConfigError naming the file if the
    markers are missing or out of order."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ConfigError(f"{name}: no recipe-table block ({BEGIN!r} … {END!r})")
    return text[: start + len(BEGIN)] + "\n" + table + text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.app.recipe_table", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="README", help="replace the README's generated block")
    group.add_argument("--check", metavar="README", help="exit 1 if the README's generated block is out of date")
    args = parser.parse_args(argv)
    table = recipe_table()
    if not (args.write or args.check):
        sys.stdout.write(table)
        return 0
    path = Path(args.write or args.check)
    text = path.read_text(encoding="utf-8")
    wanted = replace_block(text, table, str(path))
    if args.check:
        if wanted != text:
            print(f"{path}: the recipe table is out of date; run python -m engine.app.recipe_table --write {path}",
                  file=sys.stderr)
            return 1
        return 0
    if wanted != text:
        write_text(path, wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
