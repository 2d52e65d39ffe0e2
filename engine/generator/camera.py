"""Cameras in the conventions PanoHead (and EG3D before it) was trained with.

A camera is a 25-vector ``c``: the row-major 4×4 cam2world matrix followed by the row-major 3×3 intrinsics.
The generator's mapping network is conditioned on ``c`` and the renderer shoots rays from it, so every
convention here must match the original exactly or renders come out skewed, shifted or mirrored:

* World: y is up; a head faces +z, so ``yaw = 0`` puts the camera on the +z axis looking at the face.
  Positive yaw moves the camera towards +x (the subject's left cheek comes into view).
* Camera frame: OpenCV, i.e. x to the right of the image, y down the image, z along the viewing direction.
* Intrinsics are normalised by the image size (principal point 0.5, 0.5), so one matrix serves every
  resolution.
* Placement reproduces PanoHead's ``LookAtPoseSampler.sample(π/2 + yaw, π/2 + pitch, pivot, radius)``: the
  camera sits on a sphere of ``radius`` around the *world origin* and turns to look at ``pivot``. With the
  default pivot (0, 0, 0.2) it is therefore 2.7 from the origin but about 2.5 from the pivot.
* ``pitch`` is PanoHead's pitch parameter, not an elevation angle: the sampler warps the polar angle with
  ``arccos`` (to be uniform on the sphere), which makes the camera height ``y = −radius · 2·pitch/π``.
  Negative pitch lifts the camera above the head; pitch is limited to just inside (−π/2, π/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, InputError
from .config import RenderingConfig

# Length of the camera conditioning vector: 16 (cam2world) + 9 (intrinsics).
CAMERA_VECTOR_DIM = 25

# Flattened cam2world entries whose sign flips under a reflection of the world about the x = 0 plane
# (see ``mirror_camera`` for the derivation): R01, R02, t_x, R10, R20.
MIRROR_SIGN_ENTRIES = (1, 2, 3, 4, 8)

# PanoHead's FOV_to_intrinsics rounds π and √2. Keeping the same rounding reproduces the camera vectors its
# scripts (and the stylization code) feed the generator: focal 4.26339 for 18.837°, where exact constants
# would give 4.26274.
_ROUNDED_PI = 3.14159
_ROUNDED_SQRT2 = 1.414

# Margin that keeps the polar angle off the poles, where "y is up" leaves the camera's roll undefined.
_POLE_MARGIN = 1e-5

# The turntable views used for previews: (name, yaw in degrees). Names are file-name safe.
NAMED_VIEW_YAWS_DEG: tuple[tuple[str, float], ...] = (
    ("front", 0.0),
    ("yaw+45", 45.0),
    ("yaw-45", -45.0),
    ("yaw+90", 90.0),
    ("yaw-90", -90.0),
    ("back", 180.0),
)


@dataclass(frozen=True)
class CameraConfig:
    """Where the orbit cameras sit and how wide they see (PanoHead's ``avg_camera_*`` and FOV)."""

    radius: float = 2.7
    fov_degrees: float = 18.837
    pivot: tuple[float, float, float] = (0.0, 0.0, 0.2)

    @classmethod
    def from_rendering(cls, rendering: RenderingConfig) -> "CameraConfig":
        """The camera a generator of this rendering config was trained around."""
        return cls(
            radius=rendering.avg_camera_radius,
            fov_degrees=rendering.fov_degrees,
            pivot=tuple(rendering.avg_camera_pivot),
        )


class CameraSet(NamedTuple):
    """A batch of cameras together with the angles that produced them (radians)."""

    c: Tensor  # (N, 25) camera vectors
    yaw: Tensor  # (N,)
    pitch: Tensor  # (N,)
    names: tuple[str, ...] | None = None  # set by ``named_views``


# --------------------------------------------------------------------------------------------------
# Intrinsics
# --------------------------------------------------------------------------------------------------
def fov_to_intrinsics(
    fov_degrees: float, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Normalised 3×3 intrinsics of a square pinhole camera with the principal point at the image centre.

    The focal length is in units of the image side, ``f = 1 / (tan(fov/2) · √2)``, with PanoHead's rounded
    π and √2 (so "fov" is measured across the image diagonal, as in the original).
    """
    fov = float(fov_degrees)
    if not (0.0 < fov < 180.0):
        raise ConfigError(f"fov_degrees must be in (0, 180), got {fov_degrees!r}")
    focal = 1.0 / (math.tan(fov * _ROUNDED_PI / 360.0) * _ROUNDED_SQRT2)
    return torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------
# Extrinsics
# --------------------------------------------------------------------------------------------------
def _as_batch(value: float | Tensor, name: str, device, dtype) -> Tensor:
    tensor = torch.as_tensor(value, device=device, dtype=dtype)
    if tensor.dim() > 1:
        raise InputError(f"{name} must be a scalar or a 1-D tensor, got shape {tuple(tensor.shape)}")
    return tensor.reshape(-1)


def _pick_dtype(*values: object) -> torch.dtype:
    """Follow the caller's floating dtype when they pass tensors; default to float32."""
    for value in values:
        if isinstance(value, Tensor) and value.is_floating_point():
            return value.dtype
    return torch.float32


def _pick_device(*values: object) -> torch.device | None:
    for value in values:
        if isinstance(value, Tensor):
            return value.device
    return None


def cam2world_looking_at(origins: Tensor, targets: Tensor) -> Tensor:
    """(N, 4, 4) OpenCV cam2world matrices for cameras at ``origins`` looking at ``targets`` without roll.

    Columns of the rotation are the camera's x (image right), y (image down) and z (viewing direction)
    axes in world coordinates; world +y is "up", so the image's y axis is the one that points down.
    """
    forward = torch.nn.functional.normalize(targets - origins, dim=-1)
    world_up = torch.zeros_like(forward)
    world_up[..., 1] = 1.0
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, world_up, dim=-1), dim=-1)
    down = torch.nn.functional.normalize(torch.linalg.cross(forward, right, dim=-1), dim=-1)

    cam2world = torch.zeros(origins.shape[0], 4, 4, dtype=origins.dtype, device=origins.device)
    cam2world[:, :3, 0] = right
    cam2world[:, :3, 1] = down
    cam2world[:, :3, 2] = forward
    cam2world[:, :3, 3] = origins
    cam2world[:, 3, 3] = 1.0
    return cam2world


