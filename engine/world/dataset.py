"""Training samples from the procedural head world: styled renders, their prompts and ControlNet hints.

A diffusion prior (or any image model) trained for the stylization pipeline must see what the pipeline
will show it, so this module renders heads through the generator's camera convention and computes the
ControlNet hints with the *same* functions guidance uses at inference:

* **single views**: the edge hint is :func:`~engine.guidance.control.canny_edges` of the image (thresholds
  50/250, the stylization default), the depth hint :func:`~engine.guidance.control.depth_control` of the
  render's ray depth and coverage mask (what the generator reports as ``image_depth`` / ``image_mask``);
* **2×2 grids** (:func:`tile_grids`), the layout of the stylization grid stage: four views of one head are
  resized to half size with ``align_corners=True`` (as the grid stage resizes its raw renders) and tiled;
  the depth hint is computed per view at full size, tiled, and resized to the grid size exactly as
  :meth:`engine.guidance.Guidance._prepare_control` does (bilinear, antialiased).

Every head is rendered from ``views_per_identity`` cameras (yaw over the full circle, weighted to the front)
and the same identities and cameras are rendered in every style, so a style differs from another only in
look. Backgrounds are plain (white, black or a random colour per image), like the generator's renders.
Everything is seeded: the same :class:`WorldDataConfig` and seed give the same tensors.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, InputError
from ..generator.camera import CameraConfig, CameraSet, cameras_at
from ..guidance.control import canny_edges, depth_control
from .identity import sample_identities
from .render import make_background, render_heads
from .styles import STYLES, get_style

HINT_KINDS = ("edge", "depth")
_GRID_VIEWS = 4


@dataclass(frozen=True)
class WorldDataConfig:
    """What to render. Angles in radians; ``resolution`` is the image side in pixels.

    ``front_fraction`` of the cameras draw their yaw from a normal distribution of ``front_yaw_std`` around
    the front view, the rest uniformly over the full circle (stylization looks at the front most, but the
    grid stage sees every side). ``backgrounds`` are the kinds of :func:`engine.world.make_background`
    drawn per image.
    """

    resolution: int = 64
    styles: tuple[str, ...] = tuple(STYLES)
    identities: int = 100
    views_per_identity: int = 4
    front_fraction: float = 0.6
    front_yaw_std: float = 0.6
    pitch_range: tuple[float, float] = (-0.35, 0.35)
    backgrounds: tuple[str, ...] = ("white", "black", "plain")
    camera: CameraConfig = field(default_factory=lambda: CameraConfig(pivot=(0.0, 0.0, 0.0)))
    canny_thresholds: tuple[float, float] = (50.0, 250.0)
    render_chunk: int = 64

    def validate(self) -> "WorldDataConfig":
        if self.resolution < 8 or self.resolution % 2:
            raise ConfigError(f"WorldDataConfig.resolution must be even and ≥ 8, got {self.resolution}")
        if not self.styles:
            raise ConfigError("WorldDataConfig.styles must name at least one style")
        for name in self.styles:
            get_style(name)
        if self.identities < 1 or self.views_per_identity < 1:
            raise ConfigError("WorldDataConfig.identities and views_per_identity must be ≥ 1")
        if not 0.0 <= self.front_fraction <= 1.0 or self.front_yaw_std <= 0:
            raise ConfigError("WorldDataConfig.front_fraction must be in [0, 1] and front_yaw_std > 0")
        lo, hi = self.pitch_range
        if not -math.pi / 2 < lo <= hi < math.pi / 2:
            raise ConfigError(f"WorldDataConfig.pitch_range must lie inside (-π/2, π/2), got {self.pitch_range}")
        if not self.backgrounds:
            raise ConfigError("WorldDataConfig.backgrounds must name at least one background kind")
        if self.render_chunk < 1:
            raise ConfigError(f"WorldDataConfig.render_chunk must be ≥ 1, got {self.render_chunk}")
        return self


@dataclass
class WorldSamples:
    """A set of rendered samples; every tensor has the sample count as its first dimension.

    ``images`` are (N, 3, R, R) in [-1, 1]; ``depth`` (ray distance) and ``mask`` (coverage) are
    (N, 1, R, R); ``edge`` and ``depth_hint`` hold one channel of the ControlNet hints in [0, 1] (the hints
    are grey, :meth:`hint` expands them to the (N, 3, R, R) images ControlNets take). ``style_index``
    indexes ``styles``; ``identity_index`` numbers the heads within the set; ``cameras`` are (N, 25) (for a
    grid, the camera of its first view).
    """

    images: Tensor
    depth: Tensor
    mask: Tensor
    edge: Tensor
    depth_hint: Tensor
    style_index: Tensor
    identity_index: Tensor
    cameras: Tensor
    styles: tuple[str, ...]

    _TENSORS = ("images", "depth", "mask", "edge", "depth_hint", "style_index", "identity_index", "cameras")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    @property
    def style_names(self) -> list[str]:
        return [self.styles[i] for i in self.style_index.tolist()]

    @property
    def prompts(self) -> list[str]:
        """The text prompt of each sample's style (``engine.world.STYLES[name].prompt``)."""
        return [STYLES[name].prompt for name in self.style_names]

    def hint(self, kind: str) -> Tensor:
        """The (N, 3, R, R) ControlNet conditioning image of ``kind`` (``"edge"`` or ``"depth"``)."""
        if kind not in HINT_KINDS:
            raise InputError(f"hint kind must be one of {HINT_KINDS}, got {kind!r}")
        single = self.edge if kind == "edge" else self.depth_hint
        return single.float().expand(-1, 3, -1, -1)

    def select(self, index: Tensor | Sequence[int]) -> "WorldSamples":
        index = torch.as_tensor(index, dtype=torch.long)
        return replace(self, **{name: getattr(self, name)[index] for name in self._TENSORS})

    def to_dict(self) -> dict:
        out = {name: getattr(self, name) for name in self._TENSORS}
        out["styles"] = list(self.styles)
        return out

    @classmethod
    def concatenate(cls, parts: Sequence["WorldSamples"]) -> "WorldSamples":
        if not parts:
            raise InputError("nothing to concatenate")
        if any(p.styles != parts[0].styles for p in parts):
            raise InputError("samples with different style tables cannot be concatenated")
        return cls(**{n: torch.cat([getattr(p, n) for p in parts]) for n in cls._TENSORS}, styles=parts[0].styles)

    def save(self, path: str | os.PathLike) -> None:
        """Write the samples (a torch file of plain tensors), atomically."""
        from ..io.atomic import write_with

        data = self.to_dict()
        data["edge"] = data["edge"].to(torch.uint8)  # binary: a quarter of the space
        write_with(path, lambda tmp: torch.save(data, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WorldSamples":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
            raise InputError(f"{path}: not a readable world sample file ({exc})") from exc
        missing = [n for n in (*cls._TENSORS, "styles") if n not in data]
        if missing:
            raise InputError(f"{path}: world sample file lacks {missing}")
        data["edge"] = data["edge"].float()
        data["styles"] = tuple(data["styles"])
        return cls(**{f.name: data[f.name] for f in fields(cls)})


# --------------------------------------------------------------------------------------------------
# Cameras and hints
# --------------------------------------------------------------------------------------------------
def sample_training_cameras(n: int, config: WorldDataConfig, generator: torch.Generator) -> CameraSet:
    """``n`` cameras: yaw front-weighted (see :class:`WorldDataConfig`), pitch uniform in ``pitch_range``."""
    u = torch.rand(3, n, generator=generator)
    front = torch.randn(n, generator=generator) * config.front_yaw_std
    around = (u[0] * 2.0 - 1.0) * math.pi
    yaw = torch.where(u[1] < config.front_fraction, front, around)
    yaw = torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi
    lo, hi = config.pitch_range
    pitch = lo + (hi - lo) * u[2]
    return cameras_at(yaw, pitch, config.camera)


def control_hints(
    image: Tensor, depth: Tensor, mask: Tensor, canny_thresholds: tuple[float, float] = (50.0, 250.0)
) -> tuple[Tensor, Tensor]:
    """``(edge, depth)`` ControlNet images (N, 3, R, R) in [0, 1], computed exactly as guidance computes them.

    ``image`` in [-1, 1] (the generator's range); ``depth`` and ``mask`` as the generator's ``image_depth``
    and ``image_mask``.
    """
    edge = canny_edges(image, *canny_thresholds)
    return edge, depth_control(depth, mask)


def resize_hint_like_guidance(hint: Tensor, size: int) -> Tensor:
    """Resize a ControlNet image the way :class:`engine.guidance.Guidance` does before its ControlNet call."""
    if hint.shape[-1] == size and hint.shape[-2] == size:
        return hint
    shrinking = hint.shape[-1] > size
    return F.interpolate(hint.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def _composite_backgrounds(
    image: Tensor, mask: Tensor, config: WorldDataConfig, generator: torch.Generator
) -> Tensor:
    """Put each head (rendered over black) in front of a background kind drawn per image."""
    n, res = image.shape[0], image.shape[-1]
    kinds = torch.randint(len(config.backgrounds), (n,), generator=generator)
    backs = torch.empty(n, 3, res, res)
    for k, kind in enumerate(config.backgrounds):  # a handful of kinds, each rendered as one batch
        rows = (kinds == k).nonzero().flatten()
        if rows.numel():
            backs[rows] = make_background(kind, rows.numel(), res, generator).permute(0, 3, 1, 2)
    colour01 = (image + 1.0) / 2.0  # = mask · shade, the head over black
    return (colour01 + (1.0 - mask) * backs) * 2.0 - 1.0


def render_styled(
    identities: Tensor, cameras: Tensor, style: str, config: WorldDataConfig, generator: torch.Generator
) -> dict[str, Tensor]:
    """Render head i through camera i in ``style`` with drawn backgrounds; image, depth, mask and hints."""
    parts: dict[str, list[Tensor]] = {k: [] for k in ("image", "depth", "mask", "edge", "depth_hint")}
    for start in range(0, identities.shape[0], config.render_chunk):
        rows = slice(start, start + config.render_chunk)
        out = render_heads(identities[rows], cameras[rows], config.resolution, style, background="black")
        image = _composite_backgrounds(out["image"], out["mask"], config, generator)
        edge, hint = control_hints(image, out["depth"], out["mask"], config.canny_thresholds)
        for key, value in (("image", image), ("depth", out["depth"]), ("mask", out["mask"]),
                           ("edge", edge[:, :1]), ("depth_hint", hint[:, :1])):  # fmt: skip
            parts[key].append(value)
    return {k: torch.cat(v) for k, v in parts.items()}


def render_world_samples(config: WorldDataConfig, seed: int) -> WorldSamples:
    """Every identity from ``views_per_identity`` cameras in every style (identity-major, views consecutive).

    Sample order: style, then identity, then view; the same identities and cameras in every style.
    """
    config = config.validate()
    generator = torch.Generator().manual_seed(int(seed))
    identities = sample_identities(config.identities, generator)
    views = config.views_per_identity
    cameras = sample_training_cameras(config.identities * views, config, generator).c
    per_view = identities.repeat_interleave(views, dim=0)
    identity_index = torch.arange(config.identities).repeat_interleave(views)
    parts = []
    for s, name in enumerate(config.styles):
        out = render_styled(per_view, cameras, name, config, generator)
        parts.append(
            WorldSamples(
                images=out["image"], depth=out["depth"], mask=out["mask"], edge=out["edge"],
                depth_hint=out["depth_hint"], style_index=torch.full((per_view.shape[0],), s, dtype=torch.long),
                identity_index=identity_index.clone(), cameras=cameras.clone(), styles=tuple(config.styles),
            )  # fmt: skip
        )
    return WorldSamples.concatenate(parts)


def tile_grids(samples: WorldSamples, canny_thresholds: tuple[float, float] = (50.0, 250.0)) -> WorldSamples:
    """2×2 grids of each run of four consecutive views (as :func:`render_world_samples` orders them).

    Same size as the views: each view is resized to half size (bilinear, ``align_corners=True``, as the
    stylization grid stage resizes its raw renders) and tiled v0 v1 / v2 v3. The depth hint is the per-view
    hint tiled to twice the size and resized back as guidance resizes control images; the edge hint is
    Canny of the tiled image. ``depth``/``mask`` are resized like the image.
    """
    from ..distill.grid import tile_2x2

    n = len(samples)
    if n % _GRID_VIEWS:
        raise InputError(f"tile_grids needs a multiple of 4 views, got {n}")
    res = samples.resolution
    half = res // 2

    def shrink(x: Tensor) -> Tensor:
        return F.interpolate(x.float(), size=(half, half), mode="bilinear", align_corners=True)

    images = tile_2x2(shrink(samples.images))
    depth_hint = resize_hint_like_guidance(tile_2x2(samples.depth_hint.float()), res)
    edge = canny_edges(images, *canny_thresholds)[:, :1]
    first = torch.arange(0, n, _GRID_VIEWS)
    return WorldSamples(
        images=images,
        depth=tile_2x2(shrink(samples.depth)),
        mask=tile_2x2(shrink(samples.mask)),
        edge=edge,
        depth_hint=depth_hint,
        style_index=samples.style_index[first],
        identity_index=samples.identity_index[first],
        cameras=samples.cameras[first],
        styles=samples.styles,
    )


class WorldSampler:
    """Seeded random minibatches (with replacement between batches) from a :class:`WorldSamples` set."""

    def __init__(self, samples: WorldSamples, seed: int) -> None:
        if len(samples) == 0:
            raise InputError("WorldSampler needs at least one sample")
        self.samples = samples
        self.generator = torch.Generator().manual_seed(int(seed))

    def indices(self, batch_size: int) -> Tensor:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}")
        return torch.randint(len(self.samples), (batch_size,), generator=self.generator)

    def next_batch(self, batch_size: int) -> WorldSamples:
        return self.samples.select(self.indices(batch_size))
