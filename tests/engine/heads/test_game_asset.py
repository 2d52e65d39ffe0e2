"""Game-ready heads: UV rasterisation, textures baked from the field, LODs, life size, and the glb."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ConfigError
from engine.heads.game_asset import (METRES_PER_WORLD_UNIT, GameAssetConfig, build_game_asset, game_glb_bytes,
                                     rasterize_uv)
from engine.heads.gltf import read_gltf
from engine.heads.texture import sample_bilinear
from engine.io.atomic import write_bytes
from engine.mesh import MeshConfig, extract_mesh

REPO = Path(__file__).resolve().parents[3]
VALIDATOR = REPO / "tools" / "gltf-validator"
RADIUS = 0.3


def stripes(points: torch.Tensor) -> torch.Tensor:
    """A colour with detail finer than the mesh's vertex spacing: stripes along y every ~1.6 voxels."""
    phase = torch.sin(points[:, 1] * 2 * math.pi / 0.03)
    return torch.stack([0.5 + 0.4 * phase, 0.5 + 0.3 * torch.cos(points[:, 0] * 20), 0.5 - 0.4 * phase], dim=-1)


def sphere_density(points: torch.Tensor) -> torch.Tensor:
    return 10.0 + (RADIUS - points.norm(dim=-1)) * 400.0


@pytest.fixture(scope="module")
def sphere():
    config = MeshConfig.for_box_warp(1.0, resolution=48, iso_level=10.0)
    return extract_mesh(sphere_density, stripes, config), config


@pytest.fixture(scope="module")
def asset(sphere):
    mesh, config = sphere
    return build_game_asset(mesh, stripes, config, GameAssetConfig(texture_size=512, lod_ratios=(1.0, 0.3, 0.1)))


def test_two_triangles_cover_every_texel_once_with_the_right_barycentrics():
    uv = np.array([[[0, 0], [1, 0], [1, 1]], [[0, 0], [1, 1], [0, 1]]], np.float32)
    cover = rasterize_uv(uv, 8)
    assert np.array_equal(np.sort(cover.texel), np.arange(64))
    centre = np.stack([(cover.texel % 8 + 0.5) / 8, (cover.texel // 8 + 0.5) / 8], axis=1)
    rebuilt = np.einsum("nk,nkd->nd", cover.bary, uv[cover.triangle])
    np.testing.assert_allclose(rebuilt, centre, atol=1e-6)
    # the lower-right half belongs to triangle 0 (u > v), the other to triangle 1
    assert np.all((centre[:, 0] > centre[:, 1]) == (cover.triangle == 0)) or np.all(
        (centre[:, 0] >= centre[:, 1]) == (cover.triangle == 0))


def test_texture_holds_the_field_at_the_surface_better_than_vertex_colours(sphere, asset):
    mesh, _ = sphere
    level = asset.levels[0]
    # random surface points of level 0: their true colour, the texture's, and interpolated vertex colours
    rng = np.random.default_rng(0)
    faces = rng.integers(0, level.mesh.num_faces, 4000)
    bary = rng.dirichlet(np.ones(3), 4000).astype(np.float32)
    corners = level.mesh.faces[faces]
    points = np.einsum("nk,nkd->nd", bary, level.mesh.vertices[corners]) / asset.scale
    truth = stripes(torch.from_numpy(points)).clamp(0, 1)
    uv = np.einsum("nk,nkd->nd", bary, level.uv[corners])
    image = torch.from_numpy(level.image.astype(np.float32) / 255.0)
    textured = sample_bilinear(image, torch.from_numpy(uv))
    vertex = torch.from_numpy(np.einsum("nk,nkd->nd", bary, level.mesh.vertex_colors[corners].astype(np.float32) / 255))

    def psnr(x):
        return 10 * math.log10(1 / ((x - truth) ** 2).mean().item())

    assert psnr(textured) > 30.0
    assert psnr(textured) > psnr(vertex) + 6.0


def test_levels_shrink_textures_halve_and_the_head_is_life_size(sphere, asset):
    mesh, _ = sphere
    counts = [lvl.mesh.num_faces for lvl in asset.levels]
    assert counts[0] == mesh.num_faces
    assert counts[1] == pytest.approx(0.3 * mesh.num_faces, rel=0.05)
    assert counts[2] == pytest.approx(0.1 * mesh.num_faces, rel=0.05)
    assert [lvl.texture_size for lvl in asset.levels] == [512, 256, 256]
    assert [lvl.image.shape for lvl in asset.levels] == [(512, 512, 3), (256, 256, 3), (256, 256, 3)]
    assert METRES_PER_WORLD_UNIT == pytest.approx(0.625)
    extent = np.ptp(asset.levels[0].mesh.vertices, axis=0)
    np.testing.assert_allclose(extent, np.ptp(mesh.vertices, axis=0) * 0.625, rtol=1e-5)
    assert np.all((asset.levels[0].uv >= 0) & (asset.levels[0].uv <= 1))


def test_engine_units_keep_the_scale(sphere):
    mesh, config = sphere
    kept = build_game_asset(mesh, stripes, config, GameAssetConfig(texture_size=256, lod_ratios=(1.0,), life_size=False))
    np.testing.assert_allclose(np.ptp(kept.levels[0].mesh.vertices, axis=0), np.ptp(mesh.vertices, axis=0), rtol=1e-6)


def test_glb_reads_back_textured_level_zero_and_is_deterministic(sphere, asset, tmp_path):
    data = game_glb_bytes(asset, GameAssetConfig(texture_size=512), extras={"head_stylizer": {"k": 1}})
    path = write_bytes(tmp_path / "head.glb", data)
    mesh, extras = read_gltf(path)
    assert mesh.num_faces == asset.levels[0].mesh.num_faces  # only level 0 is in the scene
    assert mesh.texture is not None and np.array_equal(mesh.texture.images[0], asset.levels[0].image)
    assert extras["head_stylizer"] == {"k": 1} and len(extras["game_asset"]["levels"]) == 3
    document = json.loads(data[20:20 + int.from_bytes(data[12:16], "little")])
    assert document["nodes"][0]["extensions"]["MSFT_lod"]["ids"] == [1, 2]
    assert "COLOR_0" not in document["meshes"][0]["primitives"][0]["attributes"]
    again = game_glb_bytes(build_game_asset(sphere[0], stripes, sphere[1], GameAssetConfig(texture_size=512)),
                           GameAssetConfig(texture_size=512), extras={"head_stylizer": {"k": 1}})
    assert hashlib.sha256(again).digest() == hashlib.sha256(data).digest()


@pytest.mark.skipif(shutil.which("node") is None or not (VALIDATOR / "node_modules" / "gltf-validator").is_dir(),
                    reason="glTF validator not installed (scripts/setup.sh runs npm ci in tools/gltf-validator)")
def test_khronos_validator_reports_no_errors_and_no_warnings(asset, tmp_path):
    path = write_bytes(tmp_path / "head.glb", game_glb_bytes(asset))
    report = json.loads(subprocess.run(["node", str(VALIDATOR / "validate.js"), str(path)], capture_output=True,
                                       text=True, check=False).stdout)
    assert (report["issues"]["numErrors"], report["issues"]["numWarnings"]) == (0, 0), report["issues"]["messages"]


@pytest.mark.parametrize("changes", [{"texture_size": 300}, {"lod_ratios": (0.5, 0.2)}, {"lod_ratios": (1.0, 0.3, 0.4)},
                                     {"metres_per_unit": 0.0}, {"padding_texels": 64}])
def test_bad_settings_are_refused(changes):
    with pytest.raises(ConfigError):
        GameAssetConfig(**changes).validate()
