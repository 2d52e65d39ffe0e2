"""Batched random augmentation of premultiplied renders: new background, small affine, colour, blur, noise.

Why: the networks must also work on images that are not clean world renders — the generator's outputs are
slightly blurry, framed a little differently, on arbitrary backgrounds, with shifted colours. Every operation
is one tensor op over the whole batch (per-sample parameters, no loops over samples or pixels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ...io.configs import JsonConfig


@dataclass(frozen=True)
class AugmentConfig(JsonConfig):
    config_label: ClassVar[str] = "augmentation"

    shift: float = 0.06  # max translation, fraction of the image half-width
    scale: tuple[float, float] = (0.9, 1.1)  # zoom range (>1 enlarges the head)
    rotate_degrees: float = 5.0
    brightness: float = 0.12  # ± added in [0, 1] units
    contrast: float = 0.2  # × (1 ± c) around the image mean
    saturation: float = 0.3  # blend toward grey by up to this much (or away from it)
    channel_gain: float = 0.06  # per-channel multiplicative tint
    blur_probability: float = 0.5
    blur_max_sigma: float = 1.2  # pixels at the training resolution
    noise: float = 0.02
    flip_probability: float = 0.0  # horizontal flips (they mirror a person, so off for identity)


def random_backgrounds(n: int, size: int, generator: torch.Generator) -> Tensor:
    """(n, 3, size, size) in [0, 1]: a third plain colours, a third vertical gradients, a third smooth blobs."""
    kind = torch.randint(3, (n, 1, 1, 1), generator=generator)
    top, bottom = torch.rand(2, n, 3, 1, 1, generator=generator)
    ramp = torch.linspace(0.0, 1.0, size).view(1, 1, size, 1)
    gradient = (top + (bottom - top) * ramp).expand(n, 3, size, size)
    blobs = F.interpolate(torch.rand(n, 3, 4, 4, generator=generator), size=(size, size), mode="bicubic", align_corners=False)
    plain = top.expand(n, 3, size, size)
    return torch.where(kind == 0, plain, torch.where(kind == 1, gradient, blobs)).clamp(0.0, 1.0)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_affine(images: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Per-sample zoom, rotation, shift (and optional flip); edges are extended (border padding)."""
    n = images.shape[0]
    zoom = _uniform(n, *config.scale, generator)
    angle = _uniform(n, -1.0, 1.0, generator) * math.radians(config.rotate_degrees)
    shift = _uniform(2 * n, -config.shift, config.shift, generator).view(n, 2)
    flip = torch.where(torch.rand(n, generator=generator) < config.flip_probability, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], -1), torch.stack([sin * flip, cos, shift[:, 1]], -1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(images: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Brightness, contrast, saturation and a channel tint, per sample, on [0, 1] images."""
    n = images.shape[0]
    view = (n, 1, 1, 1)
    grey = images.mean(dim=1, keepdim=True)
    saturation = 1.0 + _uniform(n, -config.saturation, config.saturation, generator).view(view)
    images = grey + (images - grey) * saturation
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1.0 + _uniform(n, -config.contrast, config.contrast, generator).view(view)
    images = mean + (images - mean) * contrast
    gain = 1.0 + _uniform(3 * n, -config.channel_gain, config.channel_gain, generator).view(n, 3, 1, 1)
    brightness = _uniform(n, -config.brightness, config.brightness, generator).view(view)
    return images * gain + brightness


def random_blur(images: Tensor, config: AugmentConfig, generator: torch.Generator, radius: int = 3) -> Tensor:
    """Separable Gaussian blur with a per-sample sigma (0 for the unblurred share), as one grouped conv."""
    n, c, h, w = images.shape
    sigma = _uniform(n, 0.3, config.blur_max_sigma, generator)
    sigma = torch.where(torch.rand(n, generator=generator) < config.blur_probability, sigma, torch.zeros_like(sigma))
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma.clamp_min(1e-3).unsqueeze(1)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n·c, taps)
    x = F.pad(images.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(n * c, 1, 1, -1), groups=n * c)
    x = F.conv2d(x, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return x.view(n, c, h, w)


def augment(premultiplied: Tensor, alpha: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Premultiplied colour (N, 3, R, R) and coverage (N, 1, R, R) in [0, 1] → augmented images in [-1, 1]."""
    n, _, size, _ = premultiplied.shape
    images = premultiplied + (1.0 - alpha) * random_backgrounds(n, size, generator)
    images = random_affine(images, config, generator)
    images = colour_jitter(images, config, generator)
    images = random_blur(images, config, generator)
    images = images + config.noise * torch.randn(images.shape, generator=generator)
    return (images.clamp(0.0, 1.0) * 2.0 - 1.0).contiguous()
