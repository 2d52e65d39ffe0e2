"""Sphere-traced renders of procedural heads through the generator's cameras.

``render_heads`` produces exactly what a training script needs from a dataset: an image in [-1, 1], the ray
depth of the surface (the quantity the generator's volume renderer reports as depth) and a coverage mask,
for any batch of identities and 25-vector cameras. Rays come from
:func:`engine.generator.renderer.pixel_rays`, so pixel (row, column) of a render and of a generator render
from the same camera look along the same world ray.

How the tracing stays fast on a CPU:

* Rays are marched only between their first entry into and last exit from the bounding shapes of
  :mod:`engine.world.sdf` (an ellipsoid round the cranium and hair, boxes round the jaw/neck and the
  shoulders), which skips most empty space; rays that miss them are never marched.
* The active rays are kept *left-packed per head* (:func:`pack_rows`): the field then reads every head's
  parameters as (N, 1) columns, and rays that hit or leave are dropped in batches.
* Outside the surface each step is at least half a pixel footprint, so rays grazing a silhouette or running
  along a crease do not creep for dozens of steps; an overshoot into the head is walked back by the next,
  negative, distance.
* Normals (central differences), ambient occlusion and materials are computed once per covered pixel.

Silhouettes are anti-aliased by cone coverage: a ray that misses but passes within half a pixel of the
surface gets partial ``mask`` and is shaded at its closest approach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, InputError
from ..generator.camera import check_camera_vector, split_camera_vector
from ..generator.config import RenderingConfig
from ..generator.renderer import pixel_rays
from .identity import check_identity, to_physical
from .sdf import (
    BOUNDING_BOXES,
    BOUNDING_ELLIPSOID,
    HEAD_BOUNDS,
    WORLD_UNITS_PER_CM,
    HeadGeometry,
    geometry_distance,
    geometry_sdf_and_material,
    world_to_local,
)
from .styles import Lighting, Style, SurfaceBuffer, get_style, linear_to_srgb

BACKGROUNDS = ("black", "white", "plain", "gradient")


@dataclass(frozen=True)
class TraceConfig:
    """Sphere-tracing and surface-attribute options (world units unless stated).

    ``step_scale < 1`` under-relaxes steps because the field is a bound, not an exact distance.
    ``hit_epsilon`` is the distance at which a ray counts as on the surface (≈0.02 cm of a real head).
    ``min_step_pixels``: outside the surface a ray advances at least this many pixel footprints per step,
    so rays grazing a silhouette do not creep along it for dozens of steps; a step that lands inside the
    head is undone by the next (negative-distance) step, so depth stays accurate to ``hit_epsilon``.
    ``compact_fraction``: finished rays are dropped from the working set once they make up this fraction.
    ``ao_distances_cm`` are the probe distances along the normal for ambient occlusion (empty = no AO).
    """

    max_steps: int = 64
    step_scale: float = 0.9
    hit_epsilon: float = 3e-4
    min_step_pixels: float = 0.5
    normal_epsilon: float = 8e-4
    compact_fraction: float = 0.2
    ao_distances_cm: tuple[float, ...] = (0.5, 1.2, 2.4)
    ao_strength: float = 0.9
    background_depth: float = RenderingConfig().ray_end

    def validate(self) -> "TraceConfig":
        if self.max_steps < 1:
            raise ConfigError(f"TraceConfig.max_steps must be ≥ 1, got {self.max_steps}")
        if not 0.0 < self.step_scale <= 1.0:
            raise ConfigError(f"TraceConfig.step_scale must be in (0, 1], got {self.step_scale}")
        if self.hit_epsilon <= 0 or self.normal_epsilon <= 0:
            raise ConfigError("TraceConfig.hit_epsilon and normal_epsilon must be > 0")
        if self.min_step_pixels < 0:
            raise ConfigError(f"TraceConfig.min_step_pixels must be ≥ 0, got {self.min_step_pixels}")
        if not 0.0 < self.compact_fraction <= 1.0:
            raise ConfigError(f"TraceConfig.compact_fraction must be in (0, 1], got {self.compact_fraction}")
        return self


@dataclass
class TraceResult:
    """Per-ray outcome of sphere tracing (flattened over heads × pixels)."""

    depth: Tensor  # (R,) ray distance of the hit or of the closest approach
    hit: Tensor  # (R,) bool: converged onto the surface
    closest: Tensor  # (R,) smallest distance seen along the ray (0 for hits)


# --------------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------------
def ray_box_interval(origins: Tensor, directions: Tensor, bounds=HEAD_BOUNDS) -> tuple[Tensor, Tensor]:
    """Entry and exit distances (…,) of rays through an axis-aligned box (slab method; entry ≥ 0)."""
    lo = torch.tensor(bounds[0], dtype=origins.dtype, device=origins.device)
    hi = torch.tensor(bounds[1], dtype=origins.dtype, device=origins.device)
    safe = torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    inv = 1.0 / safe
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


def ray_ellipsoid_interval(origins: Tensor, directions: Tensor, centre, radii) -> tuple[Tensor, Tensor]:
    """Entry and exit distances (…,) of rays through an axis-aligned ellipsoid (entry > exit when missed)."""
    c = torch.tensor(centre, dtype=origins.dtype, device=origins.device)
    inv_r = 1.0 / torch.tensor(radii, dtype=origins.dtype, device=origins.device)
    o, d = (origins - c) * inv_r, directions * inv_r  # the ellipsoid becomes the unit sphere
    a = (d * d).sum(-1)
    b = (o * d).sum(-1)
    disc = b * b - a * ((o * o).sum(-1) - 1.0)
    root = torch.sqrt(disc.clamp_min(0.0))
    near, far = (-b - root) / a, (-b + root) / a
    missed = disc <= 0
    return torch.where(missed, torch.full_like(near, float("inf")), near), torch.where(
        missed, torch.full_like(far, -float("inf")), far
    )


def head_ray_interval(origins: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
    """Where world rays can meet a head: from the first entry into to the last exit from the bounding shapes.

    Distances are in world units; rays with ``near >= far`` cannot hit any head.
    """
    scale = 1.0 / WORLD_UNITS_PER_CM
    local_o = world_to_local(origins)
    local_d = directions * scale  # t stays a world-unit distance
    intervals = [ray_ellipsoid_interval(local_o, local_d, *BOUNDING_ELLIPSOID)]
    intervals += [ray_box_interval(local_o, local_d, box) for box in BOUNDING_BOXES]
    near = torch.stack([i[0].masked_fill(i[0] >= i[1], float("inf")) for i in intervals]).amin(0)
    far = torch.stack([i[1].masked_fill(i[0] >= i[1], -float("inf")) for i in intervals]).amax(0)
    return near.clamp_min(0.0), far


def pack_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Left-pack the True entries of each row of an (N, M) mask.

    Returns ``index`` (N, K) of column positions, K the largest row count, and ``valid`` (N, K) marking real
    entries (padding repeats a real column or column 0). Keeping work in this per-head layout lets the
    field read its per-head parameters as (N, 1) columns instead of a gathered copy per ray.
    """
    counts = mask.sum(dim=1)
    width = int(counts.max()) if mask.numel() else 0
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return order, valid


