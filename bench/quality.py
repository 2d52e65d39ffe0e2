"""Quality benchmark: LD vs SDS, and LD without mirror / grid / rank, on unseen heads and three styles.

    .venv/bin/python bench/quality.py --threads 2                     # 32 heads × zombie, statue, cartoon, 40 and 400 steps
    .venv/bin/python bench/quality.py --latents 8 --styles zombie --steps 4 --curve 2,4   # a quick look

For every (style, variant) the embedded pack's generator is stylized **once** to the largest step count,
through the same cache as ``engine head`` (a rerun reuses it). Training does not depend on the total step
count (each step's noise comes from the seed and the step number, the learning rate is constant), so the
run's checkpoint at step *s* is exactly an *s*-step stylization: the table's rows at ``--steps`` and the
curve points at ``--curve`` are all read from that one run, as it passes them. The same fixed latents
(seeds 0..N−1 — no training step of the pack's generator drew them) are rendered before and after from the
front, ±45° and +90°, and scored with the pack's identity encoder and style classifier
(:mod:`engine.evaluate.metrics`):

* **re-id top-1**: each stylized head matched among all N originals by the identity encoder's cosine
  (mean-over-views embeddings); the fraction matched to its own original. Chance = 1/N. **re-id rev**: each
  original matched among the stylized heads (low when everyone collapses onto one face);
* **margin**: a head's before→after cosine minus the mean cosine of its stylized render to the *other*
  originals — how much more it resembles itself than anyone else (0 = no identity kept);
* **id-sim**: the raw before→after cosine; read it only next to re-id and margin;
* **diversity**: mean pairwise identity distance among the stylized heads ÷ the same among the originals;
* **mv-consist**: leave-one-out multi-view consistency after stylization;
* **style**: the style classifier's probability of the target style (after);
* **fairness**: the heads split into terciles of the world's ``skin_tone`` (deep / medium / light, by rank:
  N/3 each); per group the mean margin, re-id hit rate and style score; the table shows the largest gap
  between groups (:mod:`engine.evaluate.fairness`).

**At equal style.** A method can keep more identity simply by stylizing less. The curve (style score vs
identity over the ``--curve`` steps) is read at fixed style levels by linear interpolation between curve
points: the second table compares the variants' margin and re-id at style 0.5 / 0.7 / 0.9 ("—": the curve
never reaches that level).

Everything is written to ``<out>/quality.json`` (per-subject scores included) and the tables to
``<out>/quality.md``. Results of other latent counts or metric versions are not merged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.app.allocator import keep_freed_memory  # noqa: E402
from engine.app.pipeline import (  # noqa: E402
    HeadJob,
    embedded_backends,
    resolve_models,
    resolve_prompt,
    stylize_cache_key,
    stylize_config_for,
    view_settings,
)
from engine.evaluate.fairness import group_scores, report_scores_per_subject, tercile_groups  # noqa: E402
from engine.evaluate.metrics import evaluate_renders  # noqa: E402
from engine.generator.camera import cameras_at  # noqa: E402
from engine.generator.inference import camera_config_for, render_images, seed_latent  # noqa: E402
from engine.generator.loading import load_generator  # noqa: E402
from engine.io.atomic import write_json, write_text  # noqa: E402
from engine.stylize.loop import stylize  # noqa: E402
from engine.stylize.presets import STYLE_PRESETS  # noqa: E402
from engine.stylize.training_state import read_latest  # noqa: E402
from engine.world import to_physical  # noqa: E402
from engine.world.latent import identity_from_latent  # noqa: E402

YAWS_DEGREES = (0.0, 45.0, -45.0, 90.0)
# Saved results are merged only when they were measured the same way (3: one run per (style, variant) read
# at several step counts, curves, skin-tone fairness).
METRICS_VERSION = 3
SKIN_TONE_GROUPS = ("deep", "medium", "light")
STYLE_LEVELS = (0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Variant:
    """One stylization recipe of the bench. ``lr``/``guidance_scale`` override the job's defaults (None: keep);
    ``distill`` overrides further :class:`~engine.distill.DistillConfig` fields (pairs, to stay hashable)."""

    key: str
    name: str
    method: str = "ld"
    mirror: bool = True
    grid: bool = True
    rank: bool = True
    lr: float | None = None
    guidance_scale: float = 7.5
    distill: tuple[tuple[str, object], ...] = ()


def _variant_key(name: str) -> str:
    """"LD (full)" / "ld" → "ld"; "LD − mirror" / "ld-mirror" → "ld-mirror" (case, spaces and dashes ignored)."""
    key = name.lower().replace("(full)", "").replace("−", "-").replace(" ", "")
    return key


def resolve_variant(name: str) -> "Variant":
    """A variant by its short key (``ld``, ``sds``, ``ld-mirror``, …, ``sds-noiseless``) or its table name."""
    every = {**VARIANTS, **SWEEP_VARIANTS}.values()
    by_key = {v.key: v for v in every} | {_variant_key(v.name): v for v in every}
    try:
        return by_key[_variant_key(name)]
    except KeyError:
        raise SystemExit(f"unknown variant {name.strip()!r}; choose from: {', '.join(v.key for v in every)}") from None


# The five: the paper's method and its ablations (the default run).
VARIANTS = {
    v.name: v
    for v in (
        Variant("ld", "LD (full)"),
        Variant("sds", "SDS", method="sds"),
        Variant("ld-mirror", "LD − mirror", mirror=False),
        Variant("ld-grid", "LD − grid", grid=False),
        Variant("ld-rank", "LD − rank", rank=False),
    )
}

# Why-questions about LD vs SDS (run with --variants; all keep mirror, grid and rank on). The official SDS is
# LD's guidance direction with the weight √(1−ᾱ_t) instead of √ᾱ_t plus a zero-mean noise term −ε·√(1−ᾱ_t):
# "noiseless" removes that term, "textbook" adds back ε_uncond (the unconditional score, the part the
# mode-seeking argument is about), CFG 100 is StyleGANFusion's strength; lr / CFG / timestep range ask
# whether LD's identity loss is a matter of step size, prior strength or noise level.
SWEEP_VARIANTS = {
    v.name: v
    for v in (
        Variant("sds-noiseless", "SDS without −ε", method="sds", distill=(("sds_variant", "noiseless"),)),
        Variant("sds-textbook", "SDS textbook", method="sds", distill=(("sds_variant", "textbook"),)),
        Variant("sds-textbook-cfg100", "SDS textbook, CFG 100", method="sds", guidance_scale=100.0,
                distill=(("sds_variant", "textbook"),)),
        Variant("ld-cfg100", "LD, CFG 100", guidance_scale=100.0),
        Variant("sds-cfg100", "SDS, CFG 100", method="sds", guidance_scale=100.0),
        Variant("ld-lr5e-4", "LD, lr 5e-4", lr=5e-4),
        Variant("sds-lr5e-4", "SDS, lr 5e-4", method="sds", lr=5e-4),
        Variant("ld-cfg3", "LD, CFG 3", guidance_scale=3.0),
        Variant("ld-cfg15", "LD, CFG 15", guidance_scale=15.0),
        Variant("ld-high-noise", "LD, t 681–181", distill=(("single_step_range", (15, 40)), ("grid_step_range", (15, 40)))),
        Variant("sds-high-noise", "SDS, t 681–181", method="sds",
                distill=(("single_step_range", (15, 40)), ("grid_step_range", (15, 40)))),
    )
}


def preset_for(style: str) -> str:
    """The style preset whose embedded style is the world style ``style`` (e.g. cartoon → pixar)."""
    for name, preset in STYLE_PRESETS.items():
        if preset.embedded_style == style:
            return name
    raise SystemExit(f"no style preset uses the embedded style {style!r}")


def int_list(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def skin_tones(G, seeds: range) -> list[float]:
    """The world's ``skin_tone`` (0 deep … 1 very light) of each seed's head: the pack generator's latent z
    *is* a world identity (:mod:`engine.world.latent`), drawn exactly as :func:`seed_latent` draws it."""
    z = torch.cat([torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return [float(v) for v in to_physical(identity_from_latent(z))["skin_tone"]]


def render_all(G, latents: list[torch.Tensor], cams: torch.Tensor, background: str) -> torch.Tensor:
    """(S, V, 3, R, R) renders of every latent from every camera."""
    return torch.stack([render_images(G, ws, cams, background) for ws in latents])


@dataclass
class Bench:
    """What every measurement of one bench run shares: the heads, their cameras and 'before' renders."""

    latents: list[torch.Tensor]
    cams: torch.Tensor
    background: str
    before: torch.Tensor
    groups: list[str]
    identity_backend: object
    style_backend: object

    def measure(self, generator_path: Path, style: str) -> dict:
        styled = load_generator(generator_path).generator
        after = render_all(styled, self.latents, self.cams, self.background)
        report = evaluate_renders(self.before, after, style, self.identity_backend, self.style_backend).to_dict()
        report["fairness"] = group_scores(report_scores_per_subject(report), self.groups)
        return report


def with_distill_overrides(config, variant: Variant):
    """``config`` (a StylizeConfig) with the variant's extra DistillConfig fields set (validated)."""
    if not variant.distill:
        return config
    return dataclasses.replace(config, distill=dataclasses.replace(config.distill, **dict(variant.distill)).validate())


