"""Generator benchmark: forward time per stage and mesh extraction time, with peak memory.

    python bench/bench_generator.py                  # panohead forward at 64², small-preset meshes at 128³/256³
    python bench/bench_generator.py --device cuda    # same on a GPU (adds CUDA peak memory)

Weights are random (timing does not depend on their values); meshes use a low iso level so that the random
density field has a surface of realistic size.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.generator.camera import cameras_at  # noqa: E402
from engine.generator.inference import head_mesh  # noqa: E402
from engine.generator.loading import load_generator, resolve_device  # noqa: E402
from engine.generator.triplane import RenderOptions  # noqa: E402
from engine.mesh import MeshConfig  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int):
    fn()  # warm-up
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        result = fn()
    sync(device)
    return (time.perf_counter() - t) / repeats, result


@torch.no_grad()
def bench_forward(preset: str, device: torch.device, repeats: int) -> dict:
    G = load_generator(preset, device=device).generator
    z = torch.randn(1, G.z_dim, device=device)
    c = cameras_at(0.0, 0.0).c.to(device)
    ws = G.mapping(z, c, truncation_psi=0.7)
    row = {"preset": preset, "device": str(device)}
    row["mapping_s"], _ = timed(lambda: G.mapping(z, c, truncation_psi=0.7), device, repeats)
    row["synthesis_s"], planes = timed(lambda: G.synthesize_planes(ws), device, repeats)
    opts = RenderOptions(run_superresolution=False)
    row["render64_s"], out = timed(lambda: G.render(ws, c, opts, planes=planes), device, repeats)
    row["superres_s"], _ = timed(
        lambda: G.superresolution(out["image_raw"], out["features"], ws, noise_mode="none"), device, repeats
    )
    row["total_s"], _ = timed(lambda: G.render(ws, c, RenderOptions()), device, repeats)
    return row


@torch.no_grad()
def bench_mesh(preset: str, resolution: int, device: torch.device) -> dict:
    G = load_generator(preset, device=device).generator
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)).to(device)
    ws = G.mapping(z, cameras_at(0.0, 0.2).c.to(device), truncation_psi=0.7)
    planes = G.synthesize_planes(ws)
    # Random weights: choose the iso level at the 60th density percentile so the surface is head-sized.
    sigma = G.query_points(planes, torch.rand(1, 200_000, 3, device=device) - 0.5)["sigma"]
    iso = float(sigma.quantile(0.6))
    config = MeshConfig.for_box_warp(G.config.rendering.box_warp, resolution=resolution, iso_level=iso)
    timings: dict = {}
    sync(device)
    t = time.perf_counter()
    mesh = head_mesh(G, ws, config, timings=timings)
    sync(device)
    return {
        "preset": preset,
        "resolution": resolution,
        "total_s": time.perf_counter() - t,
        **{f"{k}_s": v for k, v in timings.items()},
        "vertices": mesh.num_vertices,
        "faces": mesh.num_faces,
    }


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n## {title}")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--forward-presets", default="panohead,small")
    p.add_argument("--mesh-preset", default="small")
    p.add_argument("--mesh-resolutions", default="128,256")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    forward = [bench_forward(name, device, args.repeats) for name in args.forward_presets.split(",")]
    print_rows("Forward (one head, one view, 64² neural rendering)", forward)
    meshes = [bench_mesh(args.mesh_preset, int(n), device) for n in args.mesh_resolutions.split(",")]
    print_rows(f"Mesh extraction ({args.mesh_preset} preset)", meshes)
    print(f"\npeak RSS: {peak_rss_mib():.0f} MiB")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
