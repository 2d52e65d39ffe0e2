"""Mirror gradients: one diffusion call, two views.

A head rendered from yaw −φ is (for a left/right symmetric style) the horizontal mirror image of the head
rendered from yaw φ. The official code therefore renders the trainable generator a second time from the
mirrored camera and feeds that render's latent the *flipped* gradient of the base view, without asking the
diffusion model again. The two contributions are weighted 0.75 (base) and 0.25 (mirror):

    loss = 0.75 · inject(latent_base, g) + 0.25 · inject(latent_mirror, flip(g))

so the base latent receives 0.75·g and the mirrored latent 0.25·flip(g). ``mirror_weighted_gradients``
returns exactly those two tensors; ``mirror_camera`` builds the mirrored camera.

In the 2×2 grid each tile would have to be flipped on its own (``grid.flip_each_tile``); the official code
leaves the grid mirror off.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from .gradients import check_ndim

# Entries of the flattened row-major 4×4 cam2world matrix that change sign under x → −x reflection
# (M·P·M with M = diag(−1, 1, 1, 1)): R01, R02, t_x, R10, R20. R30 (index 12) is always 0.
_MIRRORED_CAMERA_ENTRIES = (1, 2, 3, 4, 8)
CAMERA_DIM = 25  # 16 cam2world + 9 intrinsics


def mirror_gradient(grad: Tensor) -> Tensor:
    """Horizontal flip of an image-like tensor (last axis = width); an involution."""
    if grad.ndim < 2:
        raise InputError(f"grad must have at least 2 dimensions (…, H, W), got shape {tuple(grad.shape)}")
    return torch.flip(grad, dims=[-1])


def mirror_weighted_gradients(grad: Tensor, weights: tuple[float, float] = (0.75, 0.25)) -> tuple[Tensor, Tensor]:
    """(gradient for the base latent, gradient for the mirrored latent) = (w₀·g, w₁·flip(g)).

    Equivalent to the official ``w₀·SpecifyGradient(l, g) + w₁·SpecifyGradient(l_mirror, flip(g))``.
    """
    if len(weights) != 2:
        raise InputError(f"mirror weights must be (base, mirror), got {weights}")
    base_weight, mirror_weight = weights
    return base_weight * grad, mirror_weight * mirror_gradient(grad)


def mirror_camera(camera: Tensor) -> Tensor:
    """Reflect (B, 25) camera parameters about the x = 0 plane (yaw → −yaw), as the official code does.

    Negates cam2world entries 1, 2, 3, 4 and 8, i.e. returns M·P·M with M = diag(−1, 1, 1, 1), which keeps
    the rotation proper. Intrinsics (entries 16…24) are unchanged (the principal point is centred).
    """
    check_ndim("camera", camera, 2, "(B, 25)")
    if camera.shape[1] != CAMERA_DIM:
        raise InputError(f"camera must have {CAMERA_DIM} columns (16 cam2world + 9 intrinsics), got {camera.shape[1]}")
    signs = torch.ones(CAMERA_DIM, dtype=camera.dtype, device=camera.device)
    signs[list(_MIRRORED_CAMERA_ENTRIES)] = -1
    return camera * signs
