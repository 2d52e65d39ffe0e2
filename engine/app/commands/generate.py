"""``python -m engine generate``: multi-view renders and a coloured mesh of one generated head.

Views use the official inference cameras (the stylization code's ``infer_LD.py``, PanoHead's sampling
scripts): looking at the origin from radius 2.7 at a pitch of 10°. ``--visualiser-pivot`` looks at
(0, 0, 0.2) instead, the average pivot of PanoHead's interactive visualiser (this command's former views).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from ...errors import EngineError
from ...generator.camera import named_views
from ...generator.inference import ViewSettings, camera_config_for, head_mesh, render_images, seed_latent
from ...generator.loading import load_generator
from ...io.atomic import write_json
from ...io.events import emit, log
from ...io.images import image_grid, save_png, to_uint8
from ...mesh import MeshConfig, write_mesh


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
    p.add_argument("--pitch", type=float, default=10.0, help="view pitch in degrees, PanoHead convention (default 10, "
                                                             "as the official inference views)")
    p.add_argument("--visualiser-pivot", action="store_true",
                   help="look at (0, 0, 0.2), PanoHead's visualiser's average pivot, instead of the origin")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    source = args.checkpoint or args.config or "small"
    t0 = time.perf_counter()
    loaded = load_generator(source, device=args.device)
    G = loaded.generator
    if not loaded.trained:
        log(f"note: {loaded.source} has random weights (no checkpoint given); renders show an untrained generator")
    # The official inference cameras (or the visualiser's pivot), with the generator's background network.
    settings = ViewSettings(
        truncation_psi=args.truncation,
        truncation_cutoff=args.truncation_cutoff,
        camera_pivot=G.config.rendering.avg_camera_pivot if args.visualiser_pivot else (0.0, 0.0, 0.0),
        view_pitch=math.radians(args.pitch),
        background="model",
    ).validate()
    ws = seed_latent(G, args.seed, settings)
    timings = {"load": time.perf_counter() - t0}

    t = time.perf_counter()
    views = named_views(settings.view_pitch, camera_config_for(G, settings.camera_pivot))
    images = [to_uint8(img) for img in render_images(G, ws, views.c, settings.background, settings.chunk)]
    timings["render_views"] = time.perf_counter() - t
    files = {name: str(save_png(image, out / f"{name}.png")) for name, image in zip(views.names, images)}
    save_png(image_grid(images, columns=3), out / "views.png")
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
        "cameras": {"pivot": list(settings.camera_pivot), "pitch_degrees": args.pitch},
        "views": files,
        "mesh": mesh_info,
        "timings_s": timings,
    }
    write_json(out / "generate.json", summary)
    emit("done", out=str(out), summary=str(out / "generate.json"))
    return 0
