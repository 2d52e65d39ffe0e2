"""Tests of engine.distill: every formula against hand-computed numbers or a naive reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine.distill import (
    DistillConfig,
    LpipsLoss,
    alpha_bar_for,
    distillation_gradient,
    flip_each_tile,
    guided_score,
    inject_gradient,
    ld_gradient,
    ldis_loss,
    match_channel_stats,
    mirror_camera,
    mirror_gradient,
    mirror_weighted_gradients,
    postprocess_gradient,
    rank_reweight,
    resize_and_tile,
    sds_gradient,
    sds_gradient_from_score,
    tile_2x2,
    tweedie_loss,
    tweedie_x0,
    untile_2x2,
    upsample_for_grid,
)
from engine.errors import CheckpointError, ConfigError, InputError


def t2x2(values, dtype=torch.float64):
    """A (1, 1, 2, 2) tensor from four numbers in row-major order."""
    return torch.tensor(values, dtype=dtype).reshape(1, 1, 2, 2)


# Hand-picked inputs: score = 2·(ε_text − ε_uncond) = (1, 2, −2, 0).
EPS_TEXT = t2x2([1.0, 2.0, -1.0, 0.5])
EPS_UNCOND = t2x2([0.5, 1.0, 0.0, 0.5])
EPS = t2x2([0.2, -0.4, 1.0, 0.0])
SCALE = 2.0


# -------------------------------------------------------------------------------------------------
# Config
# -------------------------------------------------------------------------------------------------
def test_config_defaults_are_the_official_effective_values():
    c = DistillConfig().validate()
    assert c.method == "ld" and c.sds_variant == "official"
    assert c.guidance_scale == 7.5 and c.controlnet_scale == 1.0
    assert c.mirror_weights == (0.75, 0.25)
    assert c.rank_weights == (1.0, 0.75, 0.5, 0.25) and c.use_rank and not c.rank_in_grid
    assert (c.grad_divisor, c.grad_clamp) == (1000.0, 1.0)
    assert (c.tweedie_weight, c.lpips_weight, c.ldis_weight) == (0.1, 0.05, 1.0)
    assert c.single_step_range == (35, 49) and c.grid_step_range == (35, 49) and c.ddim_steps == 50
    assert c.canny_thresholds == (50, 250) and c.grid_render_upsample == 4 and c.grid_size == 512
    assert c.use_mirror and c.use_grid and c.mask_gradients and not c.official_compat


def test_config_round_trips_through_json_with_tuples():
    c = DistillConfig(method="sds", rank_weights=(1.0, 0.5), official_compat=True, grad_clamp=None)
    back = DistillConfig.from_dict(json.loads(c.to_json()))
    assert back == c
    assert isinstance(back.rank_weights, tuple) and isinstance(back.single_step_range, tuple)


@pytest.mark.parametrize(
    "changes",
    [
        {"method": "vsd"},
        {"sds_variant": "dreamfusion"},
        {"single_step_range": [40, 35]},
        {"grid_step_range": [35, 50]},
        {"grad_divisor": 0},
        {"rank_weights": []},
        {"mirror_weights": [0.75]},
        {"grid_size": 511},
        {"bogus_key": 1},
    ],
)
def test_config_rejects_bad_values(changes):
    with pytest.raises(ConfigError):
        DistillConfig.from_dict(changes)


# -------------------------------------------------------------------------------------------------
# LD / SDS against hand-computed numbers
# -------------------------------------------------------------------------------------------------
def test_guided_score_hand_values():
    assert torch.equal(guided_score(EPS_TEXT, EPS_UNCOND, SCALE), t2x2([1.0, 2.0, -2.0, 0.0]))


def test_ld_gradient_hand_values():
    score = guided_score(EPS_TEXT, EPS_UNCOND, SCALE)
    # √0.64 = 0.8
    torch.testing.assert_close(ld_gradient(score, 0.64), t2x2([0.8, 1.6, -1.6, 0.0]), rtol=0, atol=1e-12)


def test_ld_gradient_uses_one_alpha_per_sample():
    score = torch.cat([t2x2([1.0, 2.0, -2.0, 0.0])] * 2)
    got = ld_gradient(score, torch.tensor([0.64, 0.36], dtype=torch.float64))
    want = torch.cat([t2x2([0.8, 1.6, -1.6, 0.0]), t2x2([0.6, 1.2, -1.2, 0.0])])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    with pytest.raises(InputError):
        ld_gradient(score, torch.tensor([0.5, 0.5, 0.5]))


def test_sds_official_hand_values():
    # (score − ε) = (0.8, 2.4, −3.0, 0.0); √(1 − 0.64) = 0.6
    got = sds_gradient(EPS_TEXT, EPS_UNCOND, EPS, 0.64, SCALE, variant="official")
    torch.testing.assert_close(got, t2x2([0.48, 1.44, -1.8, 0.0]), rtol=0, atol=1e-12)


def test_sds_textbook_hand_values():
    # (ε_uncond + score − ε) = (1.3, 3.4, −3.0, 0.5); × 0.6
    got = sds_gradient(EPS_TEXT, EPS_UNCOND, EPS, 0.64, SCALE, variant="textbook")
    torch.testing.assert_close(got, t2x2([0.78, 2.04, -1.8, 0.3]), rtol=0, atol=1e-12)
    with pytest.raises(InputError):
        sds_gradient(EPS_TEXT, EPS_UNCOND, EPS, 0.64, SCALE, variant="nope")


def test_sds_noiseless_is_the_official_form_without_the_noise_term():
    # score = (1, 2, −2, 0); × √(1 − 0.64) = 0.6, and ε plays no part
    got = sds_gradient(EPS_TEXT, EPS_UNCOND, EPS, 0.64, SCALE, variant="noiseless")
    torch.testing.assert_close(got, t2x2([0.6, 1.2, -1.2, 0.0]), rtol=0, atol=1e-12)
    official = sds_gradient(EPS_TEXT, EPS_UNCOND, EPS, 0.64, SCALE, variant="official")
    torch.testing.assert_close(got - official, EPS * 0.6, rtol=0, atol=1e-12)


def test_half_precision_scores_give_float32_gradients():
    score = t2x2([1.0, 2.0, -2.0, 0.0], dtype=torch.float16)
    assert ld_gradient(score, 0.64).dtype == torch.float32
    assert sds_gradient_from_score(score, score, 0.64).dtype == torch.float32


# -------------------------------------------------------------------------------------------------
# ᾱ indexing: true timestep vs the official code's DDIM step index
# -------------------------------------------------------------------------------------------------
def sd_alphas_cumprod() -> np.ndarray:
    """Stable Diffusion's scaled-linear schedule, 1000 steps, in float64."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    return np.cumprod(1.0 - betas)


