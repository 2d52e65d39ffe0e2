"""``python -m engine generate``: multi-view renders and a coloured mesh of one generated head."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..atomic import write_json
from ..errors import EngineError
from ..events import emit, log
from ..generator.camera import CameraConfig, cameras_at, named_views
from ..generator.loading import load_generator
from ..generator.triplane import RenderOptions, TriPlaneGenerator
from ..images import image_grid, save_png, to_uint8
from ..mesh import MeshConfig, extract_mesh, write_mesh

# File names for the named views (stable names the README and Blender refer to).
VIEW_FILES = {
    "front": "front.png",
    "yaw+45": "left45.png",
    "yaw-45": "right45.png",
    "yaw+90": "left90.png",
    "yaw-90": "right90.png",
    "back": "back.png",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", default=None, help="preset name (tiny, small, panohead) or config .json: random weights")
    src.add_argument("--checkpoint", default=None, help="generator .safetensors (ours) or the official PanoHead .pkl")
    p.add_argument("--seed", type=int, default=0, help="latent seed (z ~ N(0, I))")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--truncation", type=float, default=0.7, help="truncation ψ (1 = none)")
    p.add_argument("--truncation-cutoff", type=int, default=14, help="number of ws truncated")
    p.add_argument("--mesh-resolution", type=int, default=256, help="marching-cubes grid size N (N³ samples)")
    p.add_argument("--iso-level", type=float, default=10.0, help="density iso level of the surface")
    p.add_argument("--no-mesh", action="store_true", help="skip mesh extraction")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def latent_for_seed(G: TriPlaneGenerator, seed: int, psi: float, cutoff: int | None) -> torch.Tensor:
    """The W+ latent of ``seed``: z from a seeded generator, mapped with the front conditioning camera
    (yaw 0, pitch 0.2 — the conditioning the official stylization code uses)."""
    device = next(G.parameters()).device
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    c_cond = cameras_at(0.0, 0.2, CameraConfig.from_rendering(G.config.rendering)).c.to(device)
    cutoff = None if cutoff is None else min(cutoff, G.num_ws)
    return G.mapping(z, c_cond, truncation_psi=psi, truncation_cutoff=cutoff)


@torch.no_grad()
def render_named_views(G: TriPlaneGenerator, ws: torch.Tensor, background: str = "model") -> dict[str, "np.ndarray"]:
    """Super-resolved renders of one latent from the six named views, as uint8 arrays keyed by view name.
    The tri-grid is synthesised once and shared by all cameras."""
    device = ws.device
    views = named_views(config=CameraConfig.from_rendering(G.config.rendering))
    c = views.c.to(device)
    planes = G.synthesize_planes(ws).expand(len(c), -1, -1, -1, -1)
    out = G.render(ws.expand(len(c), -1, -1), c, RenderOptions(background=background, deterministic_samples=True), planes=planes)
    return {name: to_uint8(img) for name, img in zip(views.names, out["image"])}


@torch.no_grad()
def head_mesh(G: TriPlaneGenerator, ws: torch.Tensor, config: MeshConfig, progress=None, timings=None):
    """Marching-cubes mesh of the head's density with vertex colours from the raw RGB head."""
    device = ws.device
    planes = G.synthesize_planes(ws)

    def density_fn(points: torch.Tensor) -> torch.Tensor:
        return G.query_points(planes, points[None].to(device))["sigma"][0, :, 0]

    def color_fn(points: torch.Tensor) -> torch.Tensor:
        return G.point_colors(planes, ws, points[None].to(device))[0]

    return extract_mesh(density_fn, color_fn, config, device=device, progress=progress, timings=timings)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    source = args.checkpoint or args.config or "small"
    t0 = time.perf_counter()
    loaded = load_generator(source, device=args.device)
    G = loaded.generator
    if not loaded.trained:
        log(f"note: {loaded.source} has random weights (no checkpoint given); renders show an untrained generator")
    ws = latent_for_seed(G, args.seed, args.truncation, args.truncation_cutoff)
    timings = {"load": time.perf_counter() - t0}

    t = time.perf_counter()
    images = render_named_views(G, ws)
    timings["render_views"] = time.perf_counter() - t
    files = {}
    for name, array in images.items():
        files[name] = str(save_png(array, out / VIEW_FILES[name]))
    save_png(image_grid(list(images.values()), columns=3), out / "views.png")
    emit("views", files=files)

    mesh_info: dict | None = None
    if not args.no_mesh:
        mesh_config = MeshConfig.for_box_warp(G.config.rendering.box_warp, resolution=args.mesh_resolution, iso_level=args.iso_level)
        mesh_timings: dict = {}
        try:
            mesh = head_mesh(G, ws, mesh_config, timings=mesh_timings)
        except EngineError as exc:
            if loaded.trained:
                raise
            log(f"warning: no mesh for an untrained generator: {exc}")
            mesh_info = {"error": str(exc)}
        else:
            ply = write_mesh(mesh, out / "head.ply")
            obj = write_mesh(mesh, out / "head.obj")
            mesh_info = {"ply": str(ply), "obj": str(obj), "vertices": mesh.num_vertices, "faces": mesh.num_faces}
            timings["mesh"] = mesh_timings
            emit("mesh", **mesh_info)

    timings["total"] = time.perf_counter() - t0
    summary = {
        "generator": loaded.source,
        "trained": loaded.trained,
        "preset": G.config.name,
        "seed": args.seed,
        "truncation": args.truncation,
        "views": files,
        "mesh": mesh_info,
        "timings_s": timings,
    }
    write_json(out / "generate.json", summary)
    emit("done", out=str(out), summary=str(out / "generate.json"))
    return 0
