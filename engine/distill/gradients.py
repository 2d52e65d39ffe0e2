"""From noise predictions to the gradient that is pushed into a render's VAE latent.

The diffusion side (``engine.guidance``) runs one DDIM step of Stable Diffusion on the noised latent of a
render and hands over ε_text and ε_uncond (conditional / unconditional noise predictions), the injected
noise ε, the timestep t, its DDIM step index k and the scheduler's ``alphas_cumprod``. This module turns
them into the latent gradient exactly as the paper's official code does, in this order:

1. ``guided_score``: score = s·(ε_text − ε_uncond), the classifier-free guidance direction alone;
2. optionally ``rank.rank_reweight`` on the score (single-view stage);
3. ``ld_gradient`` (score·√ᾱ) or ``sds_gradient_from_score`` ((score − ε)·√(1−ᾱ));
4. ``postprocess_gradient``: × foreground mask, ÷ 1000, clamp to ±1, NaN → 0.

``distillation_gradient`` chains the four steps from a ``DistillConfig``.

Why LD is score·√ᾱ: with x_t = √ᾱ·x_0 + √(1−ᾱ)·ε, the chain rule gives ∂x_t/∂x_0 = √ᾱ, and
ε_text − ε_uncond = −√(1−ᾱ)·∇_{x_t} log p(y | x_t) (the implicit classifier of classifier-free guidance).
So the official "LD" gradient is the guidance part of −∇_{x_0} log p(x_t | y), scaled by a constant
s·√(1−ᾱ); the unconditional part of the score is dropped (fact sheet §1.2 caveat a). Gradient *descent*
with it (see ``inject.inject_gradient``) moves the latent toward higher p(y | x_t).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .config import SDS_VARIANTS
from .rank import rank_reweight
from .shapes import broadcast_per_sample, check_ndim, check_same_shape

if TYPE_CHECKING:  # pragma: no cover
    from .config import DistillConfig

STAGES = ("single", "grid")


def _compute_dtype(x: Tensor) -> torch.dtype:
    """At least float32: the gradient is later divided by 1000, which would underflow fp16 scores."""
    return torch.promote_types(x.dtype, torch.float32)


# -------------------------------------------------------------------------------------------------
# Score and timestep weights
# -------------------------------------------------------------------------------------------------
def guided_score(eps_text: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """The official code's score: ``scale · (eps_text − eps_uncond)`` (no ε_uncond term added back)."""
    check_same_shape("eps_text", eps_text, "eps_uncond", eps_uncond)
    return scale * (eps_text - eps_uncond)


def alpha_bar_for(
    alphas_cumprod: Tensor,
    timesteps: int | Tensor,
    step_indices: int | Tensor,
    official_compat: bool = False,
) -> Tensor:
    """ᾱ for each sample, as a 1-D float tensor on ``alphas_cumprod``'s device.

    ``timesteps`` are the diffusion timesteps t (0…len−1) at which noise was added; ``step_indices`` are the
    DDIM step indices k with ``t = scheduler.timesteps[k]``. The mathematically right weight is ᾱ_t. The
    official code indexes ``alphas_cumprod[k]`` instead; ``official_compat=True`` reproduces that (see
    ``DistillConfig``). Both arguments are always taken so that callers cannot mix them up silently.
    """
    if alphas_cumprod.ndim != 1:
        raise InputError(f"alphas_cumprod must be 1-D (one value per training timestep), got shape {tuple(alphas_cumprod.shape)}")
    index = torch.as_tensor(step_indices if official_compat else timesteps, device=alphas_cumprod.device)
    name = "step_indices" if official_compat else "timesteps"
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise InputError(f"{name} must be integers, got dtype {index.dtype}")
    index = index.reshape(-1).long()
    n = alphas_cumprod.shape[0]
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= n:
        raise InputError(f"{name} must lie in 0…{n - 1}, got {index.tolist()}")
    return alphas_cumprod.reshape(-1)[index].to(_compute_dtype(alphas_cumprod))


# -------------------------------------------------------------------------------------------------
# LD and SDS
# -------------------------------------------------------------------------------------------------
def ld_gradient(score: Tensor, alpha_bar_t: float | Tensor) -> Tensor:
    """Likelihood-distillation gradient ``score · √ᾱ_t`` (ᾱ per sample, broadcast over C, H, W)."""
    check_ndim("score", score, 4, "(B, C, H, W)")
    score = score.to(_compute_dtype(score))
    return score * broadcast_per_sample("alpha_bar_t", alpha_bar_t, score).sqrt()


def sds_gradient_from_score(
    score: Tensor,
    eps: Tensor,
    alpha_bar_t: float | Tensor,
    eps_uncond: Tensor | None = None,
    subtract_noise: bool = True,
) -> Tensor:
    """SDS gradient from an (optionally rank-re-weighted) guided score.

    Without ``eps_uncond``: the official code's ``(score − ε)·√(1−ᾱ_t)``. With it: the textbook
    ``(ε_uncond + score − ε)·√(1−ᾱ_t)``, i.e. the full CFG prediction minus the injected noise.
    ``subtract_noise=False`` drops the −ε term (the "noiseless" ablation): since ε is drawn independently of
    the render, −ε·∂x/∂θ has zero mean, and the official SDS is then LD's guidance direction with the weight
    √(1−ᾱ_t) instead of √ᾱ_t. Comparing the two isolates what the noise term does to training.
    """
    check_ndim("score", score, 4, "(B, C, H, W)")
    check_same_shape("score", score, "eps", eps)
    dtype = _compute_dtype(score)
    residual = score.to(dtype) - eps.to(dtype) if subtract_noise else score.to(dtype)
    if eps_uncond is not None:
        check_same_shape("score", score, "eps_uncond", eps_uncond)
        residual = residual + eps_uncond.to(dtype)
    weight = (1.0 - broadcast_per_sample("alpha_bar_t", alpha_bar_t, residual)).sqrt()
    return residual * weight


