"""StyleGAN2 mapping and synthesis networks as used by PanoHead's tri-grid backbone.

Module attributes, parameter and buffer names and shapes follow PanoHead's ``training/networks_stylegan2.py``
(``mapping.fc0.weight``, ``synthesis.b8.conv0.noise_const``, ``...torgb.affine.bias``, ``resample_filter``
buffers, ...), so the official ``G_ema`` state_dict loads by name. The forward maths (equalised learning
rate, weight demodulation, ``flip_weight`` only for non-upsampling layers, the noise/bias/activation order)
is reproduced exactly because the trained weights depend on it.

Differences from the original that do not change results: no channels-last, no in-place adds (safe for
autograd when fine-tuning), fp16 is used only on CUDA, and constructor defaults follow this project's
``GeneratorConfig`` (``num_fp16_res=0``, ``conv_clamp=None``) rather than StyleGAN2's (4, 256).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, InputError
from .config import PLANE_FEATURES, GeneratorConfig
from .ops import activation_gain, bias_act, modulated_conv2d, setup_filter, upsample2d

NOISE_MODES = ("random", "const", "none")
DEFAULT_RESAMPLE_FILTER = (1, 3, 3, 1)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each vector to unit root-mean-square (the input normalisation of the mapping network)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _check_shape(t: torch.Tensor, expected: Sequence[int | None], name: str) -> None:
    """Raise InputError unless ``t`` has ``len(expected)`` dims and matches every non-None size."""
    ok = isinstance(t, torch.Tensor) and t.ndim == len(expected) and all(
        e is None or int(s) == e for s, e in zip(t.shape, expected))
    if not ok:
        want = "[" + ", ".join("N" if e is None else str(e) for e in expected) + "]"
        raise InputError(f"{name} must have shape {want}, got {tuple(getattr(t, 'shape', ()))}")


def _resolve_fused(fused_modconv: bool | str | None, default: bool | str, training: bool) -> bool:
    """``'inference_only'`` = fused grouped conv in eval mode, shared-weight conv while training."""
    value = default if fused_modconv is None else fused_modconv
    return (not training) if value == "inference_only" else bool(value)


# ------------------------------------------------------------------------------------------------------
class FullyConnectedLayer(nn.Module):
    """Dense layer with equalised learning rate.

    Weights are stored divided by ``lr_multiplier`` and rescaled by ``lr_multiplier / sqrt(in_features)``
    at run time, so Adam's effective step on the used weight is scaled by ``lr_multiplier``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        activation_gain(activation)  # validates the name early
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], np.float32(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear":
            return torch.nn.functional.linear(x, w, b)
        x = torch.nn.functional.linear(x, w)
        return bias_act(x, b, dim=x.ndim - 1, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


# ------------------------------------------------------------------------------------------------------
class MappingNetwork(nn.Module):
    """z (+ embedded camera c) → w, broadcast to ``num_ws`` copies, with truncation toward ``w_avg``.

    PanoHead builds two of these: the backbone's (``w_dim=512``) and ``t_mapping`` (``w_dim=3, num_ws=1,
    last_activation='linear', lr_multiplier=1``) that predicts a camera-translation offset. Note that with
    the defaults the embedding and hidden widths follow ``w_dim`` (so ``t_mapping``'s layers are 3 wide).
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        num_ws: int | None,
        num_layers: int = 8,
        embed_features: int | None = None,
        layer_features: int | None = None,
        activation: str = "lrelu",
        last_activation: str | None = None,
        lr_multiplier: float = 0.01,
        w_avg_beta: float | None = 0.998,
    ):
        super().__init__()
        if num_layers < 1 or z_dim + c_dim == 0:
            raise ConfigError(f"MappingNetwork needs num_layers >= 1 and some input, got {num_layers}, z={z_dim}, c={c_dim}")
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta

        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        widths = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            act = last_activation if (idx == num_layers - 1 and last_activation) else activation
            setattr(self, f"fc{idx}", FullyConnectedLayer(widths[idx], widths[idx + 1], activation=act,
                                                          lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, update_emas: bool = False) -> torch.Tensor:
        """Return ``[N, num_ws, w_dim]`` (or ``[N, w_dim]`` when ``num_ws`` is None).

        Truncation moves the first ``truncation_cutoff`` ws (all when None) to ``lerp(w_avg, w, psi)``.
        """
        parts = []
        if self.z_dim > 0:
            _check_shape(z, [None, self.z_dim], "MappingNetwork: z")
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            _check_shape(c, [None, self.c_dim], "MappingNetwork: c")
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)

        if update_emas and self.w_avg_beta is not None and hasattr(self, "w_avg"):
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

        if self.num_ws is not None:
            x = x.unsqueeze(1).expand(-1, self.num_ws, -1)
        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise ConfigError("MappingNetwork: truncation needs w_avg tracking (w_avg_beta and num_ws set)")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x.contiguous()

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


# ------------------------------------------------------------------------------------------------------
class SynthesisLayer(nn.Module):
    """Modulated 3×3 conv (optionally ×2 upsampling) + per-pixel noise + bias + lrelu (+ clamp)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = activation_gain(activation)

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused_modconv: bool = True,
                gain: float = 1) -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ConfigError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        in_res = self.resolution // self.up
        _check_shape(x, [None, self.in_channels, in_res, in_res], "SynthesisLayer: x")
        styles = self.affine(w)

        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength

        # The trained weights assume correlation for plain layers and true convolution for upsampling ones.
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
                f"resolution={self.resolution}, up={self.up}, activation={self.activation}")


