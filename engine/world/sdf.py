"""Signed distance field of a procedural head, driven by the identity vector.

The head is a smooth union of simple primitives (ellipsoids, capsules, a rounded box) laid out in a *local*
frame measured in centimetres of a real head: origin near the centre of the skull, x towards the subject's
left (the generator's +x), y up, z out of the face. World points (the generator's frame, where the tri-grid
spans [-0.5, 0.5]³ and the head faces +z) map to it by ``local = (world − HEAD_ORIGIN) / WORLD_UNITS_PER_CM``;
distances scale back by ``WORLD_UNITS_PER_CM``.

Why this construction:

* **Vectorised and batched.** Every primitive works on whole (B, M) coordinate tensors with (B, 1) per-head
  parameters, so a batch of heads × points is one pass of ~200 element-wise kernels; the renderer gathers
  per-ray parameters (B = rays, M = 1) to march only the rays still active.
* **Mirror symmetry is exact.** Paired features (eyes, ears, jaw sides, …) are evaluated once on the folded
  coordinate ``|x|``; the identity's ``asymmetry`` only enters through offsets multiplied by the side sign
  ``s = sign(x)``. With asymmetry 0 the field is bit-for-bit symmetric, and asymmetry −a is the mirror of +a.
* **Materials come from the same pieces.** :func:`head_sdf` optionally labels every point with the material
  of the nearest part (skin, hair, eyeball regions, lips, eyebrows, clothing), which the shaders colour.

The field is a good *bound* rather than an exact distance (ellipsoid distance approximations, smooth
blends, wavy hair), so sphere tracing uses a step factor below 1 (see :mod:`engine.world.render`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Callable

import torch
from torch import Tensor

from ..errors import InputError
from .identity import PhysicalIdentity, check_identity, to_physical

# One centimetre of the real head in the generator's world units: a 23 cm crown-to-chin head spans about
# 0.37 units, which frames it like PanoHead's crops at radius 2.7 / FOV 18.837° (top of the hair near the
# top of the image, chin about two thirds down, neck and the top of the shoulders at the bottom).
WORLD_UNITS_PER_CM = 0.016

# World position of the local frame's origin (roughly the centre of the cranium).
HEAD_ORIGIN = (0.0, 0.08, -0.01)

# World-space box that contains every head the identity space (and the styles' exaggerations) can produce.
# It sits inside PanoHead's density crop (|x|, |z| ≤ 0.4) and the tri-grid box (|y| ≤ 0.5); the torso is
# cut flat at its bottom face so the surface is closed inside the box.
HEAD_BOUNDS = ((-0.39, -0.47, -0.39), (0.39, 0.40, 0.39))

# Local (cm) height of the flat cut under the torso: the bottom face of HEAD_BOUNDS.
_TORSO_CUT_Y = (HEAD_BOUNDS[0][1] - HEAD_ORIGIN[1]) / WORLD_UNITS_PER_CM

# Tighter shapes (local frame, cm) that together enclose every head of the identity space, including the
# styles' reshapes: the cranium with the largest hair, and boxes around the lower face + neck + long hair
# and around the shoulders. The renderer marches only where a ray crosses one of them, which skips most of
# the empty space of HEAD_BOUNDS. tests/engine/world/test_world.py checks the enclosure on extreme identities.
BOUNDING_ELLIPSOID = ((0.0, 1.5, -0.8), (12.5, 15.0, 16.0))  # (centre, radii)
BOUNDING_BOXES = (
    ((-12.5, -25.0, -15.0), (12.5, -2.5, 13.0)),
    ((-16.0, _TORSO_CUT_Y - 0.5, -15.0), (16.0, -19.0, 7.0)),
)


class Material(IntEnum):
    """Surface labels the shaders colour. Values are stable (stored in material images)."""

    SKIN = 0
    HAIR = 1
    SCLERA = 2
    IRIS = 3
    PUPIL = 4
    LIPS = 5
    BROW = 6
    CLOTH = 7


NUM_MATERIALS = len(Material)


# --------------------------------------------------------------------------------------------------
# Primitives. All take coordinate tensors that broadcast against their parameters and return distances.
# --------------------------------------------------------------------------------------------------
def sd_ellipsoid(x: Tensor, y: Tensor, z: Tensor, rx, ry, rz) -> Tensor:
    """Approximate distance to an axis-aligned ellipsoid centred at the origin (exact on the surface).

    Uses ``k0·(k0 − 1)/k1`` with ``k0 = |p/r|`` and ``k1 = |p/r²|``: the first-order distance from the
    implicit function's value and gradient, accurate near the surface and never far too large away from it.
    """
    ax, ay, az = x / rx, y / ry, z / rz
    k0 = torch.sqrt(ax * ax + ay * ay + az * az)
    bx, by, bz = ax / rx, ay / ry, az / rz
    k1 = torch.sqrt(bx * bx + by * by + bz * bz).clamp_min(1e-9)
    return k0 * (k0 - 1.0) / k1


def sd_sphere(x: Tensor, y: Tensor, z: Tensor, r) -> Tensor:
    return torch.sqrt(x * x + y * y + z * z) - r


def sd_capsule(x: Tensor, y: Tensor, z: Tensor, a: tuple, b: tuple, r1, r2=None) -> Tensor:
    """Distance to the segment a→b thickened by a radius that goes linearly from ``r1`` to ``r2``.

    With ``r2 ≠ r1`` this is a tapered capsule whose distance is slightly underestimated (a safe bound for
    the small tapers used here). ``a`` and ``b`` are (x, y, z) triples of tensors or floats.
    """
    bax, bay, baz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    pax, pay, paz = x - a[0], y - a[1], z - a[2]
    inv_len2 = 1.0 / (bax * bax + bay * bay + baz * baz)
    h = ((pax * bax + pay * bay + paz * baz) * inv_len2).clamp(0.0, 1.0)
    dx, dy, dz = pax - bax * h, pay - bay * h, paz - baz * h
    dist = torch.sqrt(dx * dx + dy * dy + dz * dz)
    if r2 is None:
        return dist - r1
    return dist - (r1 + (r2 - r1) * h)


def sd_round_box(x: Tensor, y: Tensor, z: Tensor, half: tuple, rounding: float) -> Tensor:
    """Distance to an axis-aligned box of half-extents ``half`` with edges rounded by ``rounding``."""
    qx = x.abs() - (half[0] - rounding)
    qy = y.abs() - (half[1] - rounding)
    qz = z.abs() - (half[2] - rounding)
    outside = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2 + qz.clamp_min(0) ** 2)
    inside = torch.maximum(qx, torch.maximum(qy, qz)).clamp_max(0)
    return outside + inside - rounding


def smooth_union(a: Tensor, b: Tensor, k) -> Tensor:
    """Polynomial smooth minimum: equals ``min(a, b)`` when they differ by more than ``k``, blends within."""
    h = (k - (a - b).abs()).clamp_min(0.0) / k
    return torch.minimum(a, b) - h * h * (0.25 * k)


def smooth_subtract(a: Tensor, b: Tensor, k) -> Tensor:
    """``a`` with ``b`` carved out, the crease rounded over ``k``."""
    return -smooth_union(-a, b, k)


def smooth_intersect(a: Tensor, b: Tensor, k) -> Tensor:
    return -smooth_union(-a, -b, k)


# --------------------------------------------------------------------------------------------------
# Per-head parameters
# --------------------------------------------------------------------------------------------------
# Names of the per-head scalars the field reads, in packing order. Built by ``_derive_parameters``.
_PARAMETER_NAMES: tuple[str, ...] = (
    "asym",
    # cranium and face mass
    "skull_cy", "skull_cz", "skull_rx", "skull_ry", "skull_rz",
    "face_cy", "face_rx", "face_ry",
    "jaw_ax", "jaw_ay", "jaw_bx", "jaw_by", "jaw_bz",
    "chin_cy", "chin_cz",
    "cheek_s",
    "brow_r",
    # eyes
    "eye_cx", "eye_cy", "eye_cz", "eye_r", "eye_open",
    # nose
    "nose_ty", "nose_tz", "nose_w", "nose_r1",
    # mouth
    "lip_up_y", "lip_lo_y", "lip_rx", "lip_t", "mouth_y",
    # ears, neck
    "ear_cx", "ear_cy", "ear_cos", "ear_sin", "ear_s",
    "neck_r",
    # hair
    "hair_t", "hair_front", "hair_side", "hair_back", "hair_top", "hair_curl",
    "curtain_cy", "curtain_rx", "curtain_ry", "curtain_rz",
    # eyebrows (painted)
    "eyebrow_t",
)
_PARAMETER_INDEX = {name: i for i, name in enumerate(_PARAMETER_NAMES)}
NUM_GEOMETRY_PARAMETERS = len(_PARAMETER_NAMES)

# Fixed layout constants (cm, local frame) that identities do not change.
_SKULL_FRONT_Z = 9.0
_BROW_Y = -0.5  # lower-face heights scale about this level with face_length
_NOSE_ROOT = (0.0, -1.3, 8.55)
_EYE_GAZE_CONVERGENCE = 0.06  # eyes turn slightly inward (x component of the gaze, folded side)
_IRIS_COS = 0.83  # cos of the iris' angular radius seen from the eyeball centre
_PUPIL_COS = 0.965
_HAIR_STEP_SCALE = 0.7  # keeps the wavy / cut hair field a bound (its gradient can exceed 1)


def _derive_parameters(p: PhysicalIdentity) -> dict[str, Tensor]:
    """Turn physical identity values into the per-head numbers the field reads (cm, local frame)."""

    def lower(y0: float) -> Tensor:  # heights below the brow stretch with face_length
        return _BROW_Y + (y0 - _BROW_Y) * p["face_length"]

    sw, sh, sd = p["skull_width"], p["skull_height"], p["skull_depth"]

    def constant(value: float) -> Tensor:  # the same for every head, kept per head for the shaders
        return torch.full_like(sw, value)

    out: dict[str, Tensor] = {"asym": p["asymmetry"]}
    out["skull_rx"], out["skull_ry"], out["skull_rz"] = 7.2 * sw, 8.5 * sh, 9.6 * sd
    out["skull_cy"] = constant(0.6)
    out["skull_cz"] = _SKULL_FRONT_Z - out["skull_rz"]

    jaw = p["jaw_width"]
    out["face_cy"], out["face_rx"], out["face_ry"] = lower(-4.6), 6.2 * (0.55 + 0.45 * jaw), 7.4 * p["face_length"]
    out["jaw_ax"], out["jaw_ay"] = 5.2 * jaw * (0.5 + 0.5 * sw), lower(-7.8)
    out["jaw_bx"] = constant(2.1)
    out["jaw_by"] = lower(-10.9) - 0.6 * p["chin_length"]
    out["jaw_bz"] = 5.3 + 0.5 * p["chin_protrusion"]
    out["chin_cy"] = lower(-11.7) - p["chin_length"]
    out["chin_cz"] = 6.3 + p["chin_protrusion"]
    out["cheek_s"] = p["cheekbones"]
    out["brow_r"] = 0.95 * p["brow_ridge"]

    out["eye_cx"] = 3.15 * p["eye_spacing"]
    out["eye_cy"] = constant(-2.0)
    out["eye_r"] = 1.15 * p["eye_size"]
    out["eye_cz"] = 6.5 - p["eye_depth"]
    out["eye_open"] = 0.46 * p["eye_size"]

    out["nose_ty"] = _NOSE_ROOT[1] - 4.9 * p["nose_length"] * p["face_length"]
    out["nose_tz"] = 10.5 + p["nose_protrusion"]
    out["nose_w"] = p["nose_width"]
    out["nose_r1"] = 0.55 + 0.1 * (p["nose_width"] - 1.0)

    out["lip_up_y"] = lower(-8.2)
    out["lip_lo_y"] = lower(-9.2)
    out["mouth_y"] = lower(-8.68)
    out["lip_rx"] = 2.3 * p["mouth_width"]
    out["lip_t"] = p["lip_thickness"]

    out["ear_cx"] = 7.0 * sw + 0.2
    out["ear_cy"] = constant(-1.8)
    angle = torch.deg2rad(p["ear_angle"])
    out["ear_cos"], out["ear_sin"] = torch.cos(angle), torch.sin(angle)
    out["ear_s"] = p["ear_size"]
    out["neck_r"] = 5.8 * p["neck_width"]

    t = p["hair_volume"]
    out["hair_t"] = t
    out["hair_front"] = 4.6 - 3.4 * p["hair_fringe"]
    out["hair_side"] = constant(1.6)
    out["hair_back"] = constant(-6.5)
    out["hair_top"] = p["hair_top"]
    out["hair_curl"] = p["hair_curl"]
    length = p["hair_length"]
    grow = (length / 5.0).clamp(0.0, 1.0)  # short hair keeps the curtain inside the skull (ears stay visible)
    bottom = -6.5 - length
    out["curtain_cy"] = 0.5 * (3.5 + bottom)
    out["curtain_ry"] = 0.5 * (3.5 - bottom)
    out["curtain_rx"] = 0.88 * out["skull_rx"] + (0.95 * t + 1.3) * grow
    out["curtain_rz"] = 0.86 * out["skull_rz"] + (0.9 * t + 0.6) * grow
    out["eyebrow_t"] = p["eyebrow_thickness"]
    return out


@dataclass(frozen=True)
class HeadGeometry:
    """Per-head field parameters packed as one (N, P) tensor, so a renderer can gather them per ray."""

    packed: Tensor

    @classmethod
    def from_physical(cls, physical: PhysicalIdentity) -> "HeadGeometry":
        derived = _derive_parameters(physical)
        return cls(torch.stack([derived[name] for name in _PARAMETER_NAMES], dim=1))

    @classmethod
    def from_identity(cls, identity: Tensor) -> "HeadGeometry":
        return cls.from_physical(to_physical(check_identity(identity)))

    def __len__(self) -> int:
        return int(self.packed.shape[0])

    def take(self, index: Tensor) -> "HeadGeometry":
        """The parameters of heads ``index`` (e.g. one row per ray)."""
        return HeadGeometry(self.packed.index_select(0, index))

    def column(self, name: str) -> Tensor:
        """(N,) values of one derived parameter (for shaders that need e.g. the eye centres)."""
        return self.packed[:, _PARAMETER_INDEX[name]]


class _Params:
    """Attribute view ``g.eye_r`` → (B, 1) column of the packed parameters, broadcasting over points."""

    def __init__(self, packed: Tensor):
        self._cols = packed.t().contiguous().unsqueeze(-1).unbind(0)  # each (B, 1), contiguous

    def __getattr__(self, name: str) -> Tensor:
        return self._cols[_PARAMETER_INDEX[name]]


# --------------------------------------------------------------------------------------------------
# The field
# --------------------------------------------------------------------------------------------------
@dataclass
class _Parts:
    """Distances of the head's parts (cm) at the query points, before they are merged."""

    skin: Tensor  # everything skin-coloured, eyelids included
    hair: Tensor
    eyes: Tensor
    cloth: Tensor
    lips: Tensor  # lip primitives alone (for painting)


