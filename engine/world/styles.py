"""Looks of the procedural head world: the same identity as a photo, a statue, a zombie, a cartoon, …

A :class:`Style` is two functions: ``reshape`` edits the physical identity before the field is built (a
cartoon's big eyes and small chin; most styles leave it alone, so their silhouettes match the photo's) and
``shade`` turns a :class:`SurfaceBuffer` — per-pixel position, normal, material, occlusion, the lights —
into linear RGB. :data:`STYLES` maps names to styles and carries the text prompt of each, which the
stylization tests use as the "target" a distilled generator should move towards.

Everything here is plain tensor maths over whole images; procedural textures (marble veins, zombie
blotches, hair strands) come from a small hashed 3-D value noise evaluated at the surface point in the
head's local frame, so they stick to the head as the camera moves. Photo-style textures are evaluated at
``|x|`` so that a symmetric identity renders exactly mirror-symmetric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .identity import PhysicalIdentity
from .sdf import HeadGeometry, Material


# --------------------------------------------------------------------------------------------------
# Shading inputs
# --------------------------------------------------------------------------------------------------
def _unit(*xyz: float) -> tuple[float, float, float]:
    norm = math.sqrt(sum(v * v for v in xyz))
    return tuple(v / norm for v in xyz)  # type: ignore[return-value]


@dataclass(frozen=True)
class Lighting:
    """Studio lights fixed to the camera: directions *towards* the lights in OpenCV camera space.

    (x right, y down, z forward, so "up and to the camera's left, in front of the face" is (−, −, −).) Lights
    move with the camera, like a photographer's, so every view of a head is lit the same way.
    ``mirrored()`` is the lighting of the mirrored camera (x components negated).
    """

    key: tuple[float, float, float] = _unit(-0.55, -0.6, -0.6)
    key_intensity: float = 1.0
    fill: tuple[float, float, float] = _unit(0.75, -0.1, -0.65)
    fill_intensity: float = 0.35
    rim: tuple[float, float, float] = _unit(0.25, -0.55, 0.8)
    rim_intensity: float = 0.45
    sky: float = 0.32  # ambient from above (world up)
    ground: float = 0.12  # ambient from below
    # Scales the view-dependent terms (highlights, and the photo rim / statue sheen). 0 gives a matte look
    # whose colour at a surface point does not depend on the view: with head-fixed lights
    # (``render_heads(light_cameras=…)``) that is what a view-independent radiance field can reproduce.
    gloss: float = 1.0

    def mirrored(self) -> "Lighting":
        flip = lambda v: (-v[0], v[1], v[2])  # noqa: E731
        return replace(self, key=flip(self.key), fill=flip(self.fill), rim=flip(self.rim))

    @property
    def intensities(self) -> tuple[float, float, float]:
        return (self.key_intensity, self.fill_intensity, self.rim_intensity)

    def world_directions(self, cam2world: Tensor) -> Tensor:
        """(N, 3, 3) world directions of key, fill and rim for cameras (N, 4, 4)."""
        local = torch.tensor([self.key, self.fill, self.rim], dtype=cam2world.dtype, device=cam2world.device)
        return torch.einsum("nij,lj->nli", cam2world[:, :3, :3], local)


@dataclass
class SurfaceBuffer:
    """Per-pixel surface attributes of N rendered heads; images are (N, R, R[, 3]).

    ``position`` is in world units, ``local`` in the head's centimetre frame, ``normal`` points outward,
    ``view`` points from the surface towards the camera. Where ``alpha`` is 0 the attributes are zeros.
    """

    alpha: Tensor
    depth: Tensor
    position: Tensor
    local: Tensor
    normal: Tensor
    view: Tensor
    material: Tensor
    occlusion: Tensor
    light_directions: Tensor  # (N, 3, 3): key, fill, rim (world)
    physical: PhysicalIdentity
    geometry: HeadGeometry
    pixel_size: Tensor  # (N,) pixel width per unit ray distance

    @property
    def resolution(self) -> int:
        return int(self.alpha.shape[-1])

    def per_head(self, values: Tensor) -> Tensor:
        """Broadcast (N,) or (N, C) per-head values over the image: (N, 1, 1[, C])."""
        return values.reshape(values.shape[0], 1, 1, *values.shape[1:])

    def is_material(self, *materials: Material) -> Tensor:
        mask = torch.zeros_like(self.material, dtype=torch.bool)
        for m in materials:
            mask = mask | (self.material == int(m))
        return mask

    def light(self, index: int) -> Tensor:
        return self.light_directions[:, index].reshape(-1, 1, 1, 3)


# --------------------------------------------------------------------------------------------------
# Colour helpers
# --------------------------------------------------------------------------------------------------
def srgb_to_linear(c: Tensor) -> Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: Tensor) -> Tensor:
    c = c.clamp_min(0.0)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c.clamp_min(1e-8) ** (1 / 2.4) - 0.055)


def _rgb(values, like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _palette(stops: list[tuple[float, float, float]], t: Tensor) -> Tensor:
    """Piecewise-linear sRGB palette sampled at t ∈ [0, 1] (any shape) → (…, 3) linear RGB."""
    table = srgb_to_linear(_rgb(stops, t))
    pos = t.clamp(0.0, 1.0) * (len(stops) - 1)
    lo = pos.floor().long().clamp(max=len(stops) - 2)
    frac = (pos - lo).unsqueeze(-1)
    return table[lo] * (1 - frac) + table[lo + 1] * frac


def _mix(a: Tensor, b: Tensor, t: Tensor | float) -> Tensor:
    return a + (b - a) * t


def _smoothstep(e0: float, e1: float, x: Tensor) -> Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3 - 2 * t)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1)


# --------------------------------------------------------------------------------------------------
# Procedural noise
# --------------------------------------------------------------------------------------------------
def _lattice_hash(ix: Tensor, iy: Tensor, iz: Tensor, seed: int) -> Tensor:
    """Pseudo-random value in [0, 1) for integer lattice points (int64 arithmetic wraps, which is fine)."""
    h = ix * 73856093 + iy * 19349663 + iz * 83492791 + seed * 2654435761
    h = (h ^ (h >> 13)) * 1274126177
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).to(torch.float32) / float(0x1000000)


def value_noise(p: Tensor, seed: int = 0) -> Tensor:
    """Smooth 3-D value noise in [-1, 1] at points (…, 3) (trilinear over a hashed lattice, C¹ fade)."""
    cell = torch.floor(p)
    f = p - cell
    f = f * f * (3 - 2 * f)
    i = cell.long()
    ix, iy, iz = i.unbind(-1)
    fx, fy, fz = f.unbind(-1)
    acc = None
    for dx in (0, 1):
        wx = fx if dx else 1 - fx
        for dy in (0, 1):
            wy = fy if dy else 1 - fy
            for dz in (0, 1):
                wz = fz if dz else 1 - fz
                term = wx * wy * wz * _lattice_hash(ix + dx, iy + dy, iz + dz, seed).to(p.dtype)
                acc = term if acc is None else acc + term
    return acc * 2 - 1


def fbm(p: Tensor, octaves: int = 4, seed: int = 0) -> Tensor:
    """Fractal sum of value noise, roughly in [-1, 1]."""
    total, amplitude, norm = torch.zeros_like(p[..., 0]), 1.0, 0.0
    for octave in range(octaves):
        total = total + amplitude * value_noise(p * (2.0**octave), seed + 17 * octave)
        norm += amplitude
        amplitude *= 0.5
    return total / norm


def _identity_seed_offset(s: SurfaceBuffer) -> Tensor:
    """(N, 1, 1, 3) per-head offset of the noise domain, so each head gets its own texture pattern."""
    v = torch.stack([s.physical[k] for k in ("skin_tone", "hair_lightness", "eye_colour")], dim=-1)
    return s.per_head(v * 37.0)


# --------------------------------------------------------------------------------------------------
# Shared lighting terms
# --------------------------------------------------------------------------------------------------
def _diffuse(s: SurfaceBuffer, lighting: Lighting, wrap: float = 0.0) -> Tensor:
    """(N, R, R) wrapped-Lambert sum of the three lights plus hemisphere ambient (occluded)."""
    n = s.normal
    total = torch.zeros_like(n[..., 0])
    for index, intensity in enumerate(lighting.intensities):
        total = total + intensity * ((_dot(n, s.light(index)) + wrap) / (1 + wrap)).clamp_min(0)
    up = 0.5 + 0.5 * n[..., 1]
    ambient = lighting.ground + (lighting.sky - lighting.ground) * up
    return total * (0.35 + 0.65 * s.occlusion) + ambient * s.occlusion


def _specular(s: SurfaceBuffer, lighting: Lighting, shininess: float, lights=(0, 1, 2)) -> Tensor:
    """(N, R, R) Blinn-Phong highlights (energy-normalised a little so sharp ones are not too faint)."""
    total = torch.zeros_like(s.normal[..., 0])
    for index in lights:
        half = F.normalize(s.light(index) + s.view, dim=-1)
        facing = (_dot(s.normal, s.light(index)) > 0).to(total.dtype)
        total = total + lighting.intensities[index] * facing * _dot(s.normal, half).clamp_min(0) ** shininess
    return total * (shininess + 8) / 40.0 * s.occlusion * lighting.gloss


def _facing(s: SurfaceBuffer) -> Tensor:
    return _dot(s.normal, s.view).clamp(0.0, 1.0)


def _folded_local(s: SurfaceBuffer) -> Tensor:
    x, y, z = s.local.unbind(-1)
    return torch.stack((x.abs(), y, z), dim=-1)


def _image_edges(s: SurfaceBuffer, depth_scale: float, normal_scale: float) -> Tensor:
    """(N, R, R) edge strength in [0, 1] from depth and normal discontinuities (Sobel on the buffers)."""
    kx = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=s.depth.dtype, device=s.depth.device) / 8
    kernels = torch.stack((kx, kx.t())).unsqueeze(1)  # (2, 1, 3, 3)

    def gradient_magnitude(channels: Tensor) -> Tensor:  # (N, C, R, R) → (N, R, R)
        n, c = channels.shape[:2]
        padded = F.pad(channels.reshape(n * c, 1, *channels.shape[2:]), (1, 1, 1, 1), mode="replicate")
        g = F.conv2d(padded, kernels).reshape(n, c, 2, *channels.shape[2:])
        return g.pow(2).sum(dim=(1, 2)).sqrt()

    relative_depth = (s.depth / s.depth.amin(dim=(1, 2), keepdim=True)).unsqueeze(1)
    depth_edges = gradient_magnitude(relative_depth) * depth_scale
    normal_edges = gradient_magnitude((s.normal * s.alpha.unsqueeze(-1)).permute(0, 3, 1, 2)) * normal_scale
    alpha_edges = gradient_magnitude(s.alpha.unsqueeze(1)) * 2.0
    return (depth_edges + normal_edges + alpha_edges).clamp(0.0, 1.0)


def _screen_coordinates(s: SurfaceBuffer) -> tuple[Tensor, Tensor]:
    """(1, R, R) pixel column and row indices."""
    r = s.resolution
    rows, cols = torch.meshgrid(
        torch.arange(r, dtype=s.depth.dtype, device=s.depth.device),
        torch.arange(r, dtype=s.depth.dtype, device=s.depth.device),
        indexing="ij",
    )
    return cols.unsqueeze(0), rows.unsqueeze(0)


# --------------------------------------------------------------------------------------------------
# Per-material albedo of the realistic head (linear RGB)
# --------------------------------------------------------------------------------------------------
_SKIN_STOPS = [(0.30, 0.18, 0.12), (0.52, 0.34, 0.24), (0.76, 0.56, 0.44), (0.93, 0.76, 0.66), (0.98, 0.86, 0.80)]
_HAIR_ASHY = [(0.035, 0.03, 0.028), (0.13, 0.10, 0.08), (0.36, 0.29, 0.22), (0.74, 0.66, 0.52)]
_HAIR_WARM = [(0.10, 0.04, 0.02), (0.33, 0.13, 0.05), (0.62, 0.30, 0.12), (0.90, 0.70, 0.40)]
_IRIS_STOPS = [(0.30, 0.50, 0.75), (0.33, 0.55, 0.40), (0.45, 0.40, 0.20), (0.35, 0.20, 0.10), (0.12, 0.07, 0.04)]
_CLOTH = (0.16, 0.20, 0.30)


def skin_albedo(physical: PhysicalIdentity) -> Tensor:
    """(N, 3) linear skin colour from tone and warmth."""
    base = _palette(_SKIN_STOPS, physical["skin_tone"])
    warm = physical["skin_warmth"].unsqueeze(-1)
    tint = _mix(_rgb((0.97, 1.0, 0.88), base), _rgb((1.06, 0.94, 0.94), base), warm)
    return (base * tint).clamp(0.0, 1.0)


def hair_albedo(physical: PhysicalIdentity) -> Tensor:
    """(N, 3) linear hair colour: ashy and warm palettes along lightness, blended by warmth."""
    light = physical["hair_lightness"]
    return _mix(_palette(_HAIR_ASHY, light), _palette(_HAIR_WARM, light), physical["hair_warmth"].unsqueeze(-1))


def iris_albedo(physical: PhysicalIdentity) -> Tensor:
    return _palette(_IRIS_STOPS, physical["eye_colour"])


def albedo_table(physical: PhysicalIdentity) -> Tensor:
    """(N, NUM_MATERIALS, 3) linear photo albedo of every material of every head (indexed by ``Material``)."""
    skin, hair = skin_albedo(physical), hair_albedo(physical)
    constant = lambda rgb: srgb_to_linear(_rgb(rgb, skin)).expand_as(skin)  # noqa: E731
    rows = {
        Material.SKIN: skin,
        Material.HAIR: hair,
        Material.SCLERA: constant((0.74, 0.71, 0.68)),
        Material.IRIS: iris_albedo(physical),
        Material.PUPIL: constant((0.06, 0.05, 0.05)),
        Material.LIPS: skin * _rgb((0.88, 0.62, 0.62), skin),
        Material.BROW: _mix(skin, hair * 0.7, 0.8),
        Material.CLOTH: constant(_CLOTH),
    }
    return torch.stack([rows[m] for m in Material], dim=1)


def material_albedo(s: SurfaceBuffer) -> Tensor:
    """(N, R, R, 3) untextured photo albedo of every pixel from its material and its head's colours."""
    table = albedo_table(s.physical)  # (N, K, 3)
    batch = table.shape[0]
    flat = s.material.reshape(batch, -1)
    picked = table.gather(1, flat.unsqueeze(-1).expand(-1, -1, 3))
    return picked.reshape(*s.material.shape, 3)