class ToRGBLayer(nn.Module):
    """Modulated (not demodulated) 1×1 conv to image channels + bias (+ clamp)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.w_dim = in_channels, out_channels, w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)

    def styles(self, w: torch.Tensor) -> torch.Tensor:
        """(N, in_channels) per-input-channel scales ``w`` puts on the weight (no demodulation follows)."""
        return self.affine(w) * self.weight_gain

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, self.styles(w), demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


# ------------------------------------------------------------------------------------------------------
class SynthesisBlock(nn.Module):
    """One resolution of the synthesis network: [const | conv0 (↑2)] → conv1 → ToRGB added to the skip image.

    ``upsample=False`` gives EG3D/PanoHead's "no-up" variant used by the 2X/4X super-resolution modules:
    conv0 keeps the resolution and the incoming image is not upsampled. Consumes
    ``num_conv + num_torgb`` ws. fp16 (``use_fp16``) is honoured only on CUDA; on CPU it runs in float32.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        architecture: str = "skip",
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        fused_modconv_default: bool | str = True,
        upsample: bool = True,
        use_noise: bool = True,
    ):
        super().__init__()
        if architecture not in ("skip", "orig"):
            raise ConfigError(f"SynthesisBlock: architecture must be 'skip' or 'orig', got {architecture!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.upsample = upsample
        self.fused_modconv_default = fused_modconv_default
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0

        layer_kwargs = dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp, use_noise=use_noise,
                            resample_filter=resample_filter)
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, up=2 if upsample else 1, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, force_fp32: bool = False,
                fused_modconv: bool | str | None = None, update_emas: bool = False,
                noise_mode: str = "random") -> tuple[torch.Tensor, torch.Tensor | None]:
        del update_emas  # accepted for call compatibility; nothing to track here
        _check_shape(ws, [None, self.num_conv + self.num_torgb, self.w_dim], f"SynthesisBlock b{self.resolution}: ws")
        w_iter = iter(ws.unbind(dim=1))
        half = self.use_fp16 and not force_fp32 and ws.device.type == "cuda"
        dtype = torch.float16 if half else torch.float32
        fused = _resolve_fused(fused_modconv, self.fused_modconv_default, self.training)
        in_res = self.resolution // 2 if self.upsample else self.resolution

        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, next(w_iter), fused_modconv=fused, noise_mode=noise_mode)
        else:
            _check_shape(x, [None, self.in_channels, in_res, in_res], f"SynthesisBlock b{self.resolution}: x")
            x = x.to(dtype)
            x = self.conv0(x, next(w_iter), fused_modconv=fused, noise_mode=noise_mode)
            x = self.conv1(x, next(w_iter), fused_modconv=fused, noise_mode=noise_mode)

        if img is not None:
            _check_shape(img, [None, self.img_channels, in_res, in_res], f"SynthesisBlock b{self.resolution}: img")
            if self.upsample:
                img = upsample2d(img, self.resample_filter)
        if self.num_torgb:
            y = self.torgb(x, next(w_iter), fused_modconv=fused).to(torch.float32)
            img = y if img is None else img + y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, upsample={self.upsample}"


