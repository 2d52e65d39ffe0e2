"""One-step diffusion guidance: noise a render's latent, ask Stable Diffusion + ControlNet for the noise.

This is the diffusion half of likelihood distillation. Following the official training code:

* the render (``[-1, 1]``) is VAE-encoded *with gradients* (the distillation gradient is injected into the
  latent and flows back through the encoder into the generator);
* a DDIM step index ``k`` of a 50-step schedule picks the timestep ``t = timesteps[k]`` (SD 1.5's
  "leading" spacing with ``steps_offset=1``: ``t = 981 - 20 k``), and the latent is noised to ``x_t``;
* one batched UNet call evaluates the unconditional (negative prompt, default empty) and the text branch
  together, with the residuals of every active ControlNet added in;
* the official "score" is ``guidance_scale * (eps_text - eps_uncond)``; the one-step Tweedie estimate
  ``x0_hat`` uses the classifier-free-guided noise ``eps_uncond + s (eps_text - eps_uncond)``.

How that score becomes a gradient (LD vs SDS weighting, rank reweighing, masking) is the distillation
stage's business; :class:`GuidanceOutput` carries everything it needs.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F

from ..errors import ConfigError, InputError
from .models import (
    CONTROL_KINDS,
    DiffusionModels,
    MemoryOptions,
    controlnet_downsample,
    load_diffusion_models,
    token_length,
)

_PRECISIONS = ("auto", "fp16", "bf16", "fp32")


@dataclass
class GuidanceConfig:
    """Options of the diffusion guidance (defaults: the official training command line).

    ``controlnet_scale`` is one scale for every ControlNet or a ``{kind: scale}`` mapping; a scale of 0
    skips that ControlNet entirely. ``precision`` is the half-precision switch used by
    :meth:`Guidance.from_folder` (``'auto'`` = fp16 on GPU, fp32 on CPU). ``sample_posterior`` draws the
    VAE latent from its posterior like the official code (``latent_dist.sample()``); off, it uses the mean.
    """

    prompt: str = ""
    negative_prompt: str = ""
    guidance_scale: float = 7.5
    ddim_steps: int = 50
    controlnet_scale: float | Mapping[str, float] = 1.0
    precision: str = "auto"
    sample_posterior: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise ConfigError("prompt and negative_prompt must be strings")
        if not self.guidance_scale >= 0:
            raise ConfigError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if not (isinstance(self.ddim_steps, int) and 1 <= self.ddim_steps <= 1000):
            raise ConfigError(f"ddim_steps must be an integer in 1..1000, got {self.ddim_steps!r}")
        scales = self.controlnet_scale.values() if isinstance(self.controlnet_scale, Mapping) else [
            self.controlnet_scale
        ]
        if any(not float(s) >= 0 for s in scales):
            raise ConfigError(f"controlnet_scale must be >= 0, got {self.controlnet_scale!r}")
        if self.precision not in _PRECISIONS:
            raise ConfigError(f"precision must be one of {_PRECISIONS}, got {self.precision!r}")


@dataclass
class GuidanceOutput:
    """Everything one guidance step produced (tensors in the input latents' dtype and device).

    ``alpha_bar_t`` is ᾱ at the true timestep ``t``. ``alpha_bar_at_index`` is ᾱ indexed by the *step
    index* instead, which is what the official code multiplies its gradient by (``alphas_cumprod[k]``);
    it is kept so the distillation stage can choose to reproduce that weighting.
    """

    t: int
    step_index: int
    noise: torch.Tensor
    noisy_latents: torch.Tensor
    eps_text: torch.Tensor
    eps_uncond: torch.Tensor
    alpha_bar_t: float
    alpha_bar_at_index: float
    x0_hat: torch.Tensor
    guidance_scale: float = field(default=7.5)

    @property
    def guidance_delta(self) -> torch.Tensor:
        """``eps_text - eps_uncond``: the classifier-free guidance direction."""
        return self.eps_text - self.eps_uncond

    @property
    def score(self) -> torch.Tensor:
        """The official code's score, ``guidance_scale * (eps_text - eps_uncond)`` (no noise term)."""
        return self.guidance_scale * self.guidance_delta

    @property
    def eps_cfg(self) -> torch.Tensor:
        """Classifier-free-guided noise prediction ``eps_uncond + s (eps_text - eps_uncond)``."""
        return self.eps_uncond + self.score


def _check_bchw(tensor: torch.Tensor, name: str, channels: int | None = None) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 4:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise InputError(f"{name} must be a (B, C, H, W) tensor, got {shape}")
    if channels is not None and tensor.shape[1] != channels:
        raise InputError(f"{name} must have {channels} channels, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise InputError(f"{name} must be floating point, got {tensor.dtype}")


def _standard_normal(
    shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Gaussian noise drawn on the generator's device (so a CPU generator seeds CUDA runs too)."""
    device = generator.device if generator is not None else like.device
    noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


class Guidance:
    """Stable Diffusion (+ ControlNets) as a frozen noise predictor for score distillation.

    Build it with :meth:`from_folder` or from already loaded :class:`DiffusionModels`. Everything is
    inference-only except :meth:`encode_images`, through which the render's gradient flows.
    """

    def __init__(self, models: DiffusionModels, config: GuidanceConfig | None = None) -> None:
        self.models = models
        self.config = config or GuidanceConfig()
        self._embedding_cache: dict[tuple[str, str], torch.Tensor] = {}
        self._alphas_cumprod = models.scheduler.alphas_cumprod.to(device=models.device, dtype=torch.float32)
        self.set_timesteps()

    @classmethod
    def from_folder(
        cls,
        sd_folder: str | Path,
        *,
        edge_controlnet: str | Path | None = None,
        depth_controlnet: str | Path | None = None,
        config: GuidanceConfig | None = None,
        device: str | torch.device = "cpu",
        memory: MemoryOptions | None = None,
    ) -> "Guidance":
        """Load the models offline (dtype from ``config.precision``) and wrap them."""
        config = config or GuidanceConfig()
        models = load_diffusion_models(
            sd_folder, edge_controlnet, depth_controlnet, device=device, dtype=config.precision, memory=memory
        )
        return cls(models, config)

    # ------------------------------------------------------------------------------------------------
    # Basic properties.

    @property
    def device(self) -> torch.device:
        return self.models.device

    @property
    def dtype(self) -> torch.dtype:
        return self.models.dtype

    @property
    def scheduler(self):
        return self.models.scheduler

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ for every training timestep, float32 on the models' device (length ``num_train_timesteps``)."""
        return self._alphas_cumprod

    @property
    def timesteps(self) -> torch.Tensor:
        """The current DDIM timesteps, from noisiest to cleanest (CPU, int64)."""
        return self._timesteps

    # ------------------------------------------------------------------------------------------------
    # Text.

    @torch.no_grad()
    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        tokenizer, encoder = self.models.tokenizer, self.models.text_encoder
        length = token_length(tokenizer, encoder)
        tokens = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        kwargs = {}
        if getattr(encoder.config, "use_attention_mask", False):
            kwargs["attention_mask"] = tokens.attention_mask.to(self.device)
        hidden = encoder(tokens.input_ids.to(self.device), **kwargs)[0]
        return hidden.to(self.dtype)

    def encode_prompt(self, prompt: str, negative: str | None = None) -> torch.Tensor:
        """Text embeddings ``(2, L, D)`` for classifier-free guidance: ``[negative, prompt]``.

        ``negative`` defaults to ``config.negative_prompt`` (the official code uses the empty string).
        Results are cached per (prompt, negative) pair; the text encoder runs once per pair.
        """
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a string, got {type(prompt).__name__}")
        negative = self.config.negative_prompt if negative is None else negative
        if not isinstance(negative, str):
            raise InputError(f"negative prompt must be a string, got {type(negative).__name__}")
        key = (prompt, negative)
        if key not in self._embedding_cache:
            self._embedding_cache[key] = self._embed_texts([negative, prompt])
        return self._embedding_cache[key]

    def set_prompt(self, prompt: str, negative: str | None = None) -> torch.Tensor:
        """Make ``prompt`` the default for :meth:`score_step` / :meth:`predict_noise`; returns its embeddings."""
        self.config.prompt = prompt
        if negative is not None:
            self.config.negative_prompt = negative
        return self.encode_prompt(prompt)

    @property
    def text_embeddings(self) -> torch.Tensor:
        """Embeddings of the configured prompt pair (``config.prompt`` / ``config.negative_prompt``)."""
        return self.encode_prompt(self.config.prompt)

    # ------------------------------------------------------------------------------------------------
    # Schedule.

    def set_timesteps(self, num_steps: int | None = None) -> torch.Tensor:
        """Set the DDIM schedule (default ``config.ddim_steps``, 50) and return its timesteps."""
        steps = self.config.ddim_steps if num_steps is None else num_steps
        if not (isinstance(steps, int) and 1 <= steps <= self.scheduler.config.num_train_timesteps):
            raise ConfigError(f"num_steps must be an integer in 1..{self.scheduler.config.num_train_timesteps}")
        self.scheduler.set_timesteps(steps)
        self._timesteps = self.scheduler.timesteps.detach().to("cpu", torch.int64).clone()
        return self._timesteps

    def _step_index(self, index: int) -> int:
        """Validate a DDIM step index (Python-style negatives allowed) and return it in ``0..steps-1``."""
        count = len(self._timesteps)
        try:
            position = operator.index(index)
        except TypeError:
            position = None
        if position is None or isinstance(index, bool) or not -count <= position < count:
            raise ConfigError(f"step index {index!r} is out of range for a {count}-step DDIM schedule")
        return position % count

    def timestep_for_index(self, index: int) -> int:
        """DDIM timestep of step ``index`` (0 = noisiest); e.g. 35 → 281 for SD 1.5's 50-step schedule."""
        return int(self._timesteps[self._step_index(index)])

    def alpha_bar(self, t: int | torch.Tensor) -> torch.Tensor:
        """ᾱ_t (float32 tensor, shape of ``t``); validates the timestep range."""
        t_tensor = torch.as_tensor(t, device=self.device).long()
        total = self._alphas_cumprod.shape[0]
        if bool(((t_tensor < 0) | (t_tensor >= total)).any()):
            raise InputError(f"timestep {t} is outside 0..{total - 1}")
        return self._alphas_cumprod[t_tensor]

    def _batch_timesteps(self, t: int | torch.Tensor, batch: int) -> torch.Tensor:
        """``t`` as a validated ``(B,)`` int64 tensor on the models' device."""
        t_tensor = torch.as_tensor(t, device=self.device).long()
        if t_tensor.dim() > 1 or (t_tensor.dim() == 1 and t_tensor.shape[0] not in (1, batch)):
            raise InputError(
                f"t must be a scalar or have one entry per batch item ({batch}), got {tuple(t_tensor.shape)}"
            )
        self.alpha_bar(t_tensor)  # range check
        return t_tensor.expand(batch)

    def _alpha_bar_like(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ_t shaped to broadcast over a (B, C, H, W) tensor: scalar or one value per batch item."""
        alpha = self.alpha_bar(t)
        if alpha.dim() == 1:
            if alpha.shape[0] not in (1, like.shape[0]):
                raise InputError(f"{alpha.shape[0]} timesteps given for a batch of {like.shape[0]}")
            alpha = alpha.view(-1, 1, 1, 1)
        return alpha

    # ------------------------------------------------------------------------------------------------
    # Latent space.

    def _check_image_size(self, images: torch.Tensor, name: str) -> None:
        factor = self.models.vae_downsample
        if images.shape[-1] % factor or images.shape[-2] % factor:
            raise InputError(
                f"{name} size {tuple(images.shape[-2:])} is not a multiple of the VAE's downsampling {factor}"
            )

    def encode_images(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        sample: bool | None = None,
    ) -> torch.Tensor:
        """Latents of ``images`` (``(B, 3, H, W)`` in ``[-1, 1]``), differentiable with respect to the images.

        Runs the VAE encoder in the models' dtype and returns ``scaling_factor * z`` in the images' dtype.
        ``sample`` (default ``config.sample_posterior``) draws ``z`` from the posterior with ``generator``;
        otherwise ``z`` is the posterior mean. A pixel-space model returns the images unchanged.
        """
        _check_bchw(images, "images", 3)
        self._check_image_size(images, "images")
        vae = self.models.vae
        if vae is None:
            return images
        use_sample = self.config.sample_posterior if sample is None else sample
        pixels = images.to(device=self.device, dtype=self.dtype)
        if getattr(vae, "use_slicing", False) and not getattr(vae, "use_tiling", False) and pixels.requires_grad:
            posterior = self._encode_sliced_with_recompute(pixels)
        elif pixels.requires_grad and torch.is_grad_enabled() and pixels.device.type == "cpu" and len(pixels) > 1:
            posterior = self._encode_one_by_one(pixels)
        else:
            posterior = vae.encode(pixels).latent_dist
        z = posterior.sample(generator=generator) if use_sample else posterior.mode()
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            z = z - shift
        return (z * self.models.vae_scaling_factor).to(images.dtype)

    def _encode_one_by_one(self, pixels: torch.Tensor):
        """The posterior of a batch encoded one image at a time (CPU, gradients on).

        On a CPU the encoder's convolutions at full resolution are limited by memory traffic, and a batch's
        kept activations do not stay in cache: two 512² images with gradients took 2.8 s as a batch against
        2.2 s one by one on the reduced benchmark VAE (2 threads), and the backward gains the same way. The
        posterior is the same as the batch's (each image's moments are computed alone either way).
        """
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return DiagonalGaussianDistribution(torch.cat([self._posterior_moments(image) for image in pixels.split(1)]))

    def _posterior_moments(self, image: torch.Tensor) -> torch.Tensor:
        """The posterior's parameters as ``vae.encode`` computes them: the encoder, then ``quant_conv``."""
        vae = self.models.vae
        h = vae.encoder(image)
        return h if vae.quant_conv is None else vae.quant_conv(h)

    def _encode_sliced_with_recompute(self, pixels: torch.Tensor):
        """VAE slicing on the gradient path: one image at a time, and none of the encoder's activations kept.

        Slicing alone lowers nothing when gradients flow (every image's activations wait for the backward);
        so each image's encoder runs under activation checkpointing and is recomputed during the backward
        (one more encoder forward per image). The posterior's parameters are those ``vae.encode`` computes
        (encoder, then ``quant_conv``), so the latents and the gradients are the same as without slicing.
        """
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        from torch.utils.checkpoint import checkpoint

        parts = [checkpoint(self._posterior_moments, image, use_reentrant=False) for image in pixels.split(1)]
        return DiagonalGaussianDistribution(torch.cat(parts))

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in ``[-1, 1]`` (float32) from latents produced by :meth:`encode_images`."""
        _check_bchw(latents, "latents", self.models.latent_channels)
        vae = self.models.vae
        if vae is None:
            return latents.float().clamp(-1.0, 1.0)
        z = latents.to(device=self.device, dtype=self.dtype) / self.models.vae_scaling_factor
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            z = z + shift
        return vae.decode(z).sample.float().clamp(-1.0, 1.0)

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Forward diffusion ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε`` (``t``: int or one per batch item)."""
        if noise.shape != latents.shape:
            raise InputError(f"noise shape {tuple(noise.shape)} != latents shape {tuple(latents.shape)}")
        alpha = self._alpha_bar_like(t, latents).to(latents.device)
        noisy = alpha.sqrt() * latents.float() + (1.0 - alpha).sqrt() * noise.float()
        return noisy.to(latents.dtype)

    def tweedie_x0(self, noisy: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """One-step estimate of the clean latent: ``(x_t - sqrt(1 - ᾱ_t) ε̂) / sqrt(ᾱ_t)``."""
        alpha = self._alpha_bar_like(t, noisy).to(noisy.device)
        x0 = (noisy.float() - (1.0 - alpha).sqrt() * eps.float()) / alpha.sqrt()
        return x0.to(noisy.dtype)

    # ------------------------------------------------------------------------------------------------
    # Noise prediction.

    def _controlnet_scales(self, override: float | Mapping[str, float] | None) -> dict[str, float]:
        scale = self.config.controlnet_scale if override is None else override
        if isinstance(scale, Mapping):
            return {kind: float(scale.get(kind, 1.0)) for kind in CONTROL_KINDS}
        return {kind: float(scale) for kind in CONTROL_KINDS}

    def _prepare_control(self, kind: str, image: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Control image resized to the ControlNet's input size and duplicated for the CFG batch."""
        _check_bchw(image, f"control[{kind!r}]", 3)
        batch = latents.shape[0]
        if image.shape[0] not in (1, batch):
            raise InputError(f"control[{kind!r}] has batch {image.shape[0]}, expected 1 or {batch}")
        factor = controlnet_downsample(self.models.controlnets[kind])
        size = (latents.shape[-2] * factor, latents.shape[-1] * factor)
        image = image.to(device=self.device, dtype=torch.float32)
        if tuple(image.shape[-2:]) != size:
            shrinking = image.shape[-2] > size[0] or image.shape[-1] > size[1]
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
        image = image.expand(batch, -1, -1, -1)
        return torch.cat([image, image]).to(self.dtype)

    def _expand_embeddings(self, embeddings: torch.Tensor, batch: int) -> torch.Tensor:
        """``(2, L, D)`` [uncond, cond] → ``(2B, L, D)`` ordered like ``cat([x, x])``; ``(2B, L, D)`` kept."""
        if embeddings.dim() != 3 or embeddings.shape[0] not in (2, 2 * batch):
            raise InputError(
                f"text_embeddings must be (2, L, D) or (2B, L, D) for B={batch}, got {tuple(embeddings.shape)}"
            )
        embeddings = embeddings.to(device=self.device, dtype=self.dtype)
        if embeddings.shape[0] == 2 * batch:
            return embeddings
        uncond, cond = embeddings[:1], embeddings[1:]
        return torch.cat([uncond.expand(batch, -1, -1), cond.expand(batch, -1, -1)])

    def _to_epsilon(self, output: torch.Tensor, noisy: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Convert the UNet output to a noise prediction whatever the model's ``prediction_type``."""
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return output
        alpha = self._alpha_bar_like(t, noisy).to(noisy.device)
        if kind == "v_prediction":
            return alpha.sqrt() * output + (1.0 - alpha).sqrt() * noisy
        return (noisy - alpha.sqrt() * output) / (1.0 - alpha).sqrt()  # "sample": output is x0

    @torch.no_grad()
    def predict_noise(
        self,
        noisy_latents: torch.Tensor,
        t: int | torch.Tensor,
        control: Mapping[str, torch.Tensor] | None = None,
        text_embeddings: torch.Tensor | None = None,
        controlnet_scale: float | Mapping[str, float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps_uncond, eps_text)`` for ``noisy_latents`` at timestep ``t``, one batched UNet call.

        Args:
            noisy_latents: ``(B, C, h, w)``.
            t: training timestep (int, or one per batch item).
            control: ``{kind: (B or 1, 3, H, W)}`` conditioning images in ``[0, 1]`` for the loaded
                ControlNets (``"edge"``, ``"depth"``); resized to the latent size × the ControlNet's
                downsampling when needed. Residuals of several ControlNets are summed.
            text_embeddings: ``(2, L, D)`` from :meth:`encode_prompt` (default: the configured prompt).
            controlnet_scale: overrides ``config.controlnet_scale`` for this call.

        Returns:
            Two tensors shaped and typed like ``noisy_latents``.
        """
        _check_bchw(noisy_latents, "noisy_latents", self.models.latent_channels)
        batch = noisy_latents.shape[0]
        embeddings = self._expand_embeddings(
            self.text_embeddings if text_embeddings is None else text_embeddings, batch
        )
        timesteps = self._batch_timesteps(t, batch).repeat(2)  # CFG batch: [uncond × B, text × B]

        model_input = noisy_latents.to(device=self.device, dtype=self.dtype).repeat(2, 1, 1, 1)
        scales = self._controlnet_scales(controlnet_scale)
        down_residuals: list[torch.Tensor] | None = None
        mid_residual: torch.Tensor | None = None
        for kind, image in (control or {}).items():
            if kind not in self.models.controlnets:
                loaded = ", ".join(sorted(self.models.controlnets)) or "none"
                raise InputError(f"control kind {kind!r} has no loaded ControlNet (loaded: {loaded})")
            if scales[kind] == 0.0:
                continue  # a zero-scaled ControlNet adds exact zeros: skip its forward pass
            down, mid = self.models.controlnets[kind](
                model_input,
                timesteps,
                encoder_hidden_states=embeddings,
                controlnet_cond=self._prepare_control(kind, image, noisy_latents),
                conditioning_scale=scales[kind],
                return_dict=False,
            )
            if down_residuals is None:
                down_residuals, mid_residual = list(down), mid
            else:
                down_residuals = [a + b for a, b in zip(down_residuals, down)]
                mid_residual = mid_residual + mid

        output = self.models.unet(
            model_input,
            timesteps,
            encoder_hidden_states=embeddings,
            down_block_additional_residuals=down_residuals,
            mid_block_additional_residual=mid_residual,
            return_dict=False,
        )[0]
        eps = self._to_epsilon(output.float(), model_input.float(), timesteps)
        eps_uncond, eps_text = eps.chunk(2)
        like = noisy_latents
        return eps_uncond.to(like.device, like.dtype), eps_text.to(like.device, like.dtype)

    # ------------------------------------------------------------------------------------------------
    # The whole step.

    @torch.no_grad()
    def score_step(
        self,
        latents: torch.Tensor,
        step_index: int,
        control: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        *,
        text_embeddings: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> GuidanceOutput:
        """Noise ``latents`` to DDIM step ``step_index`` and predict the noise with CFG (+ ControlNets).

        ``noise`` defaults to a standard normal draw from ``generator``. Does not build a graph: keep the
        latents from :meth:`encode_images` to inject the distillation gradient into.
        """
        _check_bchw(latents, "latents", self.models.latent_channels)
        index = self._step_index(step_index)
        t = int(self._timesteps[index])
        latents = latents.detach()
        if noise is None:
            noise = _standard_normal(latents.shape, latents, generator)
        noisy = self.add_noise(latents, noise, t)
        eps_uncond, eps_text = self.predict_noise(noisy, t, control, text_embeddings)
        scale = float(self.config.guidance_scale)
        eps_cfg = eps_uncond + scale * (eps_text - eps_uncond)
        return GuidanceOutput(
            t=t,
            step_index=index,
            noise=noise,
            noisy_latents=noisy,
            eps_text=eps_text,
            eps_uncond=eps_uncond,
            alpha_bar_t=float(self._alphas_cumprod[t]),
            alpha_bar_at_index=float(self._alphas_cumprod[index]),
            x0_hat=self.tweedie_x0(noisy, eps_cfg, t),
            guidance_scale=scale,
        )

