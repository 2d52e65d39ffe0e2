"""Turn user images into the fixed-size input the recognition networks were trained on.

The networks see 48² renders of the procedural world, but callers hand in whatever they have: the
generator's 64² raw render, its 128² super-resolved output, a 512² PanoHead image. Resizing happens here,
once, with antialiasing on downsampling so a large image is not aliased into a texture the networks never
saw. Validation also lives here so every entry point reports bad input the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError


def check_images(images: Tensor, name: str = "images") -> Tensor:
    """Return ``images`` as a floating (N, 3, H, W) tensor, or raise :class:`InputError` naming ``name``.

    A single (3, H, W) image is accepted and given a batch axis. Values are expected in [-1, 1] (the
    generator's and the world's range); they are not rescaled, only checked for NaN/inf.
    """
    if not isinstance(images, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (N, 3, H, W), got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"{name} must have shape (N, 3, H, W) with values in [-1, 1], got {tuple(images.shape)}")
    if images.shape[0] == 0 or images.shape[2] < 2 or images.shape[3] < 2:
        raise InputError(f"{name} is empty or smaller than 2×2: shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputError(f"{name} must be a floating tensor in [-1, 1], got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise InputError(f"{name} holds NaN or infinite values")
    return images


def resize_images(images: Tensor, size: int) -> Tensor:
    """Resize (N, 3, H, W) to (N, 3, size, size), bilinear, antialiased when shrinking; no-op at size."""
    if images.shape[-2:] == (size, size):
        return images
    shrinking = images.shape[-2] > size or images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def prepare_images(images: Tensor, size: int, device: torch.device | None = None, name: str = "images") -> Tensor:
    """Validate, move to ``device`` as float32 and resize to ``size``² — what every network's forward eats."""
    images = check_images(images, name)
    images = images.to(device=device, dtype=torch.float32) if device is not None else images.float()
    return resize_images(images, size).clamp(-1.0, 1.0)
