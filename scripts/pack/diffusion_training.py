"""Building blocks for training the embedded pack's diffusion prior: model sizes, losses, sampling, metrics.

The pack's diffusion model is a miniature Stable Diffusion 1.5: the same diffusers classes and folder
layout (so :func:`engine.guidance.models.load_diffusion_models` and :class:`engine.guidance.Guidance` use it
unchanged), sized to train on one CPU thread in about three quarters of an hour:

* 64² RGB images, an ``AutoencoderKL`` (16/32/64 channels) that downsamples ×4 to 4×16² latents, trained
  (mostly on cheap 32² crops) with L1 + MSE + an image-gradient (edge) term, so that eyes, brows and mouths
  survive the round trip, and a low-pass colour term; its latents are then whitened
  (:func:`whiten_vae_latents`, folded into its 1×1 ``quant_conv`` / ``post_quant_conv``) so that the
  diffusion noise drowns every latent direction, chroma included, at the same rate;
* a three-level ``UNet2DConditionModel`` (48/96/96 channels, cross-attention on the two lower levels) that
  predicts the noise (ε) on SD 1.5's scaled-linear 1000-step schedule;
* a small ``CLIPTextModel`` (width 64, 2 layers, 77 tokens) with an offline BPE tokenizer, **trained jointly
  with the UNet** on the style prompts (the world's, the presets' and paraphrases of them, see
  :func:`training_prompts`) with caption dropout to the empty prompt, so that the text branch and the
  unconditional branch of classifier-free guidance differ;
* edge (Canny) and depth ``ControlNetModel``s copied from the trained UNet's encoder
  (``ControlNetModel.from_unet``), trained with the UNet and text encoder frozen, starting from zero
  convolutions.

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

# Words of the training prompts that get single BPE tokens: first those of the world's style prompts
# (engine.world.STYLES, one token per word), then those of the presets' prompts and the paraphrases.
PROMPT_WORDS = (
    "a", "marble", "cartoon", "pencil", "golden",
    "an", "and", "made", "green", "grey", "skin", "rotten", "rotting", "undead", "highly", "detailed", "white",
    "stone", "greek", "sculpture", "bust", "gold", "shiny", "polished", "metal", "drawing", "graphite",
    "character", "animated", "3d", "realistic", "photograph", "human", "man", "woman",
)  # fmt: skip

# Paraphrases of each world style's prompt (besides the exact prompt and the presets' prompts).
STYLE_PARAPHRASES: dict[str, tuple[str, ...]] = {
    "photo": ("a photo of a person", "a portrait photo of a face", "a photograph of a human head",
              "a realistic portrait of a man", "a realistic portrait of a woman"),
    "statue": ("a marble bust", "a statue of a head", "a white stone sculpture of a face",
               "a greek marble sculpture", "a white marble statue"),
    "zombie": ("a zombie", "an undead head with green skin", "a portrait of a zombie", "a rotting zombie face",
               "a zombie with grey green skin"),
    "cartoon": ("a cartoon character", "a pixar style head", "a cartoon portrait of a person",
                "an animated 3d character", "a 3d cartoon face"),
    "sketch": ("a pencil drawing of a face", "a sketch of a person", "a graphite sketch of a head",
               "a pencil portrait", "a drawing of a head"),
    "gold": ("a gold statue", "a shiny golden head", "a head made of gold", "a polished gold sculpture",
             "a golden bust"),
}  # fmt: skip

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
# Text: the prompts, a trainable encoder, and (once it is frozen) a lookup table of prompt embeddings.


def training_prompts(styles: Sequence[str]) -> tuple[list[str], list[int], list[int]]:
    """(prompts, style of each prompt, row of each style's exact prompt) for the text-conditioned training.

    Per style: the world's prompt (``engine.world.STYLES[s].prompt``, the one stylization with the embedded
    pack sends), then every preset prompt that maps to the style (``engine.stylize.presets``: its embedded
    prompt and its full-size-model prompt, e.g. "a zombie head, rotten green skin, highly detailed"), then
    :data:`STYLE_PARAPHRASES`. Duplicates are dropped; the empty prompt is not included.
    """
    from engine.stylize.presets import STYLE_PRESETS
    from engine.world.styles import STYLES

    prompts: list[str] = []
    owner: list[int] = []
    exact: list[int] = []
    for s, name in enumerate(styles):
        presets = [p for p in STYLE_PRESETS.values() if p.embedded_style == name]
        mine = [STYLES[name].prompt]
        mine += [p.embedded_prompt for p in presets if p.embedded_prompt] + [p.prompt for p in presets]
        mine += list(STYLE_PARAPHRASES.get(name, ()))
        exact.append(len(prompts))
        for prompt in dict.fromkeys(mine):
            if prompt in prompts:
                raise ValueError(f"prompt {prompt!r} is claimed by two styles")
            prompts.append(prompt)
            owner.append(s)
    return prompts, owner, exact


@dataclass
class PromptBank:
    """Tokenised training prompts: rows 0…P−1 the style prompts, row P the empty prompt.

    :meth:`draw` picks a prompt row per sample (the style's exact prompt with ``exact_probability``, else
    one of its other prompts uniformly; the empty prompt where ``drop``); :meth:`embed` runs the (trainable)
    text encoder once over all P + 1 prompts, so a step costs one small encoder call whatever the batch.
    """

    prompts: tuple[str, ...]
    owner: Tensor  # (P + 1,) style of each row, −1 for the empty prompt
    exact: Tensor  # (S,) row of each style's exact prompt
    input_ids: Tensor  # (P + 1, L)

    @classmethod
    def build(cls, tokenizer, encoder, styles: Sequence[str]) -> "PromptBank":
        prompts, owner, exact = training_prompts(styles)
        length = min(int(tokenizer.model_max_length), int(encoder.config.max_position_embeddings))
        ids = tokenizer(prompts + [""], padding="max_length", max_length=length, truncation=True,
                        return_tensors="pt").input_ids  # fmt: skip
        return cls(tuple(prompts + [""]), torch.tensor(owner + [-1]), torch.tensor(exact), ids)

    @property
    def empty_row(self) -> int:
        return len(self.prompts) - 1

    def draw(self, style_index: Tensor, drop: Tensor, generator: torch.Generator, exact_probability: float = 0.5) -> Tensor:
        rows = self.exact[style_index].clone()
        other = torch.rand(style_index.shape[0], generator=generator) >= exact_probability
        for i in other.nonzero().flatten().tolist():
            choices = (self.owner == style_index[i]).nonzero().flatten()
            rows[i] = choices[torch.randint(choices.numel(), (1,), generator=generator)]
        return torch.where(drop, torch.full_like(rows, self.empty_row), rows)

    def embed(self, encoder) -> Tensor:
        return encoder(self.input_ids)[0].float()

    def table(self, encoder) -> "PromptTable":
        """The exact style prompts (in style order) and the empty prompt, as a :class:`PromptTable`."""
        embeddings = self.embed(encoder)
        return PromptTable(torch.cat([embeddings[self.exact], embeddings[self.empty_row :]]))


def build_tokenizer_and_encoder(spec: TinyDiffusionSpec, seed: int, trainable: bool = False):
    """The CLIP tokenizer (in memory) and a seeded random text encoder (frozen unless ``trainable``)."""
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
    if trainable:
        encoder.requires_grad_(True).train()
    else:
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


def image_gradient_l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference of the horizontal and vertical finite differences of two image batches.

    Plain L1/L2 reconstruction is satisfied by a blur that gets the local mean right; matching the
    gradients as well rewards the edges of eyes, brows, nostrils and lips, which is what makes a face.
    """
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return 0.5 * (dx.abs().mean() + dy.abs().mean())


