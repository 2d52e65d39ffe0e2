"""Losses that keep the stylised generator close to its identity while the score pulls it toward the style.

* ``tweedie_x0`` / ``tweedie_loss``: the one-step denoised estimate x̂₀ (Tweedie's formula) of the noised
  render is a stylised version of the render; an MSE toward it (x̂₀ fixed) adds a pixel-space pull
  (official weight 0.1).
* ``ldis_loss``: DiffusionGAN3D's relative-distance loss on tri-planes: the distance between two samples'
  planes after fine-tuning should keep its ratio to the distance before (official weight 1).
* ``LpipsLoss``: perceptual distance between x̂₀ and the render (official: LPIPS-Alex, weight 0.05). The
  ``lpips`` package is not a dependency: the network is :mod:`engine.distill.lpips_alex` with weights from a
  local folder (the model manager's ``lpips-alex``), or any exported ``.pt2`` network.
* ``anchor_loss``: not in the paper. Head mode stylizes one head's own field, where LDIS has nothing to
  compare (every "sample" is the same head), so nothing else keeps the person: this pulls the stylized
  render toward the source's render of the same camera — the colour layout blurred to a few pixels (so the
  style may repaint skin and texture but not move the features) and the silhouette and depth (the shape).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import CheckpointError, InputError
from .shapes import broadcast_per_sample, check_same_shape

LDIS_MODES = ("official", "per_sample")
LDIS_EPS = 1e-8  # added to the frozen distance, as in the official code


def tweedie_x0(x_t: Tensor, eps_pred: Tensor, alpha_bar_t: float | Tensor) -> Tensor:
    """x̂₀ = (x_t − √(1−ᾱ)·ε̂) / √ᾱ, with ᾱ a number or one value per sample.

    Exactly inverts the forward noising x_t = √ᾱ·x₀ + √(1−ᾱ)·ε when ε̂ = ε.
    """
    check_same_shape("x_t", x_t, "eps_pred", eps_pred)
    alpha = broadcast_per_sample("alpha_bar_t", alpha_bar_t, x_t)
    return (x_t - (1.0 - alpha).sqrt() * eps_pred) / alpha.sqrt()


def tweedie_loss(render: Tensor, x0_hat: Tensor, weight: float = 1.0) -> Tensor:
    """``weight · mean((x0_hat − render)²)`` with x̂₀ detached, so only the render is pulled.

    Both must be in the same space: the official code compares the *decoded* x̂₀ in [0, 1] with the render
    mapped from [−1, 1] to [0, 1]. A mirrored variant is ``tweedie_loss(render_mirror, flip(x0_hat))``.
    """
    check_same_shape("render", render, "x0_hat", x0_hat)
    return weight * torch.square(x0_hat.detach().to(render.dtype) - render).mean()


def ldis_loss(
    planes_now_i: Tensor,
    planes_now_j: Tensor,
    planes_frozen_i: Tensor,
    planes_frozen_j: Tensor,
    mode: str = "official",
    eps: float = LDIS_EPS,
) -> Tensor:
    """Relative-distance loss |‖T′ᵢ − T′ⱼ‖² / (‖Tᵢ − Tⱼ‖² + eps) − 1| (DiffusionGAN3D, arXiv 2312.16837).

    ``planes_now_*`` come from the trainable generator, ``planes_frozen_*`` from the frozen copy, for two
    different samples i and j (the official code uses the previous iteration's sample, detached, as i).
    Tri-planes are (B, 3, F, H, W).

    ``mode="official"``: as ``train_LD.py``, the norm runs over dim 1 only (the three planes), so the ratio
    is taken per (feature, pixel) and then averaged. ``mode="per_sample"``: one distance per sample over all
    of its values, the literal reading of the DiffusionGAN3D formula; averaged over the batch.
    """
    check_same_shape("planes_now_i", planes_now_i, "planes_now_j", planes_now_j)
    check_same_shape("planes_now_i", planes_now_i, "planes_frozen_i", planes_frozen_i)
    check_same_shape("planes_now_i", planes_now_i, "planes_frozen_j", planes_frozen_j)
    if planes_now_i.ndim < 2:
        raise InputError(f"tri-planes must have a batch and at least one more dimension, got shape {tuple(planes_now_i.shape)}")
    if mode not in LDIS_MODES:
        raise InputError(f"ldis mode must be one of {LDIS_MODES}, got {mode!r}")

    def squared_distance(a: Tensor, b: Tensor) -> Tensor:
        diff = a - b
        if mode == "official":
            return torch.square(diff).sum(dim=1)
        return torch.square(diff).flatten(1).sum(dim=1)

    now = squared_distance(planes_now_i, planes_now_j)
    frozen = squared_distance(planes_frozen_i, planes_frozen_j).detach() + eps
    return torch.abs(now / frozen - 1.0).mean()


def anchor_loss(render: dict[str, Tensor], source: dict[str, Tensor], image_weight: float = 1.0,
                geometry_weight: float = 1.0, resolution: int = 16) -> dict[str, Tensor]:
    """The anchor terms between a stylized render and the source's render of the same cameras.

    Both are renderer outputs: ``image`` (B, 3, H, W) in [−1, 1], ``image_mask`` and ``image_depth``
    (B, 1, h, w). Returns ``{"anchor_image": …, "anchor_geometry": …}`` (terms with weight 0 are left out):

    * image: ``image_weight · mean((pool(image) − pool(source image))²)`` with both area-averaged to
      ``resolution``² — at 16² a 128² head keeps where its eyes, hair and skin tones are, not its texture;
    * geometry: ``geometry_weight · (mean|mask − source mask| + mean(source mask · |depth − source depth|))``:
      silhouette and, where the source is opaque, its ray depth (world units).

    ``source`` is detached: only the stylized render is pulled. (A luminance-only layout, blind to
    recolouring, was tried instead of the colour one: on a world scan it lowered both the style score and the
    identity similarity, where this one at weight 1 kept the style and raised the identity.)
    """
    check_same_shape("image", render["image"], "source image", source["image"])
    check_same_shape("image_mask", render["image_mask"], "source image_mask", source["image_mask"])
    if resolution < 1:
        raise InputError(f"anchor resolution must be ≥ 1, got {resolution}")
    terms: dict[str, Tensor] = {}
    if image_weight > 0:
        size = min(resolution, render["image"].shape[-1])
        pooled, pooled_source = (F.adaptive_avg_pool2d(x, size) for x in (render["image"], source["image"].detach()))
        terms["anchor_image"] = image_weight * torch.square(pooled - pooled_source.to(pooled.dtype)).mean()
    if geometry_weight > 0:
        mask, depth = source["image_mask"].detach(), source["image_depth"].detach()
        silhouette = torch.abs(render["image_mask"] - mask).mean()
        distance = (mask * torch.abs(render["image_depth"] - depth)).mean()
        terms["anchor_geometry"] = geometry_weight * (silhouette + distance)
    return terms


class LpipsLoss:
    """Perceptual distance between two image batches in [−1, 1], averaged to a scalar.

    Wraps any callable ``network(image, reference) -> distances``. ``from_local`` loads LPIPS-Alex from a
    weights folder (:func:`engine.distill.lpips_alex.load_lpips_alex`) or a network saved with
    ``torch.export.save`` (a ``.pt2`` archive); nothing is ever downloaded.
    """

    def __init__(self, network: Callable[[Tensor, Tensor], Tensor]):
        self.network = network

    def __call__(self, image: Tensor, reference: Tensor, weight: float = 1.0) -> Tensor:
        """``weight · mean(network(image, reference.detach()))``; gradients reach ``image`` only."""
        check_same_shape("image", image, "reference", reference)
        if isinstance(self.network, torch.nn.Module):
            self.network.to(image.device)
        return weight * self.network(image, reference.detach().to(image.dtype)).mean()

    @classmethod
    def from_local(cls, path: str | os.PathLike | None) -> "LpipsLoss | None":
        """The loss from a local LPIPS-Alex weights folder or exported network; None when ``path`` is None or
        nothing is there.

        A folder without the LPIPS-Alex weights, or a file that cannot be loaded as a ``torch.export`` archive,
        raises CheckpointError naming it, so a wrong path is reported instead of silently training without the
        LPIPS term.
        """
        if path is None:
            return None
        file = Path(path)
        if file.is_dir():
            from .lpips_alex import load_lpips_alex

            return cls(load_lpips_alex(file))
        if not file.is_file():
            return None
        try:
            program = torch.export.load(str(file))
        except Exception as exc:  # torch raises several unrelated types for a bad archive
            raise CheckpointError(
                f"LPIPS network {file}: not a torch.export archive (.pt2) taking (image, reference) in [-1, 1]: {exc}"
            ) from None
        network = program.module()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        return cls(network)
