"""Shape checks shared by the distillation functions (gradients, rank, regularizers, inject).

Each raises :class:`~engine.errors.InputError` with a message naming the offending argument, so a wrong
tensor is reported where it enters instead of being broadcast silently.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    """Raise InputError unless ``a`` and ``b`` have identical shapes (no silent broadcasting)."""
    if a.shape != b.shape:
        raise InputError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; they must match")


def check_ndim(name: str, x: Tensor, ndim: int, layout: str) -> None:
    """Raise InputError unless ``x`` has ``ndim`` dimensions; ``layout`` (e.g. "(B, C, H, W)") goes in the message."""
    if x.ndim != ndim:
        raise InputError(f"{name} must be a {ndim}-D tensor {layout}, got shape {tuple(x.shape)}")


def broadcast_per_sample(name: str, value: float | Tensor, like: Tensor) -> Tensor:
    """Shape a number, a single value or one value per sample as (B, 1, …, 1) so it broadcasts over ``like``.

    Accepts a Python number, a 0-d/1-element tensor, a (B,) tensor or a (B, 1, …, 1) tensor. The result is
    on ``like``'s device, in ``like``'s floating dtype.
    """
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    if isinstance(value, Tensor):
        t = value.to(device=like.device, dtype=dtype)
    else:  # build numbers directly in the target dtype (a float32 detour would lose float64 precision)
        t = torch.as_tensor(value, dtype=dtype, device=like.device)
    batch = like.shape[0] if like.ndim else 1
    trailing_ones = (1,) * max(like.ndim - 1, 0)
    if t.numel() == 1:
        return t.reshape((1,) + trailing_ones)
    if t.ndim >= 1 and t.shape[0] == batch and t.numel() == batch:
        return t.reshape((batch,) + trailing_ones)
    raise InputError(f"{name} must be one number or one per sample (batch {batch}), got shape {tuple(t.shape)}")
