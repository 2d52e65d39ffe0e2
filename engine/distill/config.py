"""Options of the distillation objective, with the defaults of the stylization paper's official code.

Every number the training loop needs to turn a diffusion model's noise predictions into a gradient on a
render lives in one frozen dataclass, so that a run is reproducible from its saved JSON and each ingredient
of the paper (mirror gradients, 2×2 grid, rank re-weighting, LD vs SDS) can be switched off for ablations.

Defaults are the *effective* ones of ``train_LD.py`` (its command-line defaults, which override the
``train()`` signature): CFG 7.5, gradient divided by 1000 and clamped to ±1, mirror weights 0.75/0.25,
rank weights (1, .75, .5, .25), Tweedie 0.1, LPIPS 0.05, LDIS 1, DDIM step indices 35…49 of a 50-step
schedule for both stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from ..io.configs import JsonConfig

METHODS = ("ld", "sds")
# "noiseless" is an ablation, not a method of its own: the official SDS without its −ε term (see gradients).
SDS_VARIANTS = ("official", "textbook", "noiseless")


@dataclass(frozen=True)
class DistillConfig(JsonConfig):
    """Switches and weights of likelihood distillation (LD) or score distillation (SDS).

    ``official_compat``: the official code weights the gradient with ``alphas_cumprod[k]`` where ``k`` is
    the *DDIM step index* (35…49), not the timestep ``t = timesteps[k]`` (281…1) at which the noise was
    actually added. With SD's scaled-linear schedule that makes √ᾱ ≈ 0.983…0.976 instead of 0.789…0.999
    (and √(1−ᾱ) ≈ 0.182…0.218 instead of 0.615…0.041), i.e. an almost constant weight. ``False`` (default)
    uses the mathematically intended ᾱ_t; ``True`` reproduces the official numbers exactly.
    """

    config_label: ClassVar[str] = "distill"

    method: str = "ld"  # "ld" (likelihood distillation, the paper) or "sds"
    sds_variant: str = "official"  # only for method="sds"; see gradients.sds_gradient
    guidance_scale: float = 7.5
    use_mirror: bool = True
    mirror_weights: tuple[float, float] = (0.75, 0.25)  # (base view, mirrored view)
    use_grid: bool = True
    use_rank: bool = True
    rank_in_grid: bool = False  # official code: rank re-weighting only in the single-view stage
    rank_weights: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    grad_divisor: float = 1000.0
    grad_clamp: float | None = 1.0  # None disables the clamp
    mask_gradients: bool = True
    tweedie_weight: float = 0.1
    lpips_weight: float = 0.05
    ldis_weight: float = 1.0
    # Anchor to the source head's renders (regularizers.anchor_loss; not in the paper): head mode's single
    # field has no LDIS, so these keep the person. 0 = off (the generator route and the paper's recipe).
    anchor_image_weight: float = 0.0
    anchor_geometry_weight: float = 0.0
    anchor_resolution: int = 16
    single_step_range: tuple[int, int] = (35, 49)  # inclusive DDIM step indices (low noise)
    grid_step_range: tuple[int, int] = (35, 49)
    ddim_steps: int = 50
    controlnet_scale: float = 1.0
    canny_thresholds: tuple[int, int] = (50, 250)
    grid_render_upsample: int = 4  # 64² neural render ×4 → 256² tile → 512² grid
    grid_size: int = 512
    official_compat: bool = False

    # ----------------------------------------------------------------------------------------------
    def validate(self) -> "DistillConfig":
        """Check every value; raises ConfigError naming the option."""
        if self.method not in METHODS:
            raise ConfigError(f"distill.method must be one of {METHODS}, got {self.method!r}")
        if self.sds_variant not in SDS_VARIANTS:
            raise ConfigError(f"distill.sds_variant must be one of {SDS_VARIANTS}, got {self.sds_variant!r}")
        if not self.guidance_scale > 0:
            raise ConfigError(f"distill.guidance_scale must be > 0, got {self.guidance_scale}")
        if len(self.mirror_weights) != 2 or any(w < 0 for w in self.mirror_weights):
            raise ConfigError(f"distill.mirror_weights must be two non-negative numbers, got {self.mirror_weights}")
        if not self.rank_weights or any(w < 0 for w in self.rank_weights):
            raise ConfigError(f"distill.rank_weights must be a non-empty list of non-negative numbers, got {self.rank_weights}")
        if not self.grad_divisor > 0:
            raise ConfigError(f"distill.grad_divisor must be > 0, got {self.grad_divisor}")
        if self.grad_clamp is not None and not self.grad_clamp > 0:
            raise ConfigError(f"distill.grad_clamp must be > 0 or null, got {self.grad_clamp}")
        for name in ("tweedie_weight", "lpips_weight", "ldis_weight", "controlnet_scale", "anchor_image_weight",
                     "anchor_geometry_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"distill.{name} must be ≥ 0, got {getattr(self, name)}")
        if self.anchor_resolution < 1:
            raise ConfigError(f"distill.anchor_resolution must be ≥ 1, got {self.anchor_resolution}")
        if self.ddim_steps < 1:
            raise ConfigError(f"distill.ddim_steps must be ≥ 1, got {self.ddim_steps}")
        for name in ("single_step_range", "grid_step_range"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not (0 <= lo_hi[0] <= lo_hi[1] < self.ddim_steps):
                raise ConfigError(
                    f"distill.{name} must be (low, high) with 0 ≤ low ≤ high < ddim_steps={self.ddim_steps}, got {lo_hi}"
                )
        low, high = self.canny_thresholds if len(self.canny_thresholds) == 2 else (1, 0)
        if not (0 <= low <= high):
            raise ConfigError(f"distill.canny_thresholds must be (low, high) with 0 ≤ low ≤ high, got {self.canny_thresholds}")
        if self.grid_render_upsample < 1:
            raise ConfigError(f"distill.grid_render_upsample must be ≥ 1, got {self.grid_render_upsample}")
        if self.grid_size < 2 or self.grid_size % 2:
            raise ConfigError(f"distill.grid_size must be an even number ≥ 2, got {self.grid_size}")
        return self
