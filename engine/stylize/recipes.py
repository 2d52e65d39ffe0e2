"""The paper's training recipe next to ours: one list of what the official code really runs with.

:data:`OFFICIAL_SETTINGS` holds the *effective* defaults of the official stylization code (three-bee/
3d_head_stylization ``train_LD.py``, whose command-line defaults override its ``train()`` signature, and
``infer_LD.py`` for the views), one entry per setting of :class:`~engine.stylize.config.StylizeConfig`
(``distill.x`` for :class:`~engine.distill.DistillConfig`, ``views.x`` for the head pipeline's inference
views), each with where the value comes from and — where our default differs — why. :func:`paper_config`
applies every entry: that is the ``paper`` preset (``engine stylize|head --preset paper``, Blender's *Recipe:
Paper*). ``ours`` is the engine's own defaults, unchanged.

:data:`DIFFERENCES` are the ways the official code differs that are not one setting (a model it loads, how it
computes something), each with what ``ours`` and the ``paper`` preset do about it.

The README's "official vs ours, and why" table is generated from these two lists
(:mod:`engine.app.recipe_table`), and a test compares the preset's effective config with the official values
field by field, so the documentation, the preset and the facts cannot drift apart silently.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .config import StylizeConfig

OURS = "ours"
PAPER = "paper"
RECIPES = (OURS, PAPER)

# Without a depth network, the paper preset renders the frozen generator's depth for the grid stage at this
# resolution: a grid tile of Stable Diffusion 1.5 (512² grid of four 256² tiles), the most detail the depth
# ControlNet can see per view, 4× the 64² neural render. The step caps it at the tile of smaller diffusion
# models (the embedded pack's 64² model has 32² tiles), so it never renders pixels nobody looks at.
PAPER_DEPTH_RESOLUTION = 256


@dataclass(frozen=True)
class OfficialSetting:
    """One setting of the official code: its value there, where that value comes from, why ours differs."""

    key: str  # "steps", "distill.official_compat", "views.background"
    label: str
    official: Any
    source: str
    why: str = ""  # empty where ours is the same


@dataclass(frozen=True)
class Difference:
    """A difference that is not one setting: what the official code does, ours, the paper preset, and why."""

    topic: str
    official: str
    ours: str
    paper: str
    why: str


_TRAIN = "train_LD.py"
_INFER = "infer_LD.py"

OFFICIAL_SETTINGS: tuple[OfficialSetting, ...] = (
    OfficialSetting("negative_prompt", "negative prompt", "", f"{_TRAIN} sample(negative_prompt='')"),
    OfficialSetting("steps", "steps", 10_000, f"{_TRAIN} --total_it",
                    "`engine head` trains 2,000 steps on real models and 40 (20 for zombie) on the embedded pack: "
                    "10,000 steps of PanoHead + SD 1.5 are hours even on a GPU"),
    OfficialSetting("lr", "learning rate (Adam)", 1e-4, f"{_TRAIN} --lr",
                    "the embedded pack's small generator trains at 2e-3 (it moves to a style in tens of steps)"),
    OfficialSetting("betas", "Adam betas", (0.9, 0.999), f"{_TRAIN} torch.optim.Adam(…, lr) (PyTorch's defaults)"),
    OfficialSetting("batch_size", "heads per step", 1, f"{_TRAIN} --bs"),
    OfficialSetting("seed", "seed", 0, f"{_TRAIN} --seed"),
    OfficialSetting("truncation_psi", "truncation ψ", 0.75, f"{_TRAIN} mapping(truncation_psi=0.75)"),
    OfficialSetting("truncation_cutoff", "truncation cutoff (W+ layers)", 14, f"{_TRAIN} mapping(truncation_cutoff=14)"),
    OfficialSetting("conditioning_yaw", "conditioning camera yaw", 0.0, f"{_TRAIN} get_pose(yaw=0, pitch=0.2)"),
    OfficialSetting("conditioning_pitch", "conditioning camera pitch", 0.2, f"{_TRAIN} get_pose(yaw=0, pitch=0.2)"),
    OfficialSetting("camera_pivot", "camera pivot", (0.0, 0.0, 0.0), f"{_TRAIN} cam_pivot = [0, 0, 0]"),
    OfficialSetting("single_yaw_range", "single-view yaw", (-math.pi / 3, math.pi / 3), f"{_TRAIN} yaw_range_front"),
    OfficialSetting("single_pitch_range", "single-view pitch", (-math.pi / 6, math.pi / 6), f"{_TRAIN} pitch_range"),
    OfficialSetting("grid_yaw_range", "grid yaw", (-math.pi, math.pi), f"{_TRAIN} yaw_range_front_grid"),
    OfficialSetting("grid_pitch_range", "grid pitch", (-math.pi / 6, math.pi / 6), f"{_TRAIN} pitch_range"),
    OfficialSetting("neural_resolution", "training render resolution", None,
                    "the generator's own (PanoHead 64²)",
                    "the embedded pack renders 32² for its 64² diffusion model"),
    OfficialSetting("noise_mode", "StyleGAN noise (training and views)", "random",
                    "G.synthesis(…) without noise_mode: StyleGAN's default 'random'",
                    "constant noise keeps a head's fine detail still from step to step and view to view"),
    OfficialSetting("checkpoint_every", "checkpoint every", 250, f"{_TRAIN} --freq_log_ckpt",
                    "`engine head` checkpoints 4 times per run (its runs resume from the cache)"),
    OfficialSetting("preview_every", "preview every", 100, f"{_TRAIN} --freq_log_imgs",
                    "`engine head` writes no previews (it renders the head's views at the end)"),
    OfficialSetting("distill.method", "method", "ld", f"{_TRAIN} --use_SDS 0"),
    OfficialSetting("distill.guidance_scale", "CFG scale", 7.5, f"{_TRAIN} --guidance_scale"),
    OfficialSetting("distill.use_mirror", "mirror gradients", True, f"{_TRAIN} single-view stage (always on)"),
    OfficialSetting("distill.mirror_weights", "base / mirror weights", (0.75, 0.25), f"{_TRAIN} --base_weight, --mirror_weight"),
    OfficialSetting("distill.use_grid", "2×2 grid stage", True, f"{_TRAIN} --it_enable_grid 0 (from step 0)"),
    OfficialSetting("distill.use_rank", "rank re-weighting", True, f"{_TRAIN} --use_lowrank 1"),
    OfficialSetting("distill.rank_in_grid", "rank re-weighting in the grid", False, f"{_TRAIN} grid stage: use_lowrank=False"),
    OfficialSetting("distill.rank_weights", "rank weights", (1.0, 0.75, 0.5, 0.25), f"{_TRAIN} lowrank weights, --lowrank_k 4"),
    OfficialSetting("distill.grad_divisor", "gradient divisor", 1000.0, f"{_TRAIN} --grad_div_scale"),
    OfficialSetting("distill.grad_clamp", "gradient clamp", 1.0, f"{_TRAIN} grad.clamp(-1, 1)"),
    OfficialSetting("distill.mask_gradients", "gradient masking", True, f"{_TRAIN} --enable_grad_masking 1"),
    OfficialSetting("distill.tweedie_weight", "Tweedie weight", 0.1, f"{_TRAIN} --tweedie_base_weight"),
    OfficialSetting("distill.lpips_weight", "LPIPS-Alex weight", 0.05, f"{_TRAIN} --lpips_base_weight"),
    OfficialSetting("distill.ldis_weight", "LDIS weight", 1.0, f"{_TRAIN} --enable_ldis 1"),
    OfficialSetting("distill.anchor_image_weight", "source anchor, colours", 0.0, "not in the paper",
                    "head mode (`--mesh`) anchors a scan's single field to its source (weight 1): it has no LDIS"),
    OfficialSetting("distill.anchor_geometry_weight", "source anchor, shape", 0.0, "not in the paper",
                    "as above"),
    OfficialSetting("distill.single_step_range", "single-view DDIM steps", (35, 49), f"{_TRAIN} --base_start_step_range"),
    OfficialSetting("distill.grid_step_range", "grid DDIM steps", (35, 49),
                    f"{_TRAIN} --grid_start_step_range (overrides train()'s (15, 40))"),
    OfficialSetting("distill.ddim_steps", "DDIM schedule", 50, f"{_TRAIN} num_inference_steps=50"),
    OfficialSetting("distill.controlnet_scale", "ControlNet scale", 1.0, f"{_TRAIN} --controlnet_scale"),
    OfficialSetting("distill.canny_thresholds", "Canny thresholds", (50, 250), f"{_TRAIN} cv2.Canny(red, 50, 250)"),
    OfficialSetting("distill.grid_render_upsample", "grid render upsampling", 4,
                    f"{_TRAIN} --backprop_grid_before_SR 1: 64² raw renders ×4"),
    OfficialSetting("distill.grid_size", "grid size", 512, f"{_TRAIN} four 256² tiles"),
    OfficialSetting("distill.official_compat", "ᾱ indexing", True,
                    f"{_TRAIN} alphas_cumprod[start_step] (the DDIM step index, not the timestep)",
                    "ours weights with ᾱ at the timestep the noise was added at (the paper's formula); the official "
                    "index makes √ᾱ almost constant (0.98), up to ~20 % off for LD and a different schedule for SDS"),
    OfficialSetting("views.background", "view background", "white", f"{_INFER} make_background_white=True"),
    OfficialSetting("views.camera_pivot", "view camera pivot", (0.0, 0.0, 0.0), f"{_INFER} cam_pivot = [0, 0, 0]"),
    OfficialSetting("views.view_pitch", "view pitch", math.radians(10.0), f"{_INFER} pitch 10°"),
)

# StylizeConfig / DistillConfig fields that are not settings of the official code: where models and outputs
# are, how the machine runs, and options of ours the official code has no counterpart of. A new field must be
# added either here or to OFFICIAL_SETTINGS (a test checks every field is classified).
NOT_OFFICIAL_SETTINGS = frozenset({
    "prompt", "generator", "diffusion", "edge_controlnet", "depth_controlnet", "lpips_path", "depth_model",
    "superresolution_start",
    "depth_resolution", "out_dir", "keep_checkpoints", "device", "precision", "attention_slicing", "vae_slicing",
    "distill.sds_variant", "distill.anchor_resolution",
})

DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "LPIPS network",
        "LPIPS-Alex, always loaded (the `lpips` package fetches its weights)",
        "used when given (`--lpips`, the model manager's `lpips-alex`); without one the term is off and the run says "
        "so in its first lines and in head.json",
        "the same, weight 0.05; a missing network is a warning",
        "the engine never downloads while it runs"),
    Difference(
        "grid depth control",
        "Depth Anything V2 (ViT-B) on each frozen 512² super-resolved render, min–max over the whole image, "
        "four tiles → 1024² → 512²",
        "the frozen generator's own depth at the training resolution (64²), inverse depth normalised over the head, "
        "background 0",
        f"the official pipeline with `--depth-model` (any `transformers` depth-estimation folder); without one the "
        f"generator's depth at {PAPER_DEPTH_RESOLUTION}² (one grid tile), with a note",
        "the generator knows its own geometry: no 390 MB network (Depth Anything V2 Base is CC BY-NC 4.0)"),
    Difference(
        "diffusion model",
        "Realistic Vision V5.1 (noVAE), an SD 1.5 fine-tune",
        "any SD 1.5-layout folder (model manager: `sd15`, `realistic-vision-v5.1`)",
        "whatever `--diffusion` points at: download `realistic-vision-v5.1` for the paper's",
        "the user chooses the model and its licence"),
    Difference(
        "diffusion precision",
        "fp16",
        "`auto`: fp16 on a GPU, fp32 on a CPU; gradient maths in fp32",
        "the same as ours",
        "CPUs have no fast fp16"),
    Difference(
        "tri-grid per render",
        "every render re-synthesises the tri-grid (16 syntheses per step, fresh noise each)",
        "one synthesis per head per step, shared by the base, mirror and grid renders",
        "the same as ours (with random noise: one draw per step)",
        "one synthesis instead of 16: memory and time"),
    Difference(
        "base-view weight without the mirror",
        "0.75",
        "1.0",
        "the mirror is on (0.75 / 0.25)",
        "an ablation without the mirror view gives the base view the whole gradient"),
    Difference(
        "inference views",
        "yaw −90, −30, 0, 30, 90 at pitch 10°, fresh noise per view",
        "front, ±45, ±90, back at pitch 10° (same cameras otherwise)",
        "the same views; random noise drawn once per head (seeded), shared by every view",
        "views of one head must be comparable pixel for pixel, and a re-run must give the same pictures"),
)

_SCOPES = ("distill.", "views.")


def official_values(scope: str = "") -> dict[str, Any]:
    """``{field: official value}`` of one scope: ``""`` (StylizeConfig), ``"distill."`` or ``"views."``."""
    if scope not in ("",) + _SCOPES:
        raise ConfigError(f"unknown settings scope {scope!r}")
    out = {}
    for setting in OFFICIAL_SETTINGS:
        in_scope = setting.key.startswith(scope) if scope else not setting.key.startswith(_SCOPES)
        if in_scope:
            out[setting.key[len(scope):]] = setting.official
    return out


def paper_config(config: StylizeConfig) -> StylizeConfig:
    """``config`` with every official training setting applied (the ``paper`` preset).

    Models, outputs and the machine (paths, device, precision) are left as they are. Without a depth model,
    the grid's depth control falls back to the generator's depth at :data:`PAPER_DEPTH_RESOLUTION`.
    """
    distill = dataclasses.replace(config.distill, **official_values("distill."))
    paper = dataclasses.replace(config, **official_values(), distill=distill, depth_resolution=PAPER_DEPTH_RESOLUTION)
    return paper.validate()


def apply_recipe(config: StylizeConfig, recipe: str) -> StylizeConfig:
    """``config`` unchanged for ``ours``, :func:`paper_config` for ``paper``; anything else is a ConfigError."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return paper_config(config) if recipe == PAPER else config


def depth_note(config: StylizeConfig) -> str | None:
    """What the paper preset cannot reproduce about the grid's depth control for ``config`` (None: nothing)."""
    if config.depth_model or not config.distill.use_grid or config.depth_resolution is None:
        return None
    return (f"no depth model (--depth-model, e.g. Depth Anything V2): the grid stage's depth control is the "
            f"generator's own depth rendered at up to {config.depth_resolution}², not the official depth network "
            "on the super-resolved render")


def lpips_note(config: StylizeConfig) -> str | None:
    """The line a run that wants LPIPS (weight > 0) but has no network prints first (None: nothing missing)."""
    if config.distill.lpips_weight <= 0 or config.lpips_path:
        return None
    return (f"LPIPS is off: the recipe weights it {config.distill.lpips_weight:g} but no LPIPS network is given "
            "(--lpips FOLDER; download it once with `python -m engine models download lpips-alex --out MODELS`)")