# ------------------------------------------------------------------------------------------------------
def synthesis_channels(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature channels of the synthesis block at ``resolution``: ``min(channel_base // res, channel_max)``."""
    return min(channel_base // resolution, channel_max)


class SynthesisNetwork(nn.Module):
    """Blocks ``b4 … b{img_resolution}``; the output is the sum of every block's ToRGB (skip architecture)."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 0,
        conv_clamp: float | None = None,
        architecture: str = "skip",
        fused_modconv_default: bool | str = True,
        use_noise: bool = True,
        resample_filter: Sequence[float] = DEFAULT_RESAMPLE_FILTER,
    ):
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ConfigError(f"SynthesisNetwork: img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = img_resolution.bit_length() - 1
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)

        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                synthesis_channels(res // 2, channel_base, channel_max) if res > 4 else 0,
                synthesis_channels(res, channel_base, channel_max),
                w_dim=w_dim, resolution=res, img_channels=img_channels, is_last=res == img_resolution,
                architecture=architecture, resample_filter=resample_filter, conv_clamp=conv_clamp,
                use_fp16=res >= fp16_resolution, fused_modconv_default=fused_modconv_default, use_noise=use_noise,
            )
            self.num_ws += block.num_conv + (block.num_torgb if block.is_last else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, **block_kwargs) -> torch.Tensor:
        """``ws`` is ``[N, num_ws, w_dim]``; block kwargs: noise_mode, force_fp32, fused_modconv, update_emas.

        Consecutive blocks share one w: a block's ToRGB uses the same w as the next block's conv0.
        """
        _check_shape(ws, [None, self.num_ws, self.w_dim], "SynthesisNetwork: ws")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), **block_kwargs)
            w_idx += block.num_conv
        return img

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}")


class StyleGAN2Backbone(nn.Module):
    """Mapping + synthesis (PanoHead's ``backbone``, i.e. StyleGAN2's ``Generator``); its image is the tri-grid."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict | None = None, **synthesis_kwargs):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **(mapping_kwargs or {}))

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1,
                truncation_cutoff: int | None = None, update_emas: bool = False, **synthesis_kwargs) -> torch.Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)


# ------------------------------------------------------------------------------------------------------
# Builders from GeneratorConfig (the PanoHead choices live here, in one place)
# ------------------------------------------------------------------------------------------------------
FUSED_MODCONV_DEFAULT = "inference_only"  # PanoHead's training setting: grouped conv only in eval mode


def build_backbone(config: GeneratorConfig) -> StyleGAN2Backbone:
    """The tri-grid backbone: ``triplane_size``² output with ``config.backbone_channels`` channels."""
    return StyleGAN2Backbone(
        z_dim=config.z_dim, c_dim=config.c_dim, w_dim=config.w_dim,
        img_resolution=config.rendering.triplane_size, img_channels=config.backbone_channels,
        mapping_kwargs=dict(num_layers=config.mapping_layers, lr_multiplier=config.mapping_lr_multiplier),
        channel_base=config.channel_base, channel_max=config.channel_max, num_fp16_res=config.num_fp16_res,
        conv_clamp=config.conv_clamp, fused_modconv_default=FUSED_MODCONV_DEFAULT,
    )


def build_pose_mapping(config: GeneratorConfig) -> MappingNetwork:
    """PanoHead's ``t_mapping``: (z, c) → a 3-vector added to the camera translation (c[3], c[7], c[11])."""
    return MappingNetwork(z_dim=config.z_dim, c_dim=config.c_dim, w_dim=3, num_ws=1, num_layers=config.mapping_layers,
                          last_activation="linear", lr_multiplier=1.0)


def build_background_synthesis(config: GeneratorConfig, resolution: int) -> SynthesisNetwork:
    """PanoHead's ``bcg_synthesis``: a half-width synthesis network producing a 32-channel feature image
    at ``resolution`` (the super-resolution module's ``input_resolution``)."""
    return SynthesisNetwork(
        w_dim=config.w_dim, img_resolution=resolution, img_channels=PLANE_FEATURES,
        channel_base=config.channel_base // 2, channel_max=config.channel_max, num_fp16_res=config.num_fp16_res,
        conv_clamp=config.conv_clamp, fused_modconv_default=FUSED_MODCONV_DEFAULT,
    )


__all__ = [
    "normalize_2nd_moment",
    "FullyConnectedLayer",
    "MappingNetwork",
    "SynthesisLayer",
    "ToRGBLayer",
    "SynthesisBlock",
    "SynthesisNetwork",
    "StyleGAN2Backbone",
    "synthesis_channels",
    "build_backbone",
    "build_pose_mapping",
    "build_background_synthesis",
    "NOISE_MODES",
]
