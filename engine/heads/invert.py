"""Invert views of a head into the generator: multi-view W+ optimisation with optional pivotal tuning.

Given images of one head from cameras whose poses are known (:mod:`engine.heads.scan_views` renders them from a
scan; a portrait comes with a user pose), find the W+ latent whose renders match them. Stylization then
only has to apply the stylized generator to that latent, so the stylized head keeps the scan's identity.

The objective, per step, over a few of the target views (cycled, so every view is used equally often):

* pixel loss: L1 + L2 between the generator's raw neural render (``image_raw``, composited over the same
  background as the targets with the render's own opacity) and the target downsampled to the inversion
  resolution; optionally also on the super-resolved ``image`` (``sr_weight``, at the native resolution);
* mask loss: L1 between the render's opacity (``image_mask``) and the target's coverage — it pins the
  silhouette, which identity is largely made of for the procedural heads;
* feature loss: 1 − cosine between identity-encoder embeddings of render and target when the embedded
  pack's encoder (:mod:`engine.evaluate.recognition`) is given, else an L1 on a fixed, VGG-free feature pyramid
  (box-filtered image and its Sobel gradients at three scales) — cheap, and edges carry the facial layout.
  The encoder term is weighted 0.1: at 0.5 the optimiser paints colour noise that raises the encoder's score
  without looking more like the source (seen on the pack generator);
* regularisers: ‖w − w̄‖² toward the generator's mean w (keeps the latent where the generator is good) and
  the spread of the W+ layers around their own mean (W+ that drifts apart per layer stops being a head).
  The generator's per-layer noise is the constant buffer ("const" noise mode), so there is no noise map to
  optimise or regularise.

The start is the best of the mean w and ``start_candidates`` mapped samples (one cheap forward each).

Judging an inversion: the identity encoder is part of the loss, so its cosine on a *fitted* view measures
the optimisation, not the identity. Score on views the inversion never saw instead: :data:`SCORE_VIEW_YAWS_DEG`
/ :data:`SCORE_VIEW_PITCHES_DEG` (yaw ±25°, ±65°, between the fitted cameras) for scans, or views split off a
target with :func:`split_views` (what the batch does).

Optional pivotal tuning (``pti_steps > 0``, after PTI by Roich et al.): fine-tune the synthesis weights for
a few steps around the found W+ on the same loss, and return the changed weights separately; the base
generator is left untouched.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, InputError
from ..generator.camera import CameraConfig, cameras_at
from ..generator.inference import camera_config_for
from ..generator.triplane import RenderOptions, TriPlaneGenerator
from ..io.atomic import write_with
from ..io.configs import JsonConfig

Embedder = Callable[[Tensor], Tensor]  # images (N, 3, H, W) in [-1, 1] → (N, D) unit embeddings
BACKGROUND_VALUES = {"white": 1.0, "black": -1.0}


@dataclass(frozen=True)
class InversionConfig(JsonConfig):
    """Settings of :func:`invert`. Defaults aim at ≤ 60 s per scan on a CPU with the embedded pack."""

    steps: int = 25
    learning_rate: float = 0.04
    views_per_step: int = 2
    neural_resolution: int = 32  # render resolution during optimisation (the generator's native is 64)
    # mapped samples tried besides the mean w. The v2 pack generator's mapping learned its identities (W has
    # basins): with 4, one of two procedural scans started from the mean w and stalled (view L1 0.09, matched to
    # the other scan); with 16 both end at 0.04–0.05 and re-identify (margin 0.92). 60 steps from 4 did not.
    start_candidates: int = 16
    start_seed: int = 0
    pixel_weight: float = 1.0
    mask_weight: float = 1.0
    feature_weight: float = 0.1  # identity-encoder cosine; larger weights start to paint adversarial colour noise
    sr_weight: float = 0.0  # > 0 also compares the super-resolved image (slower: native resolution)
    w_mean_weight: float = 0.002
    w_layer_weight: float = 0.01
    background: str = "white"  # what renders and targets are composited over
    pti_steps: int = 0
    pti_learning_rate: float = 3e-4
    pti_groups: tuple[str, ...] = ("synthesis",)

    def validate(self) -> "InversionConfig":
        if self.steps < 0 or self.pti_steps < 0:
            raise ConfigError(f"inversion steps must be ≥ 0, got steps={self.steps}, pti_steps={self.pti_steps}")
        if self.views_per_step < 1:
            raise ConfigError(f"inversion views_per_step must be ≥ 1, got {self.views_per_step}")
        if self.neural_resolution < 8:
            raise ConfigError(f"inversion neural_resolution must be ≥ 8, got {self.neural_resolution}")
        if self.background not in BACKGROUND_VALUES:
            raise ConfigError(f"inversion background must be one of {sorted(BACKGROUND_VALUES)}, got {self.background!r}")
        if self.start_candidates < 0:
            raise ConfigError(f"inversion start_candidates must be ≥ 0, got {self.start_candidates}")
        for name in ("learning_rate", "pti_learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"inversion {name} must be > 0, got {getattr(self, name)}")
        return self


@dataclass
class InversionTarget:
    """Images of one head (V, 3, H, W) in [-1, 1], their coverage masks (V, 1, H, W) and cameras (V, 25)."""

    images: Tensor
    masks: Tensor
    cameras: Tensor
    names: tuple[str, ...] = ()

    def validate(self) -> "InversionTarget":
        v = self.images.shape[0]
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise InputError(f"inversion target images must be (V, 3, H, W), got {tuple(self.images.shape)}")
        if self.masks.shape != (v, 1, *self.images.shape[2:]):
            raise InputError(f"inversion target masks must be (V, 1, H, W) = {(v, 1, *self.images.shape[2:])}, got {tuple(self.masks.shape)}")
        if self.cameras.shape != (v, 25):
            raise InputError(f"inversion target cameras must be ({v}, 25), got {tuple(self.cameras.shape)}")
        if not self.names:
            self.names = tuple(f"view{i}" for i in range(v))
        if len(self.names) != v:
            raise InputError(f"inversion target has {v} views but {len(self.names)} names")
        return self

    def to(self, device: torch.device) -> "InversionTarget":
        return InversionTarget(self.images.to(device), self.masks.to(device), self.cameras.to(device), self.names)


@dataclass
class InversionResult:
    w_plus: Tensor  # (1, num_ws, w_dim)
    view_errors: dict[str, float]  # mean absolute pixel error per view (targets and render in [-1, 1])
    mask_iou: dict[str, float]
    losses: list[float]
    seconds: float
    start: str  # "mean" or "sample k"
    tuned_state: dict[str, Tensor] | None = None  # pivotal tuning: the changed generator weights
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def feature_pyramid(images: Tensor, levels: int = 3) -> list[Tensor]:
    """Fixed features: box-filtered grey image and its Sobel x/y gradients at ``levels`` scales."""
    grey = images.mean(dim=1, keepdim=True)
    kernel = torch.stack((_SOBEL, _SOBEL.T)).unsqueeze(1).to(images)
    out = []
    for level in range(levels):
        if level:
            grey = F.avg_pool2d(grey, 2)
        out.append(torch.cat((grey, F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernel)), dim=1))
    return out


def composite(image: Tensor, mask: Tensor, background: str) -> Tensor:
    return image * mask + BACKGROUND_VALUES[background] * (1.0 - mask)


def resize_to(x: Tensor, size: int) -> Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear", align_corners=None if x.shape[-1] > size else False)


def encoder_embedder(encoder: torch.nn.Module) -> Embedder:
    """A differentiable embedder from an identity encoder (``engine.evaluate.recognition.IdentityEncoder``): its
    ``forward``, not ``embed`` (which runs without gradients, so the loss would not move W+). The encoder's
    own weights are frozen."""
    encoder.eval().requires_grad_(False)
    return lambda images: encoder(images)


def mean_w(G: TriPlaneGenerator) -> Tensor:
    """The generator's tracked mean w (1, num_ws, w_dim); the mean of 256 mapped samples if it has none."""
    mapping = G.backbone.mapping
    device = next(G.parameters()).device
    w_avg = getattr(mapping, "w_avg", None)
    if w_avg is not None and float(w_avg.abs().sum()) > 0:
        return w_avg.detach().reshape(1, 1, -1).expand(1, G.num_ws, -1).clone().to(device)
    z = torch.randn(256, G.z_dim, generator=torch.Generator().manual_seed(0)).to(device)
    c = cameras_at(0.0, 0.0, CameraConfig.from_rendering(G.config.rendering)).c.to(device).expand(256, -1)
    with torch.no_grad():
        return G.mapping(z, c).mean(dim=0, keepdim=True)