def _side_fold(x: Tensor) -> tuple[Tensor, Tensor]:
    """Folded coordinate |x| and side sign s (+1 on the x ≥ 0 side, −1 on the other)."""
    side = torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))
    return x.abs(), side


def _face_and_skull(x, y, z, xf, side, g: _Params) -> tuple[Tensor, Tensor]:
    """Skin surface of cranium, face, features, ears and neck; also the raw lip distance for painting."""
    asym = g.asym * side
    skull = sd_ellipsoid(x, y - g.skull_cy, z - g.skull_cz, g.skull_rx, g.skull_ry, g.skull_rz)
    face = sd_ellipsoid(x, y - g.face_cy, z - 2.4, g.face_rx, g.face_ry, 6.8)
    d = smooth_union(skull, face, 2.5)

    # Jaw: the body of the mandible from its angle to the chin, and the ramus up towards the ear.
    gonion = (g.jaw_ax * (1.0 + 0.035 * asym), g.jaw_ay, -0.4)
    jaw = sd_capsule(xf, y, z, gonion, (g.jaw_bx, g.jaw_by, g.jaw_bz), 1.7)
    ramus = sd_capsule(xf, y, z, gonion, (0.88 * g.skull_rx - 0.7, -3.2, 0.4), 1.2)
    d = smooth_union(d, smooth_union(jaw, ramus, 1.0), 2.0)
    chin = sd_ellipsoid(x, y - g.chin_cy, z - g.chin_cz, 2.5, 1.8, 2.0)
    d = smooth_union(d, chin, 1.8)
    cheek = sd_ellipsoid(xf - 4.5, y + 3.0, z - 5.5, 2.2 * g.cheek_s, 1.5 * g.cheek_s, 2.0 * g.cheek_s)
    d = smooth_union(d, cheek, 1.6)
    brow = sd_capsule(xf, y, z, (0.7, -0.15, 8.65), (4.6, 0.05, 6.85), g.brow_r)
    d = smooth_union(d, brow, 1.4)

    # Eye sockets, then eyelids: a shell around the eyeball opened by an almond-shaped horizontal band.
    eye_y = g.eye_cy + 0.12 * asym
    ex, ey, ez = xf - g.eye_cx, y - eye_y, z - g.eye_cz
    socket = sd_ellipsoid(ex, ey - 0.1, z - g.eye_cz - 1.45, 1.95, 1.4, 1.25)
    d = smooth_subtract(d, socket, 0.8)
    opening = g.eye_open * (1.0 - (ex / (1.35 * g.eye_r)) ** 2) - (ey - 0.08 - 0.12 * ex / g.eye_r).abs()
    lids = torch.maximum(sd_sphere(ex, ey, ez, g.eye_r + 0.13), 0.8 * opening)
    d = smooth_union(d, lids, 0.35)

    # Nose: tapered bridge, round tip, wings.
    tip_x = 0.3 * g.asym
    nose = sd_capsule(x, y, z, _NOSE_ROOT, (tip_x, g.nose_ty + 0.3, g.nose_tz - 0.25), g.nose_r1, 0.78 * g.nose_w)
    tip = sd_ellipsoid(x - tip_x, y - g.nose_ty, z - g.nose_tz, 1.0 * g.nose_w, 0.82, 0.85)
    nose = smooth_union(nose, tip, 0.6)
    wings = sd_ellipsoid(
        xf - 1.15 * g.nose_w, y - g.nose_ty + 0.2, z - g.nose_tz + 1.15, 0.8 * g.nose_w, 0.62, 0.8
    )
    nose = smooth_union(nose, wings, 0.5)
    d = smooth_union(d, nose, 0.7)

    # Mouth: two lips and the crease between them.
    upper = sd_ellipsoid(x, y - g.lip_up_y, z - 8.4, g.lip_rx, 0.48 * g.lip_t, 0.95)
    lower = sd_ellipsoid(x, y - g.lip_lo_y, z - 8.1, 0.88 * g.lip_rx, 0.66 * g.lip_t, 0.95)
    lips = torch.minimum(upper, lower)
    d = smooth_union(d, lips, 0.6)
    crease = sd_ellipsoid(x, y - g.mouth_y - 0.04 * asym * xf, z - 9.1, 1.06 * g.lip_rx, 0.12, 1.5)
    d = smooth_subtract(d, crease, 0.25)

    # Ears: flat ellipsoids turned out by ear_angle about the vertical axis, with a hollow (concha).
    qx, qy, qz = xf - g.ear_cx, y - g.ear_cy - 0.25 * asym, z + 0.9
    ux = g.ear_cos * qx + g.ear_sin * qz  # ear-local "thickness" axis
    uz = -g.ear_sin * qx + g.ear_cos * qz
    ear = sd_ellipsoid(ux + 0.1, qy, uz, 0.55, 2.9 * g.ear_s, 1.75 * g.ear_s)
    concha = sd_ellipsoid(ux - 0.45, qy + 0.25, uz - 0.15, 0.42, 1.45 * g.ear_s, 0.9 * g.ear_s)
    ear = smooth_subtract(ear, concha, 0.3)
    d = smooth_union(d, ear, 0.5)

    neck = sd_capsule(x, y, z, (0.0, -7.0, -1.6), (0.0, -24.0, -2.2), g.neck_r)
    d = smooth_union(d, neck, 2.5)
    return d, lips