def _hair_strands(s: SurfaceBuffer, scale: float = 1.0, seed: int = 3) -> Tensor:
    """(N, R, R) multiplicative strand texture around 1: noise stretched along the direction hair falls."""
    q = _folded_local(s) + _identity_seed_offset(s)
    stretched = torch.stack((q[..., 0] * 3.5, q[..., 1] * 0.35, q[..., 2] * 3.5), dim=-1) * scale
    return 0.75 + 0.45 * (0.5 + 0.5 * fbm(stretched, 3, seed))


# --------------------------------------------------------------------------------------------------
# Shaders
# --------------------------------------------------------------------------------------------------
def shade_photo(s: SurfaceBuffer, lighting: Lighting) -> Tensor:
    """Realistic-ish: wrapped Lambert skin with soft occlusion, blushed cheeks, strand-textured hair, glints."""
    albedo = material_albedo(s)
    q = _folded_local(s)
    x, y, z = q.unbind(-1)
    skin = s.is_material(Material.SKIN, Material.LIPS)
    # Subtle blotchiness and rosy cheeks / nose tip.
    mottling = 1.0 + 0.05 * fbm(q * 0.9 + _identity_seed_offset(s), 3, seed=11)
    blush = torch.exp(-((x - 3.8) ** 2 + (y + 4.3) ** 2) / 5.0 - (z - 6.0).clamp_min(0) * 0.0)
    blush = blush + 0.6 * torch.exp(-(x**2 + (y + 6.0) ** 2 + (z - 11.0) ** 2) / 2.0)
    rosy = _mix(torch.ones_like(albedo), _rgb((1.08, 0.9, 0.88), albedo).expand_as(albedo), (0.6 * blush).unsqueeze(-1))
    albedo = torch.where(skin.unsqueeze(-1), albedo * rosy * mottling.unsqueeze(-1), albedo)
    hair = s.is_material(Material.HAIR, Material.BROW)
    albedo = torch.where(hair.unsqueeze(-1), albedo * _hair_strands(s).unsqueeze(-1), albedo)

    diffuse = _diffuse(s, lighting, wrap=0.35)
    eyes = s.is_material(Material.SCLERA, Material.IRIS, Material.PUPIL)
    spec = torch.where(hair, 0.12 * _specular(s, lighting, 14.0), 0.10 * _specular(s, lighting, 24.0))
    spec = torch.where(eyes, 0.3 * spec + 0.6 * _specular(s, lighting, 120.0, lights=(0,)), spec)
    rim = (1 - _facing(s)) ** 3 * 0.08 * lighting.gloss
    return albedo * diffuse.unsqueeze(-1) + (spec + rim).unsqueeze(-1)


