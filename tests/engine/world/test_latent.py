"""The latent ↔ identity map of the embedded generator (engine.world.latent)."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import InputError
from engine.world import IDENTITY_DIM, sample_identities
from engine.world.identity import IDENTITY_INDEX
from engine.world.latent import identity_from_latent, latent_from_identity

pytestmark = pytest.mark.usefixtures("single_thread")

ASYM = IDENTITY_INDEX["asymmetry"]


def test_hand_values():
    # Φ(0) = 1/2 → 0; Φ(1) = 0.841345 → 0.682689 (the 1-σ mass); asymmetry is squared with its sign kept.
    z = torch.zeros(2, IDENTITY_DIM, dtype=torch.float64)
    z[1] = 1.0
    z[1, ASYM] = -1.0
    u = identity_from_latent(z)
    assert torch.equal(u[0], torch.zeros(IDENTITY_DIM, dtype=torch.float64))
    assert u[1, 0].item() == pytest.approx(0.6826894921, abs=1e-9)
    assert u[1, ASYM].item() == pytest.approx(-(0.6826894921**2), abs=1e-9)


def test_round_trip_both_ways():
    z = torch.randn(256, IDENTITY_DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(latent_from_identity(identity_from_latent(z)), z, atol=1e-8)
    ids = sample_identities(256, torch.Generator().manual_seed(2)).double()
    assert torch.allclose(identity_from_latent(latent_from_identity(ids)), ids, atol=1e-10)


def test_extra_latent_dims_carry_no_identity():
    z = torch.randn(8, 64, generator=torch.Generator().manual_seed(3))
    z2 = z.clone()
    z2[:, IDENTITY_DIM:] = torch.randn(8, 64 - IDENTITY_DIM, generator=torch.Generator().manual_seed(4))
    assert torch.equal(identity_from_latent(z), identity_from_latent(z2))
    back = latent_from_identity(identity_from_latent(z), z_dim=64)
    assert back.shape == (8, 64) and torch.equal(back[:, IDENTITY_DIM:], torch.zeros(8, 64 - IDENTITY_DIM))


def test_distribution_matches_sample_identities():
    """z ~ N(0, I) gives the world's prior: uniform entries and the same asymmetry shaping."""
    n = 20000
    mapped = identity_from_latent(torch.randn(n, IDENTITY_DIM, generator=torch.Generator().manual_seed(5)))
    world = sample_identities(n, torch.Generator().manual_seed(6))
    assert mapped.abs().max() <= 1.0
    # Two-sample Kolmogorov–Smirnov distance per entry; for n = 20000 the 0.1 % critical value is ≈ 0.0195.
    qs = torch.linspace(-1, 1, 401)
    cdf_m = (mapped.unsqueeze(-1) <= qs).float().mean(0)
    cdf_w = (world.unsqueeze(-1) <= qs).float().mean(0)
    assert (cdf_m - cdf_w).abs().amax().item() < 0.0195
    # U[-1, 1] has variance 1/3; the shaped asymmetry s·u² has E[u⁴] = 1/5.
    others = torch.cat((mapped[:, :ASYM], mapped[:, ASYM + 1 :]), 1)
    assert others.var(0).mean().item() == pytest.approx(1 / 3, abs=0.01)
    assert mapped[:, ASYM].pow(2).mean().item() == pytest.approx(0.2, abs=0.01)


def test_monotone_and_mirror_consistent():
    z = torch.linspace(-3, 3, 13).unsqueeze(1).expand(-1, IDENTITY_DIM)
    u = identity_from_latent(z)
    assert bool((u[1:] > u[:-1]).all())
    # Negating the asymmetry latent negates the asymmetry entry (the mirror head).
    flipped = z.clone()
    flipped[:, ASYM] *= -1
    assert torch.allclose(identity_from_latent(flipped)[:, ASYM], -u[:, ASYM])


def test_edges_stay_finite():
    ids = torch.ones(2, IDENTITY_DIM)
    ids[1] = -1
    z = latent_from_identity(ids)
    assert bool(torch.isfinite(z).all()) and (z[0] > 3).all() and (z[1] < -3).all()


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(2, IDENTITY_DIM - 1), torch.zeros(2, 3, IDENTITY_DIM), torch.zeros(2, IDENTITY_DIM, dtype=torch.long),
     torch.full((1, IDENTITY_DIM), math.nan), [0.0] * IDENTITY_DIM],
)
def test_bad_latents_raise(bad):
    with pytest.raises(InputError, match="z"):
        identity_from_latent(bad)


def test_bad_identities_raise():
    with pytest.raises(InputError):
        latent_from_identity(torch.zeros(2, IDENTITY_DIM + 1))
    with pytest.raises(InputError, match="z_dim"):
        latent_from_identity(torch.zeros(2, IDENTITY_DIM), z_dim=IDENTITY_DIM - 1)


def test_one_dimensional_input_is_one_row():
    assert identity_from_latent(torch.zeros(IDENTITY_DIM)).shape == (1, IDENTITY_DIM)
