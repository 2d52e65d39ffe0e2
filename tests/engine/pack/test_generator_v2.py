"""Generator v2 training (``scripts/pack/train_generator_v2.py``): 3-D targets, losses, metrics, resume."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.world.latent import identity_from_latent
from engine.world.sdf import geometry_distance
from scripts.pack import train_generator_v2 as v2

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_stage(**changes) -> v2.StageConfig:
    base = dict(name="field", render=False, steps=4, init="preset:tiny", batch=2, target_resolution=24,
                density_points=256, colour_points=64, save_every=2, log_every=1)
    return v2.StageConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def tiny_batch():
    G = v2.initial_generator(tiny_stage(), None)
    return G, v2.make_batch(0, G, tiny_stage())


def test_density_targets_put_the_iso_level_on_the_world_surface(tiny_batch):
    G, batch = tiny_batch
    f, config = batch.field, tiny_stage()
    sdf = geometry_distance(f.points, v2.photo_geometry(identity_from_latent(batch.z)))
    inside, outside = sdf < -1e-3, sdf > 1e-3
    assert inside.any() and outside.any()
    assert (f.density[inside] > config.iso_level).all() and (f.density[outside] < config.iso_level).all()
    assert f.density.min() >= -20 and f.density.max() <= 250
    # most near-surface probes are within a few centimetres of the surface
    near = sdf[:, config.density_points // 4 :].abs()
    assert (near < 0.06).float().mean() > 0.9


def test_colour_targets_are_surface_points_with_their_pixel_colours(tiny_batch):
    G, batch = tiny_batch
    on_surface = v2.make_batch(0, G, tiny_stage(ray_fraction=0.0)).field
    geometry = v2.photo_geometry(identity_from_latent(batch.z))
    assert geometry_distance(on_surface.surface, geometry).abs().max() < 0.01  # world units; heads are ~0.6 tall
    f = batch.field  # half the points slid along their rays by up to 2.5 cm (world units 0.025)
    sdf = geometry_distance(f.surface, geometry).abs()
    assert sdf.max() < 0.03 and 0.2 < (sdf > 0.002).float().mean() < 0.8
    assert f.colour.min() >= 0 and f.colour.max() <= 1
    assert 0.5 < f.pair_valid.mean() <= 1
    gap = (f.surface - f.neighbour).norm(dim=-1)[f.pair_valid > 0]
    # neighbouring pixels' points are close (pairs across a depth edge are far apart, and still right:
    # each point keeps its own colour)
    assert gap.median() < 0.05


def test_targets_are_view_independent_matte_with_head_fixed_lights():
    """The v2 targets must be reproducible by a view-independent field (see the world light test)."""
    assert v2.TARGET_LIGHTING.gloss == 0.0
    G = v2.initial_generator(tiny_stage(), None)
    identity = identity_from_latent(torch.zeros(1, G.z_dim))
    front = v2.head_light_camera(G)
    from engine.world import render_heads

    a = v2.world_views(identity, front, 16, G)
    b = render_heads(identity, front, 16, background="white", lighting=v2.TARGET_LIGHTING)
    torch.testing.assert_close(a["image"], b["image"])


def test_field_steps_reduce_the_loss_on_a_fixed_batch(tiny_batch):
    # A fresh tiny generator's raw density is near 0 and moves slowly towards ±100s, so the test narrows
    # the target range (the pack's stage starts from v1, whose density already spans it).
    torch.manual_seed(0)
    config = tiny_stage(lr=3e-2, density_range=(-5.0, 15.0), density_scale=1.0, weight_density=1.0)
    G = v2.initial_generator(config, None)
    G.train()
    params = v2.trainable(G, config)
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    batch = v2.make_batch(0, G, config)
    c_cond = v2.conditioning_camera(G)
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        losses = v2.compute_losses(G, batch, c_cond, config)
        losses["total"].backward()
        optimizer.step()
        first = first if first is not None else {k: float(v.detach()) for k, v in losses.items()}
    with torch.no_grad():
        last = {k: float(v) for k, v in v2.compute_losses(G, batch, c_cond, config).items()}
    assert last["density"] < 0.8 * first["density"]
    assert last["colour"] < 0.5 * first["colour"]


def test_render_stage_trains_only_its_groups_and_reduces_the_image_loss():
    torch.manual_seed(0)
    config = tiny_stage(name="sr", render=True, trainable=("superresolution", "torgb", "background"),
                        weight_field=0.0, lr=3e-3)
    G = v2.initial_generator(config, None)
    G.train()
    params = v2.trainable(G, config)
    assert params and all(n.startswith(("superresolution.", "torgb.", "bcg_synthesis.")) for n in params)
    batch = v2.make_batch(0, G, config)
    assert batch.field is None and batch.world["image"].shape[-1] == G.img_resolution
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    c_cond = v2.conditioning_camera(G)
    with torch.no_grad():
        before = float(v2.compute_losses(G, batch, c_cond, config)["image"])
    for _ in range(15):
        optimizer.zero_grad()
        v2.compute_losses(G, batch, c_cond, config)["total"].backward()
        optimizer.step()
    assert float(v2.compute_losses(G, batch, c_cond, config)["image"].detach()) < before


def test_gradient_l1_hand_values():
    a = torch.zeros(1, 1, 3, 3)
    b = torch.zeros(1, 1, 3, 3)
    b[..., 1, :] = 1.0  # one bright row: vertical differences ±1 on 2 of 2 rows × 3 columns, none horizontal
    assert float(v2.gradient_l1(a, b)) == pytest.approx(1.0)
    assert float(v2.gradient_l1(b, b + 5.0)) == 0.0  # a constant offset has no edges


def test_ssim_and_region_psnr():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.allclose(v2.ssim(x, x), torch.ones(2), atol=1e-6)
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    assert (v2.ssim(x, noisy) < 0.95).all()
    # region PSNR sees only the region: an error outside it does not count
    y = x.clone()
    y[:, :, :16] += 0.2
    region = torch.zeros(2, 1, 32, 32)
    region[:, :, 16:] = 1
    assert torch.isinf(v2.psnr(x, y, region)).all() or (v2.psnr(x, y, region) > 100).all()
    assert (v2.psnr(x.clamp(-0.5, 0.5), y.clamp(-0.5, 0.5)) < 30).all()


def test_stage_resumes_bit_exactly_after_a_stop(tmp_path):
    config = tiny_stage()
    straight = v2.run_stage(config, tmp_path / "a", minutes=60, threads=1)
    assert straight["finished"] and straight["step"] == config.steps
    stopped = v2.run_stage(config, tmp_path / "b", minutes=0.0, threads=1)  # stops before the first step
    assert not stopped["finished"]
    resumed = v2.run_stage(config, tmp_path / "b", minutes=60, threads=1)
    assert resumed["finished"]
    a = v2.latest_checkpoint(tmp_path / "a" / "field").generator.state_dict()
    b = v2.latest_checkpoint(tmp_path / "b" / "field").generator.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a checkpoint written under another config is refused rather than silently continued
    with pytest.raises(Exception, match="another stage config"):
        v2.run_stage(replace(config, steps=6, lr=1e-2), tmp_path / "a", minutes=60, threads=1)


def test_stage_resume_mid_run_restores_the_optimizer(tmp_path):
    """2 + 2 steps equal 4 straight steps only if Adam's moments survive the checkpoint."""
    config = tiny_stage(steps=4, save_every=100)
    v2.run_stage(config, tmp_path / "a", minutes=60, threads=1)
    first = v2.run_stage(config, tmp_path / "b", minutes=60, threads=1, max_steps=2)
    assert first == {"stage": "field", "step": 2, "finished": False, "seconds": first["seconds"]}
    assert v2.latest_checkpoint(tmp_path / "b" / "field").step == 2
    v2.run_stage(config, tmp_path / "b", minutes=60, threads=1)
    a = v2.latest_checkpoint(tmp_path / "a" / "field")
    b = v2.latest_checkpoint(tmp_path / "b" / "field")
    assert a.finished and b.finished and a.step == b.step == 4
    assert all(torch.equal(v, b.generator.state_dict()[k]) for k, v in a.generator.state_dict().items())
    log = (tmp_path / "b" / "field" / "log.jsonl").read_text().splitlines()
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in log] == [0, 1, 2, 3]


