"""Tri-grid volume renderer: rays, tri-grid look-up, compositing, sampling, and the mirror symmetry."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from engine.errors import ConfigError, InputError
from engine.generator.camera import (
    CameraConfig,
    camera_vector,
    fov_to_intrinsics,
    look_at_cam2world,
    mirror_camera,
    split_camera_vector,
)
from engine.generator.config import RenderingConfig, get_preset
from engine.generator.renderer import (
    ImportanceRenderer,
    MipRayMarcher,
    RaySampler,
    importance_depths,
    pixel_rays,
    sample_from_planes,
    sample_pdf,
    stratified_depths,
    tri_grid_axes,
    triplane_crop_mask,
)

F64 = torch.float64


class TinyDecoder:
    """Deterministic stand-in for OSGDecoder: colour = mean feature, raw density = affine in the mean."""

    def __init__(self, sigma_weights: torch.Tensor, sigma_bias: float = 0.0, rgb_channels: int = 3):
        self.sigma_weights = sigma_weights
        self.sigma_bias = sigma_bias
        self.rgb_channels = rgb_channels

    def __call__(self, features: torch.Tensor, directions: torch.Tensor) -> dict[str, torch.Tensor]:
        assert features.dim() == 4 and features.shape[1] == 3 and directions.shape[-1] == 3
        mean = features.mean(dim=1)
        sigma = mean @ self.sigma_weights.to(mean).unsqueeze(-1) + self.sigma_bias
        return {"rgb": mean[..., : self.rgb_channels], "sigma": sigma}


def _options(**changes) -> RenderingConfig:
    base = RenderingConfig(depth_resolution=12, depth_resolution_importance=12, triplane_depth=3, box_warp=1.0)
    return dataclasses.replace(base, **changes)


def _camera(yaw: float, pitch: float, dtype=F64) -> torch.Tensor:
    config = CameraConfig()
    yaw_t, pitch_t = torch.tensor([yaw], dtype=dtype), torch.tensor([pitch], dtype=dtype)
    cam2world = look_at_cam2world(yaw_t, pitch_t, config.radius, config.pivot)
    return camera_vector(cam2world, fov_to_intrinsics(config.fov_degrees, dtype=dtype))


def _render(renderer, planes, decoder, c, resolution, options, **kwargs):
    origins, directions = RaySampler().from_camera_vector(c, resolution)
    return renderer(planes, decoder, origins, directions, options, **kwargs)


# --------------------------------------------------------------------------------------------------
# Rays
# --------------------------------------------------------------------------------------------------
def test_rays_shapes_origins_and_pixel_order():
    c = torch.cat([_camera(0.0, 0.0), _camera(0.8, -0.3)])
    origins, directions = RaySampler().from_camera_vector(c, 8)
    assert origins.shape == directions.shape == (2, 64, 3) and origins.dtype == F64
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(2, 64, dtype=F64))
    cam2world, _ = split_camera_vector(c)
    torch.testing.assert_close(origins, cam2world[:, None, :3, 3].expand(2, 64, 3))
    # Front camera (on +z, looking at −z): pixel 0 is top-left (world −x, +y), pixel 7 top-right (+x, +y),
    # the last pixel bottom-right (+x, −y).
    front = directions[0]
    assert front[0, 0] < 0 < front[0, 1]
    assert front[7, 0] > 0 and front[7, 1] > 0
    assert front[63, 0] > 0 > front[63, 1]


def test_rays_match_hand_derived_pinhole_directions():
    c = _camera(0.4, 0.25)
    cam2world, intrinsics = split_camera_vector(c)
    resolution = 6
    _, directions = pixel_rays(cam2world, intrinsics, resolution)
    focal = intrinsics[0, 0, 0].item()
    rotation = cam2world[0, :3, :3]
    for row, col in [(0, 0), (0, 5), (2, 3), (5, 1)]:
        u, v = (col + 0.5) / resolution, (row + 0.5) / resolution
        camera_dir = torch.tensor([(u - 0.5) / focal, (v - 0.5) / focal, 1.0], dtype=F64)
        expected = rotation @ camera_dir
        torch.testing.assert_close(directions[0, row * resolution + col], expected / expected.norm())
    # The four centre pixels straddle the principal ray symmetrically.
    centre = directions[0, [14, 15, 20, 21]].sum(dim=0)
    torch.testing.assert_close(centre / centre.norm(), rotation[:, 2])


def test_rays_with_skew_follow_the_original_lift_formula():
    cam2world = look_at_cam2world(0.0, 0.0, dtype=F64)
    intrinsics = torch.tensor([[[2.0, 0.3, 0.45], [0.0, 2.5, 0.55], [0.0, 0.0, 1.0]]], dtype=F64)
    _, directions = pixel_rays(cam2world, intrinsics, 4)
    fx, sk, cx, fy, cy = 2.0, 0.3, 0.45, 2.5, 0.55
    u, v = (3 + 0.5) / 4, (1 + 0.5) / 4  # row 1, column 3
    x_lift = (u - cx + cy * sk / fy - sk * v / fy) / fx
    y_lift = (v - cy) / fy
    expected = cam2world[0, :3, :3] @ torch.tensor([x_lift, y_lift, 1.0], dtype=F64)
    torch.testing.assert_close(directions[0, 1 * 4 + 3], expected / expected.norm())


# --------------------------------------------------------------------------------------------------
# Tri-grid look-up
# --------------------------------------------------------------------------------------------------
# Which world axis drives grid_sample's (W, H, D) for each plane, derived from the plane frames.
PLANE_AXIS_ORDER = ((0, 1, 2), (0, 2, 1), (1, 2, 0))


def test_plane_axes_projection_is_the_documented_permutation():
    points = torch.randn(2, 5, 3, dtype=F64)
    projected = torch.einsum("nmi,pij->npmj", points, torch.linalg.inv(tri_grid_axes(F64)))
    for plane, order in enumerate(PLANE_AXIS_ORDER):
        torch.testing.assert_close(projected[:, plane], points[..., list(order)])


def test_sample_at_cell_centres_returns_cell_features_exactly():
    channels, depth, size = 4, 3, 9
    planes = torch.randn(1, 3, channels * depth, size, size, dtype=F64)
    # With 9 cells per side and 3 slices, −2/3, 0 and 2/3 are cell centres along every grid axis.
    centres = torch.tensor([-2 / 3, 0.0, 2 / 3], dtype=F64)
    points = torch.cartesian_prod(centres, centres, centres).unsqueeze(0)  # (1, 27, 3), box_warp 2 → no scaling
    features = sample_from_planes(tri_grid_axes(F64), planes, points, box_warp=2.0, triplane_depth=depth)
    assert features.shape == (1, 3, 27, channels)

    volumes = planes.reshape(3, channels, depth, size, size)  # channel index c·D + d
    for plane, (w_axis, h_axis, d_axis) in enumerate(PLANE_AXIS_ORDER):
        def index(axis, cells):
            return torch.round(((points[0, :, axis] + 1) * cells - 1) / 2).long()

        w, h, d = index(w_axis, size), index(h_axis, size), index(d_axis, depth)
        expected = volumes[plane][:, d, h, w].T  # (27, C)
        torch.testing.assert_close(features[0, plane], expected, atol=1e-12, rtol=0)


def test_sample_linear_field_reproduces_plane_coordinates_and_box_warp():
    # Channel k of every plane holds the normalised coordinate of grid axis k (W, H, D) at the cell centre;
    # trilinear interpolation reproduces such a linear field exactly between the outermost centres.
    depth, size, box_warp = 3, 9, 1.5
    along_w = ((torch.arange(size, dtype=F64) * 2 + 1) / size - 1).reshape(1, 1, size).expand(depth, size, size)
    along_h = ((torch.arange(size, dtype=F64) * 2 + 1) / size - 1).reshape(1, size, 1).expand(depth, size, size)
    along_d = ((torch.arange(depth, dtype=F64) * 2 + 1) / depth - 1).reshape(depth, 1, 1).expand(depth, size, size)
    volume = torch.stack([along_w, along_h, along_d])  # (C=3, D, H, W)
    planes = volume.reshape(1, 1, 3 * depth, size, size).expand(1, 3, -1, -1, -1).contiguous()

    normalised = (torch.rand(1, 50, 3, dtype=F64) * 2 - 1) * (2 / 3)
    world = normalised * box_warp / 2
    features = sample_from_planes(tri_grid_axes(F64), planes, world, box_warp=box_warp, triplane_depth=depth)
    for plane, order in enumerate(PLANE_AXIS_ORDER):
        torch.testing.assert_close(features[0, plane], normalised[0][:, list(order)], atol=1e-12, rtol=0)

    outside = torch.tensor([[[0.0, 0.0, 1.6 * box_warp / 2]]], dtype=F64)
    out = sample_from_planes(tri_grid_axes(F64), planes, outside, box_warp=box_warp, triplane_depth=depth)
    assert torch.equal(out[0, [0, 1]], torch.zeros(2, 1, 3, dtype=F64))  # z beyond the box for planes 0, 1


def test_sample_from_planes_gradcheck_and_bad_shapes():
    planes = torch.randn(1, 3, 2 * 2, 4, 4, dtype=F64, requires_grad=True)
    points = ((torch.rand(1, 6, 3, dtype=F64) - 0.5) * 0.8).requires_grad_()
    axes = tri_grid_axes(F64)
    assert torch.autograd.gradcheck(
        lambda p, x: sample_from_planes(axes, p, x, box_warp=1.0, triplane_depth=2), (planes, points)
    )
    with pytest.raises(InputError, match="triplane_depth"):
        sample_from_planes(axes, planes.detach(), points.detach(), box_warp=1.0, triplane_depth=3)
    with pytest.raises(InputError, match="planes must have shape"):
        sample_from_planes(axes, planes.detach()[0], points.detach(), box_warp=1.0)


def test_triplane_crop_mask_cuts_side_walls_only():
    points = torch.tensor(
        [[[0.0, 0.0, 0.0], [0.39, 0.9, -0.39], [0.41, 0.0, 0.0], [0.0, -5.0, -0.41], [-0.45, 0.0, 0.2]]]
    )
    mask = triplane_crop_mask(points, crop=0.1, box_warp=1.0)
    assert mask.shape == (1, 5, 1)
    assert mask[0, :, 0].tolist() == [False, False, True, True, True]


# --------------------------------------------------------------------------------------------------
# Compositing
# --------------------------------------------------------------------------------------------------
def _slab(n_samples: int, raw_density: float, color: float):
    """Samples on [2, 3]; density ``raw_density`` on the slab [2.3, 2.7], effectively zero outside."""
    depths = torch.linspace(2.0, 3.0, n_samples, dtype=F64)
    inside = (depths >= 2.3 - 1e-9) & (depths <= 2.7 + 1e-9)
    densities = torch.where(inside, torch.tensor(raw_density, dtype=F64), torch.tensor(-1e3, dtype=F64))
    colors = torch.where(inside, torch.tensor(color, dtype=F64), torch.tensor(-7.0, dtype=F64))
    shape = (1, 1, n_samples, 1)
    return colors.reshape(shape), densities.reshape(shape), depths.reshape(shape)


@pytest.mark.parametrize("raw_density", [-1.0, 1.0, 3.0, 8.0])
def test_constant_density_slab_opacity_and_colour(raw_density):
    sigma = math.log1p(math.exp(raw_density - 1))  # softplus(σ_raw − 1)
    thickness = 0.4
    colors, densities, depths = _slab(21, raw_density, color=0.6)
    result = MipRayMarcher()(colors, densities, depths)
    opacity = 1 - math.exp(-sigma * thickness)
    assert result.weights.shape == (1, 1, 20, 1)
    assert result.weights.sum().item() == pytest.approx(opacity, abs=1e-8)
    assert result.rgb.item() == pytest.approx(0.6 * opacity, abs=1e-8)
    white = MipRayMarcher()(colors, densities, depths, white_back=True)
    assert white.rgb.item() == pytest.approx(0.6 * opacity + 1 - opacity, abs=1e-8)


def test_three_samples_composite_midpoint_colours_by_hand():
    # Samples at depths 1, 2, 4 with raw densities a, b, c and colours (0, 1, 0) / (2, 0, 5) / (4, 3, 1).
    # Intervals: [1, 2] and [2, 4]; each takes the mean of its end colours and densities (PanoHead's mid rule).
    depths = torch.tensor([1.0, 2.0, 4.0], dtype=F64).reshape(1, 1, 3, 1)
    raw = torch.tensor([0.5, 2.0, 1.5], dtype=F64)
    colors = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 5.0], [4.0, 3.0, 1.0]], dtype=F64).reshape(1, 1, 3, 3)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    sigma1 = softplus((0.5 + 2.0) / 2 - 1)
    sigma2 = softplus((2.0 + 1.5) / 2 - 1)
    alpha1 = 1 - math.exp(-sigma1 * 1.0)
    alpha2 = 1 - math.exp(-sigma2 * 2.0)
    w1, w2 = alpha1, (1 - alpha1 + 1e-10) * alpha2
    mid1, mid2 = [1.0, 0.5, 2.5], [3.0, 1.5, 3.0]
    result = MipRayMarcher()(colors, raw.reshape(1, 1, 3, 1), depths)
    expected_rgb = [w1 * a + w2 * b for a, b in zip(mid1, mid2)]
    assert result.weights.flatten().tolist() == pytest.approx([w1, w2], abs=1e-12)
    assert result.rgb.flatten().tolist() == pytest.approx(expected_rgb, abs=1e-12)
    assert result.depth.item() == pytest.approx((w1 * 1.5 + w2 * 3.0) / (w1 + w2), abs=1e-12)


def test_slab_depth_converges_to_truncated_exponential_mean():
    # Expected depth of an exponential with rate σ truncated to [0, L], offset by the slab start.
    sigma, thickness = math.log1p(math.exp(3.0 - 1)), 0.4
    expected = 2.3 + 1 / sigma - thickness * math.exp(-sigma * thickness) / (1 - math.exp(-sigma * thickness))
    colors, densities, depths = _slab(2001, 3.0, color=0.0)
    depth = MipRayMarcher()(colors, densities, depths).depth
    assert depth.item() == pytest.approx(expected, abs=1e-4)


def test_empty_ray_depth_goes_to_far_end_and_marcher_gradcheck():
    depths = torch.linspace(2.0, 3.0, 6, dtype=F64).reshape(1, 1, 6, 1)
    empty = MipRayMarcher()(torch.zeros(1, 1, 6, 2, dtype=F64), torch.full((1, 1, 6, 1), -1e3, dtype=F64), depths)
    assert empty.depth.item() == 3.0 and empty.weights.sum().item() == 0.0

    depths = torch.sort(torch.rand(2, 3, 6, 1, dtype=F64) + 2, dim=-2).values
    colors = torch.randn(2, 3, 6, 2, dtype=F64, requires_grad=True)
    densities = torch.randn(2, 3, 6, 1, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c, s: tuple(MipRayMarcher()(c, s, depths)), (colors, densities))
    with pytest.raises(ConfigError, match="clamp_mode"):
        MipRayMarcher()(colors, densities, depths, clamp_mode="relu")


def test_depth_gradient_is_finite_when_a_ray_is_empty():
    """A depth loss over a batch with one empty ray (float32 opacity exactly 0) must not poison the gradient."""
    depths = torch.linspace(2.0, 3.0, 6).reshape(1, 1, 6, 1).expand(1, 2, 6, 1)
    raw = torch.tensor([[-1e3] * 6, [5.0] * 6]).reshape(1, 2, 6, 1).requires_grad_(True)
    out = MipRayMarcher()(torch.zeros(1, 2, 6, 3), raw, depths)
    assert out.weights[0, 0].sum().item() == 0.0 and out.depth[0, 0].item() == 3.0
    out.depth.sum().backward()
    assert torch.isfinite(raw.grad).all() and raw.grad[0, 0].abs().sum().item() == 0.0
    assert raw.grad[0, 1].abs().sum().item() > 0.0


def test_depth_gradient_is_finite_when_a_ray_is_all_but_empty():
    """A ray whose float32 opacity is a denormal (> 0, but its square underflows to 0) used to count as hit:
    the backward of Σw·t / opacity then computed 0 · a / 0² = NaN for it even where the loss gives it no
    weight — the head-mode anchor's depth term skipped most stylization steps on one scan that way."""
    depths = torch.linspace(2.0, 3.0, 6).reshape(1, 1, 6, 1).expand(1, 2, 6, 1)
    raw = torch.tensor([[-100.0] * 6, [5.0] * 6]).reshape(1, 2, 6, 1).requires_grad_(True)
    out = MipRayMarcher()(torch.zeros(1, 2, 6, 3), raw, depths)
    assert 0.0 < out.weights[0, 0].sum().item() < 1e-30  # denormal-small, not zero
    (out.depth * torch.tensor([0.0, 1.0]).reshape(1, 2, 1)).sum().backward()
    assert torch.isfinite(raw.grad).all() and raw.grad[0, 1].abs().sum().item() > 0.0