def ddim_leading_timesteps(steps: int = 50, offset: int = 1) -> np.ndarray:
    return (np.arange(steps) * (1000 // steps))[::-1] + offset


def test_ddim_reference_schedule_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        clip_sample=False, set_alpha_to_one=False,
    )
    sched.set_timesteps(50)
    np.testing.assert_array_equal(sched.timesteps.numpy(), ddim_leading_timesteps())
    np.testing.assert_allclose(sched.alphas_cumprod.numpy(), sd_alphas_cumprod(), rtol=0, atol=1e-6)


def test_alpha_bar_for_true_timestep_vs_official_step_index():
    alphas = torch.tensor(sd_alphas_cumprod(), dtype=torch.float32)
    timesteps = ddim_leading_timesteps()
    k = torch.tensor([35, 49])
    t = torch.as_tensor(timesteps[[35, 49]].copy())
    assert t.tolist() == [281, 1]
    true = alpha_bar_for(alphas, t, k, official_compat=False).sqrt()
    compat = alpha_bar_for(alphas, t, k, official_compat=True).sqrt()
    # fact sheet: official √ᾱ[k] = 0.983 → 0.976; true-t √ᾱ_t = 0.789 → 0.999
    torch.testing.assert_close(compat, torch.tensor([0.98331, 0.97603]), rtol=0, atol=2e-5)
    torch.testing.assert_close(true, torch.tensor([0.78891, 0.99915]), rtol=0, atol=2e-5)
    one_minus = (1 - alpha_bar_for(alphas, t, k, official_compat=True)).sqrt()
    torch.testing.assert_close(one_minus, torch.tensor([0.18196, 0.21766]), rtol=0, atol=5e-5)


def test_alpha_bar_for_rejects_bad_indices():
    alphas = torch.linspace(0.99, 0.01, 1000)
    with pytest.raises(InputError):
        alpha_bar_for(alphas, torch.tensor([1000]), torch.tensor([0]))
    with pytest.raises(InputError):
        alpha_bar_for(alphas, torch.tensor([0.5]), torch.tensor([0]))
    with pytest.raises(InputError):
        alpha_bar_for(alphas, 10, -1, official_compat=True)
    assert alpha_bar_for(alphas, 10, 3).shape == (1,)


# -------------------------------------------------------------------------------------------------
# Post-processing
# -------------------------------------------------------------------------------------------------
def test_postprocess_order_and_nan_guard():
    grad = t2x2([3000.0, 1500.0, math.nan, math.inf])
    mask = t2x2([1.0, 0.5, 1.0, 0.0])
    # 3000 → 3 → clamp 1; 1500·0.5 = 750 → 0.75 (clamping before masking would give 0.5);
    # NaN → 0; Inf·0 = NaN → 0.
    got = postprocess_gradient(grad, mask, divisor=1000.0, clamp=1.0)
    assert torch.equal(got, t2x2([1.0, 0.75, 0.0, 0.0]))
    assert math.isnan(grad[0, 0, 1, 0])  # input untouched


def test_postprocess_inf_becomes_clamp_value_and_zero_without_clamp():
    grad = t2x2([math.inf, -math.inf, 500.0, -2500.0])
    assert torch.equal(postprocess_gradient(grad, None, 1000.0, 1.0), t2x2([1.0, -1.0, 0.5, -1.0]))
    assert torch.equal(postprocess_gradient(grad, None, 1000.0, None), t2x2([0.0, 0.0, 0.5, -2.5]))


def test_postprocess_mask_broadcasts_over_channels_and_is_resized():
    grad = torch.ones(2, 4, 2, 2, dtype=torch.float64)
    mask = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    mask[:, :, :2, :2] = 1.0  # top-left latent pixel fully foreground
    mask[:, :, 2, 2] = 1.0  # bottom-right latent pixel one quarter foreground
    got = postprocess_gradient(grad, mask, divisor=1.0, clamp=None)
    want = torch.tensor([[1.0, 0.0], [0.0, 0.25]], dtype=torch.float64).expand(2, 4, 2, 2)
    assert torch.equal(got, want)
    with pytest.raises(InputError):
        postprocess_gradient(grad, torch.ones(3, 1, 2, 2))


# -------------------------------------------------------------------------------------------------
# Rank re-weighting against an explicit per-sample SVD
# -------------------------------------------------------------------------------------------------
def reference_rank_reweight(score: np.ndarray, weights) -> np.ndarray:
    """Loop over samples, numpy float64 SVD, re-weight, rebuild, then per-channel mean/std matching."""
    b, c, h, w = score.shape
    out = np.empty_like(score, dtype=np.float64)
    for i in range(b):
        x = score[i].reshape(c, h * w).astype(np.float64)
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        wts = np.zeros_like(s)
        k = min(len(weights), len(s))
        wts[:k] = weights[:k]
        rebuilt = (u * (s * wts)) @ vt
        for ch in range(c):
            src = x[ch]
            tgt = rebuilt[ch]
            normed = (tgt - tgt.mean()) / (tgt.std(ddof=1) + 1e-5)
            out[i, ch] = (normed * (src.std(ddof=1) + 1e-5) + src.mean()).reshape(h, w)
    return out


@pytest.mark.parametrize(
    "shape, weights",
    [
        ((3, 4, 8, 8), (1.0, 0.75, 0.5, 0.25)),  # SD latent layout, official weights
        ((2, 4, 6, 5), (1.0, 0.3)),  # fewer weights than singular values: the rest are dropped
        ((2, 3, 4, 4), (1.0, 0.75, 0.5, 0.25)),  # more weights than channels: extra ones unused
    ],
)
def test_rank_reweight_matches_explicit_svd(shape, weights):
    gen = torch.Generator().manual_seed(0)
    score = torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 0.5
    got = rank_reweight(score, weights)
    want = reference_rank_reweight(score.numpy(), weights)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)
    # float32 path agrees to float32 precision
    got32 = rank_reweight(score.float(), weights)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-4, atol=1e-4)


