"""Tri-grid look-ups through ``embedding_bag`` (CPU): the values and gradients of ``grid_sample``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.generator.trilinear import Volumes, corner_bags, grid_sample_volumes

F64 = torch.float64


def _reference(volumes: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    out = F.grid_sample(volumes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(volumes.shape[0], volumes.shape[1], -1).transpose(1, 2)


def _positions(n: int, points: int, seed: int, spread: float = 1.3, dtype=torch.float32) -> torch.Tensor:
    """Positions inside and outside [−1, 1]³, plus some exactly on voxel faces of a 5-slice, 8-cell grid."""
    g = torch.Generator().manual_seed(seed)
    grid = (torch.rand(n, 1, 1, points, 3, generator=g, dtype=dtype) * 2 - 1) * spread
    faces = torch.tensor([-1.0, -0.5, 0.0, 0.25, 1.0], dtype=dtype)  # on cell faces (and the box's edges)
    grid[:, 0, 0, : faces.numel(), 0] = faces
    grid[:, 0, 0, : faces.numel(), 2] = faces.flip(0)
    return grid


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_values_equal_grid_sample_inside_outside_and_on_faces(depth):
    volumes = torch.randn(3, 6, depth, 8, 8, generator=torch.Generator().manual_seed(depth))
    grid = _positions(3, 500, seed=depth)
    torch.testing.assert_close(Volumes(volumes).sample(grid), _reference(volumes, grid), atol=1e-6, rtol=0)
    torch.testing.assert_close(grid_sample_volumes(volumes, grid), _reference(volumes, grid), atol=0, rtol=0)
    far = torch.full((3, 1, 1, 4, 3), 2.5)  # every corner outside: zero padding
    assert torch.equal(Volumes(volumes).sample(far), torch.zeros(3, 4, 6))


def test_corner_bags_weights_sum_to_one_inside_and_index_every_volume_separately():
    grid = torch.rand(2, 1, 1, 100, 3) * 1.2 - 0.6  # between the outermost voxel centres: all eight corners exist
    index, weight = corner_bags(grid, depth=3, height=4, width=5)
    assert index.shape == weight.shape == (200, 8)
    torch.testing.assert_close(weight.sum(1), torch.ones(200))
    assert index[:100].max() < 3 * 4 * 5 <= index[100:].min()  # volume 1's rows follow volume 0's


def test_volume_gradient_without_position_gradient_passes_gradcheck():
    """The custom backward (positions without a gradient: the renderer's case)."""
    volumes = torch.randn(2, 3, 3, 4, 4, dtype=F64, requires_grad=True)
    grid = _positions(2, 40, seed=1, dtype=F64)
    assert torch.autograd.gradcheck(lambda v: Volumes(v).sample(grid), (volumes,))


def test_gradients_equal_grid_sample_with_many_points_per_voxel():
    """Ray-like point clouds: many points read each voxel, so the sorted grouping of the backward matters."""
    g = torch.Generator().manual_seed(3)
    volumes = torch.randn(3, 16, 3, 32, 32, generator=g)
    origins = torch.rand(3, 256, 1, 3, generator=g) * 1.6 - 0.8
    directions = F.normalize(torch.randn(3, 256, 1, 3, generator=g), dim=-1)
    along = torch.linspace(-0.6, 0.6, 48).view(1, 1, 48, 1)
    grid = (origins + along * directions).reshape(3, 1, 1, -1, 3)
    weights = torch.randn(3, grid.shape[3], 16, generator=g)

    ours = volumes.clone().requires_grad_()
    (Volumes(ours).sample(grid) * weights).sum().backward()
    reference = volumes.clone().requires_grad_()
    (_reference(reference, grid) * weights).sum().backward()
    torch.testing.assert_close(ours.grad, reference.grad, atol=2e-5, rtol=1e-5)


def test_position_gradient_flows_and_equals_grid_sample():
    volumes = torch.randn(2, 4, 3, 6, 6, dtype=F64, requires_grad=True)
    grid = (torch.rand(2, 1, 1, 30, 3, dtype=F64, generator=torch.Generator().manual_seed(4)) * 1.8 - 0.9)
    ours_grid = grid.clone().requires_grad_()
    ref_grid = grid.clone().requires_grad_()
    weights = torch.randn(2, 30, 4, dtype=F64)
    ours = torch.autograd.grad((Volumes(volumes).sample(ours_grid) * weights).sum(), (volumes, ours_grid))
    reference = torch.autograd.grad((_reference(volumes, ref_grid) * weights).sum(), (volumes, ref_grid))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda v, x: Volumes(v).sample(x), (volumes, ours_grid))


def test_one_layout_serves_several_look_ups_and_sums_their_gradients():
    volumes = torch.randn(3, 5, 3, 8, 8, requires_grad=True)
    first, second = _positions(3, 200, seed=5), _positions(3, 300, seed=6)
    shared = Volumes(volumes)
    (shared.sample(first).sum() + 2 * shared.sample(second).sum()).backward()
    expected = torch.autograd.grad(_reference(volumes, first).sum() + 2 * _reference(volumes, second).sum(), volumes)[0]
    torch.testing.assert_close(volumes.grad, expected, atol=1e-5, rtol=1e-5)


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="N, C, D, H, W"):
        Volumes(torch.zeros(3, 4, 5, 6))