class _Objective:
    """The inversion loss for a set of target views (shared by the W+ and pivotal-tuning stages)."""

    def __init__(self, G: TriPlaneGenerator, target: InversionTarget, config: InversionConfig, embedder: Embedder | None, w_avg: Tensor):
        self.G, self.config, self.embedder, self.w_avg = G, config, embedder, w_avg
        res = config.neural_resolution
        self.target = target
        self.small = composite(resize_to(target.images, res), resize_to(target.masks, res), config.background)
        self.small_masks = resize_to(target.masks, res)
        self.full = composite(target.images, target.masks, config.background)
        self.small_features = feature_pyramid(self.small)
        self.target_embeddings = None
        if embedder is not None and config.feature_weight > 0:
            with torch.no_grad():
                self.target_embeddings = embedder(self.full)

    def render(self, ws: Tensor, views: Tensor, sr: bool = False) -> dict[str, Tensor]:
        n = views.numel()
        planes = self.G.synthesize_planes(ws)
        options = RenderOptions(
            neural_resolution=None if sr else self.config.neural_resolution,
            background="none",
            run_superresolution=sr,
            deterministic_samples=True,
        )
        return self.G.render(ws.expand(n, -1, -1), self.target.cameras[views], options, planes=planes.expand(n, -1, -1, -1, -1))

    def __call__(self, ws: Tensor, views: Tensor) -> Tensor:
        c = self.config
        out = self.render(ws, views)
        image = composite(out["image_raw"], out["image_mask"], c.background)
        target = self.small[views]
        loss = c.pixel_weight * ((image - target).abs().mean() + ((image - target) ** 2).mean())
        loss = loss + c.mask_weight * (out["image_mask"] - self.small_masks[views]).abs().mean()
        if c.feature_weight > 0:
            if self.target_embeddings is not None:
                emb = self.embedder(resize_to(image, self.full.shape[-1]))
                loss = loss + c.feature_weight * (1.0 - (emb * self.target_embeddings[views]).sum(-1)).mean()
            else:
                mine = feature_pyramid(image)
                loss = loss + c.feature_weight * sum((a - b[views]).abs().mean() for a, b in zip(mine, self.small_features))
        if c.sr_weight > 0:
            sr = self.render(ws, views, sr=True)
            full_mask = resize_to(sr["image_mask"], sr["image"].shape[-1])
            sr_image = composite(sr["image"], full_mask, c.background)
            loss = loss + c.sr_weight * (sr_image - resize_to(self.full[views], sr_image.shape[-1])).abs().mean()
        loss = loss + c.w_mean_weight * ((ws - self.w_avg) ** 2).sum(-1).mean()
        loss = loss + c.w_layer_weight * ((ws - ws.mean(dim=1, keepdim=True)) ** 2).sum(-1).mean()
        return loss

    @torch.no_grad()
    def per_view(self, ws: Tensor) -> tuple[dict[str, float], dict[str, float]]:
        all_views = torch.arange(len(self.target.names), device=ws.device)
        out = self.render(ws, all_views)
        image = composite(out["image_raw"], out["image_mask"], self.config.background)
        errors = (image - self.small).abs().mean(dim=(1, 2, 3))
        a, b = out["image_mask"] > 0.5, self.small_masks > 0.5
        iou = (a & b).sum(dim=(1, 2, 3)).float() / (a | b).sum(dim=(1, 2, 3)).clamp_min(1).float()
        names = self.target.names
        return ({n: float(e) for n, e in zip(names, errors)}, {n: float(v) for n, v in zip(names, iou)})