def shade_statue(s: SurfaceBuffer, lighting: Lighting) -> Tensor:
    """White/grey marble: one albedo for every material, veins from turbulent noise, strong gloss."""
    q = s.local + _identity_seed_offset(s) * 0.1
    turbulence = fbm(q * 0.12, 4, seed=5)
    veins = (torch.sin(0.25 * (q[..., 0] + 0.7 * q[..., 1] - 0.4 * q[..., 2]) + 6.0 * turbulence)).abs()
    vein = 1.0 - _smoothstep(0.0, 0.18, veins)
    cloud = 0.5 + 0.5 * fbm(q * 0.45, 3, seed=9)
    marble = srgb_to_linear(_rgb((0.90, 0.89, 0.86), s.normal)) * (0.92 + 0.08 * cloud).unsqueeze(-1)
    vein_colour = srgb_to_linear(_rgb((0.45, 0.46, 0.50), s.normal))
    albedo = _mix(marble, vein_colour.expand_as(marble), (0.8 * vein).unsqueeze(-1))
    diffuse = _diffuse(s, lighting, wrap=0.15)
    spec = _specular(s, lighting, 45.0) * 0.55
    sheen = (1 - _facing(s)) ** 4 * 0.12 * lighting.gloss
    return albedo * diffuse.unsqueeze(-1) + (spec + sheen).unsqueeze(-1)


