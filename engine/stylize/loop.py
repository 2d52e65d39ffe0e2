"""Stylize a 3D head generator toward a text prompt: the training loop of likelihood distillation.

:func:`stylize` fine-tunes a trainable copy of the generator (synthesis + super-resolution weights, biases
frozen, as the paper) against a frozen copy, one :func:`engine.stylize.step.compute_step_gradients` + Adam
step at a time, and takes care of everything around it:

* **Events** (JSON lines through ``on_event``, :func:`engine.io.events.emit` by default): ``started``,
  ``progress`` after every step (``step``, ``total``, ``loss``, ``losses``, ``stages``, ``preview``: the
  path of a before/after PNG of a fixed head's front view written every ``preview_every`` steps, else
  null), ``checkpoint``, and finally ``cancelled`` or ``done``. ``loss`` is the sum of the regularisers
  (Tweedie, LPIPS, LDIS, itemised in ``losses``): the distillation terms are surrogates whose *value* is 0
  by construction, so their strength is reported per stage instead (``stages.single.grad_abs_mean``, with
  the drawn timestep ``t``, DDIM step index and the ᾱ used). Non-finite numbers are sent as null.
* **Checkpoints** every ``checkpoint_every`` steps and at the end or on cancel, through
  :mod:`engine.stylize.training_state`; ``resume=True`` continues from ``<out>/latest`` and reproduces exactly the
  parameters an uninterrupted run would have reached (each step's randomness depends only on (seed, step)).
* **Cancel**: a :class:`~engine.stylize.cancel.CancelToken` (cancel file, signals, or code) is polled after
  every step; the loop stops after the current step and writes a checkpoint.

Missing ControlNets: without an edge ControlNet the single-view stage runs unconditioned; without a depth
ControlNet the grid stage is skipped. Both cases are logged on stderr and reported in ``started``, as are the
LPIPS network (``lpips``: its path, or null), where the grid's depth control comes from (``grid_depth``), the
synthesis noise (``noise``) and ``notes``: what the settings ask for and will not get (LPIPS weighted but no
network, the paper recipe's depth fallback; :func:`run_notes`), also logged on stderr before the models load.
The commands that run a recipe (``engine stylize|head --preset paper``) send those as ``warning`` events too.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import CheckpointError, ConfigError
from ..generator.camera import cameras_at
from ..generator.inference import camera_config_for, render_images
from ..generator.loading import load_generator, resolve_device
from ..generator.triplane import TriPlaneGenerator
from ..io.checkpoint import load_state_into
from ..io.events import emit, log
from ..io.images import image_grid, save_png, to_uint8
from .cancel import CancelToken
from .config import StylizeConfig
from .step import (
    PREVIEW_STREAM,
    LdisMemory,
    Phases,
    StageSizes,
    StylizeContext,
    compute_step_gradients,
    derived_generator,
    initial_ldis_memory,
    sample_ws,
)
from .training_state import (
    TrainingState,
    checkpoint_folder,
    load_tensors,
    read_latest,
    restore_optimizer,
    save_training_state,
    state_fingerprint,
)

TRAINABLE_GROUPS = ("synthesis", "superresolution")
# A single-head field (head mode) has no synthesis to tune: its own tri-grid and decoder train instead.
HEAD_TRAINABLE_GROUPS = ("planes", "decoder", "superresolution")
PREVIEWS_DIR = "previews"

EventSink = Callable[..., None]


@dataclass
class StylizeResult:
    """What a run ended with. ``generator_path`` is the stylized generator of the last checkpoint."""

    step: int
    total: int
    cancelled: bool
    checkpoint: Path | None
    seconds: float
    last_loss: float | None = None
    stages: dict = field(default_factory=dict)

    @property
    def generator_path(self) -> Path | None:
        return None if self.checkpoint is None else self.checkpoint / "generator.safetensors"


# ------------------------------------------------------------------------------------------------
# Setup
# ------------------------------------------------------------------------------------------------
def _controlnet_folder(config: StylizeConfig, kind: str) -> Path | None:
    """The configured ControlNet folder, else ``<diffusion>/controlnet_<kind>`` if it exists, else None."""
    given = config.edge_controlnet if kind == "edge" else config.depth_controlnet
    if given:
        return Path(given)
    candidate = Path(config.diffusion) / f"controlnet_{kind}"
    return candidate if (candidate / "config.json").is_file() else None


def start_superresolution(trainable: TriPlaneGenerator, path: Path) -> None:
    """Load ``path`` (``StylizeConfig.superresolution_start``) into ``trainable``'s super-resolution; a file
    that is missing, corrupt or made for another architecture raises CheckpointError naming it."""
    load_state_into(trainable.superresolution, load_tensors(path), f"{path} (superresolution_start)")


def _load_guidance(config: StylizeConfig, device: torch.device):
    from ..guidance import Guidance, GuidanceConfig, MemoryOptions

    d = config.distill
    edge = _controlnet_folder(config, "edge")
    depth = _controlnet_folder(config, "depth") if d.use_grid else None
    if edge is None:
        log("warning: no edge ControlNet (--edge-controlnet): the single-view stage runs without Canny conditioning, "
            "so the head's structure is held only by the regularisers")
    if d.use_grid and depth is None:
        log("warning: no depth ControlNet (--depth-controlnet): the 2×2 grid stage is disabled")
    guidance_config = GuidanceConfig(
        prompt=config.prompt,
        negative_prompt=config.negative_prompt,
        guidance_scale=d.guidance_scale,
        ddim_steps=d.ddim_steps,
        controlnet_scale=d.controlnet_scale,
        precision=config.precision,
    )
    memory = MemoryOptions(attention_slicing=config.attention_slicing, vae_slicing=config.vae_slicing)
    guidance = Guidance.from_folder(
        config.diffusion, edge_controlnet=edge, depth_controlnet=depth, config=guidance_config, device=device, memory=memory
    )
    return guidance, edge is not None, depth is not None


def _load_lpips(config: StylizeConfig):
    from ..distill import LpipsLoss
    from ..errors import InputError

    if not config.lpips_path or config.distill.lpips_weight <= 0:
        return None
    if not Path(config.lpips_path).exists():
        raise InputError(f"{config.lpips_path}: LPIPS network not found (--lpips: the lpips-alex folder or a .pt2 file)")
    return LpipsLoss.from_local(config.lpips_path)


def _load_depth_estimator(config: StylizeConfig, device: torch.device, use_grid: bool):
    """The official grid depth network (``depth_model``), or None when the generator's own depth is used."""
    if not config.depth_model or not use_grid:
        return None
    from ..guidance.depth_estimator import DepthEstimator

    return DepthEstimator.from_folder(config.depth_model, device)


