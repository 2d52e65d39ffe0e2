"""Benchmark mesh extraction (grid sampling → marching cubes → cleanup → normals → colours).

Run ``python bench/bench_mesh.py`` (``--help`` for options). Without a generator it uses a stand-in field
that costs about what the ``small`` preset's decoder costs per point: features trilinearly sampled from a
random tri-grid of 3 planes × 3 depth slices × 32 features at 64², averaged over planes and decoded by a
32 → 64 → 33 MLP (σ + 32 features, the first three read as colour). A head-sized ellipsoid bias puts the
σ = 10 surface where a head would be and the MLP noise adds the bumps and floaters a GAN leaves.

Other code (the combined benchmark) can call :func:`benchmark_extraction` with the real generator's
``density_fn`` / ``color_fn``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere

from engine.mesh import MeshConfig, PointFn, extract_mesh  # noqa: E402

STAGES = ("sample_grid", "marching_cubes", "cleanup", "normals", "colors")


def make_proxy_fields(
    seed: int = 0,
    plane_resolution: int = 64,
    depth: int = 3,
    features: int = 32,
    hidden: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[PointFn, PointFn]:
    """A stand-in (density_fn, color_fn) pair with a tiny-generator's per-point cost."""
    gen = torch.Generator().manual_seed(seed)
    planes = (0.5 * torch.randn(3, features, depth, plane_resolution, plane_resolution, generator=gen)).to(device)
    w1 = (torch.randn(features, hidden, generator=gen) / features**0.5).to(device)
    b1 = torch.zeros(hidden, device=device)
    w2 = (torch.randn(hidden, 1 + features, generator=gen) / hidden**0.5).to(device)
    b2 = torch.zeros(1 + features, device=device)
    # Each plane reads the point in its own axis order: (x, y | z), (x, z | y), (z, x | y).
    axis_orders = torch.tensor([[0, 1, 2], [0, 2, 1], [2, 0, 1]], device=device)
    head_radii = torch.tensor([0.30, 0.38, 0.32], device=device)

    def decode(points: torch.Tensor) -> torch.Tensor:
        m = points.shape[0]
        coords = (2.0 * points)[:, axis_orders].permute(1, 0, 2).reshape(3, 1, 1, m, 3)  # box_warp = 1
        sampled = F.grid_sample(planes, coords, mode="bilinear", padding_mode="zeros", align_corners=False)
        feats = sampled.reshape(3, features, m).mean(dim=0).t()  # (M, 32)
        return F.softplus(feats @ w1 + b1) @ w2 + b2  # (M, 33)

    def density_fn(points: torch.Tensor) -> torch.Tensor:
        ellipsoid = 1.0 - (points / head_radii).norm(dim=1)  # > 0 inside a head-sized ellipsoid
        return 60.0 * ellipsoid + 5.0 * decode(points)[:, 0]

    def color_fn(points: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(decode(points)[:, 1:4])

    return density_fn, color_fn


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def benchmark_extraction(
    density_fn: PointFn,
    color_fn: PointFn | None,
    resolutions: Sequence[int] = (128, 256),
    config: MeshConfig | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Extract a mesh at each resolution (ascending, so the peak RSS column is meaningful); return rows."""
    base = config or MeshConfig()
    rows = []
    for n in sorted(resolutions):
        timings: dict[str, float] = {}
        start = time.perf_counter()
        mesh = extract_mesh(density_fn, color_fn, base.replace(resolution=n), device=device, timings=timings)
        total = time.perf_counter() - start
        row = {"resolution": n, **{s: timings.get(s, 0.0) for s in STAGES}, "total": total,
               "vertices": mesh.num_vertices, "faces": mesh.num_faces, "peak_rss_mib": peak_rss_mib()}
        rows.append(row)
        log(f"  {n}³ done in {total:.2f} s")
    return rows


def format_table(rows: list[dict]) -> str:
    head = ["N", "grid s", "mcubes s", "cleanup s", "normals s", "colors s", "total s", "verts", "faces",
            "peak RSS MiB"]
    lines = [" | ".join(f"{h:>10}" for h in head), "-+-".join("-" * 10 for _ in head)]
    for r in rows:
        cells = [f"{r['resolution']}³"] + [f"{r[s]:.3f}" for s in STAGES] + [f"{r['total']:.2f}"]
        cells += [f"{r['vertices']:,}", f"{r['faces']:,}", f"{r['peak_rss_mib']:.0f}"]
        lines.append(" | ".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--chunk-size", type=int, default=MeshConfig.chunk_size)
    parser.add_argument("--coarse-stride", type=int, default=MeshConfig.coarse_stride,
                        help="1 = query every voxel; >1 = coarse-to-fine sampling")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    density_fn, color_fn = make_proxy_fields(device=args.device)
    config = MeshConfig(chunk_size=args.chunk_size, coarse_stride=args.coarse_stride)
    print(f"mesh extraction benchmark: proxy tiny decoder, {torch.get_num_threads()} threads, device {args.device}, "
          f"chunk {args.chunk_size}, coarse stride {args.coarse_stride}, iso {config.iso_level}, "
          f"RSS before: {peak_rss_mib():.0f} MiB")
    rows = benchmark_extraction(density_fn, color_fn, args.resolutions, config, device=args.device)
    print(format_table(rows))


if __name__ == "__main__":
    main()