def _dark_eye_sockets(s: SurfaceBuffer) -> Tensor:
    """(N, R, R) 1 around the eye sockets fading to 0 a few centimetres away."""
    q = _folded_local(s)
    g = s.geometry
    ex = s.per_head(g.column("eye_cx"))
    ey = s.per_head(g.column("eye_cy"))
    dist2 = ((q[..., 0] - ex) / 2.4) ** 2 + ((q[..., 1] - ey + 0.2) / 1.9) ** 2
    return torch.exp(-dist2 * 1.6) * (q[..., 2] > 4.0)


def shade_zombie(s: SurfaceBuffer, lighting: Lighting) -> Tensor:
    """Green-grey sickly skin with bruise blotches and wounds, dark sunken eyes, dull eyes, dark messy hair."""
    q = s.local + _identity_seed_offset(s)
    base = skin_albedo(s.physical)
    grey = base.mean(dim=-1, keepdim=True).expand_as(base)
    sickly = _mix(grey, srgb_to_linear(_rgb((0.50, 0.60, 0.40), base)).expand_as(base), 0.75)
    albedo = s.per_head(sickly).expand(*s.material.shape, 3)

    blotch = _smoothstep(0.05, 0.4, fbm(q * 0.32, 4, seed=21))
    bruise = srgb_to_linear(_rgb((0.33, 0.25, 0.30), base))
    albedo = _mix(albedo, bruise.expand_as(albedo), (0.75 * blotch).unsqueeze(-1))
    wound = _smoothstep(0.42, 0.55, fbm(q * 0.5 + 3.0, 3, seed=33))
    gore = srgb_to_linear(_rgb((0.33, 0.04, 0.03), base))
    albedo = _mix(albedo, gore.expand_as(albedo), wound.unsqueeze(-1))
    albedo = albedo * (1.0 - 0.75 * _dark_eye_sockets(s)).unsqueeze(-1)

    eyes = s.is_material(Material.SCLERA, Material.IRIS)
    albedo = torch.where(eyes.unsqueeze(-1), srgb_to_linear(_rgb((0.72, 0.70, 0.50), base)).expand_as(albedo), albedo)
    pupil = s.is_material(Material.PUPIL)
    albedo = torch.where(pupil.unsqueeze(-1), srgb_to_linear(_rgb((0.55, 0.55, 0.45), base)).expand_as(albedo), albedo)
    lips = s.is_material(Material.LIPS)
    albedo = torch.where(lips.unsqueeze(-1), srgb_to_linear(_rgb((0.25, 0.18, 0.22), base)).expand_as(albedo), albedo)
    hair = s.is_material(Material.HAIR, Material.BROW)
    hair_colour = srgb_to_linear(_rgb((0.10, 0.09, 0.07), base)) * _hair_strands(s, 1.3, seed=41).unsqueeze(-1)
    albedo = torch.where(hair.unsqueeze(-1), hair_colour, albedo)
    cloth = s.is_material(Material.CLOTH)
    rags = srgb_to_linear(_rgb((0.22, 0.20, 0.16), base)) * (0.7 + 0.3 * fbm(q * 0.8, 2, seed=7)).unsqueeze(-1)
    albedo = torch.where(cloth.unsqueeze(-1), rags, albedo)

    diffuse = _diffuse(s, lighting, wrap=0.1)
    spec = _specular(s, lighting, 30.0) * 0.08 * (~hair)
    return albedo * diffuse.unsqueeze(-1) + spec.unsqueeze(-1)


