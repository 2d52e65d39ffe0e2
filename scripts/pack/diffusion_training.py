"""Building blocks for training the embedded pack's diffusion prior: model sizes, losses, sampling, metrics.

The pack's diffusion model is a miniature Stable Diffusion 1.5: the same diffusers classes and folder
layout (so :func:`engine.guidance.models.load_diffusion_models` and :class:`engine.guidance.Guidance` use it
unchanged), sized to train on one CPU thread in about half an hour:

* 64² RGB images, an ``AutoencoderKL`` (16/32/64 channels) that downsamples ×4 to 4×16² latents;
* a three-level ``UNet2DConditionModel`` (48/96/96 channels, cross-attention on the two lower levels) that
  predicts the noise (ε) on SD 1.5's scaled-linear 1000-step schedule;
* a small **fixed random** ``CLIPTextModel`` (width 64, 2 layers, 77 tokens) with an offline BPE tokenizer:
  only six style prompts and the empty prompt occur, any fixed distinct embeddings identify them, and
  keeping the encoder frozen makes its embeddings a lookup table (fast, reproducible);
* edge (Canny) and depth ``ControlNetModel``s copied from the trained UNet's encoder
  (``ControlNetModel.from_unet``), trained with the UNet frozen, starting from zero convolutions.

Everything here is pure functions of modules and tensors; :mod:`train_diffusion` runs the stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.guidance.tiny import TinyDiffusionSpec, build_scheduler, build_text_encoder, tiny_clip_vocabulary

# Words of the style prompts (engine.world.STYLES) that get single BPE tokens.
PROMPT_WORDS = ("a", "marble", "cartoon", "pencil", "golden")

PACK_SPEC = TinyDiffusionSpec(
    image_size=64,
    latent_channels=4,
    unet_channels=(48, 96, 96),
    unet_groups=16,
    attention_heads=4,
    vae_channels=(16, 32, 64),
    vae_groups=8,
    text_width=64,
    text_layers=2,
    text_heads=4,
    max_tokens=77,
    cross_attention_levels=(False, True, True),
    controlnet_embedding_channels=(16, 32, 48),
    extra_words=PROMPT_WORDS,
)


# ----------------------------------------------------------------------------------------------------------
# Text: a frozen encoder is a lookup table of prompt embeddings.


def build_tokenizer_and_encoder(spec: TinyDiffusionSpec, seed: int):
    """The CLIP tokenizer (in memory) and a seeded random text encoder, frozen."""
    import tempfile
    from pathlib import Path

    from transformers import CLIPTokenizer

    from engine.guidance.tiny import write_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_tokenizer(Path(tmp), spec.max_tokens, spec.vocabulary_words)
        tokenizer = CLIPTokenizer.from_pretrained(tmp, local_files_only=True)
    vocab, _ = tiny_clip_vocabulary(spec.vocabulary_words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = build_text_encoder(spec, vocab)
    encoder.requires_grad_(False).eval()
    return tokenizer, encoder


@torch.no_grad()
def embed_prompts(tokenizer, encoder, prompts: Sequence[str]) -> Tensor:
    """(P, L, D) last hidden states, tokenised exactly as :class:`engine.guidance.Guidance` does."""
    length = min(int(tokenizer.model_max_length), int(encoder.config.max_position_embeddings))
    tokens = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return encoder(tokens.input_ids)[0].float()


@dataclass
class PromptTable:
    """Embeddings of the style prompts (rows 0…S−1, in ``styles`` order) and of the empty prompt (row S)."""

    embeddings: Tensor  # (S + 1, L, D)

    @property
    def empty_row(self) -> int:
        return self.embeddings.shape[0] - 1

    def lookup(self, style_index: Tensor, drop: Tensor | None = None) -> Tensor:
        """(B, L, D) embeddings; where ``drop`` is True the empty prompt (classifier-free guidance training)."""
        rows = style_index if drop is None else torch.where(drop, torch.full_like(style_index, self.empty_row), style_index)
        return self.embeddings[rows]


# ----------------------------------------------------------------------------------------------------------
# Noise schedule and losses.


def alphas_cumprod() -> Tensor:
    """ᾱ_t of SD 1.5's scaled-linear schedule (the one written into the pack's scheduler config)."""
    return build_scheduler().alphas_cumprod.float()


def vae_loss(vae, images: Tensor, generator: torch.Generator, kl_weight: float = 1e-6) -> tuple[Tensor, dict]:
    """Reconstruction (L1 + MSE in [-1, 1]) of a posterior sample, plus a small KL keeping latents tame."""
    posterior = vae.encode(images).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    recon = vae.decode(z).sample
    l1 = (recon - images).abs().mean()
    mse = (recon - images).pow(2).mean()
    kl = posterior.kl().mean() / images[0].numel()
    loss = l1 + mse + kl_weight * kl
    return loss, {"l1": float(l1.detach()), "mse": float(mse.detach()), "kl": float(kl.detach())}


@torch.no_grad()
def encode_posterior(vae, images: Tensor, batch: int = 64) -> tuple[Tensor, Tensor]:
    """Posterior mean and standard deviation of every image (unscaled latents)."""
    means, stds = [], []
    for start in range(0, images.shape[0], batch):
        posterior = vae.encode(images[start : start + batch]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


@dataclass(frozen=True)
class LatentNorm:
    """``(z - shift) · scale``: the VAE config's ``shift_factor`` / ``scaling_factor``, as Guidance applies them.

    Fitted to the training latents (mean 0, standard deviation 1 over all elements). Without the shift the
    small VAE's latents sit far from zero and a briefly trained UNet's samples drift towards the colour
    the decoder gives a zero latent.
    """

    shift: float
    scale: float

    @classmethod
    def fit(cls, latents: Tensor) -> "LatentNorm":
        shift = float(latents.mean())
        return cls(shift=shift, scale=float(1.0 / (latents - shift).std()))

    def __call__(self, z: Tensor) -> Tensor:
        return (z - self.shift) * self.scale

    def inverse(self, latents: Tensor) -> Tensor:
        return latents / self.scale + self.shift


def sample_latents(mean: Tensor, std: Tensor, norm: LatentNorm, generator: torch.Generator) -> Tensor:
    """Normalised posterior samples, as :meth:`Guidance.encode_images` (posterior sampling on) produces them."""
    return norm(mean + std * torch.randn(mean.shape, generator=generator))


def noised(latents: Tensor, noise: Tensor, t: Tensor, alpha_bar: Tensor) -> Tensor:
    a = alpha_bar[t].view(-1, 1, 1, 1)
    return a.sqrt() * latents + (1 - a).sqrt() * noise


def denoising_loss(
    unet,
    latents: Tensor,
    text: Tensor,
    t: Tensor,
    noise: Tensor,
    alpha_bar: Tensor,
    controlnet=None,
    hint: Tensor | None = None,
    per_sample: bool = False,
) -> Tensor:
    """ε-prediction MSE at timesteps ``t``; with ``controlnet`` its residuals (from ``hint``) are added."""
    x_t = noised(latents, noise, t, alpha_bar)
    down = mid = None
    if controlnet is not None:
        down, mid = controlnet(x_t, t, encoder_hidden_states=text, controlnet_cond=hint, return_dict=False)
    eps = unet(
        x_t, t, encoder_hidden_states=text, down_block_additional_residuals=down,
        mid_block_additional_residual=mid, return_dict=False,
    )[0]  # fmt: skip
    err = (eps.float() - noise).pow(2)
    return err.flatten(1).mean(1) if per_sample else err.mean()


def draw_training_noise(
    latents: Tensor, generator: torch.Generator, drop_probability: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(t uniform over 0…999, ε, prompt-drop mask) for one training batch."""
    b = latents.shape[0]
    t = torch.randint(0, 1000, (b,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    drop = torch.rand(b, generator=generator) < drop_probability
    return t, noise, drop


def cosine_lr(step: int, total: int, warmup: int, floor: float = 0.1, time_fraction: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``floor``.

    Progress is the larger of the step fraction and ``time_fraction`` (elapsed / time budget), so a stage
    that a time cap cuts short still ends annealed instead of at a high learning rate.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_fraction))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train_loop(
    params: Iterable[Tensor],
    step_loss: Callable[[int], tuple[Tensor, dict]],
    steps: int,
    lr: float,
    *,
    warmup: int = 50,
    max_seconds: float = math.inf,
    log: Callable[[int, dict], None] | None = None,
    log_every: int = 10,
    clip: float = 1.0,
) -> dict:
    """AdamW on ``step_loss(step)`` for ``steps`` steps (or until ``max_seconds``); returns a summary.

    ``log(step, record)`` receives the mean loss over the last ``log_every`` steps and the elapsed time.
    """
    import time

    params = [p for p in params if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    start = time.perf_counter()
    window: list[float] = []
    extras: dict = {}
    done = 0
    for step in range(steps):
        time_fraction = (time.perf_counter() - start) / max_seconds
        current_lr = lr * cosine_lr(step, steps, warmup, time_fraction=time_fraction)
        for group in optimizer.param_groups:
            group["lr"] = current_lr
        loss, extras = step_loss(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        window.append(float(loss.detach()))
        done = step + 1
        elapsed = time.perf_counter() - start
        if log is not None and (done % log_every == 0 or done == steps):
            log(done, {"loss": sum(window) / len(window), "seconds": round(elapsed, 2),
                       "lr": current_lr, **extras})  # fmt: skip
            window = []
        if elapsed > max_seconds:
            break
    return {"steps": done, "planned_steps": steps, "seconds": round(time.perf_counter() - start, 2),
            "stopped_by_time": done < steps}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Sampling.


@torch.no_grad()
def ddim_sample(
    unet,
    text: Tensor,
    uncond: Tensor,
    generator: torch.Generator,
    *,
    steps: int = 50,
    guidance_scale: float = 5.0,
    controlnet=None,
    hint: Tensor | None = None,
    latent_shape: tuple[int, int, int] = (4, 16, 16),
) -> Tensor:
    """Deterministic DDIM (η = 0) with classifier-free guidance; returns scaled latents (B, C, h, w)."""
    scheduler = build_scheduler()
    scheduler.set_timesteps(steps)
    b = text.shape[0]
    x = torch.randn((b, *latent_shape), generator=generator)
    context = torch.cat([uncond.expand(b, -1, -1), text])
    cond = None if hint is None else torch.cat([hint, hint])
    for t in scheduler.timesteps:
        x_in = torch.cat([x, x])
        t_in = torch.full((2 * b,), int(t), dtype=torch.long)
        down = mid = None
        if controlnet is not None:
            down, mid = controlnet(x_in, t_in, encoder_hidden_states=context, controlnet_cond=cond, return_dict=False)
        eps = unet(
            x_in, t_in, encoder_hidden_states=context, down_block_additional_residuals=down,
            mid_block_additional_residual=mid, return_dict=False,
        )[0]  # fmt: skip
        eps_u, eps_c = eps.chunk(2)
        x = scheduler.step(eps_u + guidance_scale * (eps_c - eps_u), t, x).prev_sample
    return x


@torch.no_grad()
def decode(vae, latents: Tensor, norm: LatentNorm) -> Tensor:
    return vae.decode(norm.inverse(latents)).sample.clamp(-1, 1)


def heldout_denoising_loss(
    unet, latents: Tensor, text: Tensor, seed: int, alpha_bar: Tensor, controlnet=None, hint: Tensor | None = None,
    batch: int = 64, t_max: int = 1000,
) -> float:  # fmt: skip
    """Mean ε-MSE with fixed, seeded noise and timesteps (uniform below ``t_max``): comparable across models."""
    generator = torch.Generator().manual_seed(seed)
    t_all = torch.randint(0, t_max, (latents.shape[0],), generator=generator)
    noise_all = torch.randn(latents.shape, generator=generator)
    total = 0.0
    with torch.no_grad():
        for s in range(0, latents.shape[0], batch):
            rows = slice(s, s + batch)
            losses = denoising_loss(
                unet, latents[rows], text[rows], t_all[rows], noise_all[rows], alpha_bar,
                controlnet=controlnet, hint=None if hint is None else hint[rows], per_sample=True,
            )  # fmt: skip
            total += float(losses.sum())
    return total / latents.shape[0]