def orbit_positions(yaw: Tensor, pitch: Tensor, radius: float | Tensor) -> Tensor:
    """(N, 3) camera centres on PanoHead's orbit sphere around the world origin (see module docstring)."""
    polar_parameter = (math.pi / 2 + pitch).clamp(_POLE_MARGIN, math.pi - _POLE_MARGIN)
    cos_polar = 1.0 - 2.0 * polar_parameter / math.pi  # cos(arccos(u)) == u: the sampler's warp
    sin_polar = torch.sqrt((1.0 - cos_polar * cos_polar).clamp_min(0.0))
    radius = torch.as_tensor(radius, dtype=yaw.dtype, device=yaw.device)
    # PanoHead writes x = r sinφ cos(π − θ), z = r sinφ sin(π − θ) with θ = π/2 + yaw; these are the same
    # numbers, written so that yaw → −yaw flips x exactly (the mirror tests rely on it).
    x = radius * sin_polar * torch.sin(yaw)
    z = radius * sin_polar * torch.cos(yaw)
    y = radius * cos_polar
    return torch.stack((x, y, z), dim=-1)


def look_at_cam2world(
    yaw: float | Tensor,
    pitch: float | Tensor,
    radius: float | Tensor = 2.7,
    pivot: Sequence[float] | Tensor = (0.0, 0.0, 0.2),
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """(N, 4, 4) cam2world for PanoHead-style yaw/pitch (radians), batched over broadcast yaw and pitch.

    Equivalent to ``LookAtPoseSampler.sample(π/2 + yaw, π/2 + pitch, pivot, radius)`` with zero spread.
    """
    dtype = dtype or _pick_dtype(yaw, pitch, radius, pivot)
    device = device if device is not None else _pick_device(yaw, pitch, radius, pivot)
    yaw_t, pitch_t = torch.broadcast_tensors(
        _as_batch(yaw, "yaw", device, dtype), _as_batch(pitch, "pitch", device, dtype)
    )
    pivot_t = torch.as_tensor(pivot, dtype=dtype, device=yaw_t.device)
    if pivot_t.shape[-1:] != (3,) or pivot_t.dim() > 2:
        raise InputError(f"pivot must have shape (3,) or (N, 3), got {tuple(pivot_t.shape)}")
    origins = orbit_positions(yaw_t, pitch_t, radius)
    return cam2world_looking_at(origins, pivot_t.expand_as(origins))


# --------------------------------------------------------------------------------------------------
# The 25-vector
# --------------------------------------------------------------------------------------------------
def camera_vector(cam2world: Tensor, intrinsics: Tensor) -> Tensor:
    """(N, 25) conditioning vectors from (N, 4, 4) cam2world and (3, 3) or (N, 3, 3) intrinsics."""
    if cam2world.dim() == 2:
        cam2world = cam2world.unsqueeze(0)
    if cam2world.shape[1:] != (4, 4):
        raise InputError(f"cam2world must have shape (N, 4, 4), got {tuple(cam2world.shape)}")
    if intrinsics.shape[-2:] != (3, 3) or intrinsics.dim() not in (2, 3):
        raise InputError(f"intrinsics must have shape (3, 3) or (N, 3, 3), got {tuple(intrinsics.shape)}")
    batch = cam2world.shape[0]
    intrinsics = intrinsics.to(cam2world).expand(batch, 3, 3)
    return torch.cat((cam2world.reshape(batch, 16), intrinsics.reshape(batch, 9)), dim=1)


def check_camera_vector(c: Tensor, name: str = "c") -> None:
    if c.dim() != 2 or c.shape[1] != CAMERA_VECTOR_DIM:
        raise InputError(f"{name} must be camera vectors of shape (N, 25), got {tuple(c.shape)}")


def split_camera_vector(c: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of ``camera_vector``: (N, 4, 4) cam2world and (N, 3, 3) intrinsics."""
    check_camera_vector(c)
    return c[:, :16].reshape(-1, 4, 4), c[:, 16:].reshape(-1, 3, 3)


def mirror_camera(c: Tensor) -> Tensor:
    """The camera reflected about the world's x = 0 plane: ``look_at(yaw)`` becomes ``look_at(−yaw)``.

    With S = diag(−1, 1, 1), the mirrored camera has rotation S·R·S and centre S·t. Reflecting the world
    alone would make the camera frame left-handed; conjugating also flips the camera's own x axis, so the
    result is a proper camera whose image is the horizontal flip of the original's image of the mirrored
    scene. Entry (i, j) of S·R·S is R_ij · s_i · s_j, negative exactly when one index is 0: R01, R02, R10,
    R20, plus t_x — flat indices 1, 2, 4, 8 and 3 of the 25-vector. Intrinsics stay as they are, which is
    exact for PanoHead's centred principal point and zero skew (a general camera would also need
    cx → 1 − cx and skew → −skew). The stylization code mirrors cameras with the same five sign flips.
    """
    check_camera_vector(c)
    signs = torch.ones(CAMERA_VECTOR_DIM, dtype=c.dtype, device=c.device)
    signs[list(MIRROR_SIGN_ENTRIES)] = -1.0
    return c * signs


# --------------------------------------------------------------------------------------------------
# Camera sets
# --------------------------------------------------------------------------------------------------
def cameras_at(
    yaw: Tensor | float,
    pitch: Tensor | float,
    config: CameraConfig = CameraConfig(),
    names: tuple[str, ...] | None = None,
) -> CameraSet:
    """A ``CameraSet`` for given yaw/pitch (radians, floats or tensors, broadcast to 1-D) around ``config``'s orbit."""
    yaw = torch.as_tensor(yaw, dtype=torch.float32) if not isinstance(yaw, Tensor) else yaw
    pitch = torch.as_tensor(pitch, dtype=yaw.dtype, device=yaw.device) if not isinstance(pitch, Tensor) else pitch
    yaw, pitch = torch.broadcast_tensors(yaw.reshape(-1), pitch.reshape(-1))
    cam2world = look_at_cam2world(yaw, pitch, config.radius, config.pivot)
    intrinsics = fov_to_intrinsics(config.fov_degrees, device=yaw.device, dtype=yaw.dtype)
    return CameraSet(camera_vector(cam2world, intrinsics), yaw.clone(), pitch.clone(), names)


def _check_range(bounds: Sequence[float], name: str) -> tuple[float, float]:
    if len(bounds) != 2 or not float(bounds[0]) <= float(bounds[1]):
        raise ConfigError(f"{name} must be (low, high) with low ≤ high, got {tuple(bounds)!r}")
    return float(bounds[0]), float(bounds[1])


def sample_cameras(
    n: int,
    yaw_range: Sequence[float] = (-math.pi / 3, math.pi / 3),
    pitch_range: Sequence[float] = (-math.pi / 6, math.pi / 6),
    generator: torch.Generator | None = None,
    config: CameraConfig = CameraConfig(),
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> CameraSet:
    """``n`` cameras with yaw and pitch drawn independently and uniformly from the given ranges (radians).

    The defaults are the stylization paper's single-view ranges. Yaw is drawn before pitch, both from
    ``generator`` (on the generator's own device, then moved) so a seed gives the same cameras anywhere.
    """
    if n < 1:
        raise ConfigError(f"sample_cameras: n must be ≥ 1, got {n}")
    yaw_lo, yaw_hi = _check_range(yaw_range, "yaw_range")
    pitch_lo, pitch_hi = _check_range(pitch_range, "pitch_range")
    draw_device = generator.device if generator is not None else device
    unit = torch.rand(2, n, generator=generator, device=draw_device, dtype=dtype).to(device)
    yaw = yaw_lo + (yaw_hi - yaw_lo) * unit[0]
    pitch = pitch_lo + (pitch_hi - pitch_lo) * unit[1]
    return cameras_at(yaw, pitch, config)


def orbit_cameras(
    n_views: int,
    pitch: float = 0.0,
    config: CameraConfig = CameraConfig(),
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> CameraSet:
    """A 360° turntable: ``n_views`` yaws 2πk/n (k = 0 … n−1) starting at the front, all at one pitch."""
    if n_views < 1:
        raise ConfigError(f"orbit_cameras: n_views must be ≥ 1, got {n_views}")
    yaw = torch.arange(n_views, device=device, dtype=dtype) * (2.0 * math.pi / n_views)
    return cameras_at(yaw, torch.full_like(yaw, float(pitch)), config)


def named_views(
    pitch: float = 0.0,
    config: CameraConfig = CameraConfig(),
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> CameraSet:
    """Front (0°), ±45°, ±90° and back (180°), named as in ``NAMED_VIEW_YAWS_DEG``."""
    names = tuple(name for name, _ in NAMED_VIEW_YAWS_DEG)
    yaw = torch.tensor([math.radians(deg) for _, deg in NAMED_VIEW_YAWS_DEG], device=device, dtype=dtype)
    return cameras_at(yaw, torch.full_like(yaw, float(pitch)), config, names)