def _gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """values (N, M[, C]) → (N, K[, C]) at per-row column ``index`` (N, K)."""
    if values.dim() == 3:
        return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
    return values.gather(1, index)


def sphere_trace(
    origins: Tensor,
    directions: Tensor,
    geometry: HeadGeometry,
    config: TraceConfig = TraceConfig(),
    pixel_size: Tensor | None = None,
) -> TraceResult:
    """March (N, M) rays of N heads through their fields; returns flattened per-ray results (N·M,).

    Active rays are kept left-packed per head (see :func:`pack_rows`) and re-packed whenever a fraction
    ``config.compact_fraction`` of the working set has finished. ``pixel_size`` (N,) is the pixel width per
    unit of ray distance; without it there is no minimum step.
    """
    batch, rays = origins.shape[:2]
    near, far = head_ray_interval(origins, directions)

    depth = torch.full((batch * rays,), config.background_depth, dtype=origins.dtype, device=origins.device)
    hit = torch.zeros(batch * rays, dtype=torch.bool, device=origins.device)
    closest = torch.full_like(depth, float("inf"))

    index, valid = pack_rows(near < far)
    flat = index + torch.arange(batch, device=index.device).unsqueeze(1) * rays
    o_a, d_a = _gather_rows(origins, index), _gather_rows(directions, index)
    t_a, far_a = _gather_rows(near, index), _gather_rows(far, index)
    best_d = torch.full_like(t_a, float("inf"))
    best_t = t_a.clone()
    pixel = torch.zeros(batch, 1, dtype=origins.dtype, device=origins.device)
    if pixel_size is not None:
        pixel = pixel_size.reshape(batch, 1).to(origins.dtype)
    min_step = config.min_step_pixels * pixel
    done = ~valid
    converged = torch.zeros_like(done)

    def retire(slots: Tensor) -> None:
        ids = flat[slots]
        conv = converged[slots]
        depth[ids] = torch.where(conv, t_a[slots], best_t[slots])
        hit[ids] = conv
        closest[ids] = torch.where(conv, torch.zeros_like(best_d[slots]), best_d[slots])

    for _ in range(config.max_steps):
        if t_a.shape[1] == 0:
            break
        dist = geometry_distance(o_a + t_a.unsqueeze(-1) * d_a, geometry)
        live = ~done
        closer = live & (dist < best_d)
        best_d = torch.where(closer, dist, best_d)
        best_t = torch.where(closer, t_a, best_t)
        reached = live & (dist.abs() < config.hit_epsilon)
        converged = converged | reached
        step = torch.where(dist > 0, torch.maximum(config.step_scale * dist, min_step * t_a), config.step_scale * dist)
        t_a = torch.where(live & ~reached, t_a + step, t_a)
        done = done | reached | (t_a > far_a)
        finished = valid & done
        n_finished = int(finished.sum())
        if n_finished and n_finished >= config.compact_fraction * int(valid.sum()):
            retire(finished)
            valid = valid & ~done
            keep, valid_packed = pack_rows(valid)
            flat, o_a, d_a = _gather_rows(flat, keep), _gather_rows(o_a, keep), _gather_rows(d_a, keep)
            t_a, far_a = _gather_rows(t_a, keep), _gather_rows(far_a, keep)
            best_d, best_t = _gather_rows(best_d, keep), _gather_rows(best_t, keep)
            converged = _gather_rows(converged, keep)
            valid = valid_packed
            done = ~valid
    if t_a.shape[1]:
        # Rays still marching after max_steps creep along a crease or silhouette; those that stayed within a
        # quarter pixel of the surface count as hits, the others as near misses (partial coverage).
        late = valid & ~done & (best_d < (0.25 * pixel * best_t).clamp_min(4 * config.hit_epsilon))
        converged = converged | late
        t_a = torch.where(late, best_t, t_a)
        retire(valid)
    return TraceResult(depth=depth, hit=hit, closest=closest)


