"""A fixed, invertible map between generator latents ``z`` and world identities.

The embedded generator is trained to reproduce the procedural world: latent ``z`` must *be* a world head,
so that a seed names the same person in the generator and in the world (held-out metrics, identity tests,
training targets). The map is element-wise on the first :data:`IDENTITY_DIM` entries of ``z``:

* ``u = 2·Φ(z_i) − 1`` (Φ the standard normal CDF) turns ``z ~ N(0, I)`` into ``u ~ U[−1, 1]`` exactly,
  the distribution :func:`engine.world.identity.sample_identities` draws;
* the asymmetry entry is then shaped like ``sample_identities`` does (``sign(u)·|u|^p``), so most latents
  give nearly mirror-symmetric heads, in the same proportion as the world's own samples.

Entries of ``z`` beyond ``IDENTITY_DIM`` (generators with a wider ``z_dim``) carry no identity.

Why not use the mapping network's normalised ``z`` instead: StyleGAN's mapping divides ``z`` by its RMS, so
the generator sees only the direction of ``z``. A map defined on the direction could not be inverted (a
sphere cannot cover the identity cube), whereas this one is an exact bijection between R^D and (−1, 1)^D;
the price is that the generator has to infer the ~12 % RMS spread of a 32-D normal vector, which it learns
as a conditional mean. That trade keeps :func:`latent_from_identity` exact, which inversion and tests need.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError
from .identity import _ASYMMETRY_SAMPLING_POWER, IDENTITY_DIM, IDENTITY_INDEX, check_identity

# Identities of exactly ±1 would need an infinite latent; the inverse clips to this margin first.
_EDGE_MARGIN = 1e-6

_ASYMMETRY = IDENTITY_INDEX["asymmetry"]


def _check_latent(z: Tensor, name: str = "z") -> Tensor:
    if not isinstance(z, Tensor):
        raise InputError(f"{name} must be a torch.Tensor of shape (N, ≥{IDENTITY_DIM}), got {type(z).__name__}")
    if z.dim() == 1:
        z = z.unsqueeze(0)
    if z.dim() != 2 or z.shape[1] < IDENTITY_DIM:
        raise InputError(f"{name} must have shape (N, z_dim) with z_dim ≥ {IDENTITY_DIM}, got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise InputError(f"{name} must be a floating tensor, got {z.dtype}")
    if not bool(torch.isfinite(z).all()):
        raise InputError(f"{name} holds NaN or infinite values")
    return z


def identity_from_latent(z: Tensor) -> Tensor:
    """(N, z_dim) latents → (N, IDENTITY_DIM) identities in [−1, 1]; ``z ~ N(0, I)`` gives the world's prior."""
    z = _check_latent(z)
    u = torch.erf(z[:, :IDENTITY_DIM] / math.sqrt(2.0))  # 2Φ(z) − 1
    a = u[:, _ASYMMETRY]
    shaped = a.sign() * a.abs().pow(_ASYMMETRY_SAMPLING_POWER)
    return torch.cat((u[:, :_ASYMMETRY], shaped.unsqueeze(1), u[:, _ASYMMETRY + 1 :]), dim=1)


def latent_from_identity(identity: Tensor, z_dim: int = IDENTITY_DIM) -> Tensor:
    """Inverse of :func:`identity_from_latent`: (N, D) identities → (N, z_dim) latents.

    Entries past ``IDENTITY_DIM`` are zero (they carry no identity). Identities are clipped just inside
    (−1, 1) so the result stays finite.
    """
    identity = check_identity(identity)
    if int(z_dim) < IDENTITY_DIM:
        raise InputError(f"z_dim must be ≥ {IDENTITY_DIM}, got {z_dim}")
    u = identity.clamp(-1.0 + _EDGE_MARGIN, 1.0 - _EDGE_MARGIN)
    a = u[:, _ASYMMETRY]
    unshaped = a.sign() * a.abs().pow(1.0 / _ASYMMETRY_SAMPLING_POWER)
    u = torch.cat((u[:, :_ASYMMETRY], unshaped.unsqueeze(1), u[:, _ASYMMETRY + 1 :]), dim=1)
    z = torch.erfinv(u) * math.sqrt(2.0)
    if z_dim > IDENTITY_DIM:
        z = torch.cat((z, z.new_zeros(z.shape[0], int(z_dim) - IDENTITY_DIM)), dim=1)
    return z
