"""Direct 3-D supervision of a tri-grid field by a signed distance: the density targets and their loss.

Shared by the pack generator's training (``scripts/pack/train_generator_v2.py``, world SDF) and head mode
(:mod:`engine.heads.mesh_field`, an artist's mesh). A surface known as a signed distance ``d`` (world units,
negative inside) becomes a raw-density target ``clamp(iso − d · slope, low, high)``: the iso level that mesh
extraction uses (10) sits exactly on the surface, the inside is opaque after the renderer's
``softplus(σ − 1)`` and the outside transparent. The default slope (1 / 2.5e-5 per world unit) makes the
step from −20 to 250 about 0.007 world units (~0.4 cm of a head) wide — sharper than a 64² tri-grid texel
(0.016), which is why :func:`density_loss` can ignore small errors and errors beyond a clamped target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DensityTarget:
    """How a signed distance becomes a raw-density target, and how far the fit may miss it for free."""

    iso_level: float = 10.0
    slope: float = 1.0 / 2.5e-5  # raw-density units per world unit of signed distance
    low: float = -20.0  # transparent: softplus(−21) ≈ 8e-10
    high: float = 250.0  # opaque within a fraction of a millimetre
    scale: float = 50.0  # the loss is divided by this so it weighs about as much as a colour L1 in [0, 1]
    one_sided: bool = False  # beyond a clamped target (more transparent than low, more opaque than high) is no error
    tolerance: float = 0.0  # errors up to this many density units cost nothing

    def __call__(self, signed_distance: Tensor) -> Tensor:
        return (self.iso_level - signed_distance * self.slope).clamp(self.low, self.high)


def density_loss(sigma: Tensor, target: Tensor, spec: DensityTarget) -> Tensor:
    """Mean L1 of raw density ``sigma`` against ``target`` (÷ ``spec.scale``), one-sided at the clamps and
    free within ``spec.tolerance`` when asked."""
    error = sigma - target
    if spec.one_sided:
        error = torch.where(target <= spec.low, error.clamp_min(0), error)  # more transparent than low: fine
        error = torch.where(target >= spec.high, error.clamp_max(0), error)  # more opaque than high: fine
    return (error.abs() - spec.tolerance).clamp_min(0).mean() / spec.scale