def test_rank_reweight_with_unit_weights_is_identity():
    gen = torch.Generator().manual_seed(1)
    score = torch.randn(2, 4, 8, 8, generator=gen)
    torch.testing.assert_close(rank_reweight(score, (1.0, 1.0, 1.0, 1.0)), score, rtol=1e-4, atol=1e-4)


def test_rank_reweight_changes_the_score_with_official_weights():
    gen = torch.Generator().manual_seed(2)
    score = torch.randn(1, 4, 8, 8, generator=gen)
    out = rank_reweight(score)
    assert (out - score).abs().max() > 1e-2
    # but channel statistics are those of the input
    torch.testing.assert_close(out.mean(dim=(2, 3)), score.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.std(dim=(2, 3)), score.std(dim=(2, 3)), rtol=1e-4, atol=1e-5)


def test_rank_reweight_passes_non_finite_samples_through_and_keeps_dtype():
    gen = torch.Generator().manual_seed(3)
    score = torch.randn(2, 4, 4, 4, generator=gen)
    bad = score.clone()
    bad[1, 2, 1, 1] = math.nan
    out = rank_reweight(bad)
    torch.testing.assert_close(out[:1], rank_reweight(score[:1]))
    assert torch.equal(torch.isnan(out[1]), torch.isnan(bad[1]))
    assert torch.equal(torch.nan_to_num(out[1]), torch.nan_to_num(bad[1]))
    assert rank_reweight(score.half()).dtype == torch.float16


