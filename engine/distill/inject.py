"""Inject a precomputed gradient into the autograd graph (the usual score-distillation trick).

The distillation gradient is computed outside autograd (the diffusion model runs under no_grad). To push it
through the VAE encoder and the generator, the training loop adds a surrogate loss whose gradient with
respect to the render's latent is exactly that tensor:

    loss = inject_gradient(latent, grad)          # value 0, ∂loss/∂latent = grad
    (w · loss).backward()                         # ∂/∂latent = w · grad

Sign convention: the optimiser *descends* this loss, so the latent (and through it the generator) moves
along −grad. That is what the official code does with the LD gradient s·(ε_text − ε_uncond)·√ᾱ: since
ε_text − ε_uncond = −√(1−ᾱ)·∇_{x_t} log p(y | x_t), the step −grad points toward higher likelihood of the
prompt, exactly like the −∇ of the paper's NLL objective. For SDS, −(ε̂ − ε) likewise removes the
predicted-noise residual.

The surrogate's *value* is 0 (the official one returns 1); it only exists for its gradient, so adding it
to a logged total loss does not distort the number.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .shapes import check_same_shape


class _InjectGradient(torch.autograd.Function):
    """Forward: a 0-d zero. Backward: the stored gradient times the incoming scale, in the target's dtype."""

    @staticmethod
    def forward(ctx, target: Tensor, grad: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad)
        ctx.target_dtype = target.dtype
        return torch.zeros((), dtype=target.dtype, device=target.device)

    @staticmethod
    def backward(ctx, upstream: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad * upstream).to(ctx.target_dtype), None


def inject_gradient(target: Tensor, grad: Tensor) -> Tensor:
    """A scalar loss whose gradient with respect to ``target`` is exactly ``grad`` (same shape required).

    ``grad`` is detached and moved to ``target``'s device; its dtype is cast to ``target``'s in backward.
    If ``target`` does not require grad, the result does not either (nothing to push into).
    """
    check_same_shape("target", target, "grad", grad)
    return _InjectGradient.apply(target, grad.detach().to(target.device))