def test_normal_shell_moves_colour_points_along_the_surface_normal(tiny_batch):
    """Shifted colour points sit at signed distance ≈ their shift (inside for negative shifts), whatever
    the view: the shell targets are view-independent, unlike offsets along one camera's ray."""
    G, batch = tiny_batch
    geometry = v2.photo_geometry(identity_from_latent(batch.z))
    config = tiny_stage(ray_fraction=0.0, normal_fraction=1.0, normal_offset=(-0.02, -0.01))
    f = v2.make_batch(0, G, config).field
    sdf = geometry_distance(f.surface, geometry)
    # the world's SDF is a distance bound (smooth unions), so allow it to read a little short
    assert (sdf < -0.004).float().mean() > 0.9 and (sdf > -0.025).all()
    on_surface = v2.make_batch(0, G, tiny_stage(ray_fraction=0.0)).field
    torch.testing.assert_close(f.colour, on_surface.colour)  # the same pixels, the same colours
    normals = v2.surface_normals(on_surface.surface, geometry)
    shift = ((f.surface - on_surface.surface) * normals).sum(-1)
    torch.testing.assert_close((f.surface - on_surface.surface).norm(dim=-1), shift.abs(), atol=1e-5, rtol=0)
    assert (shift <= -0.01 + 1e-6).all() and (shift >= -0.02 - 1e-6).all()