def test_match_channel_stats_of_itself_is_identity():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(match_channel_stats(x, x), x, rtol=1e-12, atol=1e-12)


# -------------------------------------------------------------------------------------------------
# Mirror
# -------------------------------------------------------------------------------------------------
def test_mirror_gradient_is_a_horizontal_flip_and_an_involution():
    g = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    flipped = mirror_gradient(g)
    assert torch.equal(flipped, g[..., [3, 2, 1, 0]])
    assert torch.equal(mirror_gradient(flipped), g)


def test_mirror_weighted_gradients_reproduce_official_weighting():
    g = torch.randn(1, 4, 3, 3)
    base, mirrored = mirror_weighted_gradients(g, (0.75, 0.25))
    assert torch.equal(base, 0.75 * g)
    assert torch.equal(mirrored, 0.25 * torch.flip(g, dims=[-1]))
    # equivalent autograd formulation with injected gradients
    latent = torch.zeros(1, 4, 3, 3, requires_grad=True)
    latent_m = torch.zeros(1, 4, 3, 3, requires_grad=True)
    (0.75 * inject_gradient(latent, g) + 0.25 * inject_gradient(latent_m, mirror_gradient(g))).backward()
    torch.testing.assert_close(latent.grad, base)
    torch.testing.assert_close(latent_m.grad, mirrored)


