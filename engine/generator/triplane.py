"""The tri-grid head generator: PanoHead's TriPlaneGenerator, rebuilt on our own layers.

Pipeline for one head: ``z`` and the conditioning camera ``c`` → mapping network → ``ws`` (W+) → StyleGAN2
synthesis → tri-grid (3 planes × D depth slices × 32 features) → volume rendering of the decoder's
(σ, features) along camera rays at the neural resolution (64²) → background blend → ToRGB raw image →
super-resolution to the output resolution.

Attribute names (``backbone``, ``superresolution``, ``decoder``, ``torgb``, ``bcg_synthesis``,
``t_mapping``) are PanoHead's, so the official ``G_ema`` weights copy over by name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import PLANE_FEATURES, GeneratorConfig
from .decoder import OSGDecoder
from .renderer import ImportanceRenderer, RaySampler
from .stylegan2 import MappingNetwork, StyleGAN2Backbone, SynthesisNetwork, ToRGBLayer
from .superresolution import build_superresolution

Background = Literal["model", "none", "white"]

# Layer groups that training code can freeze or unfreeze by name (the paper trains synthesis + SR).
LAYER_GROUPS = ("mapping", "synthesis", "superresolution", "decoder", "torgb", "background", "t_mapping")


@dataclass(frozen=True)
class RenderOptions:
    """How one call to :meth:`TriPlaneGenerator.render` renders.

    ``background``: ``"model"`` blends PanoHead's background network behind the head, ``"none"`` renders
    the head over black features (what stylization uses, so the diffusion model sees only the head) and
    ``"white"`` composites the raw RGB over white using the accumulated opacity (as the official
    stylization code's ``make_background_white``).
    """

    neural_resolution: int | None = None  # None → config.rendering.neural_rendering_resolution
    background: Background = "model"
    noise_mode: str = "const"
    return_planes: bool = False
    run_superresolution: bool = True
    generator: torch.Generator | None = None  # seeds stratified jitter / importance sampling
    deterministic_samples: bool = False  # no jitter at all (tests, meshes, turntables)
    # (coarse, importance) samples per ray; None → config.rendering's. Fewer make a cheaper render (head mode's
    # fit renders its photometric views with half as many; the published generator's views keep its own).
    ray_samples: tuple[int, int] | None = None


class TriPlaneGenerator(nn.Module):
    """PanoHead-compatible 3D head generator. All sizes come from :class:`GeneratorConfig`."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        config.validate()
        self.config = config
        r = config.rendering
        self.z_dim, self.c_dim, self.w_dim = config.z_dim, config.c_dim, config.w_dim
        self.img_resolution = config.img_resolution
        mapping_kwargs = dict(num_layers=config.mapping_layers, lr_multiplier=config.mapping_lr_multiplier)
        self.backbone = StyleGAN2Backbone(
            z_dim=config.z_dim,
            c_dim=config.c_dim,
            w_dim=config.w_dim,
            img_resolution=r.triplane_size,
            img_channels=config.backbone_channels,
            mapping_kwargs=mapping_kwargs,
            channel_base=config.channel_base,
            channel_max=config.channel_max,
            num_fp16_res=config.num_fp16_res,
            conv_clamp=config.conv_clamp,
        )
        self.superresolution = build_superresolution(config)
        self.decoder = OSGDecoder(
            n_features=PLANE_FEATURES,
            hidden=r.decoder_hidden,
            output_dim=r.decoder_output_dim,
            lr_mul=r.decoder_lr_mul,
            activation=r.decoder_activation,
        )
        self.torgb = ToRGBLayer(PLANE_FEATURES, 3, config.w_dim) if r.use_torgb_raw else None
        self.bcg_synthesis = (
            SynthesisNetwork(
                w_dim=config.w_dim,
                img_resolution=self.superresolution.input_resolution,
                img_channels=PLANE_FEATURES,
                channel_base=config.channel_base // 2,
                channel_max=config.channel_max,
                num_fp16_res=config.num_fp16_res,
                conv_clamp=config.conv_clamp,
            )
            if r.use_background
            else None
        )
        # PanoHead's self-adaptive camera: a tiny mapping network predicting a translation offset.
        self.t_mapping = MappingNetwork(
            z_dim=config.z_dim,
            c_dim=config.c_dim,
            w_dim=3,
            num_ws=1,
            num_layers=config.mapping_layers,
            last_activation="linear",
            lr_multiplier=1.0,
        )
        self.renderer = ImportanceRenderer()
        self.ray_sampler = RaySampler()
        # Head mode (see make_single_head): one head's own tri-grid and the W+ latent that modulates its ToRGB
        # and super-resolution. None for a generator (they are then absent from the state dict).
        self.register_parameter("head_planes", None)
        self.register_buffer("head_ws", None)

    # ------------------------------------------------------------------------------------------ single head
    def make_single_head(self, planes: torch.Tensor, ws: torch.Tensor) -> "TriPlaneGenerator":
        """Make this generator one head's field (head mode): every latent renders the tri-grid ``planes``
        (1, 3, 32·D, S, S) with the W+ latent ``ws`` (1, num_ws, w_dim), so rendering, stylization (the
        tri-grid trains as the ``planes`` layer group), mesh extraction and saving/loading all run through
        the generator's own code. The mapping and synthesis networks stay in the file but are not used.

        The planes' side S may exceed the generator's ``triplane_size`` (a power of two ≥ 8): one head's field
        is fitted to a mesh directly, not synthesised, so it can afford finer planes than the generator makes
        (the renderer samples planes of any size in the same box)."""
        r = self.config.rendering
        channels = PLANE_FEATURES * r.triplane_depth
        size = planes.shape[-1] if planes.dim() == 5 else -1
        want = (1, 3, channels, size, size)
        if tuple(planes.shape) != want or size < 8 or size & (size - 1):
            raise ValueError(f"single-head planes must have shape (1, 3, {channels}, S, S) with S a power of two ≥ 8, "
                             f"got {tuple(planes.shape)}")
        if tuple(ws.shape) != (1, self.num_ws, self.w_dim):
            raise ValueError(f"single-head ws must have shape {(1, self.num_ws, self.w_dim)}, got {tuple(ws.shape)}")
        device = next(self.decoder.parameters()).device
        self.head_planes = nn.Parameter(planes.detach().to(device, torch.float32).clone(), requires_grad=False)
        self.head_ws = ws.detach().to(device, torch.float32).clone()
        return self

    @property
    def is_single_head(self) -> bool:
        return self.head_planes is not None

    # ------------------------------------------------------------------------------------------ latents
    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    def _conditioning(self, c: torch.Tensor) -> torch.Tensor:
        r = self.config.rendering
        if r.c_gen_conditioning_zero:
            c = torch.zeros_like(c)
        return c * r.c_scale

    def mapping(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
    ) -> torch.Tensor:
        """z (N, z_dim) and conditioning camera c (N, 25) → ws (N, num_ws, w_dim); a single-head field
        returns its own ws for every z."""
        if self.head_ws is not None:
            return self.head_ws.expand(z.shape[0], -1, -1)
        return self.backbone.mapping(
            z,
            self._conditioning(c),
            truncation_psi=truncation_psi,
            truncation_cutoff=truncation_cutoff,
            update_emas=update_emas,
        )

    def apply_delta_c(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0, truncation_cutoff=None):
        """PanoHead's learned camera translation offset (entries 3, 7, 11 of the 25-vector)."""
        delta = self.t_mapping(z, self._conditioning(c), truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        delta = delta.squeeze(1)
        c_new = c.clone()
        c_new[:, [3, 7, 11]] = c_new[:, [3, 7, 11]] + delta
        return c_new, delta

    # ------------------------------------------------------------------------------------------ tri-grid
    def synthesize_planes(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """ws → tri-grid of shape (N, 3, D·32, S, S) (a single-head field: its own tri-grid, N times)."""
        if self.head_planes is not None:
            return self.head_planes.expand(ws.shape[0], -1, -1, -1, -1)
        planes = self.backbone.synthesis(ws, noise_mode=noise_mode)
        n, _, h, w = planes.shape
        return planes.view(n, 3, PLANE_FEATURES * self.config.rendering.triplane_depth, h, w)

    # ------------------------------------------------------------------------------------------ rendering
    def render(self, ws: torch.Tensor, c: torch.Tensor, options: RenderOptions = RenderOptions(), planes=None) -> dict:
        """Render W+ latents ``ws`` from cameras ``c`` (N, 25).

        Returns ``image`` (N, 3, R, R) in about [-1, 1] after super-resolution, ``image_raw`` (N, 3, r, r)
        the neural render, ``image_depth`` (N, 1, r, r) ray depth, ``image_mask`` (N, 1, r, r) accumulated
        opacity in [0, 1], ``features`` (N, 32, r, r) and, if asked, ``planes``.
        ``planes`` may be passed in to reuse a tri-grid across several cameras of the same latent: with B
        tri-grids and N = B·V cameras, cameras b·V … b·V + V − 1 view tri-grid b (``ws`` still has N rows).
        """
        r = self.config.rendering
        if options.ray_samples is not None:
            coarse, importance = options.ray_samples
            r = replace(r, depth_resolution=int(coarse), depth_resolution_importance=int(importance))
        res = options.neural_resolution or r.neural_rendering_resolution
        if planes is None:
            planes = self.synthesize_planes(ws, noise_mode=options.noise_mode)
        returned_planes = planes
        if planes.shape[0] > 1 and planes.stride(0) == 0:  # one tri-grid expanded over the cameras: read it once
            planes = planes[:1]
        if planes.shape[0] == 0 or c.shape[0] % planes.shape[0]:
            raise ValueError(f"render: {c.shape[0]} cameras are not a whole number of views of {planes.shape[0]} tri-grids")
        cam2world = c[:, :16].view(-1, 4, 4)
        intrinsics = c[:, 16:25].view(-1, 3, 3)
        origins, directions = self.ray_sampler(cam2world, intrinsics, res)
        features, depth, weights = self.renderer(
            planes,
            self.decoder,
            origins,
            directions,
            r,
            generator=options.generator,
            deterministic=options.deterministic_samples,
        )
        n = c.shape[0]
        feature_image = features.permute(0, 2, 1).reshape(n, features.shape[-1], res, res).contiguous()
        depth_image = depth.permute(0, 2, 1).reshape(n, 1, res, res)
        mask = weights.permute(0, 2, 1).reshape(n, 1, res, res)
        if self.decoder.activation == "sigmoid":
            feature_image = feature_image * 2 - 1

        if options.background == "model" and self.bcg_synthesis is not None:
            feature_image = feature_image + (1 - mask) * self._background(ws, res, options.noise_mode)

        if self.torgb is not None:
            rgb = self.torgb(feature_image, ws[:, -1], fused_modconv=False).float()
        else:
            rgb = feature_image[:, :3]
        if options.background == "white":
            rgb = rgb * mask + (1 - mask)

        out = {
            "image_raw": rgb,
            "image_depth": depth_image,
            "image_mask": mask.clamp(0, 1),
            "features": feature_image,
        }
        if options.run_superresolution:
            out["image"] = self.superresolution(rgb, feature_image, ws, noise_mode=r.superresolution_noise_mode)
        if options.return_planes:
            out["planes"] = returned_planes
        return out

    def _background(self, ws: torch.Tensor, res: int, noise_mode: str) -> torch.Tensor:
        need = self.bcg_synthesis.num_ws
        ws_bcg = ws[:, :need]
        if ws_bcg.shape[1] < need:
            ws_bcg = torch.cat([ws_bcg, ws_bcg[:, -1:].expand(-1, need - ws_bcg.shape[1], -1)], dim=1)
        bcg = self.bcg_synthesis(ws_bcg, noise_mode=noise_mode)
        return F.interpolate(bcg, size=(res, res), mode="bilinear", align_corners=False, antialias=self.config.rendering.sr_antialias)

    def forward(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        options: RenderOptions = RenderOptions(),
    ) -> dict:
        """Sample heads from z and render them from cameras c (c also conditions the mapping)."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        c_render, _ = self.apply_delta_c(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.render(ws, c_render, options)

    # ------------------------------------------------------------------------------------------ 3-D queries
    def query_points(self, planes: torch.Tensor, points: torch.Tensor) -> dict:
        """Decoder output at arbitrary points (N, M, 3) in world space: ``sigma`` (N, M, 1), ``rgb`` features."""
        directions = torch.zeros_like(points)
        return self.renderer.run_model(planes, self.decoder, points, directions, self.config.rendering)

    def point_colors(self, planes: torch.Tensor, ws: torch.Tensor, points: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """RGB in [0, 1] at points (N, M, 3): decoder features through the raw ToRGB head (a 1×1 conv, so
        applying it per point equals applying it per pixel).

        ``clamp=False`` leaves values outside [0, 1] as they are: a loss on clamped colours has no gradient
        once a colour leaves the range, so training losses use the unclamped values.
        """
        return self.feature_colors(self.point_features(planes, points), ws, clamp)

    def point_features(self, planes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(N, M, C) decoder features at points (N, M, 3), as the renderer hands them to ToRGB."""
        feats = self.query_points(planes, points)["rgb"]
        return feats * 2 - 1 if self.decoder.activation == "sigmoid" else feats

    def feature_colors(self, feats: torch.Tensor, ws: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """RGB in [0, 1] of per-point features (N, M, C) (:meth:`point_features`) through the raw ToRGB head."""
        if self.torgb is not None:
            img = feats.permute(0, 2, 1).unsqueeze(-1)  # (N, C, M, 1)
            rgb = self.torgb(img, ws[:, -1], fused_modconv=False).float().squeeze(-1).permute(0, 2, 1)
        else:
            rgb = feats[..., :3]
        rgb = (rgb + 1) / 2
        return rgb.clamp(0, 1) if clamp else rgb

    # ------------------------------------------------------------------------------------------ training
    def layer_group(self, name: str) -> nn.Module | None:
        groups = {
            "mapping": self.backbone.mapping,
            "synthesis": self.backbone.synthesis,
            "superresolution": self.superresolution,
            "decoder": self.decoder,
            "torgb": self.torgb,
            "background": self.bcg_synthesis,
            "t_mapping": self.t_mapping,
        }
        if name not in groups:
            raise ValueError(f"unknown layer group {name!r}; choose from {LAYER_GROUPS}")
        return groups[name]

    def set_trainable(self, groups: Iterable[str], train_biases: bool = False) -> list[str]:
        """Freeze everything, then unfreeze the named groups (biases stay frozen unless ``train_biases``).

        The paper fine-tunes ``synthesis`` + ``superresolution`` with biases frozen. Returns the names of
        the parameters left trainable.
        """
        self.requires_grad_(False)
        for name in groups:
            if name == "planes":  # a single-head field's own tri-grid (nothing to train on a generator)
                if self.head_planes is not None:
                    self.head_planes.requires_grad_(True)
                continue
            module = self.layer_group(name)
            if module is None:
                continue
            for pname, p in module.named_parameters():
                if train_biases or not pname.endswith("bias"):
                    p.requires_grad_(True)
        return [n for n, p in self.named_parameters() if p.requires_grad]
