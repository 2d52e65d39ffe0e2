"""One optimisation step of multiview likelihood distillation (everything up to, not including, Adam).

Per step, for a batch of B random heads (ws from the frozen mapping with truncation):

1. **Single view + mirror.** The trainable generator renders each head from a random front-ish camera c and
   from its mirror image ``mirror_camera(c)`` (one batched render sharing the tri-grid). Both renders are
   resized to the diffusion model's native size and VAE-encoded *with* gradients. One diffusion call
   (CFG, Canny-edge ControlNet on the frozen generator's render of c) scores the base view only; its
   distillation gradient g goes into the base latent with weight 0.75 and, horizontally flipped, into the
   mirrored latent with weight 0.25 (the official trick: a left/right-symmetric style looks the same in the
   mirror, so one score serves two views). Regularisers: Tweedie MSE between the render and the decoded
   one-step estimate x̂₀ (both in [0, 1], as the official code), LPIPS (if a network is configured) and
   LDIS between this head's and the previous head's tri-grids, trainable vs frozen.
2. **2×2 grid.** Four random cameras all around the head; the trainable generator's *raw* neural renders
   (no background, before super-resolution) are resized to half the native size and tiled into one
   native-size image; the depth ControlNet sees the tiled depth of the frozen generator's renders — its own
   depth (at ``depth_resolution`` when set), or a depth network's estimate from its super-resolved renders
   (``depth_model``, the official pipeline); the gradient is masked with the frozen silhouettes and flows
   back into the tri-grid only.

Memory: the tri-grid is computed once and handed to both stages as a detached leaf; each stage is
back-propagated as soon as its loss exists (freeing its render graph), and the synthesis network is
back-propagated once at the end with the accumulated tri-grid gradient. The result is the gradient of
the sum of all losses, with the peak memory of the larger stage instead of both.

Randomness: every draw (latents, cameras, DDIM step indices, ray jitter, VAE posterior samples, diffusion
noise, and the synthesis network's noise when ``noise_mode`` is ``"random"``) comes from one CPU
``torch.Generator`` seeded from (seed, step), in a fixed order. A step therefore
depends only on the parameters, the optimiser state and the step number, which is what makes resuming
from a checkpoint reproduce an uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..distill import (
    LpipsLoss,
    alpha_bar_for,
    anchor_loss,
    distillation_gradient,
    inject_gradient,
    ldis_loss,
    mirror_weighted_gradients,
    tile_2x2,
    tweedie_loss,
)
from ..errors import ConfigError
from ..generator.camera import CameraConfig, mirror_camera, sample_cameras
from ..generator.inference import clamp_cutoff
from ..generator.noise import draw_noise_seed, seeded_noise
from ..generator.triplane import RenderOptions, TriPlaneGenerator
from ..guidance.control import canny_edges, depth_control
from .config import StylizeConfig

GRID_VIEWS = 4

# Salts that separate the independent random streams derived from the run's seed.
_STEP_STREAM = 0
_LDIS_INIT_STREAM = 1
PREVIEW_STREAM = 2


# ------------------------------------------------------------------------------------------------
# Random streams and phase timing
# ------------------------------------------------------------------------------------------------
def derived_generator(seed: int, *salt: int) -> torch.Generator:
    """A CPU generator seeded from (seed, *salt) through numpy's SeedSequence (well mixed, stable).

    CPU generators give the same numbers on every machine; tensors drawn from them are moved to the
    compute device by the consumers (renderer, guidance), so a CUDA run samples the same cameras as a CPU run.
    """
    state = np.random.SeedSequence([int(seed), *(int(s) for s in salt)]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 32 | int(state[1]))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of training step ``step`` (1-based)."""
    return derived_generator(seed, _STEP_STREAM, step)


class Phases(Protocol):
    """Receives the step's phases ("render", "guidance", "backward"); the benchmark times them."""

    def phase(self, name: str) -> contextlib.AbstractContextManager: ...


class NullPhases:
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:  # noqa: ARG002 - interface
        yield