def test_mirror_camera_reflects_about_x_plane():
    gen = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.linalg.det(q))  # proper rotation
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = q
    pose[:3, 3] = torch.tensor([0.7, -0.2, 2.5], dtype=torch.float64)
    intrinsics = torch.tensor([4.26, 0, 0.5, 0, 4.26, 0.5, 0, 0, 1], dtype=torch.float64)
    cam = torch.cat([pose.reshape(16), intrinsics]).unsqueeze(0)
    m = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    mirrored = mirror_camera(cam)
    torch.testing.assert_close(mirrored[0, :16].reshape(4, 4), m @ pose @ m)
    assert torch.equal(mirrored[0, 16:], intrinsics)
    assert torch.linalg.det(mirrored[0, :16].reshape(4, 4)[:3, :3]) > 0
    assert torch.equal(mirror_camera(mirrored), cam)
    with pytest.raises(InputError):
        mirror_camera(torch.zeros(1, 16))


# -------------------------------------------------------------------------------------------------
# Grid
# -------------------------------------------------------------------------------------------------
def test_tile_places_views_in_reading_order():
    b, c, h, w = 2, 3, 2, 3
    views = torch.arange(b * 4 * c * h * w, dtype=torch.float32).reshape(b, 4, c, h, w)
    grid = tile_2x2(views)
    assert grid.shape == (b, c, 2 * h, 2 * w)
    assert torch.equal(grid[:, :, :h, :w], views[:, 0])
    assert torch.equal(grid[:, :, :h, w:], views[:, 1])
    assert torch.equal(grid[:, :, h:, :w], views[:, 2])
    assert torch.equal(grid[:, :, h:, w:], views[:, 3])
    assert torch.equal(untile_2x2(grid), views)
    assert torch.equal(tile_2x2(views.flatten(0, 1)), grid)  # sample-major flat layout
    # same as the official concatenation of a list of four views
    official = torch.cat([torch.cat([views[:, 0], views[:, 1]], -1), torch.cat([views[:, 2], views[:, 3]], -1)], -2)
    assert torch.equal(grid, official)