def run_variant(bench: Bench, job: HeadJob, variant: Variant, style: str, marks: list[int], record) -> None:
    """Stylize once to ``max(marks)`` steps and measure at every mark as the run passes it.

    ``record(step, report)`` is called for each mark measured; marks already on record are skipped by the
    caller (it passes only the missing ones). A finished cached run can only be measured at its end.
    """
    sources = resolve_models(job)
    prompt, _ = resolve_prompt(job, sources)
    config = with_distill_overrides(stylize_config_for(job, sources, prompt), variant)
    run_dir = job.cache_folder / "stylized" / stylize_cache_key(config, sources)
    # checkpoint at every mark (the checkpoint interval is not part of the cache key)
    every = math.gcd(*marks)
    config = dataclasses.replace(config, out_dir=str(run_dir), checkpoint_every=every)
    latest = read_latest(run_dir)
    if latest is not None and latest.step >= config.steps:
        record(latest.step, bench.measure(latest.generator_path, style), 0.0)
        return
    started = time.perf_counter()
    measuring = 0.0  # seconds spent measuring, not training

    def on_event(event: str, **fields) -> None:
        nonlocal measuring
        if event == "checkpoint" and fields["step"] in marks:
            t = time.perf_counter()
            record(fields["step"], bench.measure(Path(fields["generator"]), style), t - started - measuring)
            measuring += time.perf_counter() - t
        elif event == "progress" and fields["step"] % 10 == 0:
            print(f"    step {fields['step']}/{fields['total']}", file=sys.stderr, flush=True)

    stylize(config, on_event=on_event, resume=latest is not None)


