"""Reproducible random StyleGAN noise.

The synthesis network's ``noise_mode="random"`` (what the official stylization code trains and renders with)
draws fresh per-layer noise with ``torch.randn`` from the global random state. Training must stay exactly
reproducible from (seed, step) — resuming from a checkpoint relies on it — and a head's views must not
change between two runs, so every random synthesis here runs inside :func:`seeded_noise`: the global state
is seeded from a number the caller draws from its own stream, and restored afterwards, so nothing else that
uses the global state is disturbed.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

NOISE_MODES = ("const", "random")


def draw_noise_seed(noise_mode: str, rng: torch.Generator) -> int | None:
    """A seed for the random noise of one synthesis, drawn from ``rng``; None (nothing drawn) for ``const``."""
    if noise_mode == "const":
        return None
    return int(torch.randint(0, 2**62, (1,), generator=rng))


@contextlib.contextmanager
def seeded_noise(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Random noise drawn inside this block comes from ``seed`` (None: leave the global state alone)."""
    if seed is None:
        yield
        return
    device = torch.device(device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