def _torso(x, y, z) -> Tensor:
    """Top of the shoulders, cut flat at the bounding box's floor so the surface closes inside the box."""
    box = sd_round_box(x, y + 28.5, z + 2.4, (15.5, 7.5, 8.5), 4.5)
    return torch.maximum(box, _TORSO_CUT_Y - y)


def _hair(x, y, z, side, g: _Params) -> Tensor:
    """Hair: a thickened skull cap cut at the hairline, a quiff, a curtain of long hair and surface waves."""
    t = g.hair_t
    cap = sd_ellipsoid(
        x, y - g.skull_cy - 0.35 * t, z - g.skull_cz + 0.15 * t,
        g.skull_rx + t, g.skull_ry + 1.1 * t, g.skull_rz + t,
    )
    top = sd_ellipsoid(x, y - 7.0 * g.skull_ry / 8.5 - 0.5 * t, z - 2.3, 5.0, 0.3 + 2.6 * g.hair_top, 5.4)
    cap = smooth_union(cap, top, 1.5)

    # Hairline height as a function of the direction around the vertical axis: front, sides, back.
    cz = z - g.skull_cz
    facing = cz * torch.rsqrt(x * x + cz * cz + 1e-6)  # +1 front, 0 sides, −1 back
    front = g.hair_front + 1.2 * g.asym * torch.tanh(0.5 * x)  # the fringe dips on one side (a parting)
    hairline = g.hair_side + (front - g.hair_side) * facing.clamp_min(0) ** 1.5 + (
        g.hair_back - g.hair_side
    ) * (-facing).clamp_min(0)
    cap = smooth_intersect(cap, 0.6 * (hairline - y), 0.9)

    curtain = sd_ellipsoid(x, y - g.curtain_cy, z + 1.8, g.curtain_rx, g.curtain_ry, g.curtain_rz)
    curtain = smooth_intersect(curtain, z - 1.6, 1.0)
    hair = smooth_union(cap, curtain, 1.5)

    # Waves along oblique directions with incommensurate frequencies, so they read as locks, not a grid.
    xf = x.abs()  # folded, so the pattern is mirror-symmetric like the rest of the head
    waves = torch.sin(1.3 * xf + 0.8 * z + 1.6 * torch.sin(0.7 * y)) * torch.sin(1.1 * y - 0.9 * xf + 0.5 * z)
    return _HAIR_STEP_SCALE * (hair + 0.3 * g.hair_curl * waves)