def shade_cartoon(s: SurfaceBuffer, lighting: Lighting) -> Tensor:
    """Toon: saturated flat colours, light quantised into three bands, dark outlines from n·v and edges."""
    albedo = material_albedo(s)
    mean = albedo.mean(dim=-1, keepdim=True)
    albedo = (mean + 1.5 * (albedo - mean)).clamp(0.0, 1.0) * 1.15
    key = _dot(s.normal, s.light(0)).clamp_min(0)
    bands = torch.where(key > 0.55, 1.0, torch.where(key > 0.18, 0.72, 0.45)).to(key.dtype)
    shade = bands + 0.12 * (s.occlusion - 1)
    half = F.normalize(s.light(0) + s.view, dim=-1)
    highlight = (_dot(s.normal, half) > 0.97).to(shade.dtype) * 0.35
    colour = albedo * shade.unsqueeze(-1) + highlight.unsqueeze(-1)
    outline = (_facing(s) < 0.3) | (_image_edges(s, 40.0, 0.9) > 0.45)
    return torch.where(outline.unsqueeze(-1), torch.full_like(colour, 0.01), colour)


def shade_sketch(s: SurfaceBuffer, lighting: Lighting) -> Tensor:
    """Pencil on white paper: contour lines from depth/normal edges, hatching that thickens in shadow."""
    light = (_diffuse(s, lighting, wrap=0.0) / 1.1).clamp(0.0, 1.0)
    cols, rows = _screen_coordinates(s)
    spacing = max(3.0, s.resolution / 40.0)
    hatch_a = torch.sin((cols + rows) * (math.pi / spacing)) > 0.6
    hatch_b = torch.sin((cols - rows) * (math.pi / spacing)) > 0.6
    ink = torch.zeros_like(light)
    ink = torch.where((light < 0.45) & hatch_a, torch.full_like(ink, 0.35), ink)
    ink = torch.where((light < 0.22) & hatch_b, torch.full_like(ink, 0.5), ink)
    hair = s.is_material(Material.HAIR, Material.BROW)
    strokes = _hair_strands(s, 1.5, seed=51)
    ink = torch.where(hair, torch.maximum(ink, (1.1 - strokes).clamp(0.0, 1.0) * 1.1), ink)
    ink = torch.where(s.is_material(Material.IRIS), torch.maximum(ink, torch.full_like(ink, 0.35)), ink)
    ink = torch.where(s.is_material(Material.PUPIL), torch.full_like(ink, 0.85), ink)
    edges = _image_edges(s, 40.0, 0.35)
    ink = torch.maximum(ink, _smoothstep(0.25, 0.7, edges) * 0.9)
    grain = 0.04 * value_noise(torch.stack((cols, rows, torch.zeros_like(cols)), dim=-1).expand(*ink.shape, 3) * 0.7)
    paper = 0.94 + grain
    grey = paper * (1.0 - ink) + 0.15 * ink
    return srgb_to_linear(grey.clamp(0, 1)).unsqueeze(-1).expand(*grey.shape, 3)


