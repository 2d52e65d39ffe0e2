"""The embedded pack's trained generator: its training loop, and the shipped file against the world."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.generator.config import get_preset
from engine.generator.triplane import RenderOptions, TriPlaneGenerator
from engine.world import render_heads
from engine.world.latent import identity_from_latent
from scripts.pack import train_generator as tg

pytestmark = pytest.mark.usefixtures("single_thread")

PACK_GENERATOR = Path(__file__).resolve().parents[3] / "engine/pack/embedded-v1/generator/generator.safetensors"
# Held-out front-view PSNR of the shipped file: 18.0 dB mean over 6 heads (reports/generator.json) minus a margin.
PACK_FRONT_PSNR_MIN = 16.5


def tiny_config(**changes) -> tg.TrainConfig:
    base = dict(preset="tiny", shape_steps=0, steps=10, batch=2, shape_batch=2, low_resolution=16,
                shape_resolution=16, density_points=64, shape_density_points=64, colour_points=32, lr=2e-3)
    return tg.TrainConfig(**{**base, **changes})


def test_training_cameras_cover_the_circle_with_front_weight():
    G = TriPlaneGenerator(get_preset("tiny"))
    c = tg.sample_training_cameras(4000, torch.Generator().manual_seed(0), tg.TrainConfig(), tg.camera_config(G))
    position = c[:, [3, 7, 11]]
    yaw = torch.atan2(position[:, 0], position[:, 2])
    assert position.norm(dim=1).sub(2.7).abs().max() < 1e-4  # generator's orbit radius, pivot at the origin
    assert (yaw.abs() > 2.5).float().mean() > 0.05  # back views are trained
    assert (yaw.abs() < 0.5).float().mean() > 2 * (yaw.abs() > 2.6).float().mean()  # front weighted
    # forward axis looks at the origin
    forward = c[:, [2, 6, 10]]
    assert torch.allclose(forward, -position / position.norm(dim=1, keepdim=True), atol=1e-5)


def test_conditioning_camera_is_the_inference_default():
    from engine.generator.camera import CameraConfig, cameras_at

    G = TriPlaneGenerator(get_preset("tiny"))
    expected = cameras_at(0.0, 0.2, CameraConfig(pivot=(0.0, 0.0, 0.0))).c
    assert torch.allclose(tg.conditioning_camera(G), expected)


def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    config = tiny_config()
    G = TriPlaneGenerator(get_preset("tiny"))
    G.train()
    optimizer = tg.make_optimizer(G, config)
    c_cond = tg.conditioning_camera(G)
    batch = tg.make_batch(0, G, config, torch.Generator().manual_seed(0))
    assert batch.neural_resolution == 16 and batch.image.shape == (2, 3, 32, 32)
    assert 0 < batch.inside.mean() < 1  # the density probes see both inside and outside
    losses = [tg.training_step(G, optimizer, batch, c_cond, config, step) for step in range(3)]
    totals = [entry["total"] for entry in losses]
    assert all(math.isfinite(v) for entry in losses for v in entry.values())
    assert totals[2] < totals[0]


def test_shape_phase_steps_reduce_the_loss_without_rendering():
    torch.manual_seed(0)
    config = tiny_config(shape_steps=5)
    G = TriPlaneGenerator(get_preset("tiny"))
    optimizer = tg.make_optimizer(G, config)
    c_cond = tg.conditioning_camera(G)
    batch = tg.make_batch(0, G, config, torch.Generator().manual_seed(0))
    assert batch.neural_resolution == 0 and batch.surface.shape == (2, 32, 3)
    assert float(batch.surface_colour.min()) >= 0 and float(batch.surface_colour.max()) <= 1
    losses = [tg.training_step(G, optimizer, batch, c_cond, config, step) for step in range(3)]
    assert set(losses[0]) == {"density", "colour", "floor", "total", "skipped"}  # no render terms in the shape phase
    assert losses[2]["total"] < losses[0]["total"]


def test_surface_hits_lie_on_the_world_surface():
    from engine.generator.camera import cameras_at
    from engine.world.sdf import geometry_distance

    config = tiny_config()
    z = torch.zeros(2, 32)
    c = cameras_at(torch.tensor([0.0, 2.0]), 0.1, tg.camera_config(TriPlaneGenerator(get_preset("tiny")))).c
    world = render_heads(identity_from_latent(z), c, 32)
    hits, _ = tg.surface_hits(c, world["depth"], world["mask"], 64, torch.Generator().manual_seed(0))
    distance = geometry_distance(hits, tg.photo_geometry(identity_from_latent(z)))
    assert distance.abs().max().item() < 2e-3  # within ~0.1 cm of a real head


def test_camera_offset_is_zeroed_and_w_avg_is_the_mean():
    G = TriPlaneGenerator(get_preset("tiny")).eval()
    tg.zero_camera_offset(G)
    z = torch.randn(3, G.z_dim)
    c = tg.conditioning_camera(G).expand(3, -1)
    with torch.no_grad():
        c_new, delta = G.apply_delta_c(z, c)
    assert torch.equal(delta, torch.zeros_like(delta)) and torch.equal(c_new, c)
    tg.set_w_average(G, tg.conditioning_camera(G), count=64, seed=1)
    zs = torch.randn(64, G.z_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w = G.mapping(zs, tg.conditioning_camera(G).expand(64, -1))[:, 0]
    assert torch.allclose(G.backbone.mapping.w_avg, w.mean(0), atol=1e-6)


def test_psnr_hand_value():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.2)  # mse 0.04 with peak-to-peak 2 → 10·log10(4 / 0.04) = 20 dB
    assert tg.psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)


@pytest.mark.slow
def test_pack_generator_reproduces_a_held_out_world_head():
    if not PACK_GENERATOR.is_file():
        pytest.skip(f"{PACK_GENERATOR} not built yet (python scripts/pack/train_generator.py --out engine/pack/embedded-v1)")
    from engine.generator.loading import load_generator

    G = load_generator(PACK_GENERATOR).generator
    assert G.config.name == "pack"
    heads = 6
    z = torch.randn(heads, G.z_dim, generator=torch.Generator().manual_seed(tg.EVAL_SEED_OFFSET))
    c_cond = tg.conditioning_camera(G).expand(heads, -1)
    front = tg.named_views(0.0, tg.camera_config(G)).c[:1].expand(heads, -1)
    with torch.no_grad():
        out = G.render(G.mapping(z, c_cond), front, RenderOptions(background="white", deterministic_samples=True))
    world = render_heads(identity_from_latent(z), front, G.img_resolution, style="photo", background="white")
    matched = tg.psnr(out["image"], world["image"])
    swapped = tg.psnr(out["image"], world["image"].roll(1, dims=0))
    assert matched.mean().item() > PACK_FRONT_PSNR_MIN
    # The render follows the latent, not one average head (measured: 17.8 vs 16.7 dB on these heads).
    assert matched.mean().item() > swapped.mean().item() + 0.5