def central_difference_normals(points: Tensor, geometry: HeadGeometry, epsilon: float) -> Tensor:
    """(N, K, 3) unit outward normals at (N, K, 3) points from six field samples per point."""
    batch, count = points.shape[:2]
    offsets = torch.cat((torch.eye(3), -torch.eye(3))).to(points) * epsilon  # (6, 3)
    probes = (points.unsqueeze(2) + offsets).reshape(batch, count * 6, 3)
    samples = geometry_distance(probes, geometry).reshape(batch, count, 6)
    return F.normalize(samples[..., :3] - samples[..., 3:], dim=-1, eps=1e-12)


def ambient_occlusion(points: Tensor, normals: Tensor, geometry: HeadGeometry, config: TraceConfig) -> Tensor:
    """(N, K) occlusion factor in [0, 1] (1 = open): how far the field falls short of the probe distances."""
    if not config.ao_distances_cm:
        return torch.ones(points.shape[:2], dtype=points.dtype, device=points.device)
    batch, count = points.shape[:2]
    probes = torch.tensor(config.ao_distances_cm, dtype=points.dtype, device=points.device) * WORLD_UNITS_PER_CM
    at = points.unsqueeze(2) + probes[:, None] * normals.unsqueeze(2)  # (N, K, P, 3)
    samples = geometry_distance(at.reshape(batch, -1, 3), geometry).reshape(batch, count, -1)
    weights = 0.5 ** torch.arange(len(probes), dtype=points.dtype, device=points.device)
    deficit = ((probes - samples).clamp_min(0) / probes * weights).sum(dim=-1) / weights.sum()
    return (1.0 - config.ao_strength * deficit).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Surface buffers