# --------------------------------------------------------------------------------------------------
# Sample placement
# --------------------------------------------------------------------------------------------------
def test_stratified_depths_one_per_stratum_and_deterministic_linspace():
    origins = torch.zeros(2, 5, 3, dtype=F64)
    exact = stratified_depths(origins, 2.0, 3.0, 11, deterministic=True)
    torch.testing.assert_close(exact, torch.linspace(2, 3, 11, dtype=F64).reshape(1, 1, 11, 1).expand(2, 5, 11, 1))
    jittered = stratified_depths(origins, 2.0, 3.0, 11, generator=torch.Generator().manual_seed(0))
    offset = jittered - exact
    assert (offset >= 0).all() and (offset < 0.1).all() and offset.std() > 0.01
    again = stratified_depths(origins, 2.0, 3.0, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(jittered, again)
    disparity = stratified_depths(origins, 2.0, 3.0, 5, disparity_space=True, deterministic=True)
    torch.testing.assert_close(1 / disparity[0, 0, :, 0], torch.linspace(1 / 2, 1 / 3, 5, dtype=F64))


def _naive_inverse_cdf(bins, weights, quantiles, eps=1e-5):
    """Per-sample loop over the piecewise-linear inverse CDF: the reference for ``sample_pdf``."""
    out = torch.empty(len(quantiles), dtype=F64)
    pdf = [(w + eps) for w in weights.tolist()]
    total = sum(pdf)
    cdf = [0.0]
    for p in pdf:
        cdf.append(cdf[-1] + p / total)
    for k, u in enumerate(quantiles.tolist()):
        i = max(j for j in range(len(cdf) - 1) if cdf[j] <= u) if u < cdf[-1] else len(cdf) - 2
        fraction = (u - cdf[i]) / (cdf[i + 1] - cdf[i])
        out[k] = bins[i] + min(fraction, 1.0) * (bins[i + 1] - bins[i])
    return out


def test_sample_pdf_matches_naive_inverse_cdf():
    bins = torch.sort(torch.rand(3, 7, dtype=F64) * 2 + 1, dim=-1).values
    weights = torch.rand(3, 6, dtype=F64)
    samples = sample_pdf(bins, weights, 9, deterministic=True)
    quantiles = torch.linspace(0, 1, 9, dtype=F64)
    for ray in range(3):
        torch.testing.assert_close(samples[ray], _naive_inverse_cdf(bins[ray], weights[ray], quantiles))
    random = sample_pdf(bins, weights, 9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(random, sample_pdf(bins, weights, 9, generator=torch.Generator().manual_seed(5)))
    assert ((random >= bins[:, :1]) & (random <= bins[:, -1:])).all()


def test_sample_pdf_concentrates_where_the_weights_are():
    bins = torch.linspace(0, 4, 5, dtype=F64).expand(1, 5)
    one_hot = torch.tensor([[0.0, 0.0, 1.0, 0.0]], dtype=F64)
    samples = sample_pdf(bins, one_hot, 64, deterministic=True)
    assert ((samples >= 2) & (samples <= 3)).double().mean() > 0.9

    # Random draws follow the histogram 1 : 2 : 5 : 2.
    weights = torch.tensor([[1.0, 2.0, 5.0, 2.0]], dtype=F64)
    draws = sample_pdf(bins, weights, 20000, generator=torch.Generator().manual_seed(1))
    counts = torch.histc(draws, bins=4, min=0, max=4) / 20000
    torch.testing.assert_close(counts, torch.tensor([0.1, 0.2, 0.5, 0.2], dtype=F64), atol=0.015, rtol=0)


def test_importance_depths_follow_panohead_smoothing_by_hand():
    # Coarse depths 0…5, interval weights [0, 1, 0, 0, 0].
    #   dilate (max over pairs, padded):  [0, 1, 1, 0, 0, 0]
    #   blur (mean over pairs) + 0.01:    [0.51, 1.01, 0.51, 0.01, 0.01]
    #   inner three weight the intervals between mid-points 0.5 | 1.5 | 2.5 | 3.5: [1.01, 0.51, 0.01].
    coarse = torch.arange(6, dtype=F64).reshape(1, 1, 6, 1)
    weights = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0], dtype=F64).reshape(1, 1, 5, 1)
    fine = importance_depths(coarse, weights, 3, deterministic=True)[0, 0, :, 0]
    masses = [1.01 + 1e-5, 0.51 + 1e-5, 0.01 + 1e-5]
    first_cdf = masses[0] / sum(masses)
    expected = [0.5, 0.5 + 0.5 / first_cdf, 3.5]  # quantiles 0, ½, 1
    torch.testing.assert_close(fine, torch.tensor(expected, dtype=F64), atol=1e-12, rtol=0)