def _eyeballs(xf, y, z, side, g: _Params) -> Tensor:
    return sd_sphere(xf - g.eye_cx, y - g.eye_cy - 0.12 * g.asym * side, z - g.eye_cz, g.eye_r)


def _parts(local: Tensor, g: _Params) -> _Parts:
    x, y, z = local.unbind(-1)
    xf, side = _side_fold(x)
    skin, lips = _face_and_skull(x, y, z, xf, side, g)
    return _Parts(
        skin=skin,
        hair=_hair(x, y, z, side, g),
        eyes=_eyeballs(xf, y, z, side, g),
        cloth=_torso(x, y, z),
        lips=lips,
    )


def _merge(parts: _Parts) -> Tensor:
    body = smooth_union(parts.skin, parts.cloth, 3.0)
    return torch.minimum(torch.minimum(body, parts.hair), parts.eyes)


def world_to_local(points: Tensor) -> Tensor:
    """World points (…, 3) → local head frame in centimetres."""
    origin = torch.tensor(HEAD_ORIGIN, dtype=points.dtype, device=points.device)
    return (points - origin) * (1.0 / WORLD_UNITS_PER_CM)


def local_to_world(points: Tensor) -> Tensor:
    origin = torch.tensor(HEAD_ORIGIN, dtype=points.dtype, device=points.device)
    return points * WORLD_UNITS_PER_CM + origin


