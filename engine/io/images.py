"""Conversions between generator tensors and image files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import write_with


def to_uint8(image: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(3, H, W) or (1, H, W) tensor in ``value_range`` → (H, W, 3) / (H, W) uint8 array."""
    lo, hi = value_range
    x = ((image.detach().float() - lo) / (hi - lo)).clamp(0, 1)
    x = (x * 255 + 0.5).to(torch.uint8).cpu()
    if x.shape[0] == 1:
        return x[0].numpy()
    return x.permute(1, 2, 0).numpy()


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W[, C]) uint8 array as PNG, atomically."""
    return write_with(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def png_bytes(array: np.ndarray) -> bytes:
    """An (H, W[, C]) uint8 array as PNG file bytes (deterministic: same pixels, same bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def image_grid(arrays: list[np.ndarray], columns: int) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 images into a grid (row-major)."""
    h, w = arrays[0].shape[:2]
    rows = -(-len(arrays) // columns)
    grid = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i, a in enumerate(arrays):
        r, c = divmod(i, columns)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = a if a.ndim == 3 else a[..., None]
    return grid


def to_uint8_rgb(image: torch.Tensor, min_side: int) -> np.ndarray:
    """(3, H, W) in [-1, 1] → (H', W', 3) uint8, upscaled (bicubic) so that min(H', W') ≥ ``min_side``
    (what face detectors need from small renders)."""
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    scale = max(1.0, min_side / min(h, w))
    if scale > 1.0:
        size = (round(h * scale), round(w * scale))
        image = F.interpolate(image[None].float(), size=size, mode="bicubic", align_corners=False)[0]
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return np.ascontiguousarray(array.permute(1, 2, 0).cpu().numpy())