def test_importance_depths_cluster_around_the_coarse_peak():
    coarse = torch.linspace(2.0, 3.0, 21, dtype=F64).reshape(1, 1, 21, 1).expand(1, 2, 21, 1)
    weights = torch.zeros(1, 2, 20, 1, dtype=F64)
    weights[0, 0, 8] = 1.0  # interval [2.40, 2.45]
    weights[0, 1, 15] = 1.0  # interval [2.75, 2.80]
    fine = importance_depths(coarse, weights, 32, deterministic=True)
    assert fine.shape == (1, 2, 32, 1)
    near_first = ((fine[0, 0] - 2.425).abs() < 0.1).double().mean()
    near_second = ((fine[0, 1] - 2.775).abs() < 0.1).double().mean()
    assert near_first > 0.75 and near_second > 0.75


# --------------------------------------------------------------------------------------------------
# Full renderer
# --------------------------------------------------------------------------------------------------
def test_render_shapes_dtypes_and_seeded_determinism():
    options = get_preset("tiny").rendering
    channels = 32
    planes = torch.randn(2, 3, channels * options.triplane_depth, 16, 16)
    decoder = TinyDecoder(torch.linspace(-1, 1, channels) * 4, sigma_bias=1.0, rgb_channels=channels)
    c = torch.cat([_camera(0.3, 0.1, torch.float32), _camera(-1.0, -0.2, torch.float32)])
    renderer = ImportanceRenderer()
    rgb, depth, weights = _render(renderer, planes, decoder, c, 8, options, generator=torch.Generator().manual_seed(0))
    assert rgb.shape == (2, 64, channels) and depth.shape == (2, 64, 1) and weights.shape == (2, 64, 1)
    assert rgb.dtype == depth.dtype == weights.dtype == torch.float32
    assert torch.isfinite(rgb).all() and torch.isfinite(depth).all()
    assert ((weights >= 0) & (weights <= 1 + 1e-6)).all()
    assert ((depth >= options.ray_start) & (depth <= options.ray_end + (options.ray_end - options.ray_start))).all()
    again = _render(renderer, planes, decoder, c, 8, options, generator=torch.Generator().manual_seed(0))
    other = _render(renderer, planes, decoder, c, 8, options, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rgb, again[0]) and not torch.equal(rgb, other[0])
    det_a = _render(renderer, planes, decoder, c, 8, options, deterministic=True)
    det_b = _render(renderer, planes, decoder, c, 8, options, deterministic=True)
    assert torch.equal(det_a[0], det_b[0])
    assert "plane_axes" not in renderer.state_dict()  # checkpoints load by name: the renderer adds no keys