def geometry_distance(points: Tensor, geometry: HeadGeometry) -> Tensor:
    """(B, M) world-unit distance bound at world points (B, M, 3) for the B heads of ``geometry``.

    The fast path the sphere tracer calls: no materials.
    """
    g = _Params(geometry.packed.to(points.dtype))
    return _merge(_parts(world_to_local(points), g)) * WORLD_UNITS_PER_CM


def _paint_eyebrows(x: Tensor, y: Tensor, z: Tensor, g: _Params) -> Tensor:
    """Boolean: is this point of the brow-ridge skin inside a painted eyebrow?"""
    xf, side = _side_fold(x)
    h = ((xf - 1.1) / 3.8).clamp(0.0, 1.0)  # 0 at the inner end, 1 at the outer end
    centre_y = -0.1 + 0.75 * h - 0.55 * h * h + 0.55 + 0.12 * g.asym * side
    half_height = g.eyebrow_t * (1.0 - 0.45 * h)
    in_band = (y - centre_y).abs() < half_height
    in_span = (xf > 0.9) & (xf < 5.3)
    in_front = z > g.skull_cz + 0.55 * g.skull_rz
    return in_band & in_span & in_front


def _eye_regions(x: Tensor, y: Tensor, z: Tensor, g: _Params) -> Tensor:
    """Material of eyeball points from the angle to the (slightly converging) gaze direction."""
    xf, side = _side_fold(x)
    ex, ey, ez = xf - g.eye_cx, y - g.eye_cy - 0.12 * g.asym * side, z - g.eye_cz
    norm = torch.sqrt(ex * ex + ey * ey + ez * ez).clamp_min(1e-6)
    gaze_x, gaze_z = -_EYE_GAZE_CONVERGENCE, math.sqrt(1.0 - _EYE_GAZE_CONVERGENCE**2)
    cos = (ex * gaze_x + ez * gaze_z) / norm
    label = torch.full_like(x, int(Material.SCLERA), dtype=torch.long)
    label = torch.where(cos > _IRIS_COS, torch.full_like(label, int(Material.IRIS)), label)
    return torch.where(cos > _PUPIL_COS, torch.full_like(label, int(Material.PUPIL)), label)