def test_grid_gradient_splits_back_onto_raw_views():
    gen = torch.Generator().manual_seed(5)
    raw = torch.randn(1, 4, 3, 8, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    grid = tile_2x2(upsample_for_grid(raw, factor=4))
    assert grid.shape == (1, 3, 64, 64)
    grid_grad = torch.randn(grid.shape, generator=gen, dtype=torch.float64)
    inject_gradient(grid, grid_grad).backward()
    per_view = untile_2x2(grid_grad)
    for v in range(4):
        view = raw.detach()[:, v].clone().requires_grad_(True)
        (want,) = torch.autograd.grad(upsample_for_grid(view, 4), view, per_view[:, v])
        torch.testing.assert_close(raw.grad[:, v], want, rtol=1e-12, atol=1e-12)


def test_upsample_for_grid_matches_official_resampling_and_sizes():
    raw = torch.randn(4, 3, 64, 64)
    up = upsample_for_grid(raw, 4)
    assert up.shape == (4, 3, 256, 256)
    torch.testing.assert_close(up, torch.nn.functional.interpolate(raw, scale_factor=4, mode="bilinear", align_corners=True))
    assert resize_and_tile(raw, 4.0).shape == (1, 3, 512, 512)
    masks = torch.ones(4, 1, 64, 64)
    assert resize_and_tile(masks, 0.5).shape == (1, 1, 64, 64)


def test_flip_each_tile_mirrors_tiles_in_place():
    views = torch.randn(1, 4, 2, 3, 5)
    grid = tile_2x2(views)
    assert torch.equal(flip_each_tile(grid), tile_2x2(torch.flip(views, dims=[-1])))
    assert not torch.equal(flip_each_tile(grid), torch.flip(grid, dims=[-1]))
    with pytest.raises(InputError):
        tile_2x2(torch.zeros(3, 1, 2, 2))


# -------------------------------------------------------------------------------------------------
# Gradient injection
# -------------------------------------------------------------------------------------------------
def test_inject_gradient_gives_exactly_grad_and_descends_along_minus_grad():
    gen = torch.Generator().manual_seed(6)
    target = torch.randn(2, 4, 3, 3, generator=gen, requires_grad=True)
    grad = torch.randn(2, 4, 3, 3, generator=gen)
    loss = inject_gradient(target, grad)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert torch.equal(target.grad, grad)
    before = target.detach().clone()
    torch.optim.SGD([target], lr=0.1).step()
    torch.testing.assert_close(target.detach(), before - 0.1 * grad)


def test_inject_gradient_through_a_graph_and_in_half_precision():
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    (3.0 * inject_gradient(2.0 * x, grad)).backward()  # chain rule: 3 · 2 · grad
    torch.testing.assert_close(x.grad, 6.0 * grad, rtol=0, atol=0)
    h = torch.zeros(1, 4, 2, 2, dtype=torch.float16, requires_grad=True)
    inject_gradient(h, torch.full((1, 4, 2, 2), 0.5)).backward()
    assert h.grad.dtype == torch.float16 and torch.all(h.grad == 0.5)
    with pytest.raises(InputError):
        inject_gradient(x, torch.zeros(1, 4, 2, 3))


# -------------------------------------------------------------------------------------------------
# The full chain
# -------------------------------------------------------------------------------------------------
def test_distillation_gradient_follows_config():
    gen = torch.Generator().manual_seed(7)
    eps_text, eps_uncond, eps = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    mask = (torch.rand(2, 1, 8, 8, generator=gen) > 0.3).float()
    alpha = torch.tensor([0.7, 0.9])
    cfg = DistillConfig()
    score = 7.5 * (eps_text - eps_uncond)

    ld = distillation_gradient(cfg, eps_text, eps_uncond, eps, alpha, mask, stage="single")
    want = postprocess_gradient(ld_gradient(rank_reweight(score), alpha), mask, 1000.0, 1.0)
    torch.testing.assert_close(ld, want)

    grid = distillation_gradient(cfg, eps_text, eps_uncond, eps, alpha, mask, stage="grid")
    torch.testing.assert_close(grid, postprocess_gradient(ld_gradient(score, alpha), mask, 1000.0, 1.0))

    sds_cfg = cfg.replace(method="sds", sds_variant="textbook", use_rank=False, mask_gradients=False)
    sds = distillation_gradient(sds_cfg, eps_text, eps_uncond, eps, alpha, mask)
    want = postprocess_gradient(sds_gradient(eps_text, eps_uncond, eps, alpha, 7.5, "textbook"), None, 1000.0, 1.0)
    torch.testing.assert_close(sds, want)
    noiseless = distillation_gradient(sds_cfg.replace(sds_variant="noiseless"), eps_text, eps_uncond, eps, alpha, mask)
    want = postprocess_gradient(sds_gradient(eps_text, eps_uncond, eps, alpha, 7.5, "noiseless"), None, 1000.0, 1.0)
    torch.testing.assert_close(noiseless, want)
    with pytest.raises(InputError):
        distillation_gradient(cfg, eps_text, eps_uncond, eps, alpha, stage="both")


# -------------------------------------------------------------------------------------------------
# Regularisers
# -------------------------------------------------------------------------------------------------
def test_tweedie_x0_inverts_forward_noising():
    gen = torch.Generator().manual_seed(8)
    x0 = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(2, 4, 5, 5, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([0.3, 0.95], dtype=torch.float64)
    a = alpha.view(2, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    torch.testing.assert_close(tweedie_x0(x_t, eps, alpha), x0, rtol=1e-12, atol=1e-12)
    # hand value: x_t = 1, ε̂ = 0.5, ᾱ = 0.64 → (1 − 0.6·0.5) / 0.8 = 0.875
    torch.testing.assert_close(tweedie_x0(t2x2([1.0] * 4), t2x2([0.5] * 4), 0.64), t2x2([0.875] * 4))


def test_tweedie_loss_value_and_gradient_only_to_render():
    render = t2x2([0.0, 1.0, 2.0, 3.0]).requires_grad_(True)
    x0_hat = t2x2([1.0, 1.0, 1.0, 1.0]).requires_grad_(True)
    loss = tweedie_loss(render, x0_hat, weight=0.1)
    torch.testing.assert_close(loss, torch.tensor(0.1 * (1 + 0 + 1 + 4) / 4, dtype=torch.float64))
    loss.backward()
    assert x0_hat.grad is None
    torch.testing.assert_close(render.grad, 0.1 * 2 * (render.detach() - 1.0) / 4)


def test_ldis_zero_when_unchanged_positive_otherwise():
    gen = torch.Generator().manual_seed(9)
    ti, tj = (torch.randn(1, 3, 4, 5, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    for mode in ("official", "per_sample"):
        assert ldis_loss(ti, tj, ti, tj, mode=mode).abs() < 1e-6
        assert ldis_loss(ti, tj + 0.3 * torch.randn_like(tj), ti, tj, mode=mode) > 1e-3


def test_ldis_hand_values_for_both_modes():
    # two "planes" of one element each: shape (1, 2, 1)
    now_i = torch.tensor([[[0.0], [0.0]]])
    now_j = torch.tensor([[[2.0], [0.0]]])  # squared distance 4
    fro_i = torch.tensor([[[0.0], [0.0]]])
    fro_j = torch.tensor([[[1.0], [1.0]]])  # squared distance 2
    torch.testing.assert_close(ldis_loss(now_i, now_j, fro_i, fro_j, mode="per_sample", eps=0.0), torch.tensor(1.0))
    # official: norm over dim 1 only → one ratio per remaining position; here the same single position
    torch.testing.assert_close(ldis_loss(now_i, now_j, fro_i, fro_j, mode="official", eps=0.0), torch.tensor(1.0))
    # shape (1, 2, 2): positions ratio 4/2 and 1/4 → mean(|2−1|, |0.25−1|) = 0.875 officially;
    # per sample: (4 + 1) / (2 + 4) → |5/6 − 1| = 1/6
    now_j2 = torch.tensor([[[2.0, 1.0], [0.0, 0.0]]])
    fro_j2 = torch.tensor([[[1.0, 2.0], [1.0, 0.0]]])
    zeros = torch.zeros(1, 2, 2)
    torch.testing.assert_close(ldis_loss(zeros, now_j2, zeros, fro_j2, mode="official", eps=0.0), torch.tensor(0.875))
    torch.testing.assert_close(ldis_loss(zeros, now_j2, zeros, fro_j2, mode="per_sample", eps=0.0), torch.tensor(1 / 6))


def test_ldis_gradcheck():
    gen = torch.Generator().manual_seed(10)
    a, b, c, d = (torch.randn(2, 3, 2, 3, 3, generator=gen, dtype=torch.float64) for _ in range(4))
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ldis_loss(a, x, c, d, mode="per_sample"), (b,))
    assert torch.autograd.gradcheck(lambda x: ldis_loss(a, x, c, d, mode="official"), (b,))


def test_lpips_interface(tmp_path):
    assert LpipsLoss.from_local(None) is None
    assert LpipsLoss.from_local(tmp_path / "missing.pt2") is None
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"not an archive")
    with pytest.raises(CheckpointError, match="bad.pt2"):
        LpipsLoss.from_local(bad)
    loss_fn = LpipsLoss(lambda x, y: (x - y).abs().mean(dim=(1, 2, 3)))
    image = torch.zeros(2, 3, 4, 4, requires_grad=True)
    reference = torch.ones(2, 3, 4, 4, requires_grad=True)
    value = loss_fn(image, reference, weight=0.05)
    torch.testing.assert_close(value, torch.tensor(0.05))
    value.backward()
    assert reference.grad is None and image.grad is not None


def test_lpips_loads_an_exported_network(tmp_path):
    class L1(torch.nn.Module):
        def forward(self, x, y):
            return (x - y).abs().mean(dim=(1, 2, 3))

    dyn = torch.export.Dim.AUTO
    example = (torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8))
    program = torch.export.export(L1(), example, dynamic_shapes=({0: dyn}, {0: dyn}))
    path = tmp_path / "lpips.pt2"
    torch.export.save(program, str(path))
    loss_fn = LpipsLoss.from_local(path)
    assert loss_fn is not None
    torch.testing.assert_close(loss_fn(torch.zeros(3, 3, 8, 8), torch.full((3, 3, 8, 8), 0.5)), torch.tensor(0.5))


# --------------------------------------------------------------------------------------------------
# Source anchor (head mode)
# --------------------------------------------------------------------------------------------------
def _render(image: float, mask: float, depth: float, size: int = 32) -> dict[str, torch.Tensor]:
    return {"image": torch.full((1, 3, size, size), float(image)), "image_mask": torch.full((1, 1, 8, 8), float(mask)),
            "image_depth": torch.full((1, 1, 8, 8), float(depth))}


def test_anchor_terms_have_their_hand_derived_values():
    from engine.distill import anchor_loss

    terms = anchor_loss(_render(0.5, 1.0, 2.0), _render(0.0, 0.5, 3.0), image_weight=2.0, geometry_weight=3.0)
    assert float(terms["anchor_image"]) == pytest.approx(2.0 * 0.25)  # (0.5 − 0)², pooled or not
    # silhouette |1 − 0.5| = 0.5; depth: source mask 0.5 × |2 − 3| = 0.5
    assert float(terms["anchor_geometry"]) == pytest.approx(3.0 * (0.5 + 0.5))
    assert set(anchor_loss(_render(0, 1, 2), _render(0, 1, 2), 0.0, 1.0)) == {"anchor_geometry"}
    assert float(anchor_loss(_render(0.3, 1, 2), _render(0.3, 1, 2))["anchor_image"]) == 0.0


def test_anchor_pulls_the_render_toward_the_source_only():
    from engine.distill import anchor_loss

    source = {k: v.requires_grad_(True) for k, v in _render(0.0, 0.8, 2.5).items()}
    render = _render(0.0, 0.8, 2.5)
    delta = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    render["image"] = (render["image"] + delta).requires_grad_(True)
    render["image_depth"] = (render["image_depth"] + 0.1).requires_grad_(True)
    sum(anchor_loss(render, source).values()).backward()
    pooled = torch.nn.functional.adaptive_avg_pool2d(delta, 16)
    # d/dx mean((pool(x) − pool(s))²) = 2·pool(δ)/N · ¼ on each of a 2×2 block's pixels (N pooled values):
    # along +δ's blur, so the optimiser (−grad) moves the render back toward the source
    expected = torch.nn.functional.interpolate(pooled, scale_factor=2, mode="nearest") * 2 / pooled.numel() / 4
    assert torch.allclose(render["image"].grad, expected, atol=1e-7)
    assert (render["image_depth"].grad > 0).all()  # depth too far → pushed back
    assert all(v.grad is None for v in source.values())


def test_anchor_leaves_texture_finer_than_its_resolution_free():
    """A one-pixel checkerboard on a 32² render averages out in 16² blocks: style may repaint
    texture; the anchor only keeps where colours are, at its resolution."""
    from engine.distill import anchor_loss

    y, x = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = ((y + x) % 2 * 2 - 1).float().expand(1, 3, 32, 32)
    render, source = _render(0, 1, 2), _render(0, 1, 2)
    render["image"] = 0.4 * checker
    assert float(anchor_loss(render, source, geometry_weight=0.0)["anchor_image"]) == pytest.approx(0.0, abs=1e-12)
    render["image"] = torch.full_like(render["image"], 0.4)  # the same energy as a uniform shift is not free
    assert float(anchor_loss(render, source, geometry_weight=0.0)["anchor_image"]) == pytest.approx(0.16)