# ------------------------------------------------------------------------------------------------
# What a step works with
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSizes:
    """Image sizes of both stages, derived from the diffusion model and the generator.

    ``native`` is the diffusion model's image size (UNet sample size × VAE downsampling: 512 for SD 1.5,
    32 for the tiny test model). The single-view render is resized to it; the grid is ``native`` wide with
    tiles of ``native / 2`` (SD 1.5 + PanoHead: the 64² neural render ×4 → 256² tiles, the official setup).
    ``latent_tile`` is a tile's size in latent pixels, the size the grid's silhouette masks are resized to.
    """

    native: int
    latent: int
    neural: int

    @property
    def tile(self) -> int:
        return self.native // 2

    @property
    def latent_tile(self) -> int:
        return self.latent // 2

    @classmethod
    def from_models(cls, G: TriPlaneGenerator, guidance) -> "StageSizes":
        latent = int(guidance.models.unet.config.sample_size)
        native = latent * guidance.models.vae_downsample
        if native % 2 or latent % 2:
            raise ConfigError(f"the diffusion model's image size {native} (latent {latent}) must be even for a 2×2 grid")
        return cls(native=native, latent=latent, neural=G.config.rendering.neural_rendering_resolution)


@dataclass
class StylizeContext:
    """The models and fixed tensors of a run (built once by :mod:`engine.stylize.loop`)."""

    config: StylizeConfig
    frozen: TriPlaneGenerator
    trainable: TriPlaneGenerator
    guidance: object  # engine.guidance.Guidance (kept untyped: diffusers is imported lazily)
    camera: CameraConfig
    conditioning: Tensor  # (1, 25) on the device
    sizes: StageSizes
    use_edge: bool
    use_grid: bool
    lpips: LpipsLoss | None = None
    depth_estimator: object | None = None  # engine.guidance.depth_estimator.DepthEstimator (the official depth)

    @property
    def device(self) -> torch.device:
        return self.conditioning.device


@dataclass
class LdisMemory:
    """The previous step's tri-grids (trainable, detached; frozen), partners of the LDIS regulariser."""

    trainable: Tensor
    frozen: Tensor

    def tensors(self) -> dict[str, Tensor]:
        return {"ldis_prev_trainable": self.trainable, "ldis_prev_frozen": self.frozen}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], device: torch.device) -> "LdisMemory":
        return cls(tensors["ldis_prev_trainable"].to(device), tensors["ldis_prev_frozen"].to(device))


@dataclass
class StepReport:
    losses: dict[str, float] = field(default_factory=dict)
    stages: dict[str, dict] = field(default_factory=dict)
    finite: bool = True  # False when a parameter gradient holds NaN/Inf (the loop then skips Adam)

    @property
    def total(self) -> float:
        return float(sum(self.losses.values()))


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------
def sample_ws(ctx: StylizeContext, n: int, rng: torch.Generator) -> Tensor:
    """n latents from the frozen mapping with the run's truncation, conditioned on the fixed camera."""
    cfg = ctx.config
    z = torch.randn(n, ctx.frozen.z_dim, generator=rng).to(ctx.device)
    with torch.no_grad():
        return ctx.frozen.mapping(
            z,
            ctx.conditioning.expand(n, -1),
            truncation_psi=cfg.truncation_psi,
            truncation_cutoff=clamp_cutoff(ctx.frozen, cfg.truncation_cutoff),
        )


def _draw_step_index(bounds: tuple[int, int], rng: torch.Generator) -> int:
    """A DDIM step index uniform in the inclusive range (the official ``random.randint``)."""
    return int(torch.randint(bounds[0], bounds[1] + 1, (1,), generator=rng))


def initial_ldis_memory(ctx: StylizeContext) -> LdisMemory:
    """Partner tri-grids for the first step: one head sampled before training (trainable == frozen then)."""
    rng = derived_generator(ctx.config.seed, _LDIS_INIT_STREAM)
    ws = sample_ws(ctx, ctx.config.batch_size, rng)
    with torch.no_grad(), seeded_noise(draw_noise_seed(ctx.config.noise_mode, rng), ctx.device):
        planes = ctx.frozen.synthesize_planes(ws, noise_mode=ctx.config.noise_mode)
    return LdisMemory(planes.clone(), planes)