def geometry_sdf_and_material(points: Tensor, geometry: HeadGeometry) -> tuple[Tensor, Tensor]:
    """(B, M) distance (world units) and (B, M) int64 material ids at world points (B, M, 3)."""
    g = _Params(geometry.packed.to(points.dtype))
    local = world_to_local(points)
    parts = _parts(local, g)
    distance = _merge(parts) * WORLD_UNITS_PER_CM
    x, y, z = local.unbind(-1)

    skin_like = torch.minimum(parts.skin, parts.cloth)
    material = torch.full(distance.shape, int(Material.SKIN), dtype=torch.long, device=points.device)
    material = torch.where(parts.cloth < parts.skin - 0.4, torch.full_like(material, int(Material.CLOTH)), material)
    material = torch.where(
        (parts.lips < 0.12) & (material == int(Material.SKIN)), torch.full_like(material, int(Material.LIPS)), material
    )
    material = torch.where(
        _paint_eyebrows(x, y, z, g) & (material == int(Material.SKIN)), torch.full_like(material, int(Material.BROW)),
        material,
    )
    hair_wins = parts.hair < torch.minimum(skin_like, parts.eyes)
    material = torch.where(hair_wins, torch.full_like(material, int(Material.HAIR)), material)
    eye_wins = parts.eyes < torch.minimum(skin_like, parts.hair)
    material = torch.where(eye_wins, _eye_regions(x, y, z, g), material)
    return distance, material


def _check_points(points: Tensor, batch: int) -> None:
    if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise InputError(f"points must have shape (N, M, 3), got {shape}")
    if points.shape[0] != batch:
        raise InputError(f"points batch {points.shape[0]} does not match identity batch {batch}")
    if not points.is_floating_point():
        raise InputError(f"points must be a floating tensor, got {points.dtype}")


def head_sdf(
    points: Tensor, identity: Tensor, *, transform: Callable[[PhysicalIdentity], PhysicalIdentity] | None = None
) -> tuple[Tensor, Tensor]:
    """Signed distance (N, M) in world units and material id (N, M) int64 of N heads at world points (N, M, 3).

    Negative inside. ``identity`` is (N, D) in the normalised identity space; ``transform`` optionally
    reshapes the physical identity first (a style's exaggeration, see :mod:`engine.world.styles`).
    """
    identity = check_identity(identity)
    _check_points(points, identity.shape[0])
    physical = to_physical(identity.to(points))
    if transform is not None:
        physical = transform(physical)
    with torch.no_grad():
        return geometry_sdf_and_material(points, HeadGeometry.from_physical(physical))