def at_style(curve: list[dict], level: float, key: str) -> float | None:
    """``key`` where the style score first reaches ``level`` along the curve (linear between points)."""
    points = sorted(curve, key=lambda p: p["steps"])
    previous = {"style": points[0]["style"], key: points[0][key]} if points else None
    if previous is not None and previous["style"] >= level:
        return previous[key]
    for p in points[1:]:
        if p["style"] >= level and p[key] is not None and previous[key] is not None:
            span = p["style"] - previous["style"]
            f = (level - previous["style"]) / span if span > 0 else 1.0
            return previous[key] + f * (p[key] - previous[key])
        previous = p
    return None


def _get(report: dict, *keys: str) -> float:
    for key in keys:
        value = report
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            return float(value)
    return float("nan")


COLUMNS = (
    ("re-id top-1 ↑", "reid_top1"),
    ("re-id rev ↑", "reid_top1_reverse"),
    ("margin ↑", "identity_margin_mean"),
    ("id-sim", "identity_similarity_mean"),
    ("diversity ↑", "diversity_ratio"),
    ("mv-consist ↑", "consistency_after_mean"),
    ("style ↑", "style_score_after_mean"),
    ("margin gap (skin) ↓", "fairness.largest_gap.identity_margin"),
    ("re-id gap (skin) ↓", "fairness.largest_gap.reid_hit"),
    ("style gap (skin) ↓", "fairness.largest_gap.style_score"),
)


def markdown_table(rows) -> str:
    """rows: (style, variant, steps, report). The re-identification chance (1/N) is in the header."""
    chances = {_get(r, "reid_chance") for *_, r in rows}
    chance = f" (chance {chances.pop():.3f})" if len(chances) == 1 else ""
    header = "| style | variant | steps | " + " | ".join(name for name, _ in COLUMNS) + " |"
    header = header.replace("re-id top-1 ↑", f"re-id top-1 ↑{chance}")
    lines = [header, "|---|---|---:|" + "---:|" * len(COLUMNS)]
    for style, name, steps, r in rows:
        lines.append(f"| {style} | {name} | {steps} | " + " | ".join(f"{_get(r, key):.3f}" for _, key in COLUMNS) + " |")
    return "\n".join(lines)


def curve_points(results: dict, style: str, variant: str) -> list[dict]:
    points = []
    for key, value in results.items():
        s, v, steps = key.split("/")
        if s == style and v == variant:
            r = value["scores"]
            points.append({"steps": int(steps), "style": _get(r, "style_score_after_mean"),
                           "margin": _get(r, "identity_margin_mean"), "reid": _get(r, "reid_top1")})
    return sorted(points, key=lambda p: p["steps"])


