"""Benchmark the batch: per-scan time on the CPU with the embedded pack at default settings (target ≤ 60 s).

Run ``python bench/bench_batch.py`` (``--help`` for options). It exports ``--scans`` procedural heads as
scanner-like PLY files (mm, z-up, origin at the base of the bust), loads the models once and stylizes the
generator (cached under ``--cache``; its time is reported separately because it is paid once per style,
not per scan), then runs :func:`engine.app.batch.run_batch` and reports, per scan, the time of each step:
read + normalise + render the calibrated views + W+ inversion, stylized mesh extraction and glb writing.

It also measures what the acceptance criterion of the inversion asks, on the four held-out views the
inversion never fits (its loss uses the identity encoder, so a fitted view would only measure the
optimisation): the identity encoder's cosine between each source scan and its inversion (unstylized
generator), against the cosine to the other scans' inversions ("unrelated heads"), and the
re-identification top-1 of each inversion among the sources (chance 1/N).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere

from engine.app.batch import BatchSettings, collect_inputs, load_engine_models, run_batch  # noqa: E402
from engine.world import ScanExport, export_scan, sample_identities  # noqa: E402

TARGET_SECONDS_PER_SCAN = 60.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--style", default="zombie")
    p.add_argument("--steps", type=int, default=None, help="stylization steps (default: the pipeline's default)")
    p.add_argument("--inversion-steps", type=int, default=None)
    p.add_argument("--mesh-resolution", type=int, default=128)
    p.add_argument("--generator", default=None, help="default: the embedded pack")
    p.add_argument("--diffusion", default=None,
                   help="diffusers folder with controlnet_depth/ and controlnet_edge/ inside (default: the embedded pack)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", default=None, help="stylized-generator cache (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    scans = work / "scans"
    ids = sample_identities(args.scans, torch.Generator().manual_seed(args.seed))
    for i in range(args.scans):
        export_scan(ids[i : i + 1], scans / f"scan{i:02d}", ScanExport(resolution=112, formats=(".ply",)))
    settings = BatchSettings(style_preset=args.style, steps=args.steps, mesh_resolution=args.mesh_resolution,
                             inversion_steps=args.inversion_steps, generator=args.generator, device=args.device,
                             diffusion=args.diffusion,
                             depth_controlnet=str(Path(args.diffusion) / "controlnet_depth") if args.diffusion else None,
                             edge_controlnet=str(Path(args.diffusion) / "controlnet_edge") if args.diffusion else None,
                             cache_dir=args.cache or str(work / "cache"))
    t = time.perf_counter()
    models = load_engine_models(settings, on_event=lambda *a, **k: None)
    load_seconds = time.perf_counter() - t

    timings: dict[str, list[float]] = {"invert": [], "build_head": []}
    inverted: dict[str, object] = {}
    invert, build = models.invert, models.build_head

    def timed_invert(path, kind):
        t0 = time.perf_counter()
        out = invert(path, kind)
        timings["invert"].append(time.perf_counter() - t0)
        inverted[path.name] = out
        return out

    def timed_build(ws, score_cameras=None):
        t0 = time.perf_counter()
        out = build(ws, score_cameras)
        timings["build_head"].append(time.perf_counter() - t0)
        return out

    models.invert, models.build_head = timed_invert, timed_build
    report = run_batch(collect_inputs(scans), work / "out", models, consent=True, on_event=lambda *a, **k: None)
    per_scan = [item.seconds for item in report.items if item.status == "done"]

    acceptance = None
    from engine.pack import pack_paths

    encoder_path = pack_paths().identity_encoder
    if encoder_path.is_file() and len(inverted) >= 2:
        # Scored on the held-out views (never fitted: the inversion's loss uses this encoder), each source
        # against every inversion: re-identification top-1 (chance 1/N) and the margin over unrelated pairs.
        from engine.app.batch import _renders
        from engine.evaluate.metrics import reidentify
        from engine.evaluate.recognition import load_identity_encoder
        from engine.generator.loading import load_generator

        encoder = load_identity_encoder(encoder_path)
        base = load_generator(args.generator or str(pack_paths().generator), "cpu").generator
        names = sorted(n for n in inverted if inverted[n].score_images is not None)
        sources = torch.stack([encoder.embed(inverted[n].score_images) for n in names])
        recons = torch.stack([encoder.embed(_renders(base, inverted[n].w_plus, inverted[n].score_cameras)) for n in names])
        reid = reidentify(recons, sources)
        acceptance = {"views": list(inverted[names[0]].score_views), "same_identity_cosine": reid.matched_mean,
                      "unrelated_cosine": reid.mismatched_mean, "margin": reid.margin_mean, "top1": reid.top1,
                      "chance": reid.chance}

    numbers = {
        "scans": args.scans,
        "threads": args.threads,
        "device": args.device,
        "model_load_and_stylize_seconds": round(load_seconds, 2),
        "per_scan_seconds": [round(s, 2) for s in per_scan],
        "median_per_scan_seconds": round(statistics.median(per_scan), 2) if per_scan else None,
        "median_invert_seconds": round(statistics.median(timings["invert"]), 2) if timings["invert"] else None,
        "median_mesh_seconds": round(statistics.median(timings["build_head"]), 2) if timings["build_head"] else None,
        "target_seconds_per_scan": TARGET_SECONDS_PER_SCAN,
        "identity_similarity_stylized": [i.identity_similarity for i in report.items],
        "inversion_acceptance": acceptance,
        "failures": {Path(i.input).name: i.error for i in report.items if i.status == "failed"},
    }
    print(json.dumps(numbers, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))
    ok = numbers["median_per_scan_seconds"] is not None and numbers["median_per_scan_seconds"] <= TARGET_SECONDS_PER_SCAN
    print(f"median per scan {numbers['median_per_scan_seconds']} s (target ≤ {TARGET_SECONDS_PER_SCAN:.0f} s): {'OK' if ok else 'over'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