# --------------------------------------------------------------------------------------------------
def _pixel_size(intrinsics: Tensor, resolution: int) -> Tensor:
    """(N,) width of one pixel per unit of ray distance."""
    return 1.0 / (intrinsics[:, 0, 0] * resolution)


def build_surface_buffer(
    origins: Tensor,
    directions: Tensor,
    trace: TraceResult,
    geometry: HeadGeometry,
    physical: dict[str, Tensor],
    pixel_size: Tensor,
    resolution: int,
    lighting_world: Tensor,
    config: TraceConfig,
) -> SurfaceBuffer:
    """Everything a style's shader reads, as (N, R, R, …) images."""
    batch, rays = origins.shape[:2]
    t = trace.depth.reshape(batch, rays)
    is_hit = trace.hit.reshape(batch, rays)
    gap_all = trace.closest.reshape(batch, rays)
    footprint = (pixel_size.unsqueeze(1) * t).clamp_min(1e-9)
    alpha = torch.where(is_hit, torch.ones_like(t), (1.0 - gap_all / (0.5 * footprint)).clamp(0.0, 1.0))

    index, valid = pack_rows(alpha > 0)
    d_c = _gather_rows(directions, index)
    points = _gather_rows(origins, index) + _gather_rows(t, index).unsqueeze(-1) * d_c
    normals = central_difference_normals(points, geometry, config.normal_epsilon)
    # Near-miss rays stop beside the surface: pull them onto it so materials and textures are the surface's.
    gap = torch.where(_gather_rows(is_hit, index), torch.zeros_like(points[..., 0]), _gather_rows(gap_all, index))
    points = points - gap.unsqueeze(-1) * normals
    occlusion = ambient_occlusion(points, normals, geometry, config)
    _, material = geometry_sdf_and_material(points, geometry)

    flat = (index + torch.arange(batch, device=index.device).unsqueeze(1) * rays)[valid]
    total = batch * rays
    position = torch.zeros(total, 3, dtype=origins.dtype, device=origins.device)
    normal = torch.zeros_like(position)
    ao = torch.ones(total, dtype=origins.dtype, device=origins.device)
    mat = torch.zeros(total, dtype=torch.long, device=origins.device)
    position[flat], normal[flat], ao[flat], mat[flat] = points[valid], normals[valid], occlusion[valid], material[valid]
    alpha = alpha.reshape(-1)
    depth = torch.where(alpha > 0, trace.depth, torch.full_like(trace.depth, config.background_depth))

    def image(values: Tensor) -> Tensor:
        return values.reshape(batch, resolution, resolution, *values.shape[1:])

    return SurfaceBuffer(
        alpha=image(alpha),
        depth=image(depth),
        position=image(position),
        local=image(world_to_local(position)),
        normal=image(normal),
        view=image(-directions.reshape(-1, 3)),
        material=image(mat),
        occlusion=image(ao),
        light_directions=lighting_world,
        physical=physical,
        geometry=geometry,
        pixel_size=pixel_size,
    )