def vae_loss(
    vae,
    images: Tensor,
    generator: torch.Generator,
    kl_weight: float = 1e-6,
    edge_weight: float = 0.0,
    colour_weight: float = 0.0,
) -> tuple[Tensor, dict]:
    """Reconstruction of a posterior sample: L1 + MSE in [-1, 1], + ``edge_weight`` × image-gradient L1,
    + ``colour_weight`` × L1 of 4×4-averaged colours; plus a small KL keeping latents tame.

    The colour term exists because a small VAE learns luminance and edges long before hue: without it the
    pack's first VAE reconstructed the zombie's green-grey skin (and any saturated background) as grey or
    blue, and a prior trained on its latents could only paint what the latents carry.
    """
    posterior = vae.encode(images).latent_dist
    z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
    recon = vae.decode(z).sample
    l1 = (recon - images).abs().mean()
    mse = (recon - images).pow(2).mean()
    edge = image_gradient_l1(recon, images)
    colour = (F.avg_pool2d(recon, 4) - F.avg_pool2d(images, 4)).abs().mean()
    kl = posterior.kl().mean() / images[0].numel()
    loss = l1 + mse + edge_weight * edge + colour_weight * colour + kl_weight * kl
    return loss, {"l1": float(l1.detach()), "mse": float(mse.detach()), "edge": float(edge.detach()),
                  "colour": float(colour.detach()), "kl": float(kl.detach())}  # fmt: skip


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


