"""Quality benchmark: LD vs SDS, and LD without mirror / grid / rank, on fixed latents and three styles.

    .venv/bin/python bench/quality.py                      # 64 latents × zombie, statue, cartoon (CPU, ~30 min)
    .venv/bin/python bench/quality.py --latents 8 --styles zombie --steps 10   # a quick look

For every (style, variant) the embedded pack's generator is stylized once (through the same cached
pipeline as ``engine head``; reruns reuse the runs in ``--out``/cache), then the same fixed latents (seeds
0..N-1) are rendered before and after from the front, ±45° and +90°, and scored with the embedded identity
encoder and style classifier (:mod:`engine.evaluate.metrics`):

* **re-id top-1**: each stylized head matched among all N originals by the identity encoder's cosine
  (mean-over-views embeddings); the fraction matched to its own original. Chance = 1/N (1/64 by default).
  This is the control the raw cosine lacks: the pack's encoder gives two *different* heads cosines of
  0.7–0.85 too. **re-id/view**: the same, each view matched among the same view of every original;
  **re-id rev**: each original matched among the stylized heads (low when everyone collapses onto one face);
* **margin**: a head's before→after cosine minus the mean cosine of its stylized render to the *other*
  originals — how much more it resembles itself than anyone else (0 = no identity kept);
* **id-sim**: the raw cosine between each head's identity embedding before and after stylization (mean over
  heads and views); read it only next to re-id and margin;
* **diversity**: mean pairwise identity distance among the stylized heads divided by the same among the
  originals — 1 keeps every identity apart, → 0 means "everyone got the same face" (SDS's mode seeking);
* **mv-consist**: leave-one-out multi-view consistency after stylization: cosine of each view's identity
  embedding to the mean of the head's *other* views — is it the same person from every side? (views that
  share nothing score 0);
* **style**: the style classifier's probability of the target style (after); before, the photo heads score
  near 0.

The table is printed as Markdown and written with all raw numbers to ``<out>/quality.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.app.pipeline import HeadJob, embedded_backends, resolve_models, resolve_prompt, stylized_generator, view_settings  # noqa: E402
from engine.evaluate.metrics import evaluate_renders  # noqa: E402
from engine.generator.camera import cameras_at  # noqa: E402
from engine.generator.inference import camera_config_for, render_images, seed_latent  # noqa: E402
from engine.generator.loading import load_generator  # noqa: E402
from engine.io.atomic import write_json  # noqa: E402
from engine.stylize.presets import STYLE_PRESETS  # noqa: E402

YAWS_DEGREES = (0.0, 45.0, -45.0, 90.0)
# Saved results are merged only when they were measured the same way (2: re-identification, margin and
# leave-one-out consistency added; results of version 1 lack them and are dropped).
METRICS_VERSION = 2


@dataclass(frozen=True)
class Variant:
    name: str
    method: str = "ld"
    mirror: bool = True
    grid: bool = True
    rank: bool = True


VARIANTS = {
    v.name: v
    for v in (
        Variant("LD (full)"),
        Variant("SDS", method="sds"),
        Variant("LD − mirror", mirror=False),
        Variant("LD − grid", grid=False),
        Variant("LD − rank", rank=False),
    )
}


def preset_for(style: str) -> str:
    """The style preset whose embedded style is the world style ``style`` (e.g. cartoon → pixar)."""
    for name, preset in STYLE_PRESETS.items():
        if preset.embedded_style == style:
            return name
    raise SystemExit(f"no style preset uses the embedded style {style!r}")


def quiet(event: str, **fields) -> None:
    if event == "stage" and fields.get("status") in ("started", "done", "reused"):
        print(f"    stylize {fields.get('status')}", file=sys.stderr, flush=True)


def render_all(G, latents: list[torch.Tensor], cams: torch.Tensor, background: str) -> torch.Tensor:
    """(S, V, 3, R, R) renders of every latent from every camera."""
    return torch.stack([render_images(G, ws, cams, background) for ws in latents])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/quality")
    parser.add_argument("--styles", default="zombie,statue,cartoon")
    parser.add_argument("--latents", type=int, default=64)
    parser.add_argument("--steps", type=int, help="stylization steps (default: the pipeline's embedded default)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variant names")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    variants = [VARIANTS[name.strip()] for name in args.variants.split(",")]

    # Results of earlier runs on the same latents are kept, so styles can be added one run at a time.
    previous = out / "quality.json"
    raw = {}
    if previous.is_file():
        old = json.loads(previous.read_text())
        if old.get("latents") == args.latents and old.get("metrics_version") == METRICS_VERSION:
            raw = old["results"]
    rows = []
    base_renders = None
    for style in styles:
        for variant in variants:
            job = HeadJob(out_dir=str(out), style_preset=preset_for(style), method=variant.method, mirror=variant.mirror,
                          grid=variant.grid, rank=variant.rank, steps=args.steps, device="cpu",
                          cache_dir=str(out / "cache")).validate()
            sources = resolve_models(job)
            prompt, _ = resolve_prompt(job, sources)
            print(f"{style:8s} {variant.name:12s} …", file=sys.stderr, flush=True)
            t = time.perf_counter()
            stylized = stylized_generator(job, sources, prompt, on_event=quiet)
            stylize_s = time.perf_counter() - t
            base = load_generator(sources.generator).generator
            styled = load_generator(stylized.path).generator
            settings = view_settings(stylized.config)
            cams = cameras_at(
                torch.tensor([math.radians(y) for y in YAWS_DEGREES]), settings.view_pitch,
                camera_config_for(base, settings.camera_pivot),
            ).c
            latents = [seed_latent(base, seed, settings) for seed in range(args.latents)]
            if base_renders is None:
                base_renders = render_all(base, latents, cams, settings.background)
            after = render_all(styled, latents, cams, settings.background)
            identity_backend, style_backend = embedded_backends(sources.pack)
            report = evaluate_renders(base_renders, after, style, identity_backend, style_backend).to_dict()
            raw[f"{style}/{variant.name}"] = {"scores": report, "stylize_seconds": stylize_s, "steps": stylized.config.steps}
            rows.append((style, variant.name, report))
            write_json(out / "quality.json", {"latents": args.latents, "yaws_degrees": YAWS_DEGREES, "metrics_version": METRICS_VERSION,
                                              "results": raw})

    done = {f"{style}/{name}" for style, name, _ in rows}
    rows += [(*key.split("/", 1), value["scores"]) for key, value in raw.items() if key not in done]
    print(markdown_table(sorted(rows, key=lambda r: (r[0], list(VARIANTS).index(r[1])))))


def _get(report: dict, *keys: str) -> float:
    for key in keys:
        value = report.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return float("nan")


COLUMNS = (
    ("re-id top-1 ↑", "reid_top1"),
    ("re-id/view ↑", "reid_top1_per_view"),
    ("re-id rev ↑", "reid_top1_reverse"),
    ("margin ↑", "identity_margin_mean"),
    ("id-sim", "identity_similarity_mean"),
    ("diversity ↑", "diversity_ratio"),
    ("mv-consist ↑", "consistency_after_mean"),
    ("style ↑", "style_score_after_mean"),
)


def markdown_table(rows) -> str:
    """The results as Markdown; the re-identification chance (1/N) is in the header."""
    chances = {_get(r, "reid_chance") for _, _, r in rows}
    chance = f" (chance {chances.pop():.3f})" if len(chances) == 1 else ""
    header = "| style | variant | " + " | ".join(name for name, _ in COLUMNS) + " |"
    header = header.replace("re-id top-1 ↑", f"re-id top-1 ↑{chance}")
    lines = [header, "|---|---|" + "---:|" * len(COLUMNS)]
    for style, name, r in rows:
        lines.append(f"| {style} | {name} | " + " | ".join(f"{_get(r, key):.3f}" for _, key in COLUMNS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