def _view_schedule(num_views: int, per_step: int, step: int, device: torch.device) -> Tensor:
    """Views for ``step``: a sliding window over the views, so each is used equally often."""
    k = min(per_step, num_views)
    return (torch.arange(k, device=device) + step * k) % num_views


def _pick_start(G: TriPlaneGenerator, objective: _Objective, config: InversionConfig, w_avg: Tensor) -> tuple[Tensor, str]:
    candidates, labels = [w_avg], ["mean"]
    if config.start_candidates:
        device = w_avg.device
        from ..generator.inference import ViewSettings, map_latents

        settings = ViewSettings()  # the conditioning camera and truncation every other command maps seeds with
        z = torch.randn(config.start_candidates, G.z_dim, generator=torch.Generator().manual_seed(config.start_seed))
        mapped = map_latents(G, z, settings.truncation_psi, settings.truncation_cutoff, settings.conditioning_yaw,
                             settings.conditioning_pitch, settings.camera_pivot)
        candidates += [mapped[i : i + 1] for i in range(config.start_candidates)]
        labels += [f"sample {i}" for i in range(config.start_candidates)]
    views = torch.arange(min(2, len(objective.target.names)), device=w_avg.device)  # front + one more is enough to rank
    with torch.no_grad():
        scores = [float(objective(ws, views)) for ws in candidates]
    best = int(np.argmin(scores))
    return candidates[best].clone(), labels[best]