def test_uniform_density_gives_one_minus_exp_opacity_end_to_end():
    # Constant planes + a box much larger than the sampled range: the density is the same everywhere the
    # rays sample, so opacity depends only on the sampled length, ray_end − ray_start, whatever the
    # importance pass does.
    options = _options(box_warp=8.0, triplane_depth=2)
    planes = torch.full((1, 3, 4 * 2, 6, 6), 0.5, dtype=F64)
    decoder = TinyDecoder(torch.tensor([1.0, 0.0, 0.0, 0.0]), sigma_bias=0.0, rgb_channels=4)  # σ_raw = 0.5
    sigma = math.log1p(math.exp(0.5 - 1))
    c = _camera(0.7, 0.2)
    rgb, depth, weights = _render(ImportanceRenderer(), planes, decoder, c, 4, options, deterministic=True)
    expected = 1 - math.exp(-sigma * (options.ray_end - options.ray_start))
    torch.testing.assert_close(weights, torch.full_like(weights, expected), atol=1e-8, rtol=0)
    torch.testing.assert_close(rgb, torch.full_like(rgb, 0.5 * expected), atol=1e-8, rtol=0)
    white_options = dataclasses.replace(options, white_back=True)
    white = _render(ImportanceRenderer(), planes, decoder, c, 4, white_options, deterministic=True)
    torch.testing.assert_close(white[0], rgb + 1 - weights)