def shade_gold(s: SurfaceBuffer, lighting: Lighting) -> Tensor:
    """Polished gold: metallic (tinted) reflections of a studio environment plus sharp highlights."""
    gold = srgb_to_linear(_rgb((1.0, 0.80, 0.36), s.normal))
    v, n = s.view, s.normal
    reflected = 2 * _dot(n, v).unsqueeze(-1) * n - v
    up = reflected[..., 1]
    environment = 0.12 + 0.85 * _smoothstep(-0.15, 0.6, up) + 0.6 * torch.exp(-((up - 0.05) / 0.12) ** 2)
    fresnel = 0.75 + 0.25 * (1 - _facing(s)) ** 5
    diffuse = _diffuse(s, lighting, wrap=0.0)
    spec = _specular(s, lighting, 70.0) * 1.2
    base = gold * (0.35 * diffuse + 0.75 * environment * fresnel * s.occlusion).unsqueeze(-1)
    return base + spec.unsqueeze(-1) * gold * 1.3


# --------------------------------------------------------------------------------------------------
# Identity reshaping
# --------------------------------------------------------------------------------------------------
def keep_identity(physical: PhysicalIdentity) -> PhysicalIdentity:
    return physical


def _scaled(physical: PhysicalIdentity, **factors: float) -> PhysicalIdentity:
    out = dict(physical)
    for name, factor in factors.items():
        out[name] = physical[name] * factor
    return out


