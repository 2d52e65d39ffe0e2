"""Head mode end to end on scans with a known answer and on real heads: the table issue #12 asks for.

For each head — ``--world-heads`` procedural world scans (each turned by a random yaw and exported z-up in
millimetres, centimetres or metres, as :mod:`bench.bench_framing` does, so the true placement is known) and
the real meshes in ``tests/data/real_heads`` (``--real``) — this runs ``engine head --mesh`` through
:func:`engine.app.pipeline.run_head` once per ``--anchors`` setting (the field fit is cached, so it is fitted
once) and reports:

* framing error (world scans only): mean vertex distance in % of the head height, and yaw error;
* fitted-field PSNR on the scan's own bare-colour views (the fit's photometric cameras; the field rendered as
  head mode renders its views, with deterministic ray samples), super-resolved 128²
  and raw 64² (white background included), and in brackets the mesh's own raw score when rasterised with one
  sample per pixel (:func:`bench_head_mode.fitted_psnr`: the raw score of a field with the mesh's exact surface);
* after stylization: style score (the pack's classifier), identity similarity before→after and its
  re-identification rank among the gallery ("before" is the fitted field; world scans are judged by the
  pack's identity encoder, which knows the world — dlib finds no face in its renders — and real heads by
  dlib's face recognition), and the symmetric Chamfer distance between the source mesh and the stylized mesh
  (mean of the two one-sided mean distances, in % of the head height);
* seconds: fit and whole command.

    python bench/bench_head_table.py --world-heads 6 --real --anchors 0,0 1,1 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import igl
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable as a plain script from anywhere
sys.path.insert(0, str(ROOT / "bench"))

from bench_framing import UNITS_CYCLE, framing_errors, turned_world_scan  # noqa: E402
from bench_head_mode import fitted_psnr  # noqa: E402

from engine.app.pipeline import HeadJob, run_head  # noqa: E402
from engine.generator.loading import load_generator  # noqa: E402
from engine.heads.mesh_field import DEFAULT_FIELD_STEPS, MeshField, photo_targets  # noqa: E402
from engine.heads.scans import REFERENCE_HEIGHT, load_scan  # noqa: E402
from engine.mesh import read_npz, write_ply  # noqa: E402
from engine.world.identity import sample_identities  # noqa: E402

REAL_HEADS = ROOT / "tests" / "data" / "real_heads"


def chamfer_percent(source, result) -> float:
    """Symmetric Chamfer distance (mean of both one-sided mean point-to-surface distances), % of head height."""
    def one_way(points, mesh) -> float:
        d2, _, _ = igl.point_mesh_squared_distance(points.astype(np.float64), mesh.vertices.astype(np.float64),
                                                   mesh.faces.astype(np.int64))
        return float(np.sqrt(d2).mean())

    return 50.0 * (one_way(source.vertices, result) + one_way(result.vertices, source)) / REFERENCE_HEIGHT


def silent(*_args, **_fields) -> None:
    """Event sink that drops the pipeline's progress lines (the table is the output)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world-heads", type=int, default=6)
    p.add_argument("--real", action="store_true", help="also the real meshes of tests/data/real_heads")
    p.add_argument("--style", default="zombie")
    p.add_argument("--steps", type=int, default=None, help="stylization steps (default: the preset's)")
    p.add_argument("--field-steps", type=int, default=DEFAULT_FIELD_STEPS)
    p.add_argument("--anchors", nargs="+", default=["0,0", "1,1"], help="image,geometry anchor weights to compare")
    p.add_argument("--seed", type=int, default=31)
    p.add_argument("--max-yaw", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("out/head_table"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    anchors = [tuple(float(x) for x in a.split(",")) for a in args.anchors]

    heads: list[tuple[str, Path, dict | None]] = []
    rng = np.random.default_rng(args.seed)
    identities = sample_identities(max(1, args.world_heads), torch.Generator().manual_seed(args.seed))
    for k in range(args.world_heads):
        yaw, units = float(rng.uniform(-args.max_yaw, args.max_yaw)), UNITS_CYCLE[k % len(UNITS_CYCLE)]
        world, scan, world_to_scan = turned_world_scan(identities[k : k + 1], yaw, units)
        path = write_ply(scan, args.out / "scans" / f"world_{k}.ply")
        heads.append((f"world {k} ({units}, {yaw:+.0f}°)", path, {"world": world, "world_to_scan": world_to_scan}))
    if args.real:
        heads += [(f"real: {path.stem}", path, None) for path in sorted(REAL_HEADS.glob("*.obj"))]

    rows = []
    for name, path, truth in heads:
        scan = load_scan(path)
        row = {"head": name, "triangles": scan.mesh.num_faces, "framing": scan.framing.get("method")}
        if truth is not None:
            errors = framing_errors(truth["world"].vertices.astype(np.float64), truth["world_to_scan"], scan.scan_to_world)
            row.update(position_percent=errors["position_percent"], yaw_error=errors["yaw_degrees"])
        for image_w, geometry_w in anchors:
            out = args.out / "runs" / path.stem / f"anchor_{image_w:g}_{geometry_w:g}"
            started = time.perf_counter()
            job = HeadJob(out_dir=str(out), style_preset=args.style, steps=args.steps, mesh=str(path),
                          field_steps=args.field_steps, anchor_image=image_w, anchor_geometry=geometry_w,
                          cache_dir=str(args.out / "cache"), device="cpu", game_asset=False,
                          identity_backend="auto" if truth is None else "embedded")
            summary = run_head(job, on_event=silent).summary
            seconds = time.perf_counter() - started
            if "psnr_sr" not in row:  # the fit is shared by every anchor setting
                G = load_generator(summary["mesh"]["field"], device="cpu").generator
                field = MeshField(G, G.head_planes, G.head_ws)
                seen = photo_targets(scan.mesh, G, 12)["c"]
                psnr = fitted_psnr(field, scan.mesh, seen)
                row.update(psnr_sr=psnr["sr"], psnr_raw=psnr["raw"], psnr_raw_one_ray=psnr["raw_one_ray"],
                           psnr_sr_jittered=psnr["sr_jittered"],
                           fit_seconds=summary["mesh"]["seconds"])
            stylized = read_npz(out / summary["mesh_npz"])
            row[f"anchor {image_w:g},{geometry_w:g}"] = {
                "style": summary["style_score"], "identity": summary["identity_similarity"],
                "reid_rank": summary["reid_rank"], "candidates": summary["reid_candidates"],
                "chamfer_percent": chamfer_percent(scan.mesh, stylized), "seconds": round(seconds, 1)}
        rows.append(row)
        print(json.dumps(row, default=float), flush=True)
    (args.out / "head_table.json").write_text(json.dumps(rows, indent=1, default=float))

    settings = [f"anchor {i:g},{g:g}" for i, g in anchors]
    print("\n| head | framing error | fit PSNR SR / raw (one-ray mesh) dB | " + " | ".join(
        f"{s}: style · identity (rank) · Chamfer" for s in settings) + " |")
    print("|---|---:|---:|" + "---:|" * len(settings))
    for row in rows:
        framing = (f"{row['position_percent']:.1f} %, {row['yaw_error']:+.1f}°" if "position_percent" in row
                   else row["framing"])
        cells = []
        for s in settings:
            r = row[s]
            identity = "—" if r["identity"] is None else f"{r['identity']:.2f} ({r['reid_rank']}/{r['candidates']})"
            style = "—" if r["style"] is None else f"{r['style']:.2f}"
            cells.append(f"{style} · {identity} · {r['chamfer_percent']:.1f} %")
        print(f"| {row['head']} | {framing} | {row['psnr_sr']:.1f} / {row['psnr_raw']:.1f} ({row['psnr_raw_one_ray']:.1f}) | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