def test_renderer_applies_triplane_crop():
    planes = torch.full((1, 3, 4 * 3, 6, 6), 0.5, dtype=F64)
    decoder = TinyDecoder(torch.tensor([8.0, 0.0, 0.0, 0.0]), rgb_channels=4)
    origins = torch.tensor([[[0.45, 0.0, 3.0], [0.3, 0.0, 3.0]]], dtype=F64)
    directions = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]]], dtype=F64)
    renderer = ImportanceRenderer()
    _, _, cropped = renderer(planes, decoder, origins, directions, _options(), deterministic=True)
    _, _, uncropped = renderer(planes, decoder, origins, directions, _options(triplane_crop=0.0), deterministic=True)
    assert cropped[0, 0].item() < 1e-12 < 0.5 < cropped[0, 1].item()
    assert uncropped[0, 0].item() > 0.5


def _mirror_planes(planes: torch.Tensor, depth: int) -> torch.Tensor:
    """The tri-grid of the scene reflected about x = 0.

    x drives W in planes 0 and 1 and the depth slice in plane 2 (see PLANE_AXIS_ORDER), so the reflection
    flips the width of the first two planes and the slice order of the third.
    """
    n, _, cd, h, w = planes.shape
    flipped_w = planes[:, :2].flip(-1)
    slices = planes[:, 2].reshape(n, cd // depth, depth, h, w).flip(2).reshape(n, cd, h, w)
    return torch.cat([flipped_w, slices.unsqueeze(1)], dim=1)


def _render_image(planes, decoder, c, resolution, options):
    rgb, depth, weights = _render(ImportanceRenderer(), planes, decoder, c, resolution, options, deterministic=True)
    return [t.reshape(resolution, resolution, -1) for t in (rgb, depth, weights)]


def test_mirror_camera_renders_horizontally_flipped_image_of_symmetric_grid():
    torch.manual_seed(0)
    depth, channels, resolution = 3, 6, 12
    coarse = torch.randn(1, 3 * channels * depth, 4, 4, dtype=F64)
    raw = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear")
    raw = raw.reshape(1, 3, channels * depth, 16, 16)
    symmetric = (raw + _mirror_planes(raw, depth)) / 2
    assert torch.allclose(_mirror_planes(symmetric, depth), symmetric)
    decoder = TinyDecoder(torch.tensor([3.0, -2.0, 1.0, 6.0, 0.5, -1.0]), sigma_bias=2.5)
    options = _options(triplane_depth=depth)
    c = _camera(0.6, -0.15)

    image = _render_image(symmetric, decoder, c, resolution, options)
    mirrored = _render_image(symmetric, decoder, mirror_camera(c), resolution, options)
    for ours, theirs in zip(image, mirrored):
        torch.testing.assert_close(theirs, ours.flip(1), atol=1e-10, rtol=0)
    opacity = image[2]
    assert opacity.max() > 0.5 and opacity.std() > 0.05  # a real picture, not an empty one
    assert not torch.allclose(mirrored[0], image[0], atol=1e-3)  # the two views do differ

    # The same comparison fails for a grid that is not symmetric, so the check above has teeth.
    asymmetric = _render_image(raw, decoder, c, resolution, options)
    asymmetric_mirror = _render_image(raw, decoder, mirror_camera(c), resolution, options)
    assert not torch.allclose(asymmetric_mirror[0], asymmetric[0].flip(1), atol=1e-3)


def test_gradients_reach_every_plane():
    options = _options(triplane_depth=2, depth_resolution=8, depth_resolution_importance=8)
    planes = (torch.randn(1, 3, 4 * 2, 8, 8) * 0.5).requires_grad_()
    decoder = TinyDecoder(torch.tensor([2.0, 1.0, -1.0, 3.0]), sigma_bias=2.0)
    rgb, depth, weights = _render(ImportanceRenderer(), planes, decoder, _camera(0.4, 0.1, torch.float32), 6, options,
                                  generator=torch.Generator().manual_seed(0))
    (rgb.sum() + depth.mean() + weights.sum()).backward()
    assert torch.isfinite(planes.grad).all()
    assert all(planes.grad[0, p].abs().sum() > 0 for p in range(3))


def test_run_model_density_noise_is_seeded_and_scaled():
    renderer = ImportanceRenderer()
    planes = torch.randn(1, 3, 4 * 3, 8, 8)
    points = torch.rand(1, 4000, 3) - 0.5
    directions = torch.nn.functional.normalize(torch.randn(1, 4000, 3), dim=-1)
    decoder = TinyDecoder(torch.ones(4))
    clean = renderer.run_model(planes, decoder, points, directions, _options())
    assert clean["rgb"].shape == (1, 4000, 3) and clean["sigma"].shape == (1, 4000, 1)
    noisy_options = _options(density_noise=0.5)
    def noisy_run(seed):
        generator = torch.Generator().manual_seed(seed)
        return renderer.run_model(planes, decoder, points, directions, noisy_options, generator=generator)

    noisy, again = noisy_run(2), noisy_run(2)
    assert torch.equal(noisy["sigma"], again["sigma"])
    assert (noisy["sigma"] - clean["sigma"]).std().item() == pytest.approx(0.5, rel=0.08)


def test_renderer_rejects_bad_options_and_decoders():
    renderer = ImportanceRenderer()
    planes = torch.randn(1, 3, 4 * 3, 8, 8)
    origins, directions = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    decoder = TinyDecoder(torch.ones(4))
    with pytest.raises(ConfigError, match="depth_resolution"):
        renderer(planes, decoder, origins, directions, _options(depth_resolution=3))
    with pytest.raises(ConfigError, match="clamp_mode"):
        renderer(planes, decoder, origins, directions, _options(clamp_mode="relu"))
    with pytest.raises(InputError, match="shape"):
        renderer(planes, decoder, origins, directions[:, :1], _options())
    with pytest.raises(InputError, match="'rgb' and 'sigma'"):
        renderer.run_model(planes, lambda f, d: {"rgb": f.mean(1)}, origins, directions, _options())