@torch.no_grad()
def whiten_vae_latents(vae, means: Tensor, floor: float = 0.02) -> dict:
    """Re-parameterise ``vae`` so its posterior means are decorrelated, unit-variance latents; returns the facts.

    The latent channels of a small VAE are strongly correlated and of very different variance (the first
    pack VAE: standard deviations 1.5 / 0.87 / 0.64 / 0.40 after the scalar scaling, correlations up to
    0.92). Diffusion adds the same N(0, I) noise to every channel, so the low-variance directions, which
    carry the chroma, were drowned early in the forward process and came back from sampling as colour casts
    (the blue-black zombies). With ``z' = A (z − μ)``, ``A = U diag(max(λ, floor·λ_max))^(−1/2) Uᵀ`` from the
    eigen-decomposition of the channel covariance of ``means`` (the training latents), every direction gets
    the same signal-to-noise ratio (directions below ``floor`` of the largest variance are only scaled up
    to that floor, so near-empty directions are not blown up into noise). The map is folded exactly into
    the 1×1 ``quant_conv`` (encoder side: mean rows ← A·(W z + b − μ); log-variance rows: the log of
    ``Σ_j A_ij² σ_j²`` linearised around equal σ_j, exact for a diagonal A) and ``post_quant_conv``
    (decoder side: W ← W A⁻¹, b ← b + W μ), so decoding ``vae.encode(x).latent_dist.mean`` is unchanged and
    the folder keeps the stock ``AutoencoderKL`` layout.
    """
    c = means.shape[1]
    flat = means.permute(1, 0, 2, 3).reshape(c, -1).double()
    mu = flat.mean(1)
    cov = torch.cov(flat)
    eigenvalues, vectors = torch.linalg.eigh(cov)
    clamped = eigenvalues.clamp_min(floor * float(eigenvalues.max()))
    a = vectors @ torch.diag(clamped.rsqrt()) @ vectors.T
    a_inv = vectors @ torch.diag(clamped.sqrt()) @ vectors.T

    q_w = vae.quant_conv.weight.double()[:, :, 0, 0]  # (2C, C_in): rows 0…C−1 mean, C…2C−1 log-variance
    q_b = vae.quant_conv.bias.double()
    mean_w, mean_b = a @ q_w[:c], a @ (q_b[:c] - mu)
    square = a.pow(2)
    mix = square / square.sum(1, keepdim=True)
    var_w = mix @ q_w[c:]
    var_b = mix @ q_b[c:] + square.sum(1).log()
    vae.quant_conv.weight.copy_(torch.cat([mean_w, var_w])[:, :, None, None].to(vae.quant_conv.weight))
    vae.quant_conv.bias.copy_(torch.cat([mean_b, var_b]).to(vae.quant_conv.bias))

    p_w = vae.post_quant_conv.weight.double()[:, :, 0, 0]
    p_b = vae.post_quant_conv.bias.double()
    vae.post_quant_conv.weight.copy_((p_w @ a_inv)[:, :, None, None].to(vae.post_quant_conv.weight))
    vae.post_quant_conv.bias.copy_((p_b + p_w @ mu).to(vae.post_quant_conv.bias))
    return {"eigenvalues": [round(float(v), 5) for v in eigenvalues], "floor": floor,
            "channel_std_before": [round(float(v), 4) for v in flat.std(1)],
            "channel_mean_before": [round(float(v), 4) for v in mu]}  # fmt: skip


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
    after_step: Callable[[int], None] | None = None,
) -> dict:
    """AdamW on ``step_loss(step)`` for ``steps`` steps (or until ``max_seconds``); returns a summary.

    ``log(step, record)`` receives the mean loss over the last ``log_every`` steps and the elapsed time;
    ``after_step(step)`` runs after each optimiser step (e.g. to update an EMA of the weights).
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
        if after_step is not None:
            after_step(step)
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


class WeightAverage:
    """Exponential moving average of parameters (decay ramps up as (1 + n) / (10 + n) early on)."""

    def __init__(self, params: Iterable[Tensor], decay: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.decay = decay
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self, _step: int = 0) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach(), 1 - d)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the averaged ones (call again to swap back)."""
        for s, p in zip(self.shadow, self.params):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


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


