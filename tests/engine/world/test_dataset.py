"""The world dataset: shapes, seeding, and hints computed exactly as guidance computes them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine.distill.grid import tile_2x2
from engine.errors import ConfigError, InputError
from engine.generator.camera import split_camera_vector
from engine.guidance.control import canny_edges, depth_control
from engine.world import STYLES
from engine.world.dataset import (
    WorldDataConfig,
    WorldSampler,
    WorldSamples,
    render_world_samples,
    sample_training_cameras,
    tile_grids,
)

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = WorldDataConfig(resolution=32, styles=("photo", "zombie"), identities=2, views_per_identity=4)


@pytest.fixture(scope="module")
def samples() -> WorldSamples:
    return render_world_samples(CONFIG, seed=3)


def test_shapes_ranges_and_order(samples):
    n = 2 * 2 * 4  # styles × identities × views
    assert len(samples) == n and samples.resolution == 32
    assert samples.images.shape == (n, 3, 32, 32) and samples.cameras.shape == (n, 25)
    for name in ("depth", "mask", "edge", "depth_hint"):
        assert getattr(samples, name).shape == (n, 1, 32, 32), name
    assert samples.images.min() >= -1 and samples.images.max() <= 1
    assert set(samples.edge.unique().tolist()) <= {0.0, 1.0}
    assert samples.depth_hint.min() >= 0 and samples.depth_hint.max() <= 1
    assert samples.hint("depth").shape == (n, 3, 32, 32)
    # style-major, then identity, then view; the same identities and cameras in every style
    assert samples.style_index.tolist() == [0] * 8 + [1] * 8
    assert samples.identity_index.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] * 2
    torch.testing.assert_close(samples.cameras[:8], samples.cameras[8:])
    assert samples.prompts[0] == STYLES["photo"].prompt and samples.prompts[-1] == STYLES["zombie"].prompt
    assert samples.mask.mean() > 0.1  # heads are in frame


def test_hints_equal_what_guidance_computes(samples):
    edge = canny_edges(samples.images, 50, 250)
    torch.testing.assert_close(samples.hint("edge"), edge, rtol=0, atol=0)
    torch.testing.assert_close(samples.hint("depth"), depth_control(samples.depth, samples.mask), rtol=0, atol=0)


def test_backgrounds_are_plain_per_image(samples):
    background = samples.mask[:, 0] == 0
    for image, where in zip(samples.images, background):
        pixels = image[:, where]
        assert pixels.shape[1] > 50
        assert float((pixels - pixels[:, :1]).abs().max()) < 1e-5  # one colour per image


def test_seeded_and_deterministic():
    small = WorldDataConfig(resolution=16, styles=("gold",), identities=1, views_per_identity=2)
    a, b, c = (render_world_samples(small, seed) for seed in (5, 5, 6))
    for name in WorldSamples._TENSORS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)
    assert not torch.equal(a.images, c.images)


def test_camera_distribution():
    config = WorldDataConfig(front_fraction=0.6, front_yaw_std=0.6, pitch_range=(-0.35, 0.35))
    cams = sample_training_cameras(4000, config, torch.Generator().manual_seed(0))
    assert cams.yaw.abs().max() <= math.pi + 1e-6 and cams.pitch.abs().max() <= 0.35 + 1e-6
    front = float((cams.yaw.abs() < 0.6).float().mean())
    # 0.6 · P(|N(0, 0.6)| < 0.6) + 0.4 · 0.6/π ≈ 0.6 · 0.683 + 0.076 = 0.486 (uniform alone: 0.19)
    assert abs(front - 0.486) < 0.03
    cam2world, _ = split_camera_vector(cams.c)
    torch.testing.assert_close(cam2world[:, :3, 3].norm(dim=-1), torch.full((4000,), 2.7), rtol=0, atol=1e-4)
    looking = -cam2world[:, :3, 3] / 2.7  # the pivot is the origin: the view axis points back to it
    torch.testing.assert_close(cam2world[:, :3, 2], looking, rtol=0, atol=1e-4)


def test_grids_match_the_stylization_grid_stage(samples, tiny_diffusion):
    from engine.guidance import Guidance, GuidanceConfig

    grids = tile_grids(samples)
    assert len(grids) == 4 and grids.images.shape == (4, 3, 32, 32)
    assert grids.style_index.tolist() == [0, 0, 1, 1] and grids.identity_index.tolist() == [0, 1, 0, 1]
    # tile layout: v0 v1 / v2 v3, each view shrunk like the grid stage (bilinear, align_corners=True)
    shrunk = F.interpolate(samples.images[4:8], size=(16, 16), mode="bilinear", align_corners=True)
    torch.testing.assert_close(grids.images[1, :, :16, 16:], shrunk[1])
    torch.testing.assert_close(grids.images[1, :, 16:, :16], shrunk[2])
    # depth hint: per-view depth_control at full size, tiled, then what Guidance feeds the depth ControlNet
    guidance = Guidance.from_folder(
        tiny_diffusion.sd_folder, depth_controlnet=tiny_diffusion.depth, config=GuidanceConfig(precision="fp32")
    )
    latents = torch.zeros(1, 4, 8, 8)
    for g in range(4):
        views = slice(4 * g, 4 * g + 4)
        tiled = tile_2x2(depth_control(samples.depth[views], samples.mask[views]))
        expected = guidance._prepare_control("depth", tiled, latents)[:1]
        torch.testing.assert_close(grids.hint("depth")[g : g + 1], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(grids.hint("edge"), canny_edges(grids.images, 50, 250), rtol=0, atol=0)


def test_sampler_select_and_round_trip(samples, tmp_path):
    a = WorldSampler(samples, seed=1).next_batch(6)
    b = WorldSampler(samples, seed=1).next_batch(6)
    assert len(a) == 6 and torch.equal(a.images, b.images) and a.styles == samples.styles
    path = tmp_path / "set.pt"
    samples.save(path)
    loaded = WorldSamples.load(path)
    for name in WorldSamples._TENSORS:
        torch.testing.assert_close(getattr(loaded, name), getattr(samples, name), rtol=0, atol=0)
    assert loaded.styles == samples.styles
    both = WorldSamples.concatenate([samples, loaded])
    assert len(both) == 2 * len(samples)


def test_bad_input_is_reported():
    with pytest.raises(ConfigError, match="unknown style"):
        render_world_samples(WorldDataConfig(styles=("vangogh",)), 0)
    with pytest.raises(ConfigError, match="resolution"):
        WorldDataConfig(resolution=7).validate()
    with pytest.raises(ConfigError, match="pitch_range"):
        WorldDataConfig(pitch_range=(-2.0, 0.0)).validate()
    with pytest.raises(InputError, match="hint kind"):
        render_world_samples(WorldDataConfig(resolution=8, styles=("photo",), identities=1, views_per_identity=1), 0).hint("normal")
    with pytest.raises(InputError, match="not a readable"):
        WorldSamples.load(__file__)
