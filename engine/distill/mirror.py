"""Mirror gradients: one diffusion call, two views.

A head rendered from yaw −φ is (for a left/right symmetric style) the horizontal mirror image of the head
rendered from yaw φ. The official code therefore renders the trainable generator a second time from the
mirrored camera and feeds that render's latent the *flipped* gradient of the base view, without asking the
diffusion model again. The two contributions are weighted 0.75 (base) and 0.25 (mirror):

    loss = 0.75 · inject(latent_base, g) + 0.25 · inject(latent_mirror, flip(g))

so the base latent receives 0.75·g and the mirrored latent 0.25·flip(g). ``mirror_weighted_gradients``
returns exactly those two tensors; ``mirror_camera`` (from ``engine.generator.camera``) builds the mirrored
camera.

In the 2×2 grid each tile would have to be flipped on its own (``grid.flip_each_tile``); the official code
leaves the grid mirror off.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..generator.camera import mirror_camera  # re-exported: the camera half of mirror gradients

__all__ = ["mirror_camera", "mirror_gradient", "mirror_weighted_gradients"]


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