# The timesteps stylization queries: DDIM step indices 35…49 of SD 1.5's 50-step "leading" schedule
# (engine.distill.DistillConfig.single_step_range / grid_step_range), t = 981 − 20 k.
STYLIZATION_TIMESTEPS = tuple(981 - 20 * k for k in range(35, 50))
# The whole schedule (uniform quadrature of t over 0…999) and its noisy end (t ≥ 700).
ALL_TIMESTEPS = tuple(range(50, 1000, 100))
HIGH_NOISE_TIMESTEPS = tuple(range(715, 1000, 30))


@torch.no_grad()
def guidance_strength(
    unet, latents: Tensor, text: Tensor, uncond: Tensor, timesteps: Sequence[int], seed: int, alpha_bar: Tensor,
    batch: int = 96,
) -> Tensor:  # fmt: skip
    """(N, T) ratios ‖ε_text − ε_uncond‖ / ‖ε‖ of every sample noised to every timestep (fixed seeded noise ε).

    ``text`` (N, L, D) are the samples' prompt embeddings, ``uncond`` (1, L, D) the empty prompt's. The
    ratio is the size of the classifier-free guidance direction relative to the noise itself: 0 when the
    prompt changes nothing. The norm is over each sample's whole latent.
    """
    generator = torch.Generator().manual_seed(seed)
    n = latents.shape[0]
    out = torch.empty(n, len(timesteps))
    for j, t_value in enumerate(timesteps):
        noise = torch.randn(latents.shape, generator=generator)
        for s in range(0, n, batch):
            rows = slice(s, s + batch)
            b = latents[rows].shape[0]
            t = torch.full((2 * b,), int(t_value), dtype=torch.long)
            x_t = noised(latents[rows], noise[rows], t[:b], alpha_bar)
            context = torch.cat([uncond.expand(b, -1, -1), text[rows]])
            eps = unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=context, return_dict=False)[0].float()
            eps_u, eps_c = eps.chunk(2)
            out[rows, j] = (eps_c - eps_u).flatten(1).norm(dim=1) / noise[rows].flatten(1).norm(dim=1)
    return out


@torch.no_grad()
def heldout_x0_psnr(
    unet, vae, norm: LatentNorm, images: Tensor, latents: Tensor, text: Tensor, timesteps: Sequence[int], seed: int,
    alpha_bar: Tensor, batch: int = 96,
) -> float:  # fmt: skip
    """PSNR (dB, images in [-1, 1]) of the decoded one-step estimate x̂₀ = (x_t − √(1−ᾱ) ε̂) / √ᾱ against the image.

    Unlike ε-MSE, which lives in each model's own latent space (and so cannot compare two VAEs), this is
    measured in pixels: it compares denoisers with different latent spaces on the same images.
    """
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for t_value in timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        for s in range(0, latents.shape[0], batch):
            rows = slice(s, s + batch)
            t = torch.full((latents[rows].shape[0],), int(t_value), dtype=torch.long)
            x_t = noised(latents[rows], noise[rows], t, alpha_bar)
            eps = unet(x_t, t, encoder_hidden_states=text[rows], return_dict=False)[0].float()
            a = alpha_bar[t].view(-1, 1, 1, 1)
            x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
            pixels = vae.decode(norm.inverse(x0)).sample.clamp(-1, 1)
            total += float((pixels - images[rows]).pow(2).flatten(1).mean(1).sum())
            count += pixels.shape[0]
    return float(10 * math.log10(4.0 / (total / count)))
