"""Rank re-weighting of the diffusion score (the paper's fix for colour and saturation drift).

The latent score of one sample is a C × (H·W) matrix (C = 4 for Stable Diffusion). Its singular vectors
along the channel axis are mostly global colour/brightness directions; the paper damps the weaker ones with
W = diag(1, 0.75, 0.5, 0.25) and rebuilds U·W·Σ·Vᵀ, then the official code restores each channel's mean and
standard deviation from the original score ("instance norm") so that only the *structure* across channels
changes, not the overall gradient magnitude.

Singular values beyond the weight list are dropped (weight 0), which is what the official code's rank-k
reconstruction from the top-k triplets does; with SD's C = 4 and four weights every singular value is
re-weighted and nothing is truncated. Pass more weights of 1.0 to keep extra components unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ..errors import InputError
from .shapes import check_ndim, check_same_shape

STD_EPS = 1e-5  # added to each standard deviation, as in the official instance_norm


def match_channel_stats(x: Tensor, reference: Tensor, eps: float = STD_EPS) -> Tensor:
    """Give each (sample, channel) of ``x`` the spatial mean and std of ``reference`` (both (B, C, H, W)).

    ``(x − mean_x) / (std_x + eps) · (std_ref + eps) + mean_ref`` with unbiased standard deviations over
    H, W, as the official code does (so ``x == reference`` is returned unchanged up to rounding).
    """
    check_ndim("x", x, 4, "(B, C, H, W)")
    check_same_shape("x", x, "reference", reference)
    mean_x = x.mean(dim=(2, 3), keepdim=True)
    std_x = x.std(dim=(2, 3), keepdim=True) + eps
    mean_ref = reference.mean(dim=(2, 3), keepdim=True)
    std_ref = reference.std(dim=(2, 3), keepdim=True) + eps
    return (x - mean_x) / std_x * std_ref + mean_ref


def _padded_weights(weights: Sequence[float], rank: int, like: Tensor) -> Tensor:
    """The weight list cut or zero-padded to ``rank`` entries (zeros drop the trailing singular values)."""
    w = torch.zeros(rank, dtype=like.dtype, device=like.device)
    k = min(len(weights), rank)
    w[:k] = torch.as_tensor(list(weights)[:k], dtype=like.dtype, device=like.device)
    return w


def rank_reweight(score: Tensor, weights: Sequence[float] = (1.0, 0.75, 0.5, 0.25)) -> Tensor:
    """Re-weight the singular values of each sample's C × (H·W) score, then match channel statistics.

    Batched over B with one ``torch.linalg.svd`` call, computed in at least float32 and returned in
    ``score``'s dtype. Samples containing NaN/Inf are returned unchanged (their gradient is zeroed later
    by ``postprocess_gradient``); if the SVD fails to converge the whole score is returned unchanged, as
    the official code does.
    """
    check_ndim("score", score, 4, "(B, C, H, W)")
    if len(weights) == 0:
        raise InputError("rank weights must not be empty")
    b, c, h, w = score.shape
    if h * w < 2:
        raise InputError(f"score needs at least 2 pixels per channel for a standard deviation, got {h}×{w}")
    work = score.to(torch.promote_types(score.dtype, torch.float32))
    flat = work.reshape(b, c, h * w)
    finite = torch.isfinite(flat).flatten(1).all(dim=1)  # (B,)
    safe = torch.where(finite[:, None, None], flat, torch.zeros_like(flat))
    try:
        u, s, vh = torch.linalg.svd(safe, full_matrices=False)
    except torch.linalg.LinAlgError:
        return score
    scaled_s = s * _padded_weights(weights, s.shape[-1], s)  # (B, r)
    rebuilt = ((u * scaled_s.unsqueeze(-2)) @ vh).reshape(b, c, h, w)
    matched = match_channel_stats(rebuilt, work)
    return torch.where(finite[:, None, None, None], matched, work).to(score.dtype)