def test_density_loss_hand_values():
    """Plain L1 (divided by the scale); one-sided: beyond a clamped target is no error; tolerance: free band."""
    target = torch.tensor([[-20.0, -20.0, 250.0, 250.0, 100.0, 100.0]])
    sigma = torch.tensor([[-30.0, -10.0, 260.0, 240.0, 110.0, 96.0]])
    # |errors| = 10, 10, 10, 10, 10, 4
    def loss(**changes):
        return float(v2.density_loss(sigma, target, tiny_stage(**changes)))
    scale = tiny_stage().density_scale
    assert loss() == pytest.approx(54 / 6 / scale)
    # σ = −30 below the −20 clamp and σ = 260 above the 250 clamp are fine; the other two 10s still count
    assert loss(density_one_sided=True) == pytest.approx(34 / 6 / scale)
    assert loss(density_one_sided=True, density_tolerance=5.0) == pytest.approx(15 / 6 / scale)
    assert loss(density_tolerance=12.0) == 0.0


def test_stage_can_start_from_a_given_step_of_another_stage(tmp_path):
    v2.run_stage(tiny_stage(save_every=100), tmp_path, minutes=60, threads=1, max_steps=2)  # field at step 2
    follow = tiny_stage(name="field2", init="field@2", mapping_lr_scale=100.0)
    G = v2.initial_generator(follow, tmp_path)
    saved = v2.latest_checkpoint(tmp_path / "field").generator.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in G.state_dict().items())
    with pytest.raises(Exception, match="step 3 of stage 'field'.*has step 2"):
        v2.initial_generator(replace(follow, init="field@3"), tmp_path)


def test_mapping_and_synthesis_learn_at_their_own_rates():
    """With mapping_lr_scale and synthesis_lr_scale, one Adam step moves those networks' stored weights scale ×
    as far as the shared parts' (Adam's first step is ±lr per element), and the schedule keeps the ratios."""
    G = v2.initial_generator(tiny_stage(), None)
    config = tiny_stage(mapping_lr_scale=100.0, synthesis_lr_scale=5.0)
    params = v2.trainable(G, config)
    optimizer = v2.make_optimizer(params, config)
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs == pytest.approx([config.lr, 5 * config.lr, 100 * config.lr])
    v2.set_learning_rate(optimizer, config.learning_rate(config.steps - 1))
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs[1] == pytest.approx(5 * lrs[0]) and lrs[2] == pytest.approx(100 * lrs[0]) and lrs[0] < config.lr
    before = {k: v.detach().clone() for k, v in params.items()}
    G.train()
    batch = v2.make_batch(0, G, config)
    v2.compute_losses(G, batch, v2.conditioning_camera(G), config)["total"].backward()
    v2.set_learning_rate(optimizer, config.lr)
    optimizer.step()

    def largest_step(name: str) -> float:
        return float((params[name] - before[name]).detach().abs().max())

    synthesis_name = next(k for k in params if k.startswith("backbone.synthesis.") and k.endswith("weight"))
    decoder_name = next(k for k in params if k.startswith("decoder.") and k.endswith("weight"))
    assert largest_step("backbone.mapping.fc0.weight") == pytest.approx(100 * config.lr, rel=1e-3)
    assert largest_step(synthesis_name) == pytest.approx(5 * config.lr, rel=1e-3)
    assert largest_step(decoder_name) == pytest.approx(config.lr, rel=1e-3)


def test_image_loss_l2_is_twice_the_squared_error_of_the_renders():
    """``image_loss="l2"`` reaches both image terms (super-resolved and raw) of a render stage; the field
    terms and the gradient term do not change."""
    a, b = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    b[..., 0, 0] = -1.0  # one large error among small ones: L1 weighs it alike, L2 by its size
    assert float(v2.IMAGE_LOSSES["l1"](a, b)) == pytest.approx((3 * 0.5 + 1.0) / 4)
    assert float(v2.IMAGE_LOSSES["l2"](a, b)) == pytest.approx(2 * (3 * 0.25 + 1.0) / 4)
    with pytest.raises(v2.ConfigError, match="image_loss"):
        tiny_stage(image_loss="huber").validate()

    config = tiny_stage(name="joint", render=True, density_points=64, colour_points=16)
    G = v2.initial_generator(config, None)
    G.eval()
    batch = v2.make_batch(0, G, config)
    c_cond = v2.conditioning_camera(G)
    with torch.no_grad():
        torch.manual_seed(3)
        l1 = v2.compute_losses(G, batch, c_cond, config)
        torch.manual_seed(3)
        l2 = v2.compute_losses(G, batch, c_cond, replace(config, image_loss="l2"))
        torch.manual_seed(3)
        ws = G.mapping(batch.z, c_cond.expand(batch.z.shape[0], -1))
        out = G.render(ws, batch.c, v2.RenderOptions(background=batch.background, return_planes=True))
    assert float(l1["image"]) == pytest.approx(float((out["image"] - batch.world["image"]).abs().mean()), rel=1e-5)
    assert float(l2["image"]) == pytest.approx(float(2 * ((out["image"] - batch.world["image"]) ** 2).mean()), rel=1e-5)
    assert float(l2["raw"]) == pytest.approx(float(2 * ((out["image_raw"] - batch.world_raw["image"]) ** 2).mean()), rel=1e-5)
    for key in ("image_grad", "mask", "density", "colour", "colour_grad"):
        assert float(l2[key]) == pytest.approx(float(l1[key]), rel=1e-5), key