def invert(
    G: TriPlaneGenerator,
    target: InversionTarget,
    config: InversionConfig = InversionConfig(),
    embedder: Embedder | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> InversionResult:
    """Find W+ for ``target`` (see module docstring); ``G`` is not modified (pivotal tuning uses a copy)."""
    config = config.validate()
    start_time = time.perf_counter()
    device = next(G.parameters()).device
    target = target.validate().to(device)
    G.eval().requires_grad_(False)
    w_avg = mean_w(G)
    objective = _Objective(G, target, config, embedder, w_avg)
    ws_start, start_label = _pick_start(G, objective, config, w_avg)
    ws = ws_start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([ws], lr=config.learning_rate, betas=(0.9, 0.999))
    losses: list[float] = []
    total = config.steps + config.pti_steps
    for step in range(config.steps):
        lr = config.learning_rate * min(1.0, 0.5 * (1 + math.cos(math.pi * step / max(config.steps, 1))) + 0.1)
        for group in optimiser.param_groups:
            group["lr"] = lr
        loss = objective(ws, _view_schedule(len(target.names), config.views_per_step, step, device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step + 1, total, losses[-1])
    w_plus = ws.detach()

    tuned_state = None
    if config.pti_steps:
        tuned = copy.deepcopy(G)
        names = tuned.set_trainable(config.pti_groups)
        params = [p for n, p in tuned.named_parameters() if p.requires_grad]
        pti_opt = torch.optim.Adam(params, lr=config.pti_learning_rate)
        tuned_objective = _Objective(tuned, target, config, embedder, w_avg)
        for step in range(config.pti_steps):
            loss = tuned_objective(w_plus, _view_schedule(len(target.names), config.views_per_step, step, device))
            pti_opt.zero_grad(set_to_none=True)
            loss.backward()
            pti_opt.step()
            losses.append(float(loss.detach()))
            if on_step:
                on_step(config.steps + step + 1, total, losses[-1])
        tuned.requires_grad_(False)
        tuned_state = {n: p.detach().cpu().clone() for n, p in tuned.named_parameters() if n in set(names)}
        objective = tuned_objective
    errors, iou = objective.per_view(w_plus)
    return InversionResult(
        w_plus=w_plus.cpu(),
        view_errors=errors,
        mask_iou=iou,
        losses=losses,
        seconds=time.perf_counter() - start_time,
        start=start_label,
        tuned_state=tuned_state,
        info={"config": config.to_dict(), "views": list(target.names)},
    )


# --------------------------------------------------------------------------------------------------
# Targets from scans and images, and the latent file
# --------------------------------------------------------------------------------------------------
DEFAULT_VIEW_YAWS_DEG = (0.0, 45.0, -45.0, 90.0, -90.0, 180.0)
DEFAULT_VIEW_PITCHES_DEG = (0.0, -10.0, -10.0, 0.0, 0.0, 0.0)
# Views an inversion is *scored* on and never fitted to: the identity encoder is part of the inversion's loss,
# so scoring a fitted view with it measures the optimisation, not the identity. Between the fitted views.
SCORE_VIEW_YAWS_DEG = (25.0, -25.0, 65.0, -65.0)
SCORE_VIEW_PITCHES_DEG = (5.0, 5.0, -5.0, -5.0)


SCAN_PIVOT = (0.0, 0.0, 0.0)  # normalised scans (and portraits) are centred at the origin


def scan_cameras(G: TriPlaneGenerator, yaws_deg: Sequence[float] = DEFAULT_VIEW_YAWS_DEG, pitches_deg: Sequence[float] = DEFAULT_VIEW_PITCHES_DEG) -> tuple[Tensor, tuple[str, ...]]:
    """The calibrated inversion cameras (V, 25): the generator's radius and FOV, looking at the origin
    (where normalised scans and the procedural heads are centred)."""
    if len(yaws_deg) != len(pitches_deg) or not yaws_deg:
        raise ConfigError("inversion views need as many pitches as yaws (and at least one)")
    config = camera_config_for(G, SCAN_PIVOT)
    yaw = torch.tensor([math.radians(v) for v in yaws_deg])
    pitch = torch.tensor([math.radians(v) for v in pitches_deg])
    names = tuple(f"yaw{y:+.0f}_pitch{p:+.0f}" for y, p in zip(yaws_deg, pitches_deg))
    return cameras_at(yaw, pitch, config).c, names


def scan_target(G: TriPlaneGenerator, mesh, view_config=None, yaws_deg=DEFAULT_VIEW_YAWS_DEG, pitches_deg=DEFAULT_VIEW_PITCHES_DEG) -> InversionTarget:
    """Render a normalised scan mesh from :func:`scan_cameras` into an inversion target."""
    from .scan_views import ScanViewConfig, render_scan_views

    cameras, names = scan_cameras(G, yaws_deg, pitches_deg)
    view_config = view_config or ScanViewConfig(resolution=G.config.img_resolution)
    views = render_scan_views(mesh, cameras, view_config)
    return InversionTarget(views["image"], views["mask"], cameras, names)


def image_target(G: TriPlaneGenerator, image: Tensor, mask: Tensor, yaw_deg: float = 0.0, pitch_deg: float = 0.0) -> InversionTarget:
    """A single portrait seen from the user-given pose (default frontal)."""
    cameras, names = scan_cameras(G, (yaw_deg,), (pitch_deg,))
    return InversionTarget(image, mask, cameras, names)


def split_views(target: InversionTarget, held_out: Sequence[int]) -> tuple[InversionTarget, InversionTarget | None]:
    """(views to fit, views held out for scoring) of one target; ``held_out`` are view indices (may be empty).

    At least one view must stay to fit. With nothing held out the second part is None.
    """
    target = target.validate()
    v = len(target.names)
    held = sorted({int(i) % v for i in held_out}) if v else []
    fit = [i for i in range(v) if i not in held]
    if not fit:
        raise InputError(f"cannot hold out all {v} views of an inversion target: nothing would be fitted")
    pick = lambda idx: InversionTarget(target.images[idx], target.masks[idx], target.cameras[idx],  # noqa: E731
                                       tuple(target.names[i] for i in idx)).validate()
    return pick(fit), (pick(held) if held else None)


def save_inversion(result: InversionResult, path: str | Path, extra: dict | None = None) -> Path:
    """``.npz`` with ``w`` (what :func:`engine.generator.inference.load_w_plus` reads), the same array as ``w_plus``,
    and the per-view errors/IoU as ``view_names``/``view_errors``/``view_mask_iou`` arrays."""
    names = list(result.view_errors)
    arrays = {
        "w": result.w_plus.numpy().astype(np.float32),
        "w_plus": result.w_plus.numpy().astype(np.float32),
        "view_names": np.array(names),
        "view_errors": np.array([result.view_errors[n] for n in names], dtype=np.float32),
        "view_mask_iou": np.array([result.mask_iou[n] for n in names], dtype=np.float32),
        "losses": np.array(result.losses, dtype=np.float32),
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    return write_with(path, write)
