"""The 2×2 multi-view grid: four renders distilled jointly in one diffusion call.

With the official default (``backprop_grid_before_SR``) each of the four views is the 64² neural render
(before super-resolution), upsampled ×4 bilinearly to 256², and the four tiles form one 512² image:

    ┌────┬────┐
    │ v0 │ v1 │
    ├────┼────┤
    │ v2 │ v3 │
    └────┴────┘

Tiling is a pure re-indexing, so autograd splits a gradient on the grid back onto the four views
(``untile_2x2`` of the grid gradient), and through the bilinear upsampling onto the raw renders.

Layouts: views are (B, 4, C, h, w); a flat (4·B, C, h, w) batch is read sample-major (row ``4·b + v`` is
view v of sample b), i.e. ``views.flatten(0, 1)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError

VIEWS = 4


def _as_views(images: Tensor) -> Tensor:
    """(B, 4, C, h, w) from either accepted layout."""
    if images.ndim == 5:
        if images.shape[1] != VIEWS:
            raise InputError(f"images must be (B, 4, C, h, w), got shape {tuple(images.shape)}")
        return images
    if images.ndim == 4:
        if images.shape[0] % VIEWS:
            raise InputError(f"a flat batch of views must hold a multiple of 4 images, got {images.shape[0]}")
        return images.reshape(images.shape[0] // VIEWS, VIEWS, *images.shape[1:])
    raise InputError(f"images must be (B, 4, C, h, w) or (4·B, C, h, w), got shape {tuple(images.shape)}")


def tile_2x2(images: Tensor) -> Tensor:
    """Four views per sample → one (B, C, 2h, 2w) grid, v0 v1 on top and v2 v3 below."""
    views = _as_views(images)
    b, _, c, h, w = views.shape
    # (B, row, col, C, h, w) → (B, C, row, h, col, w) → (B, C, 2h, 2w)
    return views.reshape(b, 2, 2, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, 2 * h, 2 * w)


def untile_2x2(grid: Tensor) -> Tensor:
    """Inverse of ``tile_2x2``: (B, C, 2h, 2w) → (B, 4, C, h, w)."""
    if grid.ndim != 4 or grid.shape[-1] % 2 or grid.shape[-2] % 2:
        raise InputError(f"grid must be (B, C, 2h, 2w) with even sides, got shape {tuple(grid.shape)}")
    b, c, hh, ww = grid.shape
    h, w = hh // 2, ww // 2
    return grid.reshape(b, c, 2, h, 2, w).permute(0, 2, 4, 1, 3, 5).reshape(b, VIEWS, c, h, w)


def resize_views(images: Tensor, scale: float) -> Tensor:
    """Bilinear resize by ``scale`` with ``align_corners=True`` (the official grid's resampling).

    Works on (N, C, h, w) and on (B, 4, C, h, w).
    """
    if not scale > 0:
        raise InputError(f"scale must be > 0, got {scale}")
    if images.ndim == 5:
        b, v = images.shape[:2]
        out = resize_views(images.flatten(0, 1), scale)
        return out.reshape(b, v, *out.shape[1:])
    if images.ndim != 4:
        raise InputError(f"images must be (N, C, h, w) or (B, 4, C, h, w), got shape {tuple(images.shape)}")
    if scale == 1:
        return images
    return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=True)


def upsample_for_grid(raw: Tensor, factor: int = 4) -> Tensor:
    """Upsample raw neural renders (e.g. 64²) by ``factor`` so that four of them tile a 512² grid."""
    if int(factor) != factor or factor < 1:
        raise InputError(f"factor must be a positive integer, got {factor}")
    return resize_views(raw, float(factor))


def resize_and_tile(images: Tensor, scale: float = 1.0) -> Tensor:
    """``tile_2x2(resize_views(images, scale))``: the official ``resize_and_grid`` (renders ×4, masks ×0.5)."""
    return tile_2x2(resize_views(_as_views(images), scale))


def flip_each_tile(grid: Tensor) -> Tensor:
    """Mirror every tile of a 2×2 grid in place of its own column (a plain flip would also swap v0↔v1)."""
    return tile_2x2(torch.flip(untile_2x2(grid), dims=[-1]))