def run_notes(config: StylizeConfig) -> list[str]:
    """What this run's recipe asks for and will not get (no LPIPS network, the depth fallback): said first."""
    from .recipes import depth_note, lpips_note

    return [note for note in (lpips_note(config), depth_note(config)) if note]


def _grid_depth_source(ctx: StylizeContext) -> str | None:
    from .step import depth_render_resolution

    if not ctx.use_grid:
        return None
    if ctx.depth_estimator is not None:
        return f"depth network {ctx.config.depth_model} on the super-resolved renders"
    resolution = depth_render_resolution(ctx) or ctx.frozen.config.rendering.neural_rendering_resolution
    return f"generator depth at {resolution}²"


def _check_resume(config: StylizeConfig, state: TrainingState | None, out_dir: Path, resume: bool) -> None:
    if resume and state is None:
        raise CheckpointError(f"{out_dir / 'latest'}: no checkpoint to resume from (run without --resume first)")
    if not resume and state is not None:
        raise ConfigError(
            f"{out_dir}: already holds a stylization run (step {state.step}); pass --resume to continue it "
            "or choose another output folder"
        )
    if state is not None:
        differences = config.training_differences(state.config)
        if differences:
            raise ConfigError(
                f"{state.folder}: cannot resume with different training settings: {', '.join(differences)}"
            )


