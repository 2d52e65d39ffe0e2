"""Generator architecture configuration.

One frozen dataclass describes a tri-grid generator completely, so that a checkpoint is "config JSON +
safetensors" and every size in the code comes from here. The ``panohead`` preset matches the published
PanoHead checkpoint (``easy-khair-180-gpc0.8-trans10-025000.pkl``: 512² output, 256² tri-grid of depth 3,
SR 8X with dual-conditioning, background network, ToRGB raw head, pose-conditioned mapping). The small
presets keep exactly the same structure with fewer channels and samples, for tests and the embedded pack.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ..errors import ConfigError
from ..io.configs import JsonConfig

# Channels per tri-grid plane slice. Fixed in PanoHead (the decoder reads 32 features).
PLANE_FEATURES = 32


@dataclass(frozen=True)
class RenderingConfig(JsonConfig):
    """Volume-rendering and tri-grid options (PanoHead's ``rendering_kwargs``)."""

    config_label: ClassVar[str] = "rendering"

    triplane_size: int = 256  # spatial resolution of each tri-grid plane
    triplane_depth: int = 3  # PanoHead "tri-grid": D slices of 32 features per plane
    depth_resolution: int = 48  # stratified (coarse) samples per ray
    depth_resolution_importance: int = 48  # importance (fine) samples per ray
    ray_start: float = 2.25
    ray_end: float = 3.3
    box_warp: float = 1.0  # side of the cube spanned by the tri-grid, centred at the origin
    triplane_crop: float = 0.1  # densities outside the side walls of the box (minus this margin) are cut
    disparity_space_sampling: bool = False
    clamp_mode: str = "softplus"  # density activation
    decoder_activation: str = "none"  # "sigmoid" (EG3D), "lrelu" or "none" (PanoHead, with ToRGB)
    decoder_lr_mul: float = 1.0
    decoder_hidden: int = 64
    decoder_output_dim: int = PLANE_FEATURES
    use_torgb_raw: bool = True
    use_background: bool = True
    c_gen_conditioning_zero: bool = False  # PanoHead conditions the mapping on the camera (gpc)
    c_scale: float = 1.0
    superresolution_noise_mode: str = "none"
    sr_antialias: bool = True
    density_noise: float = 0.0
    white_back: bool = False
    neural_rendering_resolution: int = 64
    avg_camera_radius: float = 2.7
    avg_camera_pivot: tuple[float, float, float] = (0.0, 0.0, 0.2)
    fov_degrees: float = 18.837


@dataclass(frozen=True)
class GeneratorConfig(JsonConfig):
    """Sizes of every stage of the tri-grid generator.

    ``superresolution`` names the SR module by its factor over the neural render: ``"8XDC"`` (64→512, two
    upsampling blocks, PanoHead), ``"4X"`` and ``"2X"`` (the render is resized to img/2, one block keeps
    that size and one upsamples ×2), or ``"none"`` (the raw neural render is the output).
    """

    config_label: ClassVar[str] = "generator"

    name: str = "panohead"
    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 25
    img_resolution: int = 512
    img_channels: int = 3
    mapping_layers: int = 2
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 0
    conv_clamp: float | None = None
    sr_num_fp16_res: int = 4
    sr_channels: tuple[int, int] = (256, 128)  # output channels of the two SR synthesis blocks (8XDC: 256, 128)
    superresolution: str = "8XDC"
    rendering: RenderingConfig = field(default_factory=RenderingConfig)

    # ----------------------------------------------------------------------------------------------
    @property
    def backbone_channels(self) -> int:
        """Channels of the StyleGAN2 backbone's output image: 3 planes × depth × 32 features."""
        return 3 * self.rendering.triplane_depth * PLANE_FEATURES

    @property
    def num_ws(self) -> int:
        """Number of W+ vectors the backbone synthesis consumes (2·log2(res) − 2 for StyleGAN2)."""
        res_log2 = self.rendering.triplane_size.bit_length() - 1
        return 2 * res_log2 - 2

    def validate(self) -> "GeneratorConfig":
        r = self.rendering
        if r.triplane_size < 8 or r.triplane_size & (r.triplane_size - 1):
            raise ConfigError(f"{self.name}: triplane_size must be a power of two ≥ 8, got {r.triplane_size}")
        if self.superresolution not in SR_FACTORS:
            raise ConfigError(f"{self.name}: superresolution must be one of {sorted(SR_FACTORS)}, got {self.superresolution!r}")
        expected = r.neural_rendering_resolution * SR_FACTORS[self.superresolution]
        if expected != self.img_resolution:
            raise ConfigError(
                f"{self.name}: superresolution {self.superresolution} turns {r.neural_rendering_resolution}² into "
                f"{expected}², but img_resolution is {self.img_resolution}"
            )
        if r.decoder_activation not in ("sigmoid", "lrelu", "none"):
            raise ConfigError(f"{self.name}: unknown decoder_activation {r.decoder_activation!r}")
        if self.c_dim != 25:
            raise ConfigError(f"{self.name}: c_dim must be 25 (16 cam2world + 9 intrinsics), got {self.c_dim}")
        return self


SR_FACTORS = {"8XDC": 8, "4X": 4, "2X": 2, "none": 1}


def _small(name: str, **rendering_changes: Any) -> GeneratorConfig:
    return GeneratorConfig(
        name=name,
        z_dim=64,
        w_dim=64,
        img_resolution=128,
        mapping_layers=2,
        channel_base=2048,
        channel_max=64,
        sr_num_fp16_res=0,
        sr_channels=(32, 16),
        superresolution="2X",
        rendering=RenderingConfig(
            triplane_size=64,
            triplane_depth=3,
            depth_resolution=24,
            depth_resolution_importance=24,
            neural_rendering_resolution=64,
            **rendering_changes,
        ),
    )


PRESETS: dict[str, GeneratorConfig] = {
    # Matches the published PanoHead G_ema.
    "panohead": GeneratorConfig(),
    # PanoHead's structure at ~1/30 of the compute (the embedded pack's generator is its 32-d-latent variant).
    "small": _small("small"),
    # The embedded pack's trained generator: ``small`` with z_dim = 32, one latent entry per identity entry of
    # the procedural world (engine.world.latent), so no latent dimension is a nuisance the mapping must ignore.
    "pack": replace(_small("pack"), z_dim=32),
    # For unit tests: tiny everything, still every stage (background, ToRGB, SR) present.
    "tiny": GeneratorConfig(
        name="tiny",
        z_dim=32,
        w_dim=32,
        img_resolution=64,
        mapping_layers=2,
        channel_base=512,
        channel_max=32,
        sr_num_fp16_res=0,
        sr_channels=(16, 8),
        superresolution="2X",
        rendering=RenderingConfig(
            triplane_size=32,
            triplane_depth=2,
            depth_resolution=12,
            depth_resolution_importance=12,
            neural_rendering_resolution=32,
        ),
    ),
}


def get_preset(name: str) -> GeneratorConfig:
    try:
        return PRESETS[name].validate()
    except KeyError:
        raise ConfigError(f"unknown generator preset {name!r}; choose one of {sorted(PRESETS)}") from None
