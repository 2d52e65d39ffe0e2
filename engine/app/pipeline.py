"""One stylized head, end to end: stylize the generator (cached), render before/after, extract the mesh.

This is what the Blender **Stylize Head** button, ``python -m engine head`` and the demo run. A
:class:`HeadJob` names the style, the distillation options, the head (a seed or a W+ latent file) and the
models (empty = the embedded pack). :func:`run_head`

1. resolves the models (verifying the embedded pack's hashes when it is used) and the prompt;
2. stylizes the generator with :func:`engine.stylize.loop.stylize`, **cached**: the run folder is named by a hash
   of every setting that changes the weights plus the models' fingerprints, so pressing the button again
   for another seed or mesh resolution reuses the stylized generator, and a cancelled run resumes where it
   stopped;
3. renders the head before and after from the named views, extracts a vertex-coloured mesh from the
   stylized tri-grid density, and scores identity preservation and style with :mod:`engine.evaluate.metrics`
   (identity: the embedded pack's encoder for the pack's heads, dlib's real-face ResNet for real models and
   artists' meshes — ``identity_backend="auto"``; style: the pack's classifier). Identity is scored
   with a control: the stylized head is re-identified among its own original and a **fixed gallery** of
   other heads — seeds ``GALLERY_FIRST_SEED`` … (``gallery_heads`` of them, the head's own seed skipped) of
   the *base* generator, rendered before and after stylization from the same six views. The gallery's
   identity embeddings are cached (the originals' per base generator, the stylized ones in the stylization's
   run folder), so only the first head of a style pays for rendering them;
4. writes ``head.json``, ``head.npz``/``head.ply`` and the view PNGs into ``out_dir`` (atomically).

Progress goes through ``on_event`` as JSON-line events (see the module :mod:`engine.io.events`): ``stage``
(``load``, ``stylize``, ``render``, ``mesh``, ``evaluate``), ``progress`` (with ``stage``, ``step``,
``total``, ``fraction``), and finally ``done`` (``result`` = path of head.json) or ``cancelled``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np
import torch

from ..distill import DistillConfig
from ..errors import ConfigError
from ..generator.camera import named_views, orbit_cameras
from ..generator.inference import (ViewSettings, camera_config_for, field_functions, head_mesh, load_w_plus, render_images,
                                   seed_latent)
from ..generator.loading import load_generator, resolve_device
from ..generator.triplane import TriPlaneGenerator
from ..io.atomic import write_bytes, write_json, write_with
from ..io.configs import JsonConfig
from ..io.events import emit, log
from ..io.images import image_grid, save_png, to_uint8
from ..heads.head_input import DEFAULT_MAX_TRIANGLES, HeadInputConfig, read_head_mesh
from ..heads.mesh_field import DEFAULT_FIELD_STEPS
from ..mesh import Mesh, MeshConfig, write_npz, write_ply
from ..pack import PackPaths, require_pack, sha256_file
from ..stylize.cancel import CancelToken
from ..stylize.config import StylizeConfig
from ..stylize.loop import stylize
from ..stylize.presets import get_style_preset, preset_prompt
from ..stylize.recipes import OURS, PAPER, RECIPES, paper_config
from ..stylize.training_state import read_latest

if TYPE_CHECKING:  # pragma: no cover
    from ..heads.game_asset import GameAssetConfig

EventSink = Callable[..., None]
METHODS = ("ld", "sds")
# Stylization length and step size when nothing is given. The embedded pack's small generator moves to a
# new style in tens of steps at a large learning rate; PanoHead follows the paper's 10k steps at 1e-4
# (the official command line's values).
EMBEDDED_DEFAULT_STEPS = 40
EMBEDDED_DEFAULT_LR = 2e-3
EMBEDDED_NEURAL_RESOLUTION = 32  # the pack's diffusion model works at 64²: 32² rays + SR suffice
FULL_DEFAULT_STEPS = 2000
FULL_DEFAULT_LR = 1e-4
VIEW_PITCH = math.radians(10.0)
# The fixed identity gallery of `engine head`: seeds far from the ones people try first (0, 1, 7 …).
GALLERY_FIRST_SEED = 10_000
GALLERY_HEADS = 8
# Head mode's default (image, geometry) anchor weights: see the README's head-mode table for what they do.
HEAD_MODE_ANCHOR = (1.0, 1.0)
_ANCHOR_SETTINGS = ("anchor_image_weight", "anchor_geometry_weight", "anchor_resolution")
# StylizeConfig fields that do not change the trained weights: excluded from the cache key.
_NOT_IN_CACHE_KEY = ("out_dir", "device", "precision", "checkpoint_every", "preview_every", "keep_checkpoints",
                     "attention_slicing", "vae_slicing")
# Fields that came after caches existed, with their defaults: left out of the key while at them, so runs made
# before them (and every run that does not use them) keep their cache. Model paths among them are keyed by
# their files' fingerprints, not their paths.
_LATER_FIELDS = {"noise_mode": "const", "depth_model": None, "depth_resolution": None, "superresolution_start": None}
_MODEL_PATH_FIELDS = ("lpips_path", "depth_model", "superresolution_start")


@dataclass
class HeadJob(JsonConfig):
    """Everything one Stylize Head press needs. Model paths left empty use the embedded pack."""

    config_label: ClassVar[str] = "head job"

    out_dir: str = "out/head"
    prompt: str = ""
    style_preset: str | None = None
    method: str = "ld"
    mirror: bool = True
    grid: bool = True
    rank: bool = True
    steps: int | None = None
    lr: float | None = None
    guidance_scale: float = 7.5
    train_seed: int = 0

    seed: int = 0
    latent: str | None = None
    truncation_psi: float = 0.75

    generator: str | None = None
    diffusion: str | None = None
    depth_controlnet: str | None = None
    edge_controlnet: str | None = None
    pack: str | None = None

    mesh_resolution: int = 128
    iso_level: float = 10.0
    turntable_frames: int = 0
    evaluate: bool = True
    gallery_heads: int = GALLERY_HEADS  # other heads the stylized head is re-identified among (chance 1/(1 + n))
    identity_backend: str = "auto"  # auto: dlib-face for real models and meshes, embedded for the pack's heads
    device: str = "auto"
    precision: str = "auto"
    attention_slicing: bool = False
    vae_slicing: bool = False
    cache_dir: str | None = None
    mesh: str | None = None  # head mode: stylize this mesh's own fitted field instead of a generated head
    field_steps: int = DEFAULT_FIELD_STEPS  # head mode: steps of the field fit
    # Pull toward the source head's renders (engine.distill.regularizers.anchor_loss): None = the default
    # for the head (HEAD_MODE_ANCHOR for a mesh, whose single field has no LDIS; off for generated heads).
    anchor_image: float | None = None
    anchor_geometry: float | None = None
    game_asset: bool = True  # also write head.glb: life size, UV texture baked from the field, LODs
    texture_size: int = 1024
    life_size: bool = True  # head.glb in metres (False: the engine's units)
    max_fit_triangles: int = DEFAULT_MAX_TRIANGLES  # head mode: denser meshes are simplified to this before the fit
    # production: an approved style (engine/styles) instead of training one; never trained (None: train)
    style_id: str | None = None
    style_library: str | None = None
    # The training recipe: "ours" (the defaults above) or "paper" (every setting of the official code,
    # engine.stylize.recipes; explicit steps, lr, switches and anchors still win).
    recipe: str = OURS
    lpips: str | None = None  # LPIPS network: the model manager's lpips-alex folder (or a .pt2); None = term off
    depth_model: str | None = None  # transformers depth-estimation folder: the official grid depth control

    def game_asset_config(self) -> "GameAssetConfig":
        from ..heads.game_asset import GameAssetConfig

        return GameAssetConfig(texture_size=self.texture_size, life_size=self.life_size).validate()

    def head_input_config(self) -> HeadInputConfig:
        return HeadInputConfig(max_triangles=self.max_fit_triangles).validate()

    def validate(self) -> "HeadJob":
        if self.style_id is not None:
            from ..styles.library import parse_style_id

            parse_style_id(self.style_id)
            if self.mesh:
                raise ConfigError("--style-id with --mesh: head mode trains the mesh's own field, which no approval "
                                  "covers; an approved style stylizes generated heads and latents")
        elif not self.prompt and not self.style_preset:
            raise ConfigError("give a style: --prompt TEXT or --style-preset NAME")
        if self.style_preset:
            get_style_preset(self.style_preset)
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be ≥ 1, got {self.steps}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not self.guidance_scale >= 0:
            raise ConfigError(f"guidance scale must be ≥ 0, got {self.guidance_scale}")
        if not 16 <= self.mesh_resolution <= 1024:
            raise ConfigError(f"mesh resolution must be in 16..1024, got {self.mesh_resolution}")
        if self.turntable_frames < 0:
            raise ConfigError(f"turntable frames must be ≥ 0, got {self.turntable_frames}")
        if not 0.0 <= self.truncation_psi <= 1.0:
            raise ConfigError(f"truncation ψ must be in [0, 1], got {self.truncation_psi}")
        if self.game_asset:
            self.game_asset_config()
        self.head_input_config()
        if not 1 <= self.gallery_heads <= 64:
            raise ConfigError(f"gallery heads must be in 1..64, got {self.gallery_heads}")
        if self.identity_backend not in IDENTITY_BACKEND_CHOICES:
            raise ConfigError(f"identity backend must be one of {', '.join(IDENTITY_BACKEND_CHOICES)}, got {self.identity_backend!r}")
        if self.mesh and self.latent:
            raise ConfigError("give one head: --mesh FILE or --latent FILE, not both")
        if not 1 <= self.field_steps <= 100_000:
            raise ConfigError(f"field steps must be in 1..100000, got {self.field_steps}")
        check_recipe_and_anchors(self.recipe, self.anchor_image, self.anchor_geometry)
        return self

    @property
    def cache_folder(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.out_dir) / "cache"

    @property
    def shared_cache_folder(self) -> Path:
        """Where caches of what no job changes live (the real-head gallery's embeddings, ~17 s to compute on 2
        cores): ``--cache`` when given, else the engine's per-user data folder — not ``OUT/cache``, so a head
        stylized into a fresh output folder does not embed the same gallery again."""
        from ..styles.library import engine_data_dir

        return Path(self.cache_dir) if self.cache_dir else engine_data_dir() / "cache"


def check_recipe_and_anchors(recipe: str, anchor_image: float | None, anchor_geometry: float | None) -> None:
    """The stylization choices ``engine head`` and ``engine batch`` share: a known recipe, anchor weights in
    [0, 10000] (None: the mode's default)."""
    for name, value in (("anchor_image", anchor_image), ("anchor_geometry", anchor_geometry)):
        if value is not None and not 0.0 <= value <= 1e4:
            raise ConfigError(f"{name.replace('_', ' ')} weight (--{name.replace('_', '-')}) must be in [0, 10000], "
                              f"got {value}")
    if recipe not in RECIPES:
        raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")


@dataclass(frozen=True)
class ModelSources:
    """The models a job uses, after falling back to the embedded pack for whatever was not given."""

    generator: str
    diffusion: str
    depth_controlnet: str | None
    edge_controlnet: str | None
    pack: PackPaths | None  # set when any model comes from the embedded pack
    field_of: str | None = None  # head mode: ``generator`` is a single-head field fitted from this generator
    lpips: str | None = None
    depth_model: str | None = None
    # head mode: the super-resolution weights a stylization of the field starts from (the fit's, before its polish)
    superresolution_start: str | None = None

    @property
    def base_generator(self) -> str:
        """The generator the heads come from (for a head field: the one it was fitted from)."""
        return self.field_of or self.generator

    @property
    def embedded_diffusion(self) -> bool:
        return self.pack is not None and Path(self.diffusion) == self.pack.diffusion


def head_field_sources(sources: ModelSources, head_field) -> ModelSources:
    """``sources`` with a mesh's fitted field (:class:`engine.app.head_mode.HeadField`) as the generator to
    stylize, and the fit's own super-resolution as where the stylization's trainable copy starts."""
    start = head_field.stylize_superresolution
    return dataclasses.replace(sources, generator=str(head_field.path), field_of=sources.generator,
                               superresolution_start=None if start is None else str(start))


def resolve_models(job: HeadJob) -> ModelSources:
    """Fill unset model paths from the embedded pack (checked against its manifest) and check given ones exist."""
    needs_pack = job.generator is None or job.diffusion is None
    pack = require_pack(job.pack) if needs_pack else None
    # The generator may be a preset name; load_generator reports a bad one. Folders must exist.
    for what, value in (("diffusion folder", job.diffusion), ("depth ControlNet folder", job.depth_controlnet),
                        ("edge ControlNet folder", job.edge_controlnet), ("LPIPS network", job.lpips),
                        ("depth model folder", job.depth_model)):
        if value is not None and not Path(value).exists():
            raise ConfigError(f"{value}: {what} does not exist")
    if job.depth_model is not None and not Path(job.depth_model).is_dir():
        raise ConfigError(f"{job.depth_model}: depth model must be a folder (a transformers depth-estimation model)")
    diffusion = job.diffusion or str(pack.diffusion)
    depth = job.depth_controlnet or (str(pack.controlnet_depth) if job.diffusion is None else None)
    edge = job.edge_controlnet or (str(pack.controlnet_edge) if job.diffusion is None else None)
    return ModelSources(job.generator or str(pack.generator), diffusion, depth, edge, pack, lpips=job.lpips,
                        depth_model=job.depth_model)


def resolve_prompt(job: HeadJob, sources: ModelSources) -> tuple[str, str | None]:
    """(prompt, warning or None): an explicit prompt wins; a preset picks the prompt for the models in use."""
    if job.prompt:
        return job.prompt, None
    return preset_prompt(job.style_preset or "", embedded=sources.embedded_diffusion)


def _path_fingerprint(path: str | None) -> str | None:
    """Cheap identity of a model file or folder: resolved path, sizes and modification times of its files.

    Full SHA-256 of a multi-GB Stable Diffusion folder would cost seconds on every press; the embedded
    pack's files were already hashed against its manifest.
    """
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return str(path)  # a preset name such as "small"
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    stats = [(f.relative_to(p).as_posix() if f != p else p.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps([str(p.resolve()), stats]).encode()).hexdigest()


def stylize_config_for(job: HeadJob, sources: ModelSources, prompt: str) -> StylizeConfig:
    """The stylization run a job asks for (its ``out_dir`` is set from the cache key afterwards)."""
    embedded = sources.pack is not None and Path(sources.base_generator) == sources.pack.generator
    preset_steps = get_style_preset(job.style_preset).embedded_steps if (embedded and job.style_preset) else None
    steps = job.steps or (preset_steps or EMBEDDED_DEFAULT_STEPS if embedded else FULL_DEFAULT_STEPS)
    lr = job.lr or (EMBEDDED_DEFAULT_LR if embedded else FULL_DEFAULT_LR)
    # a mesh's own field (engine head --mesh, or the batch's mesh mode, which hands each scan's field in)
    anchor = HEAD_MODE_ANCHOR if (job.mesh or sources.field_of) else (0.0, 0.0)
    distill = DistillConfig(
        method=job.method,
        use_mirror=job.mirror,
        use_grid=job.grid,
        use_rank=job.rank,
        guidance_scale=job.guidance_scale,
        anchor_image_weight=anchor[0] if job.anchor_image is None else job.anchor_image,
        anchor_geometry_weight=anchor[1] if job.anchor_geometry is None else job.anchor_geometry,
    )
    config = StylizeConfig(
        prompt=prompt,
        generator=sources.generator,
        diffusion=sources.diffusion,
        depth_controlnet=sources.depth_controlnet,
        edge_controlnet=sources.edge_controlnet,
        lpips_path=sources.lpips,
        depth_model=sources.depth_model,
        superresolution_start=sources.superresolution_start,
        steps=steps,
        lr=lr,
        seed=job.train_seed,
        truncation_psi=job.truncation_psi,
        neural_resolution=EMBEDDED_NEURAL_RESOLUTION if embedded else None,
        checkpoint_every=max(10, steps // 4),
        preview_every=0,
        keep_checkpoints=1,
        device=job.device,
        precision=job.precision,
        attention_slicing=job.attention_slicing,
        vae_slicing=job.vae_slicing,
        distill=distill,
    )
    return paper_for_job(config, job) if job.recipe == PAPER else config


def paper_for_job(config: StylizeConfig, job: HeadJob) -> StylizeConfig:
    """The paper recipe for a head job: every official setting, then what the job chose explicitly (steps,
    lr, anchors when given; its switches, guidance, seed and truncation, whose defaults are the official ones)."""
    paper = paper_config(config)
    distill = paper.distill.replace(
        method=job.method, use_mirror=job.mirror, use_grid=job.grid, use_rank=job.rank,
        guidance_scale=job.guidance_scale,
        anchor_image_weight=paper.distill.anchor_image_weight if job.anchor_image is None else job.anchor_image,
        anchor_geometry_weight=paper.distill.anchor_geometry_weight if job.anchor_geometry is None else job.anchor_geometry,
    )
    return paper.replace(steps=job.steps or paper.steps, lr=job.lr or paper.lr, seed=job.train_seed,
                         truncation_psi=job.truncation_psi, distill=distill)


def stylize_cache_key(config: StylizeConfig, sources: ModelSources) -> str:
    settings = {k: v for k, v in config.to_dict().items() if k not in _NOT_IN_CACHE_KEY}
    # The source anchor came after caches existed: while it is off it leaves the key alone, so runs made
    # before it (and every run that does not use it) keep their cache.
    distill = settings["distill"]
    if not (distill["anchor_image_weight"] or distill["anchor_geometry_weight"]):
        settings["distill"] = {k: v for k, v in distill.items() if k not in _ANCHOR_SETTINGS}
    settings = {k: v for k, v in settings.items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}
    for name in _MODEL_PATH_FIELDS:
        if settings.get(name) is not None:
            settings[name] = _path_fingerprint(settings[name])
    models = {name: _path_fingerprint(getattr(sources, name)) for name in ("generator", "diffusion", "depth_controlnet", "edge_controlnet")}
    blob = json.dumps({"settings": settings, "models": models}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StylizedGenerator:
    """Where the stylized weights are and how they were obtained."""

    path: Path | None
    run_dir: Path
    config: StylizeConfig
    reused: bool
    cancelled: bool
    seconds: float


def _stylize_events(on_event: EventSink) -> EventSink:
    """Re-label the training loop's events for the head protocol: its ``done`` is one stage finishing."""

    def sink(event: str, **fields: Any) -> None:
        if event == "progress":
            total = fields.get("total") or 1
            on_event("progress", stage="stylize", fraction=min(1.0, fields.get("step", 0) / total), **fields)
        elif event in ("started", "done", "cancelled"):
            on_event("stage", stage="stylize", status=event, **fields)
        else:
            on_event(event, stage="stylize", **fields)

    return sink


def stylized_generator(
    job: HeadJob,
    sources: ModelSources,
    prompt: str,
    cancel: CancelToken | None = None,
    on_event: EventSink = emit,
) -> StylizedGenerator:
    """Stylize the base generator toward ``prompt`` once per settings; later calls reuse or resume it."""
    config = stylize_config_for(job, sources, prompt)
    run_dir = job.cache_folder / "stylized" / stylize_cache_key(config, sources)
    config = dataclasses.replace(config, out_dir=str(run_dir))
    latest = read_latest(run_dir)
    if latest is not None and latest.step >= config.steps:
        path = latest.generator_path
        on_event("stage", stage="stylize", status="reused", generator=str(path), run=str(run_dir))
        return StylizedGenerator(path, run_dir, config, True, False, 0.0)
    result = stylize(config, cancel, _stylize_events(on_event), resume=latest is not None)
    return StylizedGenerator(result.generator_path, run_dir, config, False, result.cancelled, result.seconds)


def recipe_notes(job: HeadJob, config: StylizeConfig) -> list[str]:
    """What the job's recipe asks for and will not get: no LPIPS network, the paper's depth fallback, and the
    paper recipe in head mode (no source anchor, which is what keeps a scan's person)."""
    from ..stylize.loop import run_notes

    notes = run_notes(config)
    if job.recipe == PAPER and job.mesh and job.anchor_image is None and job.anchor_geometry is None:
        notes.append("the paper recipe has no source anchor: head mode's single field keeps less of the person "
                     "(--anchor-image / --anchor-geometry 1 bring head mode's default back)")
    return notes


def lpips_record(config: StylizeConfig) -> dict[str, Any]:
    """head.json's account of the LPIPS term: its weight, the network used (null: none) and whether it ran."""
    from ..stylize.recipes import lpips_note

    used = bool(config.lpips_path) and config.distill.lpips_weight > 0
    return {"weight": config.distill.lpips_weight, "network": config.lpips_path, "used": used,
            "note": lpips_note(config)}


@dataclass
class HeadResult:
    """What :func:`run_head` wrote (paths relative to ``out_dir`` in head.json)."""

    out_dir: Path
    cancelled: bool = False
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def json_path(self) -> Path:
        return self.out_dir / "head.json"


def head_latent(job: HeadJob, G: TriPlaneGenerator, config: StylizeConfig) -> torch.Tensor:
    """The head's W+ latent: the given ``.npz`` or the seed mapped like the stylization maps its heads."""
    if job.latent:
        return load_w_plus(job.latent, G)
    return seed_latent(G, job.seed, view_settings(config))


def view_settings(config: StylizeConfig) -> ViewSettings:
    return ViewSettings(
        truncation_psi=config.truncation_psi,
        truncation_cutoff=config.truncation_cutoff,
        conditioning_yaw=config.conditioning_yaw,
        conditioning_pitch=config.conditioning_pitch,
        camera_pivot=config.camera_pivot,
        view_pitch=VIEW_PITCH,
        background="white",
        noise_mode=config.noise_mode,  # the paper's random noise: one seeded draw per head, shared by its views
    ).validate()


def render_views(G: TriPlaneGenerator, ws: torch.Tensor, settings: ViewSettings) -> tuple[list[str], torch.Tensor]:
    """(view names, images (V, 3, R, R) in [-1, 1]) from the named views (front, ±45°, ±90°, back)."""
    views = named_views(settings.view_pitch, camera_config_for(G, settings.camera_pivot))
    return list(views.names), render_images(G, ws, views.c, settings.background, settings.chunk,
                                            noise_mode=settings.noise_mode, noise_seed=settings.noise_seed)


def head_planes(G: TriPlaneGenerator, ws: torch.Tensor, settings: ViewSettings) -> torch.Tensor:
    """The head's tri-grid as its views see it (the same noise), for its mesh and textures."""
    from ..generator.noise import seeded_noise

    device = next(G.parameters()).device
    with torch.no_grad(), seeded_noise(settings.noise_seed if settings.noise_mode == "random" else None, device):
        return G.synthesize_planes(ws.to(device), noise_mode=settings.noise_mode)


def extract_head(
    G: TriPlaneGenerator, ws: torch.Tensor, resolution: int, iso_level: float = 10.0, timings: dict | None = None,
    planes: torch.Tensor | None = None,
) -> Mesh:
    config = MeshConfig.for_box_warp(G.config.rendering.box_warp, resolution=resolution, iso_level=iso_level)
    return head_mesh(G, ws, config, timings=timings, planes=planes)


def game_asset_bytes(
    G: TriPlaneGenerator, ws: torch.Tensor, mesh: Mesh, config: "GameAssetConfig", extras: dict | None = None,
    name: str = "head", planes: torch.Tensor | None = None,
) -> tuple[bytes, dict]:
    """(the game-ready ``.glb`` of ``mesh``, its metadata): textures baked from ``G``'s colour for ``ws``
    (``planes``: the tri-grid to bake from, default the one ``ws`` synthesizes with constant noise)."""
    from ..heads.game_asset import build_game_asset, game_glb_bytes

    mesh_config = MeshConfig.for_box_warp(G.config.rendering.box_warp, resolution=int(mesh.metadata.get("resolution", 128)),
                                          iso_level=float(mesh.metadata.get("iso_level", 10.0)))
    _, color_fn = field_functions(G, ws, planes)
    with torch.no_grad():
        asset = build_game_asset(mesh, color_fn, mesh_config, config, device=next(G.parameters()).device)
    return game_glb_bytes(asset, config, extras, name=name), asset.metadata


def embedded_backends(pack: PackPaths) -> tuple[Any, Any]:
    """(identity backend, style backend) from the pack's recognition models."""
    from ..evaluate.metrics import EmbeddedIdentityBackend, EmbeddedStyleBackend

    return EmbeddedIdentityBackend(pack.identity_encoder), EmbeddedStyleBackend(pack.style_classifier)


def uses_real_models(sources: ModelSources) -> bool:
    """Whether the heads are real rather than the procedural world's: a generator or diffusion model that is
    not the embedded pack's, or a head field fitted to an artist's mesh."""
    if sources.pack is None or sources.field_of is not None:
        return True
    return Path(sources.base_generator) != sources.pack.generator or not sources.embedded_diffusion


@dataclass
class IdentityScorer:
    """The identity backend that scores a job's heads, what keys its cached embeddings, and why it was chosen."""

    backend: Any
    fingerprint: str
    note: str = ""


IDENTITY_BACKEND_CHOICES = ("auto", "embedded", "dlib-face")


def identity_scorer(sources: ModelSources, pack: PackPaths, choice: str = "auto") -> IdentityScorer:
    """``auto``: dlib's real-face ResNet for real models (PanoHead / SD / an artist's mesh); the pack's encoder,
    which knows the procedural world, for the embedded pack's heads — or when dlib is not installed (with a
    note). ``embedded`` / ``dlib-face`` force one."""
    from ..evaluate.face_recognition import DlibFaceBackend
    from ..io.dlib_models import INSTALL_HINT, dlib_available
    from ..evaluate.metrics import EmbeddedIdentityBackend

    note = ""
    if choice == "dlib-face":
        backend = DlibFaceBackend()  # raises a ConfigError naming the install command when dlib is missing
        return IdentityScorer(backend, backend.fingerprint, "")
    if choice == "auto" and uses_real_models(sources):
        if dlib_available():
            backend = DlibFaceBackend()
            return IdentityScorer(backend, backend.fingerprint, "real models: dlib's face-recognition ResNet")
        note = (f"real models, but dlib is not installed ({INSTALL_HINT}): scored with the pack's encoder, "
                "which was trained on the procedural head world")
    return IdentityScorer(EmbeddedIdentityBackend(pack.identity_encoder), f"embedded:{sha256_file(pack.identity_encoder)}", note)


def scoring_pack(sources: ModelSources) -> PackPaths:
    """The pack whose recognition models score a head: the job's pack, else the shipped one (user models
    are scored with the embedded encoder too — it is the only offline identity model)."""
    from ..pack import pack_paths

    return sources.pack if sources.pack is not None else pack_paths()


def gallery_seeds(count: int, exclude: int | None = None) -> list[int]:
    """The fixed gallery: the first ``count`` seeds from ``GALLERY_FIRST_SEED`` on, skipping ``exclude``."""
    seeds = [s for s in range(GALLERY_FIRST_SEED, GALLERY_FIRST_SEED + count + 1) if s != exclude]
    return seeds[:count]


def _gallery_key(G: TriPlaneGenerator, scorer_fingerprint: str, settings: ViewSettings) -> str:
    from ..stylize.training_state import state_fingerprint

    views = dataclasses.asdict(settings)
    if views["noise_mode"] == "const":  # the noise fields came later: constant-noise galleries keep their key
        views = {k: v for k, v in views.items() if k not in ("noise_mode", "noise_seed")}
    blob = json.dumps({"generator": state_fingerprint(G), "encoder": scorer_fingerprint,
                       "views": views}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cached_embeddings(folder: Path, seeds: list[int], G: TriPlaneGenerator, latents: dict[int, torch.Tensor],
                       settings: ViewSettings, identity_backend: Any) -> torch.Tensor:
    """(K, V, D) identity embeddings of the named views of ``seeds`` rendered by ``G``, cached per seed."""
    from safetensors.torch import load_file, save_file

    from ..evaluate.metrics import embed_renders

    out = []
    for seed in seeds:
        path = folder / f"seed_{seed}.safetensors"
        if path.is_file():
            out.append(load_file(str(path))["embeddings"])
            continue
        _, images = render_views(G, latents[seed], settings)
        emb = embed_renders(images[None], identity_backend)[0].contiguous()
        write_with(path, lambda tmp, emb=emb: save_file({"embeddings": emb}, str(tmp)))
        out.append(emb)
    return torch.stack(out)


def identity_gallery(job: HeadJob, base: TriPlaneGenerator, styled: TriPlaneGenerator | None, stylized: "StylizedGenerator",
                     settings: ViewSettings, scorer: IdentityScorer) -> Any:
    """The fixed gallery of other heads (originals by ``base``, stylized by ``styled``) as identity embeddings.

    ``styled`` None (head mode: the stylized field makes only its own head) leaves the stylized gallery out;
    the reverse re-identification is then not measured."""
    from ..evaluate.metrics import IdentityGallery

    seeds = gallery_seeds(job.gallery_heads, exclude=None if job.latent or job.mesh else job.seed)
    latents = {seed: seed_latent(base, seed, settings) for seed in seeds}
    key = _gallery_key(base, scorer.fingerprint, settings)
    before = _cached_embeddings(job.cache_folder / "identity_gallery" / key, seeds, base, latents, settings, scorer.backend)
    if styled is None:
        label = f"seeds {seeds[0]}…{seeds[-1]} ({len(seeds)} heads) of the base generator, unstylized"
        return IdentityGallery(before=before, after=None, label=label)
    after = _cached_embeddings(stylized.run_dir / "identity_gallery" / key, seeds, styled, latents, settings, scorer.backend)
    label = f"seeds {seeds[0]}…{seeds[-1]} ({len(seeds)} heads) of the base generator, before and after stylization"
    return IdentityGallery(before=before, after=after, label=label)


def score_head(before: torch.Tensor, after: torch.Tensor, style: str | None, pack: PackPaths, gallery: Any,
               scorer: IdentityScorer, view_names: list[str],
               identity_images: tuple[torch.Tensor, torch.Tensor] | None = None,
               identity_view_names: list[str] | None = None) -> dict[str, Any]:
    """The head's identity scores (``scorer``'s backend) and style score (the pack's style classifier).

    Identity: the raw cosine before vs after (mean over the six views) *and its control*: the rank of the
    head's own original among 1 + K originals (itself + the gallery; chance 1/(1 + K)), the same per view,
    the margin over the mean cosine to the gallery's originals, and the reverse rank (the original among the
    stylized heads). The style score needs a style the classifier knows (a preset with an embedded style);
    a free-text prompt gets identity scores only (``style_score`` null, with a note). ``identity_images``:
    (before, after) (V', 3, H, W) images identity is judged on instead of the renders (head mode on a real mesh:
    the lit meshes from their own views, named by ``identity_view_names``; engine/app/mesh_identity.py).
    """
    from ..evaluate.metrics import evaluate_renders

    _, style_backend = embedded_backends(pack)
    report = evaluate_renders(before[None], after[None], style or "unknown", scorer.backend,
                              style_backend if style else None, gallery=gallery,
                              identity_images=None if identity_images is None else
                              (identity_images[0][None], identity_images[1][None])).to_dict()
    notes = ([scorer.note] if scorer.note else []) + report["notes"]
    return {
        "identity_similarity": report["identity_similarity_mean"],
        "reid_rank": report["reid_ranks"][0] if report["reid_ranks"] else None,
        "reid_top1": report["reid_top1"],
        "reid_top1_per_view": report["reid_top1_per_view"],
        "reid_top1_reverse": report["reid_top1_reverse"],
        "reid_candidates": report["reid_candidates"],
        "reid_chance": report["reid_chance"],
        "identity_margin": report["identity_margin_mean"],
        "identity_mismatched": report["identity_mismatched_mean"],
        "original_cross_similarity": report["original_cross_similarity"],
        "gallery": report["gallery"],
        "style_score": report["style_score_after_mean"],
        "style_score_before": report["style_score_before_mean"],
        "consistency_after": report["consistency_after_mean"],
        "consistency_before": report["consistency_before_mean"],
        "identity_backend": report["identity_backend"],
        "identity_views": ([(identity_view_names or view_names)[i] for i in report["identity_views"]]
                           if report["identity_views"] is not None else None),
        "faces_found_before": report["faces_found_before"],
        "faces_found_after": report["faces_found_after"],
        "style_backend": report["style_backend"],
        "notes": notes,
    }


def save_latent(ws: torch.Tensor, path: Path) -> Path:
    """The head's W+ latent as ``.npz`` with key ``w`` (1, num_ws, w_dim): what ``--latent`` reads back."""
    array = ws.detach().cpu().numpy().astype(np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, w=array)

    return write_with(path, write)


def _save_views(names: list[str], images: torch.Tensor, folder: Path, prefix: str) -> dict[str, Path]:
    return {name: save_png(to_uint8(img), folder / f"{prefix}_{name}.png") for name, img in zip(names, images)}


def run_head(job: HeadJob, cancel: CancelToken | None = None, on_event: EventSink = emit) -> HeadResult:
    """Stylize (cached), render before/after, mesh and score one head; see the module docstring."""
    job.validate()
    started = time.perf_counter()
    out = Path(job.out_dir)
    cancel = cancel or CancelToken()
    # Head mode's mesh is untrusted input: read and checked before any model is loaded and before the first
    # event (which creates the run's log), so a bad file fails in seconds and leaves nothing in out_dir.
    head_mesh = read_head_mesh(job.mesh, job.head_input_config()) if job.mesh else None
    on_event("stage", stage="load", message="checking models")
    sources = resolve_models(job)
    style = None
    if job.style_id is not None:  # production: verified (files, status, base generator) before anything loads
        from ..styles.production import production_style

        style = production_style(job.style_id, job.style_library, sources.generator,
                                 sources.pack.root if sources.pack is not None else None)
        job = dataclasses.replace(job, prompt=style.record["prompt"], style_preset=None)
    prompt, warning = resolve_prompt(job, sources)
    if warning:
        log(f"warning: {warning}")
        on_event("warning", message=warning)
    notes = recipe_notes(job, stylize_config_for(job, sources, prompt))
    # What the recipe wants and will not get: said before anything heavy starts (and in head.json); the paper
    # recipe promised it, so there it is also a warning.
    for note in notes:
        log(f"note: {note}")
        if job.recipe == PAPER:
            on_event("warning", message=note)
    head_field = None
    if job.mesh:
        from .head_mode import fitted_head_field
        from ..heads.mesh_field import MeshFieldConfig

        on_event("stage", stage="fit", message=f"fitting the head's own tri-grid to {Path(job.mesh).name}")
        head_field = fitted_head_field(head_mesh, sources.generator, _path_fingerprint(sources.generator), job.cache_folder,
                                       MeshFieldConfig(steps=job.field_steps), job.device, cancel, on_event)
        if head_field is None:
            on_event("cancelled", stage="fit")
            return HeadResult(out, cancelled=True)
        sources = head_field_sources(sources, head_field)

    on_event("stage", stage="stylize", message=f"stylizing toward {prompt!r} ({job.method.upper()})")
    if style is not None:  # the approved weights as they are: never trained
        stylized = StylizedGenerator(style.generator, style.folder, StylizeConfig.from_dict(style.record["settings"]),
                                     True, False, 0.0)
        on_event("stage", stage="stylize", status="approved", message=f"approved style {job.style_id}",
                 generator=str(style.generator))
    else:
        stylized = stylized_generator(job, sources, prompt, cancel, on_event)
    if stylized.cancelled:
        on_event("cancelled", stage="stylize", run=str(stylized.run_dir))
        return HeadResult(out, cancelled=True)

    on_event("stage", stage="render", message="rendering before/after views")
    device = resolve_device(job.device)
    base = load_generator(sources.generator, device=device).generator
    styled = load_generator(stylized.path, device=device).generator
    ws = head_latent(job, base, stylized.config)
    settings = view_settings(stylized.config)
    names, before = render_views(base, ws, settings)
    _, after = render_views(styled, ws, settings)
    views = out / "views"
    before_files = _save_views(names, before, views, "before")
    after_files = _save_views(names, after, views, "after")
    compare = save_png(image_grid([to_uint8(i) for i in torch.cat([before, after])], len(names)), views / "compare.png")
    turntable = None
    if job.turntable_frames:
        orbit = orbit_cameras(job.turntable_frames, settings.view_pitch, camera_config_for(styled, settings.camera_pivot))
        frames = render_images(styled, ws, orbit.c, settings.background, settings.chunk,
                               noise_mode=settings.noise_mode, noise_seed=settings.noise_seed)
        turntable = [save_png(to_uint8(f), out / "views" / "turntable" / f"frame_{i:03d}.png") for i, f in enumerate(frames)]

    on_event("stage", stage="mesh", message=f"marching cubes at {job.mesh_resolution}³")
    mesh_timings: dict[str, float] = {}
    planes = head_planes(styled, ws, settings) if settings.noise_mode != "const" else None  # as the views saw it
    mesh = extract_head(styled, ws, job.mesh_resolution, job.iso_level, mesh_timings, planes=planes)
    npz = write_npz(mesh, out / "head.npz")
    ply = write_ply(mesh, out / "head.ply")
    latent = save_latent(ws, out / "latent.npz")
    glb, game_asset = None, None
    if job.game_asset:
        on_event("stage", stage="export", message=f"game-ready glb: UV texture {job.texture_size}², LODs, "
                                                  + ("life size" if job.life_size else "engine units"))
        data, game_asset = game_asset_bytes(styled, ws, mesh, job.game_asset_config(), name="head", planes=planes)
        glb = write_bytes(out / "head.glb", data)
    scores: dict[str, Any] = {}
    pack = scoring_pack(sources)
    if job.evaluate and not pack.identity_encoder.is_file():
        scores = {"notes": [f"{pack.identity_encoder}: no identity encoder in the pack; scores skipped"]}
    elif job.evaluate:
        on_event("stage", stage="evaluate", message=f"scoring identity (against {job.gallery_heads} gallery heads) and style")
        scorer = identity_scorer(sources, pack, job.identity_backend)
        identity_images, identity_names = None, names
        if head_field is None:
            gallery = identity_gallery(job, base, styled, stylized, settings, scorer)
        elif scorer.backend.name == "dlib-face":  # a real mesh: its field renders are flat; judge the lit meshes
            from .mesh_identity import mesh_identity

            identity_images, gallery, identity_names = mesh_identity(head_field.scan.mesh, mesh, base, scorer.backend,
                                                                     job.shared_cache_folder, job.gallery_heads)
            # what was judged, beside the renders, so it can be looked at
            _save_views(identity_names, identity_images[0], views, "identity_before")
            _save_views(identity_names, identity_images[1], views, "identity_after")
        else:  # the field makes only its own head: the gallery's people come from the generator it was fitted from
            people = load_generator(sources.base_generator, device=device).generator
            gallery = identity_gallery(job, people, None, stylized, settings, scorer)
        style = get_style_preset(job.style_preset).embedded_style if job.style_preset else None
        scores = score_head(before, after, style, pack, gallery, scorer, names, identity_images, identity_names)
        if identity_images is not None:
            scores["identity_judged_on"] = "lit meshes (source, stylized, real-head gallery)"

    rel = lambda p: Path(p).relative_to(out).as_posix()  # noqa: E731
    summary = {
        "prompt": prompt,
        "style_preset": job.style_preset,
        "method": job.method,
        "options": {"mirror": job.mirror, "grid": job.grid, "rank": job.rank, "guidance_scale": job.guidance_scale,
                    "steps": stylized.config.steps, "lr": stylized.config.lr},
        "recipe": job.recipe,
        "lpips": lpips_record(stylized.config),
        "depth_control": stylized.config.depth_model or (
            f"generator depth at up to {stylized.config.depth_resolution}²" if stylized.config.depth_resolution
            else "generator depth at the training resolution"),
        "recipe_notes": notes,
        "seed": None if job.latent or job.mesh else job.seed,
        "mesh": None if head_field is None else {"source": Path(job.mesh).name, "field": str(head_field.path),
                                                  "fit_reused": head_field.reused, **head_field.fit},
        "latent": job.latent,
        "latent_npz": rel(latent),
        "generator": str(stylized.path),
        "base_generator": sources.base_generator,
        "stylize_reused": stylized.reused,
        "mesh_npz": rel(npz),
        "mesh_ply": rel(ply),
        "glb": rel(glb) if glb else None,
        "game_asset": game_asset,
        "vertices": mesh.num_vertices,
        "faces": mesh.num_faces,
        "before": {k: rel(v) for k, v in before_files.items()},
        "after": {k: rel(v) for k, v in after_files.items()},
        "compare": rel(compare),
        "turntable": [rel(p) for p in turntable] if turntable else [],
        "identity_similarity": scores.get("identity_similarity"),
        "reid_rank": scores.get("reid_rank"),
        "reid_candidates": scores.get("reid_candidates"),
        "identity_margin": scores.get("identity_margin"),
        "style_score": scores.get("style_score"),
        "scores": scores,
        "warning": warning,
        "seconds": time.perf_counter() - started,
        "mesh_seconds": mesh_timings,
    }
    write_json(out / "head.json", summary)
    on_event("done", result=str(out / "head.json"), identity_similarity=summary["identity_similarity"],
             reid_rank=summary["reid_rank"], reid_candidates=summary["reid_candidates"])
    return HeadResult(out, False, summary)