@dataclass
class _Run:
    """Mutable state of a run between steps."""

    ctx: StylizeContext
    optimizer: torch.optim.Adam
    named_params: dict[str, torch.Tensor]
    memory: LdisMemory
    fingerprint: str
    step: int
    preview_ws: torch.Tensor
    preview_before: object = None  # uint8 image of the frozen generator, rendered once


def _build_run(config: StylizeConfig, device: torch.device, state: TrainingState | None, guidance=None) -> _Run:
    frozen = load_generator(config.generator, device).generator
    fingerprint = state_fingerprint(frozen)
    if state is not None and state.base_fingerprint and state.base_fingerprint != fingerprint:
        raise CheckpointError(
            f"{state.folder}: was trained from a different base generator than {config.generator} (weights differ)"
        )
    if state is None:
        trainable = copy.deepcopy(frozen)
        if config.superresolution_start:
            start_superresolution(trainable, Path(config.superresolution_start))
    else:
        trainable = load_generator(state.generator_path, device).generator
        if trainable.config != frozen.config:
            raise CheckpointError(f"{state.generator_path}: architecture differs from the base generator {config.generator}")
    trainable.set_trainable(HEAD_TRAINABLE_GROUPS if trainable.is_single_head else TRAINABLE_GROUPS, train_biases=False)
    named = {n: p for n, p in trainable.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam(list(named.values()), lr=config.lr, betas=tuple(config.betas))
    if state is not None:
        restore_optimizer(optimizer, named, load_tensors(state.optimizer_path), str(state.optimizer_path))

    if guidance is None:
        guidance, has_edge, has_depth = _load_guidance(config, device)
    else:
        has_edge, has_depth = "edge" in guidance.models.controlnets, "depth" in guidance.models.controlnets
    camera = camera_config_for(frozen, config.camera_pivot)
    conditioning = cameras_at(config.conditioning_yaw, config.conditioning_pitch, camera).c.to(device)
    ctx = StylizeContext(
        config=config,
        frozen=frozen,
        trainable=trainable,
        guidance=guidance,
        camera=camera,
        conditioning=conditioning,
        sizes=StageSizes.from_models(frozen, guidance),
        use_edge=has_edge,
        use_grid=config.distill.use_grid and has_depth,
        lpips=_load_lpips(config),
        depth_estimator=_load_depth_estimator(config, device, config.distill.use_grid and has_depth),
    )
    if config.distill.grid_size != ctx.sizes.native and ctx.use_grid:
        log(f"note: distill.grid_size={config.distill.grid_size} differs from the diffusion model's native size "
            f"{ctx.sizes.native}; the grid is built at {ctx.sizes.native}² (tiles of {ctx.sizes.tile}²)")
    memory = (
        LdisMemory.from_tensors(load_tensors(state.loop_path), device) if state is not None else initial_ldis_memory(ctx)
    )
    preview_ws = sample_ws(ctx, 1, derived_generator(config.seed, PREVIEW_STREAM))
    return _Run(ctx, optimizer, named, memory, fingerprint, state.step if state else 0, preview_ws)


# ------------------------------------------------------------------------------------------------
# Loop pieces
# ------------------------------------------------------------------------------------------------
def _json_safe(value):
    """NaN/Inf → None, recursively (JSON has no NaN; a diverging run must not break the event stream)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _write_preview(run: _Run, out_dir: Path) -> Path:
    """Front view of a fixed head: frozen (left) vs current (right)."""
    ctx = run.ctx
    front = cameras_at(0.0, 0.0, ctx.camera).c
    if run.preview_before is None:
        run.preview_before = to_uint8(render_images(ctx.frozen, run.preview_ws, front, background="none")[0])
    after = to_uint8(render_images(ctx.trainable, run.preview_ws, front, background="none")[0])
    return save_png(image_grid([run.preview_before, after], 2), out_dir / PREVIEWS_DIR / f"step_{run.step:06d}.png")


def _checkpoint(run: _Run, config: StylizeConfig, on_event: EventSink) -> Path:
    folder = save_training_state(
        config.out_dir,
        run.step,
        run.ctx.trainable,
        run.optimizer,
        run.named_params,
        run.memory.tensors(),
        config,
        run.fingerprint,
        keep=config.keep_checkpoints,
    )
    on_event("checkpoint", step=run.step, total=config.steps, path=str(folder), generator=str(folder / "generator.safetensors"))
    return folder


def stylize(
    config: StylizeConfig,
    cancel: CancelToken | None = None,
    on_event: EventSink = emit,
    *,
    resume: bool = False,
    phases: Phases | None = None,
    guidance=None,
) -> StylizeResult:
    """Run (or, with ``resume``, continue) a stylization; see the module docstring.

    Raises EngineError subclasses for bad paths and settings before any heavy work starts where possible.
    ``phases`` receives the render / guidance / backward phases of each step (the benchmark times them).
    ``guidance`` is an already built :class:`engine.guidance.Guidance` (the benchmark builds full-size
    random models in memory); by default it is loaded from ``config.diffusion`` and the ControlNet folders.
    """
    config.validate()
    cancel = cancel or CancelToken()
    out_dir = Path(config.out_dir)
    device = resolve_device(config.device)
    state = read_latest(out_dir)
    _check_resume(config, state, out_dir, resume)

    started = time.perf_counter()
    notes = run_notes(config)
    for note in notes:  # before the models load: the first lines of the run
        log(f"note: {note}")
    run = _build_run(config, device, state, guidance)
    ctx = run.ctx
    last_saved = run.step if state is not None else None
    on_event(
        "started",
        step=run.step,
        total=config.steps,
        out=str(out_dir),
        device=str(device),
        method=config.distill.method,
        prompt=config.prompt,
        stages={
            "single": "edge" if ctx.use_edge else "unconditioned",
            "mirror": config.distill.use_mirror,
            "grid": ctx.use_grid,
            "rank": config.distill.use_rank,
        },
        grid_depth=_grid_depth_source(ctx),
        noise=config.noise_mode,
        lpips=config.lpips_path if ctx.lpips is not None else None,
        notes=notes,
        trainable_parameters=sum(p.numel() for p in run.named_params.values()),
        resumed=state is not None,
    )

    report = None
    params = list(run.named_params.values())
    while run.step < config.steps and not cancel.cancelled:
        run.optimizer.zero_grad(set_to_none=True)
        report, run.memory = compute_step_gradients(ctx, run.step + 1, run.memory, params, phases)
        if report.finite:
            run.optimizer.step()
        else:
            log(f"warning: step {run.step + 1}: non-finite gradient, optimiser step skipped")
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1

        preview = None
        if config.preview_every and run.step % config.preview_every == 0:
            preview = str(_write_preview(run, out_dir))
        on_event(
            "progress",
            step=run.step,
            total=config.steps,
            loss=_json_safe(report.total),
            losses=_json_safe(report.losses),
            stages=_json_safe(report.stages),
            skipped=not report.finite,
            preview=preview,
        )
        if config.checkpoint_every and run.step % config.checkpoint_every == 0 and run.step < config.steps:
            _checkpoint(run, config, on_event)
            last_saved = run.step

    cancelled = cancel.cancelled and run.step < config.steps
    if last_saved != run.step:
        folder = _checkpoint(run, config, on_event)
    else:  # nothing new since the last checkpoint (resumed a finished run, or cancelled right after saving)
        folder = checkpoint_folder(out_dir, run.step)
    seconds = time.perf_counter() - started
    result = StylizeResult(
        step=run.step,
        total=config.steps,
        cancelled=cancelled,
        checkpoint=folder,
        seconds=seconds,
        last_loss=report.total if report else None,
        stages=report.stages if report else {},
    )
    final = {"step": run.step, "total": config.steps, "checkpoint": str(folder), "generator": str(result.generator_path), "seconds": seconds}
    if cancelled:
        cancel.acknowledge()
        on_event("cancelled", reason=cancel.reason, **final)
    else:
        on_event("done", **final)
    return result