def equal_style_table(results: dict, styles: list[str], variants: list[str]) -> str:
    cols = [f"{m} @ style {lv}" for lv in STYLE_LEVELS for m in ("margin", "re-id")]
    lines = ["| style | variant | curve (steps: style / margin) | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---:|" * len(cols)]
    for style in styles:
        for variant in variants:
            points = curve_points(results, style, variant)
            if not points:
                continue
            curve = ", ".join(f"{p['steps']}: {p['style']:.2f} / {p['margin']:.3f}" for p in points)
            cells = []
            for level in STYLE_LEVELS:
                for key in ("margin", "reid"):
                    v = at_style(points, level, key)
                    cells.append("—" if v is None else f"{v:.3f}")
            lines.append(f"| {style} | {variant} | {curve} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/quality")
    parser.add_argument("--styles", default="zombie,statue,cartoon")
    parser.add_argument("--latents", type=int, default=32, help="unseen heads (seeds 0..N-1); at least 3 (terciles)")
    parser.add_argument("--steps", type=int_list, default=[40, 400], help="step counts of the main table")
    parser.add_argument("--curve", type=int_list, default=[10, 20, 40, 100, 200, 400],
                        help="step counts of the style-vs-identity curve (those above max(--steps) are dropped)")
    parser.add_argument("--variants", default=",".join(v.key for v in VARIANTS.values()),
                        help="comma-separated variants: ld, sds, ld-mirror, ld-grid, ld-rank; the LD-vs-SDS sweep: "
                             + ", ".join(v.key for v in SWEEP_VARIANTS.values()))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--tables-only", action="store_true",
                        help="train and measure nothing: rewrite quality.md from what quality.json holds")
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.latents < 3:
        raise SystemExit("--latents must be at least 3 (skin-tone terciles)")
    out = Path(args.out)
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    variants = [resolve_variant(name) for name in args.variants.split(",") if name.strip()]
    top = max(args.steps)
    marks = sorted(set(args.steps) | {s for s in args.curve if s <= top})

    previous = out / "quality.json"
    results: dict = {}
    if previous.is_file():
        old = json.loads(previous.read_text())
        if old.get("latents") == args.latents and old.get("metrics_version") == METRICS_VERSION:
            results = old["results"]
    bench = None
    for style in styles:
        for variant in variants:
            missing = [m for m in marks if f"{style}/{variant.name}/{m}" not in results]
            if not missing or args.tables_only:
                continue
            job = HeadJob(out_dir=str(out), style_preset=preset_for(style), method=variant.method, mirror=variant.mirror,
                          grid=variant.grid, rank=variant.rank, steps=top, lr=variant.lr,
                          guidance_scale=variant.guidance_scale, device="cpu",
                          cache_dir=str(out / "cache")).validate()
            if bench is None:
                bench = make_bench(job, args.latents)
            print(f"{style:8s} {variant.name:12s} → {top} steps, measured at {missing}", file=sys.stderr, flush=True)

            def record(step: int, report: dict, train_seconds: float, style=style, variant=variant) -> None:
                results[f"{style}/{variant.name}/{step}"] = {"scores": report, "train_seconds": round(train_seconds, 1)}
                write_json(out / "quality.json", {"latents": args.latents, "yaws_degrees": YAWS_DEGREES,
                                                  "metrics_version": METRICS_VERSION, "skin_tone_groups": SKIN_TONE_GROUPS,
                                                  "results": results})
                print(f"    measured at step {step}: style {_get(report, 'style_score_after_mean'):.3f}, "
                      f"margin {_get(report, 'identity_margin_mean'):.3f}", file=sys.stderr, flush=True)

            run_variant(bench, job, variant, style, missing, record)

    names = list(VARIANTS) + list(SWEEP_VARIANTS)
    rows = []
    for key, value in results.items():
        style, name, steps = key.split("/")
        if int(steps) in args.steps and style in styles:
            rows.append((style, name, int(steps), value["scores"]))
    rows.sort(key=lambda r: (r[0], r[2], names.index(r[1])))
    text = "\n\n".join((markdown_table(rows), equal_style_table(results, styles, [v.name for v in variants])))
    write_text(out / "quality.md", text + "\n")
    print(text)


def make_bench(job: HeadJob, n: int) -> Bench:
    sources = resolve_models(job)
    prompt, _ = resolve_prompt(job, sources)
    config = stylize_config_for(job, sources, prompt)
    base = load_generator(sources.generator).generator
    settings = view_settings(config)
    cams = cameras_at(torch.tensor([math.radians(y) for y in YAWS_DEGREES]), settings.view_pitch,
                      camera_config_for(base, settings.camera_pivot)).c
    latents = [seed_latent(base, seed, settings) for seed in range(n)]
    identity_backend, style_backend = embedded_backends(sources.pack)
    groups = tercile_groups(skin_tones(base, range(n)), SKIN_TONE_GROUPS)
    return Bench(latents, cams, settings.background, render_all(base, latents, cams, settings.background), groups,
                 identity_backend, style_backend)


if __name__ == "__main__":
    main()
