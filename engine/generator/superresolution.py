"""Super-resolution head: the low-resolution neural render (32 features + raw RGB) → the final image.

Two StyleGAN2 synthesis blocks refine the feature image and accumulate an RGB skip image, both modulated by
the last w of the backbone repeated three times (EG3D's "dual-conditioned" hybrid SR). Kinds, by the
overall factor over the neural render (see ``GeneratorConfig.superresolution``):

* ``"8XDC"`` (PanoHead, 64→512): inputs are resized to ``img_resolution / 4``; ``block0`` upsamples ×2
  and ``block1`` upsamples ×2 again. Parameter names equal PanoHead's ``SuperresolutionHybrid8XDC``.
* ``"4X"`` / ``"2X"``: inputs are resized to ``img_resolution / 2``; ``block0`` keeps that size and
  ``block1`` upsamples ×2 (EG3D's ``SuperresolutionHybrid4X/2X`` layout, incl. a ``resample_filter`` buffer).
* ``"none"``: identity on the raw RGB render.

``input_resolution`` is also the resolution of PanoHead's background synthesis network.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError, InputError
from .config import PLANE_FEATURES, SR_FACTORS, GeneratorConfig
from .ops import setup_filter, upsample2d
from .stylegan2 import FUSED_MODCONV_DEFAULT, SynthesisBlock

# fp16 SR blocks clamp conv outputs to ±256 (as PanoHead does whenever sr_num_fp16_res > 0).
FP16_CONV_CLAMP = 256.0


class SuperResolution(nn.Module):
    """One module for every SR kind; see the module docstring for the layouts."""

    def __init__(
        self,
        kind: str,
        channels: int,
        img_resolution: int,
        sr_channels: tuple[int, int],
        w_dim: int,
        img_channels: int = 3,
        sr_num_fp16_res: int = 0,
        sr_antialias: bool = True,
        fused_modconv_default: bool | str = FUSED_MODCONV_DEFAULT,
    ):
        super().__init__()
        if kind not in SR_FACTORS:
            raise ConfigError(f"superresolution kind must be one of {sorted(SR_FACTORS)}, got {kind!r}")
        self.kind = kind
        self.img_resolution = img_resolution
        self.sr_antialias = sr_antialias
        if kind == "none":
            self.input_resolution = img_resolution
            return

        in_divisor = 4 if kind == "8XDC" else 2
        if img_resolution % in_divisor:
            raise ConfigError(f"superresolution {kind}: img_resolution {img_resolution} is not divisible by {in_divisor}")
        self.input_resolution = img_resolution // in_divisor
        use_fp16 = sr_num_fp16_res > 0
        block_kwargs = dict(w_dim=w_dim, img_channels=img_channels, use_fp16=use_fp16,
                            conv_clamp=FP16_CONV_CLAMP if use_fp16 else None,
                            fused_modconv_default=fused_modconv_default)
        first_upsamples = kind == "8XDC"
        self.block0 = SynthesisBlock(channels, sr_channels[0], resolution=img_resolution // 2, is_last=False,
                                     upsample=first_upsamples, **block_kwargs)
        self.block1 = SynthesisBlock(sr_channels[0], sr_channels[1], resolution=img_resolution, is_last=True,
                                     **block_kwargs)
        if not first_upsamples:
            # Unused in the forward pass; kept so EG3D-style 2X/4X state_dicts load by name.
            self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-1] == self.input_resolution and image.shape[-2] == self.input_resolution:
            return image
        size = (self.input_resolution, self.input_resolution)
        return nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False,
                                         antialias=self.sr_antialias)

    def forward(self, rgb: torch.Tensor, features: torch.Tensor, ws: torch.Tensor, noise_mode: str = "none",
                **block_kwargs) -> torch.Tensor:
        """``rgb`` [N, 3, r, r], ``features`` [N, 32, r, r], ``ws`` [N, K, w_dim] → [N, 3, img, img].

        Only the last w is used. ``block_kwargs`` (force_fp32, fused_modconv) go to the synthesis blocks.
        """
        if self.kind == "none":
            return rgb
        if ws.ndim != 3 or ws.shape[1] < 1:
            raise InputError(f"SuperResolution: ws must be [N, num_ws, w_dim], got {tuple(ws.shape)}")
        ws = ws[:, -1:, :].expand(-1, 3, -1)
        x, img = self.block0(self._resize(features), self._resize(rgb), ws, noise_mode=noise_mode, **block_kwargs)
        x, img = self.block1(x, img, ws, noise_mode=noise_mode, **block_kwargs)
        return img

    @torch.no_grad()
    def padded_border(self) -> int:
        """How many outermost rows and columns of the output the RGB skip path darkens at the image border.

        The blocks that upsample pass the skip image through StyleGAN2's upsampling filter, which pads with
        zeros: a constant image comes out at 0.75 of its value in the outer row (pack, 64→128), and over
        PanoHead's two upsamplings the loss reaches three rows deep at 512². On a white background that is
        a grey frame no learned layer was trained to cancel. Measured here by pushing a constant image
        through the skip path alone (the filters are fixed, so this is exact and costs one tiny pass).
        """
        if self.kind == "none":
            return 0
        device = self.block1.resample_filter.device
        img = torch.ones(1, 1, self.input_resolution, self.input_resolution, device=device)
        for block in (self.block0, self.block1):
            if block.upsample:
                img = upsample2d(img, block.resample_filter)
        column = img[0, 0, :, img.shape[-1] // 2] < 1 - 1e-6  # the middle column: rows hit from top / bottom
        half = column.shape[0] // 2
        return int(max(column[:half].sum(), column[half:].sum()))

    def extra_repr(self) -> str:
        return f"kind={self.kind}, input_resolution={self.input_resolution}, img_resolution={self.img_resolution}"


def build_superresolution(config: GeneratorConfig) -> SuperResolution:
    """The SR module of ``config`` (kind, output size, block widths, fp16 and antialias settings)."""
    return SuperResolution(
        kind=config.superresolution,
        channels=PLANE_FEATURES,
        img_resolution=config.img_resolution,
        sr_channels=tuple(config.sr_channels),
        w_dim=config.w_dim,
        img_channels=config.img_channels,
        sr_num_fp16_res=config.sr_num_fp16_res,
        sr_antialias=config.rendering.sr_antialias,
    )


__all__ = ["SuperResolution", "build_superresolution", "FP16_CONV_CLAMP"]