def sds_gradient(
    eps_text: Tensor,
    eps_uncond: Tensor,
    eps: Tensor,
    alpha_bar_t: float | Tensor,
    scale: float,
    variant: str = "official",
) -> Tensor:
    """Score-distillation gradient, in one of two documented forms.

    * ``"official"`` (default, reproduces ``train_LD.py --use_SDS 1``):
      ``(s·(ε_text − ε_uncond) − ε) · √(1−ᾱ_t)``. The ε_uncond term of the CFG prediction is missing.
    * ``"textbook"``: ``(ε_uncond + s·(ε_text − ε_uncond) − ε) · w(t)`` with the *same* weight
      ``w(t) = √(1−ᾱ_t)``, so that the two variants differ only in the ε_uncond term and an ablation
      isolates it. (DreamFusion itself uses w(t) = σ_t² = 1−ᾱ_t; since the result is divided by 1000 and
      clamped anyway, the weight mostly rescales.)
    * ``"noiseless"`` (ablation): ``s·(ε_text − ε_uncond) · √(1−ᾱ_t)``, the official form without −ε.
    """
    if variant not in SDS_VARIANTS:
        raise InputError(f"sds variant must be one of {SDS_VARIANTS}, got {variant!r}")
    score = guided_score(eps_text, eps_uncond, scale)
    return sds_gradient_from_score(
        score, eps, alpha_bar_t, eps_uncond if variant == "textbook" else None, subtract_noise=variant != "noiseless"
    )


# -------------------------------------------------------------------------------------------------
# Post-processing
# -------------------------------------------------------------------------------------------------
def _mask_like(mask: Tensor, grad: Tensor) -> Tensor:
    """Bring a foreground mask to (B or 1, 1 or C, H, W) of ``grad``.

    The official code always passes a mask already at latent resolution; a mask of another size is shrunk
    by area averaging (foreground coverage per latent pixel) or enlarged bilinearly.
    """
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    check_ndim("mask", mask, 4, "(B, 1, H, W)")
    if mask.shape[0] not in (1, grad.shape[0]) or mask.shape[1] not in (1, grad.shape[1]):
        raise InputError(
            f"mask of shape {tuple(mask.shape)} does not fit gradient of shape {tuple(grad.shape)}: "
            "need batch 1 or B and 1 or C channels"
        )
    mask = mask.to(device=grad.device, dtype=grad.dtype)
    size = tuple(grad.shape[-2:])
    if tuple(mask.shape[-2:]) != size:
        shrinking = mask.shape[-2] >= size[0] and mask.shape[-1] >= size[1]
        if shrinking:
            mask = F.interpolate(mask, size=size, mode="area")
        else:
            mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    return mask


def postprocess_gradient(
    grad: Tensor, mask: Tensor | None = None, divisor: float = 1000.0, clamp: float | None = 1.0
) -> Tensor:
    """Mask, divide, clamp and sanitise a latent gradient, in the official order.

    ``grad · mask`` (mask resized to the latent if needed) → ``/ divisor`` → ``clamp(−clamp, clamp)`` →
    ``nan_to_num(nan=0, posinf=0, neginf=0)``. Because the clamp comes first, ±Inf entries end up as
    ±clamp and only NaN (including Inf·0 from the mask) becomes 0; with ``clamp=None`` ±Inf also become 0.
    Returns a new tensor; ``grad`` is not modified.
    """
    check_ndim("grad", grad, 4, "(B, C, H, W)")
    if not divisor > 0:
        raise InputError(f"divisor must be > 0, got {divisor}")
    out = grad
    if mask is not None:
        out = out * _mask_like(mask, grad)
    out = out / divisor
    if clamp is not None:
        if not clamp > 0:
            raise InputError(f"clamp must be > 0 or None, got {clamp}")
        out = out.clamp(-clamp, clamp)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


# -------------------------------------------------------------------------------------------------
# The whole chain
# -------------------------------------------------------------------------------------------------
def distillation_gradient(
    config: "DistillConfig",
    eps_text: Tensor,
    eps_uncond: Tensor,
    eps: Tensor,
    alpha_bar_t: float | Tensor,
    mask: Tensor | None = None,
    stage: str = "single",
) -> Tensor:
    """Latent gradient for one distillation call, following ``config`` and the official order.

    ``stage`` is ``"single"`` (single-view branch) or ``"grid"`` (2×2 grid branch): rank re-weighting is
    applied in the single stage when ``config.use_rank``, and in the grid stage only if
    ``config.rank_in_grid`` too (the official code disables it there). ``alpha_bar_t`` should come from
    ``alpha_bar_for(..., official_compat=config.official_compat)``. The mask is used only when
    ``config.mask_gradients``.
    """
    if stage not in STAGES:
        raise InputError(f"stage must be one of {STAGES}, got {stage!r}")
    score = guided_score(eps_text, eps_uncond, config.guidance_scale)
    if config.use_rank and (stage == "single" or config.rank_in_grid):
        score = rank_reweight(score, config.rank_weights)
    if config.method == "ld":
        grad = ld_gradient(score, alpha_bar_t)
    else:
        grad = sds_gradient_from_score(
            score,
            eps,
            alpha_bar_t,
            eps_uncond if config.sds_variant == "textbook" else None,
            subtract_noise=config.sds_variant != "noiseless",
        )
    return postprocess_gradient(
        grad,
        mask if config.mask_gradients else None,
        divisor=config.grad_divisor,
        clamp=config.grad_clamp,
    )