def cartoon_proportions(physical: PhysicalIdentity) -> PhysicalIdentity:
    """Bigger eyes and head, smaller chin, nose and neck: the usual cartoon exaggeration."""
    out = _scaled(
        physical, eye_size=1.55, skull_width=1.08, skull_height=1.1, skull_depth=1.04, nose_length=0.72,
        nose_width=0.85, neck_width=0.82, face_length=0.9, ear_size=1.08, jaw_width=0.9,
    )
    out["chin_length"] = physical["chin_length"] - 0.7
    out["chin_protrusion"] = physical["chin_protrusion"] - 0.4
    out["nose_protrusion"] = physical["nose_protrusion"] - 0.4
    out["eye_depth"] = physical["eye_depth"] - 0.5
    return out


def zombie_hair(physical: PhysicalIdentity) -> PhysicalIdentity:
    """Messy, thicker, darker hair; the face itself stays the identity's."""
    out = dict(physical)
    out["hair_curl"] = torch.ones_like(physical["hair_curl"])
    out["hair_volume"] = physical["hair_volume"] + 0.5
    out["hair_lightness"] = physical["hair_lightness"] * 0.2
    return out


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Style:
    """A look: the text prompt it stands for, an identity reshaping and a shader.

    ``keeps_silhouette`` is True when ``reshape`` leaves the geometry untouched, so renders of one identity
    in this style and in ``photo`` share their mask. ``symmetric`` is True when a mirror-symmetric identity
    under mirrored lighting renders exactly mirror-symmetric (no textures evaluated at signed x).
    """

    name: str
    prompt: str
    shade: Callable[[SurfaceBuffer, Lighting], Tensor]
    reshape: Callable[[PhysicalIdentity], PhysicalIdentity] = keep_identity
    keeps_silhouette: bool = True
    symmetric: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)


STYLES: dict[str, Style] = {
    style.name: style
    for style in (
        Style("photo", "a photo of a head", shade_photo, symmetric=True),
        Style("statue", "a marble statue head", shade_statue),
        Style("zombie", "a zombie head", shade_zombie, reshape=zombie_hair, keeps_silhouette=False),
        Style("cartoon", "a cartoon head", shade_cartoon, reshape=cartoon_proportions, keeps_silhouette=False),
        Style("sketch", "a pencil sketch of a head", shade_sketch),
        Style("gold", "a golden statue head", shade_gold, symmetric=True),
    )
}


def get_style(name: str) -> Style:
    """The registered style called ``name``; raises :class:`ConfigError` listing the known ones."""
    style = STYLES.get(name)
    if style is None:
        raise ConfigError(f"unknown style {name!r}; known styles: {', '.join(STYLES)}")
    return style