# --------------------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------------------
def make_background(
    kind: str | Sequence[float],
    batch: int,
    resolution: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """(N, R, R, 3) background in [0, 1]: black, white, a plain colour or a soft vertical gradient.

    ``plain`` and ``gradient`` draw their colours from ``generator`` when one is given (one draw per head),
    otherwise they use fixed studio greys. ``kind`` may also be an RGB triple in [0, 1].
    """
    if not isinstance(kind, str):
        rgb = torch.as_tensor(kind, dtype=dtype, device=device)
        if rgb.shape != (3,):
            raise ConfigError(f"background colour must be an RGB triple, got {kind!r}")
        return rgb.expand(batch, resolution, resolution, 3).clone()
    if kind not in BACKGROUNDS:
        raise ConfigError(f"background must be one of {BACKGROUNDS} or an RGB triple, got {kind!r}")
    if kind in ("black", "white"):
        return torch.full((batch, resolution, resolution, 3), float(kind == "white"), dtype=dtype, device=device)
    if generator is not None:
        colours = torch.rand(batch, 2, 3, generator=generator, device=generator.device, dtype=dtype).to(device)
        colours = 0.15 + 0.75 * colours
    else:
        colours = torch.tensor([[0.62, 0.64, 0.68], [0.30, 0.30, 0.33]], dtype=dtype, device=device).expand(batch, 2, 3)
    if kind == "plain":
        return colours[:, 0, None, None, :].expand(batch, resolution, resolution, 3).clone()
    ramp = torch.linspace(0.0, 1.0, resolution, dtype=dtype, device=device).view(1, resolution, 1, 1)
    top, bottom = colours[:, 0, None, None, :], colours[:, 1, None, None, :]
    return (top + (bottom - top) * ramp).expand(batch, resolution, resolution, 3).clone()


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def render_heads(
    identities: Tensor,
    cameras: Tensor,
    resolution: int,
    style: str | Style = "photo",
    generator: torch.Generator | None = None,
    *,
    background: str | Sequence[float] = "black",
    lighting: Lighting | None = None,
    light_cameras: Tensor | None = None,
    config: TraceConfig = TraceConfig(),
) -> dict[str, Tensor]:
    """Render N heads, head i through camera i.

    The studio lights follow the render camera (every view lit alike) unless ``light_cameras`` (N, 25) or
    (1, 25) names the cameras they are fixed to: with one fixed camera the lighting stays on the head as the
    view turns, so a surface point has one colour from every side (up to specular glints and the rim term),
    the way a view-independent radiance field such as the generator's can reproduce it.

    Returns ``image`` (N, 3, R, R) in [-1, 1], ``depth`` (N, 1, R, R) ray distance to the surface
    (``config.background_depth`` where nothing is hit), ``mask`` (N, 1, R, R) coverage in [0, 1] and
    ``material`` (N, 1, R, R) int64 :class:`engine.world.sdf.Material` ids (meaningful where mask > 0).

    ``generator`` only drives random backgrounds; the heads themselves are deterministic.
    """
    identities = check_identity(identities, "identities")
    if not isinstance(cameras, Tensor):
        raise InputError(f"cameras must be a (N, 25) tensor, got {type(cameras).__name__}")
    check_camera_vector(cameras, "cameras")
    if cameras.shape[0] != identities.shape[0]:
        raise InputError(f"cameras batch {cameras.shape[0]} does not match identities batch {identities.shape[0]}")
    if int(resolution) < 1:
        raise ConfigError(f"resolution must be ≥ 1, got {resolution}")
    resolution = int(resolution)
    config = config.validate()
    style_obj = get_style(style) if isinstance(style, str) else style
    lighting = lighting or Lighting()

    with torch.no_grad():
        cameras = cameras.to(identities)
        physical = style_obj.reshape(to_physical(identities))
        geometry = HeadGeometry.from_physical(physical)
        cam2world, intrinsics = split_camera_vector(cameras)
        origins, directions = pixel_rays(cam2world, intrinsics, resolution)
        pixel_size = _pixel_size(intrinsics, resolution)
        trace = sphere_trace(origins, directions, geometry, config, pixel_size)
        light_c2w = cam2world
        if light_cameras is not None:
            check_camera_vector(light_cameras, "light_cameras")
            if light_cameras.shape[0] not in (1, cameras.shape[0]):
                raise InputError(f"light_cameras batch {light_cameras.shape[0]} must be 1 or {cameras.shape[0]}")
            light_c2w = split_camera_vector(light_cameras.to(cameras))[0].expand(cameras.shape[0], -1, -1)
        surface = build_surface_buffer(
            origins, directions, trace, geometry, physical, pixel_size, resolution,
            lighting.world_directions(light_c2w), config,
        )
        colour = linear_to_srgb(style_obj.shade(surface, lighting).clamp(0.0, 1.0))
        back = make_background(
            background, identities.shape[0], resolution, generator, dtype=colour.dtype, device=colour.device
        )
        alpha = surface.alpha.unsqueeze(-1)
        image = alpha * colour + (1.0 - alpha) * back
        return {
            "image": (image * 2.0 - 1.0).permute(0, 3, 1, 2).contiguous(),
            "depth": surface.depth.unsqueeze(1),
            "mask": surface.alpha.unsqueeze(1),
            "material": surface.material.unsqueeze(1),
        }
