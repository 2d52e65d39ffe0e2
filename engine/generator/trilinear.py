"""Trilinear look-ups in tri-grid volumes, faster on CPU than ``grid_sample``.

Every rendered sample reads each of the three tri-grid volumes once, so on a CPU the look-up and its
gradient are the largest single cost of a stylization step (a quarter of it on the reduced PanoHead).
``F.grid_sample``'s 3-D CPU kernel is scalar code that shares out whole volumes between threads (three
volumes on two threads leave one idle half the time) and whose backward always computes the gradient of
the sampling positions too, which the renderer never needs.

On CPU this module does the same look-up as an ``F.embedding_bag``: the volumes become a channels-last
table of voxels, each point is a bag of its eight corner voxels weighted by the trilinear weights, and the
bag sums run in a vectorised, multithreaded kernel. Its backward scatters each point's gradient into the
eight corners, again without touching the positions. On CUDA, ``F.grid_sample`` is used unchanged.

Results are those of ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` to float
rounding (the order of the sums differs), which the tests check for values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def grid_sample_volumes(volumes: Tensor, grid: Tensor) -> Tensor:
    """The reference look-up: ``F.grid_sample`` with the renderer's settings, as (N, P, C) features."""
    n, channels = volumes.shape[:2]
    sampled = F.grid_sample(volumes, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.reshape(n, channels, -1).transpose(1, 2)


def _axis_corners(coordinate: Tensor, size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The two voxel indices (…, 2) along one axis and their linear weights (…, 2), 0 outside the volume.

    ``coordinate`` is in [−1, 1] at the outer edges of the first and last voxel (``align_corners=False``);
    an outside corner keeps a clamped, valid index but weight 0, which is what zero padding means.
    """
    position = ((coordinate + 1) * size - 1) / 2
    low = position.floor()
    fraction = position - low
    low = low.to(dtype)
    index = torch.stack((low, low + 1), dim=-1)
    weight = torch.stack((1 - fraction, fraction), dim=-1)
    weight = weight * ((index >= 0) & (index < size))
    return index.clamp_(0, size - 1), weight


def corner_bags(grid: Tensor, depth: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Each point's eight corner rows in an (N·D·H·W)-row voxel table, and their trilinear weights.

    ``grid`` is (N, 1, 1, P, 3) positions (x → W, y → H, z → D); returns (N·P, 8) indices and weights.
    """
    n = grid.shape[0]
    points = grid.reshape(n, -1, 3)
    rows = n * depth * height * width
    dtype = torch.int32 if rows < 2**31 else torch.int64
    ix, wx = _axis_corners(points[..., 0], width, dtype)
    iy, wy = _axis_corners(points[..., 1], height, dtype)
    iz, wz = _axis_corners(points[..., 2], depth, dtype)
    iz = iz + (torch.arange(n, device=grid.device, dtype=dtype) * depth).view(n, 1, 1)  # volume v's slices follow v − 1's
    index = (iz[..., :, None, None] * height + iy[..., None, :, None]) * width + ix[..., None, None, :]
    weight = wz[..., :, None, None] * wy[..., None, :, None] * wx[..., None, None, :]
    return index.reshape(-1, 8), weight.reshape(-1, 8)


class _CornerBags(torch.autograd.Function):
    """Weighted sums of table rows, ``embedding_bag(index, table, per_sample_weights=weight)``, whose backward
    gives the table's gradient only, as a second ``embedding_bag`` over the corners sorted by voxel.

    ``embedding_bag``'s own backward sorts the corners too but then walks them in a slower, serial loop;
    here each voxel's gradient is the weighted sum of the output gradients of the points that read it, which
    is exactly a bag sum once the corners are grouped by voxel.
    """

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(index, weight)
        ctx.rows = table.shape[0]
        return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        index, weight = ctx.saved_tensors
        corners = index.reshape(-1)
        order = torch.argsort(corners, stable=True)  # stable: each voxel sums its points in one fixed order
        per_voxel = torch.bincount(corners, minlength=ctx.rows)
        starts = (torch.cumsum(per_voxel, 0) - per_voxel).to(corners.dtype)
        reading_point = (order // index.shape[1]).to(corners.dtype)
        grad_table = F.embedding_bag(
            reading_point, grad_output.contiguous(), starts, mode="sum", per_sample_weights=weight.reshape(-1)[order]
        )
        return grad_table, None, None


class Volumes:
    """(N, C, D, H, W) volumes laid out once for any number of look-ups.

    A render reads the same tri-grid twice (coarse and importance samples); on CPU the channels-last voxel
    table is built once for both, and in training their gradients meet in it before the single copy back to
    the tri-grid's layout.
    """

    def __init__(self, volumes: Tensor) -> None:
        if volumes.dim() != 5:
            raise ValueError(f"volumes must be (N, C, D, H, W), got {tuple(volumes.shape)}")
        self.shape = tuple(volumes.shape)
        self.dtype = volumes.dtype
        self._volumes = volumes
        self._table = None
        if volumes.device.type == "cpu":
            n, channels, depth, height, width = self.shape
            self._table = volumes.permute(0, 2, 3, 4, 1).reshape(n * depth * height * width, channels)

    def sample(self, grid: Tensor) -> Tensor:
        """Trilinear look-up at (N, 1, 1, P, 3) positions in [−1, 1] → (N, P, C) features.

        The values of ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``;
        differentiable in both the volumes and the positions.
        """
        if self._table is None:
            return grid_sample_volumes(self._volumes, grid)
        n, channels, depth, height, width = self.shape
        index, weight = corner_bags(grid, depth, height, width)
        weight = weight.to(self._table.dtype)
        if self._table.requires_grad and torch.is_grad_enabled() and not weight.requires_grad:
            sampled = _CornerBags.apply(self._table, index, weight)
        else:  # no gradient, or positions with one: embedding_bag's own backward covers both inputs
            sampled = F.embedding_bag(index, self._table, per_sample_weights=weight, mode="sum")
        return sampled.view(n, -1, channels)

