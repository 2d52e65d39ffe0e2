"""Game-ready export: texture sharpness against vertex colours, level-of-detail cost, and build time.

For ``--heads`` heads of the embedded pack's generator (seeds 0…N−1) it extracts the mesh (128³), builds the
game asset (:mod:`engine.heads.game_asset`: LODs 100/30/10 %, xatlas atlases, textures baked from the field)
and renders at ``--resolution``² from yaw 0°, ±45°, 90°, unlit, with the scan rasteriser's visibility:

* **field**: the field's own colour at the surface point each pixel sees on the level-0 mesh (``color_fn``
  with the same short inward averaging the mesh colours use) — the reference;
* **vertex colours**: the marching-cubes mesh's per-vertex colours interpolated across each triangle (what
  the head carried before);
* **LOD k texture**: level k's mesh with its baked texture, bilinear (level k's own geometry).

PSNR (sRGB, over the reference's foreground) of each against the field, the asset's triangle counts, and
seconds per asset. A contact sheet (front-view face crops) goes to ``--sheet``.

    .venv/bin/python bench/bench_game_asset.py --heads 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.generator.camera import cameras_at, split_camera_vector  # noqa: E402
from engine.generator.inference import ViewSettings, camera_config_for, field_functions, seed_latent  # noqa: E402
from engine.generator.loading import load_generator  # noqa: E402
from engine.heads.game_asset import GameAssetConfig, build_game_asset  # noqa: E402
from engine.heads.scan_views import MeshTensors, ScanViewConfig, project, rasterize  # noqa: E402
from engine.heads.texture import linear_to_srgb  # noqa: E402
from engine.io.atomic import write_json  # noqa: E402
from engine.io.images import image_grid, save_png  # noqa: E402
from engine.mesh import Mesh, MeshConfig, extract_mesh, sample_vertex_colors  # noqa: E402
from engine.pack import pack_paths  # noqa: E402

YAWS = (0.0, 45.0, -45.0, 90.0)
WHITE = torch.ones(3)


def visible(mesh: Mesh, cameras: torch.Tensor, resolution: int):
    """Per camera: (hit (R²,) bool, triangle (R²,), bary (R², 3)) of ``mesh``."""
    data = MeshTensors(mesh)
    cam2world, intrinsics = split_camera_vector(cameras)
    config = ScanViewConfig(resolution=resolution, supersample=1, max_candidates=4_000_000)
    out = []
    for i in range(cameras.shape[0]):
        screen, z = project(data.vertices, cam2world[i], intrinsics[i], resolution)
        raster = rasterize(screen, z, data.faces, resolution, config)
        out.append((raster.triangle >= 0, raster.triangle.clamp_min(0), raster.bary))
    return data, out


def colour_image(data: MeshTensors, hit, triangle, bary, resolution: int) -> torch.Tensor:
    colour = linear_to_srgb(data.albedo_at(triangle, bary))
    return torch.where(hit[:, None], colour, WHITE).reshape(resolution, resolution, 3)


def field_image(mesh: Mesh, color_fn, mesh_config: MeshConfig, hit, triangle, bary, resolution: int) -> torch.Tensor:
    faces = torch.from_numpy(mesh.faces.astype(np.int64))
    corners = faces[triangle[hit]]
    w = bary[hit].unsqueeze(-1)
    points = (torch.from_numpy(mesh.vertices)[corners] * w).sum(1)
    normals = torch.nn.functional.normalize((torch.from_numpy(mesh.vertex_normals)[corners] * w).sum(1), dim=-1)
    colours = sample_vertex_colors(color_fn, points.numpy().astype(np.float32), mesh_config,
                                   normals.numpy().astype(np.float32))
    image = WHITE.repeat(resolution * resolution, 1)
    image[hit] = torch.from_numpy(colours).float() / 255.0
    return image.reshape(resolution, resolution, 3)


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    mse = ((a - b) ** 2)[mask.reshape(a.shape[:2])].mean().item()
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--texture-size", type=int, default=1024)
    parser.add_argument("--out", default="out/bench_game_asset")
    parser.add_argument("--sheet", default="docs/images/game_asset.png")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    G = load_generator(pack_paths().generator).generator
    settings = ViewSettings()
    mesh_config = MeshConfig.for_box_warp(G.config.rendering.box_warp, resolution=128, iso_level=10.0)
    config = GameAssetConfig(texture_size=args.texture_size).validate()
    cams = cameras_at(torch.tensor([math.radians(y) for y in YAWS]), settings.view_pitch,
                      camera_config_for(G, settings.camera_pivot)).c
    rows, per_head = [], []
    res = args.resolution
    for seed in range(args.heads):
        ws = seed_latent(G, seed, settings)
        density_fn, color_fn = field_functions(G, ws)
        with torch.no_grad():
            mesh = extract_mesh(density_fn, color_fn, mesh_config)
            started = time.perf_counter()
            asset = build_game_asset(mesh, color_fn, mesh_config, config)
            seconds = time.perf_counter() - started
            base_data, base_views = visible(mesh, cams, res)
            lod_views = []
            for level in asset.levels:
                unscaled = Mesh(level.mesh.vertices / asset.scale, level.mesh.faces, None, level.mesh.vertex_normals,
                                texture=level.mesh.texture)
                lod_views.append(visible(unscaled, cams, res))
            scores = {"vertex colours": [], **{f"LOD{k} texture": [] for k in range(len(asset.levels))}}
            for v, (hit, tri, bary) in enumerate(base_views):
                truth = field_image(mesh, color_fn, mesh_config, hit, tri, bary, res)
                images = {"field": truth, "vertex colours": colour_image(base_data, hit, tri, bary, res)}
                for k, (data, views) in enumerate(lod_views):
                    images[f"LOD{k} texture"] = colour_image(data, *views[v], res)
                for name in scores:
                    scores[name].append(psnr(images[name], truth, hit))
                if v == 0:  # front view: the face, cropped
                    c0, c1 = int(res * 0.30), int(res * 0.70)
                    rows.append([(img[c0 - int(res * 0.08):c1 - int(res * 0.08), c0:c1].numpy() * 255).round()
                                 .clip(0, 255).astype(np.uint8) for img in images.values()])
        per_head.append({"seed": seed, "seconds": round(seconds, 2), "levels": asset.metadata["levels"],
                         "psnr_db": {k: round(float(np.mean(v)), 2) for k, v in scores.items()}})
        print(json.dumps(per_head[-1]), flush=True)
    summary = {k: round(float(np.mean([h["psnr_db"][k] for h in per_head])), 2) for k in per_head[0]["psnr_db"]}
    result = {"heads": args.heads, "resolution": res, "texture_size": args.texture_size, "yaws": YAWS,
              "mean_psnr_db": summary, "mean_seconds": round(float(np.mean([h["seconds"] for h in per_head])), 2),
              "per_head": per_head}
    write_json(Path(args.out) / "bench_game_asset.json", result)
    if args.sheet:
        save_png(image_grid([img for row in rows for img in row], len(rows[0])), args.sheet)
    print(json.dumps({k: v for k, v in result.items() if k != "per_head"}, indent=1))


if __name__ == "__main__":
    main()
