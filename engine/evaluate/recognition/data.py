"""Labelled renders of the procedural head world for training and testing the recognition networks.

Heads are rendered once on a black background and kept *premultiplied* together with their coverage mask,
so :mod:`engine.evaluate.recognition.augment` can put a fresh random background behind every use of a render at no
cost. Images are stored as uint8 (a 7 000-render set is ~120 MB instead of ~470 MB in float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...errors import ConfigError
from ...generator.camera import CameraConfig, cameras_at
from ...io.configs import JsonConfig
from ...world import STYLES, render_heads, sample_identities

# Heads of the world are centred on the origin, so cameras look at it (see engine.world).
WORLD_CAMERA = CameraConfig(pivot=(0.0, 0.0, 0.0))


@dataclass(frozen=True)
class ViewSampling(JsonConfig):
    """Camera distribution: mostly within ``front_yaw`` of the front, the rest anywhere on the circle."""

    config_label: ClassVar[str] = "view sampling"

    front_yaw: float = math.radians(100.0)
    front_fraction: float = 0.8
    pitch: float = 0.35

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(yaw, pitch) radians, each (n,)."""
        near = (torch.rand(n, generator=generator) * 2 - 1) * self.front_yaw
        anywhere = (torch.rand(n, generator=generator) * 2 - 1) * math.pi
        use_near = torch.rand(n, generator=generator) < self.front_fraction
        pitch = (torch.rand(n, generator=generator) * 2 - 1) * self.pitch
        return torch.where(use_near, near, anywhere), pitch


@dataclass
class RenderSet:
    """N renders with their labels. ``premultiplied`` / ``alpha`` are uint8 (0..255)."""

    premultiplied: Tensor  # (N, 3, R, R) colour × coverage, on black
    alpha: Tensor  # (N, 1, R, R)
    identities: Tensor  # (N, D) the world identity vector of each render
    subject: Tensor  # (N,) int64 index of the identity (renders of one person share it)
    style: Tensor  # (N,) int64 index into ``styles``
    yaw: Tensor  # (N,)
    pitch: Tensor  # (N,)
    styles: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.subject.shape[0])

    def float_pair(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """(premultiplied, alpha) of the selected renders as float32 in [0, 1]."""
        return self.premultiplied[index].float() / 255.0, self.alpha[index].float() / 255.0

    def on_background(self, index: Tensor, grey: float = 0.5) -> Tensor:
        """Selected renders over a plain grey background, in [-1, 1] (for evaluation without augmentation)."""
        colour, alpha = self.float_pair(index)
        return (colour + (1.0 - alpha) * grey) * 2.0 - 1.0


def render_set(
    identities: Tensor,
    styles: Tensor,
    yaw: Tensor,
    pitch: Tensor,
    resolution: int = 64,
    style_names: tuple[str, ...] = tuple(STYLES),
    subject: Tensor | None = None,
    chunk: int = 256,
) -> RenderSet:
    """Render render ``i`` of identity ``identities[i]`` in style ``style_names[styles[i]]`` from (yaw, pitch).

    Renders are grouped by style (one ``render_heads`` call per style and chunk), then put back in order.
    """
    n = identities.shape[0]
    if not (styles.shape[0] == yaw.shape[0] == pitch.shape[0] == n):
        raise ConfigError(f"render_set: identities, styles, yaw and pitch must all have length {n}")
    premult = torch.empty(n, 3, resolution, resolution, dtype=torch.uint8)
    alpha = torch.empty(n, 1, resolution, resolution, dtype=torch.uint8)
    cameras = cameras_at(yaw, pitch, WORLD_CAMERA).c
    for style_index, name in enumerate(style_names):
        rows = torch.nonzero(styles == style_index).flatten()
        for part in rows.split(chunk) if rows.numel() else ():  # render_heads refuses an empty batch
            out = render_heads(identities[part], cameras[part], resolution, name, background="black")
            premult[part] = _to_uint8((out["image"] + 1.0) * 0.5)
            alpha[part] = _to_uint8(out["mask"])
    return RenderSet(
        premult, alpha, identities.clone(), subject if subject is not None else torch.arange(n), styles.clone(),
        yaw.clone(), pitch.clone(), tuple(style_names),
    )


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def training_set(
    n_identities: int,
    renders_per_identity: int,
    generator: torch.Generator,
    resolution: int = 64,
    views: ViewSampling = ViewSampling(),
    style_names: tuple[str, ...] = tuple(STYLES),
) -> RenderSet:
    """``renders_per_identity`` renders of each of ``n_identities`` random identities, each in a random style
    and from a random view; renders of one subject are consecutive (``subject`` = identity index)."""
    ids = sample_identities(n_identities, generator)
    subject = torch.arange(n_identities).repeat_interleave(renders_per_identity)
    n = subject.shape[0]
    styles = torch.randint(len(style_names), (n,), generator=generator)
    yaw, pitch = views.sample(n, generator)
    return render_set(ids[subject], styles, yaw, pitch, resolution, style_names, subject)
