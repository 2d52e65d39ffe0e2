"""Settings of one stylization run, saved with every checkpoint so a run can be resumed or reproduced.

:class:`StylizeConfig` holds what the training loop needs besides the distillation maths (which lives in
the nested :class:`~engine.distill.DistillConfig`): where the models are, the prompt, the optimiser, the
latent and camera distributions, and how often to checkpoint and preview. Defaults are those of the paper's
official training command line (Adam lr 1e-4, batch 1, seed 0, truncation ψ 0.75 up to W+ layer 14,
conditioning camera yaw 0 / pitch 0.2 around the origin, single views in yaw ±π/3, grid views all around,
pitch ±π/6, a checkpoint every 250 steps, 10 000 steps).

Angles are radians in PanoHead's yaw/pitch convention (see :mod:`engine.generator.camera`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..distill import DistillConfig
from ..errors import ConfigError
from ..generator.noise import NOISE_MODES
from ..io.configs import JsonConfig

PRECISIONS = ("auto", "fp16", "bf16", "fp32")

# Fields that may change between a run and its resumption: they do not alter the parameters a step computes.
# (``device`` and ``precision`` change rounding, not the algorithm; resuming on another device is allowed.)
RUNTIME_FIELDS = frozenset(
    {
        "steps",
        "out_dir",
        "checkpoint_every",
        "preview_every",
        "keep_checkpoints",
        "device",
        "precision",
        "attention_slicing",
        "vae_slicing",
    }
)

_RANGE_FIELDS = ("single_yaw_range", "single_pitch_range", "grid_yaw_range", "grid_pitch_range")


@dataclass(frozen=True)
class StylizeConfig(JsonConfig):
    """Everything one ``stylize`` run needs.

    ``generator`` is anything :func:`engine.generator.loading.load_generator` accepts (a preset name, our
    checkpoint, the official PanoHead ``.pkl``). ``diffusion`` is a Stable-Diffusion-1.5-layout folder.
    ``edge_controlnet`` / ``depth_controlnet`` are ControlNet folders; when ``None`` the loop looks for
    ``<diffusion>/controlnet_edge`` and ``<diffusion>/controlnet_depth``. Without an edge ControlNet the
    single-view stage runs unconditioned (weaker structure preservation, logged); without a depth
    ControlNet the 2×2 grid stage is skipped (a grid of four heads is meaningless to an unconditioned
    model, logged). ``lpips_path`` is an optional exported LPIPS network (``.pt2``), see
    :class:`engine.distill.LpipsLoss`.

    ``camera_pivot`` is the point the training cameras look at: the origin, as the official stylization code
    and PanoHead's sampling scripts (``gen_samples.py``) use; (0, 0, 0.2) is only PanoHead's *visualiser's*
    average pivot. Radius and field of view come from the generator's rendering config.

    ``noise_mode`` is the synthesis network's per-layer noise while training: ``"const"`` (ours: each layer's
    stored noise image, so a head's fine detail does not change from step to step) or ``"random"`` (the
    official code: fresh noise at every synthesis, drawn here from the step's own random stream so that a
    resumed run still reproduces an uninterrupted one).

    The grid stage's depth control: with ``depth_model`` (a ``transformers`` depth-estimation folder such as
    Depth Anything V2) the official pipeline runs — the network on the frozen generator's super-resolved
    renders, min–max normalised over the whole image (:mod:`engine.guidance.depth_estimator`). Without it,
    the frozen generator's own depth (foreground-normalised inverse depth) rendered at ``depth_resolution``
    (None: the training renders' resolution; never more than a grid tile, the most the ControlNet sees).
    """

    config_label: ClassVar[str] = "stylize"

    prompt: str = ""
    negative_prompt: str = ""
    generator: str = "panohead"
    diffusion: str = ""
    edge_controlnet: str | None = None
    depth_controlnet: str | None = None
    lpips_path: str | None = None
    # Super-resolution weights (safetensors, the generator's ``superresolution`` state) the trainable copy
    # starts from instead of the generator's own; the frozen copy keeps its own. Head mode sets it to the fit's
    # weights from before their polish (engine.heads.mesh_field): the polished head renders the source's views,
    # and a stylization starting from it held the style back on real heads.
    superresolution_start: str | None = None
    out_dir: str = "stylize_out"

    steps: int = 10_000
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 1
    seed: int = 0

    truncation_psi: float = 0.75
    truncation_cutoff: int | None = 14  # clamped to the generator's num_ws
    conditioning_yaw: float = 0.0
    conditioning_pitch: float = 0.2
    camera_pivot: tuple[float, float, float] = (0.0, 0.0, 0.0)
    single_yaw_range: tuple[float, float] = (-math.pi / 3, math.pi / 3)
    single_pitch_range: tuple[float, float] = (-math.pi / 6, math.pi / 6)
    grid_yaw_range: tuple[float, float] = (-math.pi, math.pi)
    grid_pitch_range: tuple[float, float] = (-math.pi / 6, math.pi / 6)
    # Neural rendering resolution while training (None = the generator's own). The renders are resized to
    # the diffusion model's size anyway; a small diffusion model (the embedded pack's 64²) needs no more
    # than 32² rays per view, a quarter of the small generator's native 64².
    neural_resolution: int | None = None
    noise_mode: str = "const"
    depth_model: str | None = None
    depth_resolution: int | None = None

    checkpoint_every: int = 250
    preview_every: int = 100  # 0 disables previews
    keep_checkpoints: int = 3  # older checkpoint folders are deleted; 0 keeps all

    device: str = "auto"
    precision: str = "auto"  # diffusion models: fp16 on GPU, fp32 on CPU; the generator always trains in fp32
    attention_slicing: bool = False
    vae_slicing: bool = False

    distill: DistillConfig = field(default_factory=DistillConfig)

    # ----------------------------------------------------------------------------------------------
    def validate(self) -> "StylizeConfig":
        """Check every value; raises ConfigError naming the option."""
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError("prompt must be a non-empty string (the style to distil, e.g. 'a zombie head')")
        if not isinstance(self.negative_prompt, str):
            raise ConfigError("negative_prompt must be a string")
        if not self.generator:
            raise ConfigError("generator must name a preset or a checkpoint file")
        if not self.diffusion:
            raise ConfigError("diffusion must name a Stable Diffusion 1.5-layout folder")
        for name in ("steps", "batch_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ConfigError(f"{name} must be an integer ≥ 1, got {getattr(self, name)!r}")
        for name in ("checkpoint_every", "preview_every", "keep_checkpoints"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 0):
                raise ConfigError(f"{name} must be an integer ≥ 0, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not 0.0 <= self.truncation_psi <= 1.0:
            raise ConfigError(f"truncation_psi must be in [0, 1], got {self.truncation_psi}")
        if self.truncation_cutoff is not None and self.truncation_cutoff < 1:
            raise ConfigError(f"truncation_cutoff must be ≥ 1 or null, got {self.truncation_cutoff}")
        if len(self.camera_pivot) != 3:
            raise ConfigError(f"camera_pivot must be three numbers, got {self.camera_pivot}")
        for name in _RANGE_FIELDS:
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not lo_hi[0] <= lo_hi[1]:
                raise ConfigError(f"{name} must be (low, high) with low ≤ high, got {lo_hi}")
        for name in ("single_pitch_range", "grid_pitch_range"):
            if any(abs(p) >= math.pi / 2 for p in getattr(self, name)):
                raise ConfigError(f"{name} must lie inside (−π/2, π/2), got {getattr(self, name)}")
        if self.neural_resolution is not None and not (isinstance(self.neural_resolution, int) and self.neural_resolution >= 8):
            raise ConfigError(f"neural_resolution must be an integer ≥ 8 or null, got {self.neural_resolution!r}")
        if self.noise_mode not in NOISE_MODES:
            raise ConfigError(f"noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        if self.depth_resolution is not None and not (isinstance(self.depth_resolution, int) and self.depth_resolution >= 8):
            raise ConfigError(f"depth_resolution must be an integer ≥ 8 or null, got {self.depth_resolution!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.distill, DistillConfig):
            raise ConfigError("distill must be a DistillConfig")
        self.distill.validate()
        return self

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "StylizeConfig":
        """From a JSON string or a ``.json`` file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read stylize config ({exc})") from None
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"stylize config is not valid JSON ({exc})") from None

    # ----------------------------------------------------------------------------------------------
    def training_differences(self, other: "StylizeConfig") -> list[str]:
        """Names of fields (``distill.x`` for nested ones) that differ and would change the training.

        Used on resume: everything but :data:`RUNTIME_FIELDS` must match the checkpointed run, otherwise
        the resumed run would silently train a different model than the one it continues.
        """
        mine, theirs = self.to_dict(), other.to_dict()
        names = [k for k in mine if k not in RUNTIME_FIELDS and k != "distill" and mine[k] != theirs[k]]
        names += [f"distill.{k}" for k in mine["distill"] if mine["distill"][k] != theirs["distill"][k]]
        return names