def _resize(images: Tensor, size: int, align_corners: bool | None = None) -> Tensor:
    """Differentiable bilinear resize to size², antialiased when shrinking (align_corners=None)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    if align_corners:  # the official grid resampling (bilinear, align_corners=True, no antialias)
        return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=True)
    shrinking = images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def _views_first(batch: Tensor, views: int) -> Tensor:
    """(B·V, …) rows ordered head by head → ordered view by view (row v·B + b is view v of head b)."""
    if views == 1 or batch.shape[0] == views:
        return batch
    return batch.unflatten(0, (-1, views)).transpose(0, 1).flatten(0, 1)


def _alpha_bar(ctx: StylizeContext, out) -> Tensor:
    return alpha_bar_for(ctx.guidance.alphas_cumprod, out.t, out.step_index, ctx.config.distill.official_compat)


def _stage_info(out, alpha: Tensor, grad: Tensor) -> dict:
    return {
        "t": int(out.t),
        "step_index": int(out.step_index),
        "alpha_bar": float(alpha.reshape(-1)[0]),
        "grad_abs_mean": float(grad.abs().mean()),
    }


# ------------------------------------------------------------------------------------------------
# Stage 1: single view (+ mirror) with Tweedie, LPIPS, the source anchor and LDIS
# ------------------------------------------------------------------------------------------------
def single_view_loss(
    ctx: StylizeContext,
    ws: Tensor,
    planes: Tensor,
    frozen_planes: Tensor,
    cameras: Tensor,
    step_index: int,
    rng: torch.Generator,
    phases: Phases,
    report: StepReport,
) -> Tensor:
    """Surrogate loss of the single-view stage; its gradient is the distillation gradient (+ regularisers)."""
    d = ctx.config.distill
    b = ws.shape[0]
    native = ctx.sizes.native
    options = RenderOptions(background="none", generator=rng, neural_resolution=ctx.config.neural_resolution)
    views = 2 if d.use_mirror else 1
    anchored = d.anchor_image_weight > 0 or d.anchor_geometry_weight > 0
    with phases.phase("render"):
        control, source = None, None
        if ctx.use_edge or anchored:  # the source head's render of these cameras
            with torch.no_grad():
                source = ctx.frozen.render(ws, cameras, options, planes=frozen_planes)
        if ctx.use_edge:
            with torch.no_grad():
                control = {"edge": canny_edges(_resize(source["image"], native), *d.canny_thresholds)}
        # Each head's views share its tri-grid (rows 2b, 2b + 1: head b and its mirror); the outputs are then
        # put view-major (all base views, then all mirrors), the order the rest of the stage indexes.
        cams = torch.stack([cameras, mirror_camera(cameras)], dim=1).flatten(0, 1) if d.use_mirror else cameras
        out = ctx.trainable.render(ws.repeat_interleave(views, dim=0), cams, options, planes=planes)
        out = {key: _views_first(value, views) if value.shape[0] == cams.shape[0] else value for key, value in out.items()}
        images = _resize(out["image"], native)
    with phases.phase("guidance"):
        latents = ctx.guidance.encode_images(images, generator=rng)
        scored = ctx.guidance.score_step(latents[:b], step_index, control, generator=rng)
    alpha = _alpha_bar(ctx, scored)
    grad = distillation_gradient(
        d, scored.eps_text, scored.eps_uncond, scored.noise, alpha, mask=out["image_mask"][:b].detach(), stage="single"
    )
    if d.use_mirror:
        g_base, g_mirror = mirror_weighted_gradients(grad, d.mirror_weights)
        loss = inject_gradient(latents[:b], g_base) + inject_gradient(latents[b:], g_mirror)
    else:  # without the mirror view the base view takes the whole (unit) weight
        loss = inject_gradient(latents, grad)
    report.stages["single"] = _stage_info(scored, alpha, grad)

    base_render = images[:b]
    need_x0 = d.tweedie_weight > 0 or (ctx.lpips is not None and d.lpips_weight > 0)
    if need_x0:
        with phases.phase("guidance"):
            x0 = ctx.guidance.decode_latents(scored.x0_hat).to(base_render.device)  # [-1, 1], no graph
    if d.tweedie_weight > 0:
        # Both sides in [0, 1], as the official x̂₀-vs-0.5(render+1) comparison, so the weight 0.1 keeps its meaning.
        term = tweedie_loss((base_render + 1) / 2, (x0.to(base_render.dtype) + 1) / 2, d.tweedie_weight)
        report.losses["tweedie"] = float(term.detach())
        loss = loss + term
    if ctx.lpips is not None and d.lpips_weight > 0:
        term = ctx.lpips(base_render, x0.to(base_render.dtype), d.lpips_weight)
        report.losses["lpips"] = float(term.detach())
        loss = loss + term
    if anchored:
        base = {key: out[key][:b] for key in ("image", "image_mask", "image_depth")}
        terms = anchor_loss(base, source, d.anchor_image_weight, d.anchor_geometry_weight, d.anchor_resolution)
        for name, term in terms.items():
            report.losses[name] = float(term.detach())
            loss = loss + term
    return loss


def ldis_term(ctx: StylizeContext, planes: Tensor, frozen_planes: Tensor, memory: LdisMemory, report: StepReport) -> Tensor | None:
    """Relative-distance regulariser between the previous and the current head (weight ``ldis_weight``)."""
    weight = ctx.config.distill.ldis_weight
    if weight <= 0:
        return None
    term = weight * ldis_loss(memory.trainable, planes, memory.frozen, frozen_planes)
    report.losses["ldis"] = float(term.detach())
    return term


# ------------------------------------------------------------------------------------------------
# Stage 2: the 2×2 grid, before super-resolution
# ------------------------------------------------------------------------------------------------
def depth_render_resolution(ctx: StylizeContext) -> int | None:
    """The neural resolution the frozen generator's grid depth is rendered at: ``depth_resolution`` capped at
    a grid tile (the ControlNet never sees more per view) but never below the training renders', else the
    training renders' own (``neural_resolution``; None: the generator's)."""
    wanted = ctx.config.depth_resolution
    if wanted is None:
        return ctx.config.neural_resolution
    own = ctx.config.neural_resolution or ctx.sizes.neural
    return max(min(wanted, ctx.sizes.tile), own)


def grid_depth_control(ctx: StylizeContext, ws_views: Tensor, cameras: Tensor, frozen_planes: Tensor,
                       options: RenderOptions) -> tuple[Tensor, Tensor]:
    """(the tiled depth control (B, 3, 2R, 2R) in [0, 1], the frozen silhouettes (4B, 1, r, r)) of the grid views.

    With a depth network: the official pipeline, the network on the frozen generator's super-resolved renders
    (min–max over the whole image). Without: the frozen generator's own depth, normalised over the head.
    """
    if ctx.depth_estimator is not None:
        frozen = ctx.frozen.render(ws_views, cameras, dataclasses.replace(options, run_superresolution=True),
                                   planes=frozen_planes)
        depth = ctx.depth_estimator(frozen["image"])
        return tile_2x2(depth.expand(-1, 3, -1, -1)), frozen["image_mask"]
    options = dataclasses.replace(options, neural_resolution=depth_render_resolution(ctx))
    frozen = ctx.frozen.render(ws_views, cameras, options, planes=frozen_planes)
    return tile_2x2(depth_control(frozen["image_depth"], frozen["image_mask"])), frozen["image_mask"]


def grid_loss(
    ctx: StylizeContext,
    ws: Tensor,
    planes: Tensor,
    frozen_planes: Tensor,
    cameras: Tensor,
    step_index: int,
    rng: torch.Generator,
    phases: Phases,
    report: StepReport,
) -> Tensor:
    """Surrogate loss of the grid stage: four raw 360° renders per head tiled into one native-size image."""
    d = ctx.config.distill
    sizes = ctx.sizes
    ws_views = ws.repeat_interleave(GRID_VIEWS, dim=0)  # sample-major: rows 4b … 4b+3 are head b
    options = RenderOptions(
        background="none", run_superresolution=False, generator=rng, neural_resolution=ctx.config.neural_resolution
    )
    with phases.phase("render"):
        with torch.no_grad():
            control, silhouettes = grid_depth_control(ctx, ws_views, cameras, frozen_planes, options)
            mask = tile_2x2(_resize(silhouettes, sizes.latent_tile, align_corners=True))
        out = ctx.trainable.render(ws_views, cameras, options, planes=planes)  # each head's 4 views share its tri-grid
        grid = tile_2x2(_resize(out["image_raw"], sizes.tile, align_corners=True))
    with phases.phase("guidance"):
        latents = ctx.guidance.encode_images(grid, generator=rng)
        scored = ctx.guidance.score_step(latents, step_index, {"depth": control}, generator=rng)
    alpha = _alpha_bar(ctx, scored)
    grad = distillation_gradient(d, scored.eps_text, scored.eps_uncond, scored.noise, alpha, mask=mask, stage="grid")
    report.stages["grid"] = _stage_info(scored, alpha, grad)
    return inject_gradient(latents, grad)


# ------------------------------------------------------------------------------------------------
# The step
# ------------------------------------------------------------------------------------------------
def _gradients_finite(params: list[Tensor]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def compute_step_gradients(
    ctx: StylizeContext,
    step: int,
    memory: LdisMemory,
    params: list[Tensor],
    phases: Phases | None = None,
) -> tuple[StepReport, LdisMemory]:
    """Accumulate the step's gradient into ``params``' ``.grad``; return the report and the next LDIS memory.

    The caller zeroes gradients before and runs the optimiser after (unless ``report.finite`` is False).
    """
    phases = phases or NullPhases()
    cfg, d = ctx.config, ctx.config.distill
    b = cfg.batch_size
    rng = step_generator(cfg.seed, step)
    report = StepReport()

    # Every decision first, in a fixed order; then the stages consume the stream in a fixed order too.
    ws = sample_ws(ctx, b, rng)
    single_cams = sample_cameras(b, cfg.single_yaw_range, cfg.single_pitch_range, rng, ctx.camera).c.to(ctx.device)
    single_k = _draw_step_index(d.single_step_range, rng)
    if ctx.use_grid:
        grid_cams = sample_cameras(b * GRID_VIEWS, cfg.grid_yaw_range, cfg.grid_pitch_range, rng, ctx.camera).c.to(ctx.device)
        grid_k = _draw_step_index(d.grid_step_range, rng)
    noise_seed = draw_noise_seed(cfg.noise_mode, rng)  # None (nothing drawn) with constant noise

    with phases.phase("render"), seeded_noise(noise_seed, ctx.device):
        with torch.no_grad():
            frozen_planes = ctx.frozen.synthesize_planes(ws, noise_mode=cfg.noise_mode)
        planes = ctx.trainable.synthesize_planes(ws, noise_mode=cfg.noise_mode)
    leaf = planes.detach().requires_grad_(True)

    loss = single_view_loss(ctx, ws, leaf, frozen_planes, single_cams, single_k, rng, phases, report)
    ldis = ldis_term(ctx, leaf, frozen_planes, memory, report)
    if ldis is not None:
        loss = loss + ldis
    with phases.phase("backward"):
        loss.backward()
    del loss

    if ctx.use_grid:
        loss = grid_loss(ctx, ws, leaf, frozen_planes, grid_cams, grid_k, rng, phases, report)
        with phases.phase("backward"):
            loss.backward()
        del loss

    with phases.phase("backward"):
        if leaf.grad is not None:
            planes.backward(leaf.grad)
    report.finite = _gradients_finite(params)
    return report, LdisMemory(planes.detach(), frozen_planes)
