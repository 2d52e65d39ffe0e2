"""Mesh extraction from a density field: grid sampling → marching cubes → cleanup → normals → colours.

The generator answers "how dense / what colour is the head at these 3-D points"; this module turns those two
callables into a closed, outward-facing, vertex-coloured triangle mesh that Blender can import, and writes it
as PLY, OBJ or NPZ. It follows the shape-extraction recipe of EG3D / PanoHead (sample raw σ on an N³ grid
spanning the tri-grid box, marching cubes at σ = 10, force the outer shell below the iso level) but keeps it
independent of the generator so it can be tested on analytic fields.

Conventions
-----------
* ``grid[i, j, k]`` is the density at world point ``(x_i, y_j, z_k)`` with ``x_i = min_x + i·(max_x −
  min_x)/(N − 1)`` (likewise y, z). The grid's corner samples lie exactly on the box faces.
* Density is the *raw* σ (before softplus); inside the head it is above the iso level.
* Triangles are wound counter-clockwise seen from outside, so ``(b − a) × (c − a)`` points outward.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import mcubes
import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph
import torch

from .errors import ConfigError, EngineError, InputError
from .io.atomic import write_with
from .io.scan_references import check_ply_references
from .io.untrusted import InputLimits, active_limits, check_count, load_npz, npz_headers, read_bytes

PointFn = Callable[[torch.Tensor], torch.Tensor]
Bounds = tuple[tuple[float, float, float], tuple[float, float, float]]
ProgressFn = Callable[[float], None]

# What the pad layer is set to, relative to the iso level, when MeshConfig.pad_value is None. Far below the
# iso level, so the cap that closes a cut surface sits on the last interior grid plane (as the official
# scripts' -1000 at iso 10 does) instead of somewhere in between.
DEFAULT_PAD_DEPTH = 1000.0

# PyMCubes winds triangles outward when the inside of the surface holds the *larger* values, which is our
# density convention; flip here if that ever changes (tests/engine/test_mesh.py checks it on a sphere).
MCUBES_WINDS_OUTWARD_FOR_DENSE_INSIDE = True


# ------------------------------------------------------------------------------------------------------
# Configuration and result types
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeshConfig:
    """How a density field becomes a mesh.

    ``bounds`` is the axis-aligned box sampled, as ``((min_x, min_y, min_z), (max_x, max_y, max_z))``;
    the default is the tri-grid cube of side ``box_warp = 1`` centred at the origin
    (see :meth:`for_box_warp`). ``pad_boundary`` forces the outer ``pad_width`` grid layers below the iso
    level, so a head cut by the box (the neck) is capped and the mesh is watertight; PanoHead's own script
    trims ``30·N/256`` layers to drop floaters near the tri-grid walls — set ``pad_width`` for that.
    ``color_samples > 1`` averages colour over that many points from the vertex to ``color_depth_voxels``
    voxels inside the surface along the normal, which is steadier than the colour of the thin iso-shell.
    ``coarse_stride > 1`` samples coarse-to-fine (≈6× fewer network queries for a head at 256³, same
    surface in practice; see :func:`sample_grid`); ``coarse_stride = 1`` queries every voxel.
    """

    resolution: int = 256
    bounds: Bounds = ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    iso_level: float = 10.0
    chunk_size: int = 2**18
    largest_component_only: bool = True
    pad_boundary: bool = True
    pad_width: int = 1
    pad_value: float | None = None  # None → iso_level − DEFAULT_PAD_DEPTH
    compute_normals: bool = True
    color_samples: int = 1
    color_depth_voxels: float = 1.0
    coarse_stride: int = 4  # 1 = query every voxel; k > 1 = coarse-to-fine (see sample_grid)
    coarse_dilation: int = 1  # coarse cells refined around each iso-crossing cell

    @classmethod
    def for_box_warp(cls, box_warp: float = 1.0, **changes) -> "MeshConfig":
        """Config whose box is the generator's tri-grid cube ``[-box_warp/2, box_warp/2]³``."""
        h = float(box_warp) / 2.0
        return cls(bounds=((-h, -h, -h), (h, h, h)), **changes).validate()

    def replace(self, **changes) -> "MeshConfig":
        return replace(self, **changes).validate()

    @property
    def pad_fill(self) -> float:
        """The value written into the padded boundary layers."""
        return float(self.iso_level - DEFAULT_PAD_DEPTH if self.pad_value is None else self.pad_value)

    @property
    def effective_coarse_stride(self) -> int:
        """``coarse_stride``, or 1 when the grid is too small for at least two coarse cells per axis."""
        return self.coarse_stride if 2 * self.coarse_stride <= self.resolution - 1 else 1

    @property
    def voxel_size(self) -> np.ndarray:
        """World size of one grid step along x, y, z (float64)."""
        lo, hi = np.asarray(self.bounds, dtype=np.float64)
        return (hi - lo) / (self.resolution - 1)

    def validate(self) -> "MeshConfig":
        n = self.resolution
        if not isinstance(n, (int, np.integer)) or n < 4:
            raise ConfigError(f"MeshConfig.resolution must be an integer ≥ 4, got {n!r}")
        try:
            lo, hi = np.asarray(self.bounds, dtype=np.float64)
            if lo.shape != (3,):
                raise ValueError
        except (ValueError, TypeError):
            raise ConfigError(
                f"MeshConfig.bounds must be ((min_x, min_y, min_z), (max_x, max_y, max_z)), got {self.bounds!r}"
            ) from None
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo)):
            raise ConfigError(f"MeshConfig.bounds must be finite with max > min on every axis, got {self.bounds!r}")
        if not math.isfinite(self.iso_level):
            raise ConfigError(f"MeshConfig.iso_level must be finite, got {self.iso_level!r}")
        if self.chunk_size < 1:
            raise ConfigError(f"MeshConfig.chunk_size must be ≥ 1, got {self.chunk_size}")
        if self.pad_boundary:
            if self.pad_width < 1 or 2 * self.pad_width >= n - 1:
                raise ConfigError(
                    f"MeshConfig.pad_width must be ≥ 1 and leave interior voxels at resolution {n}, "
                    f"got {self.pad_width}"
                )
            if not self.pad_fill < self.iso_level:
                raise ConfigError(
                    f"MeshConfig.pad_value ({self.pad_value}) must be below iso_level ({self.iso_level}) "
                    "to close the mesh"
                )
        if self.coarse_stride < 1:
            raise ConfigError(
                f"MeshConfig.coarse_stride must be ≥ 1 (1 = query every voxel), got {self.coarse_stride}"
            )
        if self.coarse_dilation < 0:
            raise ConfigError(f"MeshConfig.coarse_dilation must be ≥ 0, got {self.coarse_dilation}")
        if self.color_samples < 1:
            raise ConfigError(f"MeshConfig.color_samples must be ≥ 1, got {self.color_samples}")
        if not (math.isfinite(self.color_depth_voxels) and self.color_depth_voxels >= 0):
            raise ConfigError(f"MeshConfig.color_depth_voxels must be ≥ 0, got {self.color_depth_voxels}")
        return self


@dataclass
class SurfaceTexture:
    """Base-colour images of a scan, mapped onto its triangles by per-corner texture coordinates.

    ``corner_uv[f, k]`` is the (u, v) of corner ``k`` of face ``f`` in glTF's convention: u to the right and
    v *down* from the image's top-left corner, so pixel row = v·H (an OBJ's ``vt`` counts v up from the
    bottom; its reader flips it). ``face_image[f]`` picks the image of face ``f`` (−1: the face has none and
    keeps its vertex colour). Per corner, not per vertex, because UV seams give one vertex several UVs.
    Images are 8-bit sRGB; what a face shows is its vertex colour times its image, multiplied in linear light
    (glTF's ``COLOR_0 × baseColorTexture``; an untextured colourless scan stays neutral).
    """

    corner_uv: np.ndarray  # (F, 3, 2) float32
    face_image: np.ndarray  # (F,) int32, −1 = untextured
    images: list[np.ndarray]  # (H, W, 3) uint8 sRGB each

    def check(self, name: str, num_faces: int) -> "SurfaceTexture":
        uv, index = self.corner_uv, self.face_image
        if uv.shape != (num_faces, 3, 2) or uv.dtype != np.float32:
            raise InputError(f"{name}: texture coordinates must be a ({num_faces}, 3, 2) float32 array, "
                             f"got {uv.shape} {uv.dtype}")
        if index.shape != (num_faces,) or index.dtype.kind not in "iu":
            raise InputError(f"{name}: face_image must be a ({num_faces},) integer array, got {index.shape} {index.dtype}")
        if index.size and (index.min() < -1 or index.max() >= len(self.images)):
            raise InputError(f"{name}: face_image must lie in [-1, {len(self.images)}), got "
                             f"[{index.min()}, {index.max()}]")
        if not np.isfinite(uv).all():
            raise InputError(f"{name}: texture coordinates are NaN or infinite")
        for i, image in enumerate(self.images):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
                raise InputError(f"{name}: texture image {i} must be an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
        return self

    def select_faces(self, keep: np.ndarray) -> "SurfaceTexture":
        """The texture of a subset (or reordering) of the faces: ``keep`` indexes or masks faces."""
        return SurfaceTexture(self.corner_uv[keep], self.face_image[keep], self.images)

    def reverse_winding(self) -> "SurfaceTexture":
        """Corners in the order of faces written ``faces[:, ::-1]`` (as a reflection needs)."""
        return SurfaceTexture(np.ascontiguousarray(self.corner_uv[:, ::-1]), self.face_image, self.images)


@dataclass
class Mesh:
    """A triangle mesh in world coordinates.

    ``faces`` index ``vertices`` (int32, counter-clockwise seen from outside). ``vertex_colors`` are 8-bit
    sRGB-as-given (whatever ``color_fn`` returned, scaled to 0..255), ``vertex_normals`` unit length.
    ``texture`` (scans only; never written by this module's writers) maps base-colour images onto the faces.
    """

    vertices: np.ndarray  # (V, 3) float32
    faces: np.ndarray  # (F, 3) int32
    vertex_colors: np.ndarray | None = None  # (V, 3) uint8
    vertex_normals: np.ndarray | None = None  # (V, 3) float32
    metadata: dict = field(default_factory=dict)  # iso level, resolution, bounds … (not written to PLY/OBJ)
    texture: SurfaceTexture | None = None

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def check(self, name: str = "mesh") -> "Mesh":
        """Raise :class:`InputError` unless arrays have the documented shapes, dtypes and index range."""
        v, f = self.vertices, self.faces
        if v.ndim != 2 or v.shape[1] != 3 or v.dtype != np.float32:
            raise InputError(f"{name}: vertices must be a (V, 3) float32 array, got {v.shape} {v.dtype}")
        if f.ndim != 2 or f.shape[1] != 3 or f.dtype.kind not in "iu":
            raise InputError(f"{name}: faces must be a (F, 3) integer array, got {f.shape} {f.dtype}")
        if f.size and (f.min() < 0 or f.max() >= len(v)):
            raise InputError(f"{name}: face indices must lie in [0, {len(v)}), got [{f.min()}, {f.max()}]")
        if not np.isfinite(v).all():
            raise InputError(f"{name}: {int((~np.isfinite(v)).any(axis=1).sum())} vertex positions are NaN or infinite")
        for label, arr, dtype in (("vertex_colors", self.vertex_colors, np.uint8),
                                  ("vertex_normals", self.vertex_normals, np.float32)):
            if arr is not None and (arr.shape != v.shape or arr.dtype != dtype):
                raise InputError(
                    f"{name}: {label} must be a ({len(v)}, 3) {np.dtype(dtype)} array, got {arr.shape} {arr.dtype}"
                )
        if self.texture is not None:
            self.texture.check(name, len(f))
        return self


# ------------------------------------------------------------------------------------------------------
# Grid sampling
# ------------------------------------------------------------------------------------------------------
def grid_axes(config: MeshConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (float64) of the N grid planes along x, y and z: ``min + i·(max − min)/(N − 1)``."""
    lo, hi = np.asarray(config.bounds, dtype=np.float64)
    steps = np.arange(config.resolution, dtype=np.float64)
    step = (hi - lo) / (config.resolution - 1)
    return tuple(lo[a] + steps * step[a] for a in range(3))  # type: ignore[return-value]


def voxel_to_world(index_points: np.ndarray, config: MeshConfig) -> np.ndarray:
    """Map (fractional) grid indices ``(i, j, k)`` to world points as float32, exactly as the grid was sampled."""
    lo = np.asarray(config.bounds[0], dtype=np.float64)
    return (lo + np.asarray(index_points, dtype=np.float64) * config.voxel_size).astype(np.float32)


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _query(fn: PointFn, points: torch.Tensor, channels: int, what: str) -> torch.Tensor:
    """Call ``fn`` and insist on ``(M,)`` (channels 0) or ``(M, channels)`` finite float output."""
    out = fn(points)
    m = points.shape[0]
    if not isinstance(out, torch.Tensor):
        raise EngineError(f"{what} must return a torch.Tensor, got {type(out).__name__}")
    expected = (m,) if channels == 0 else (m, channels)
    if tuple(out.shape) != expected:
        if channels == 0 and out.numel() == m:  # tolerate (M, 1)
            out = out.reshape(m)
        else:
            raise EngineError(f"{what} returned shape {tuple(out.shape)} for {m} points; expected {expected}")
    out = out.float()
    if not bool(torch.isfinite(out).all()):
        raise EngineError(f"{what} returned NaN or infinite values")
    return out


class _Lattice:
    """A regular lattice of world points addressed by flat C-order index, built on the fly per chunk.

    Only the three per-axis coordinate tables are stored (on the query device), so coordinates for any set
    of flat indices are a gather, never an N³×3 array, and identical whatever chunk they fall in.
    """

    def __init__(self, axes: Sequence[np.ndarray], device: torch.device):
        self.shape = tuple(len(a) for a in axes)
        self.axes = [torch.from_numpy(np.asarray(a, dtype=np.float32)).to(device) for a in axes]
        self.device = device

    def points(self, flat: torch.Tensor) -> torch.Tensor:
        _, ny, nz = self.shape
        yz = ny * nz
        return torch.stack((self.axes[0][flat // yz], self.axes[1][(flat // nz) % ny], self.axes[2][flat % nz]), dim=1)

    def evaluate(self, density_fn: PointFn, flat: np.ndarray | tuple[int, int]) -> np.ndarray:
        """Density at the given flat indices (an index array or a ``(start, stop)`` range) as float32."""
        if isinstance(flat, tuple):
            index = torch.arange(flat[0], flat[1], device=self.device, dtype=torch.int64)
        else:
            index = torch.from_numpy(flat).to(self.device)
        return _query(density_fn, self.points(index), 0, "density_fn").cpu().numpy()


def _coarse_indices(n: int, stride: int) -> np.ndarray:
    """Fine-grid indices of the coarse lattice: every ``stride``-th plane plus the last one."""
    return np.unique(np.append(np.arange(0, n, stride), n - 1))


def _upsample_linear(coarse: np.ndarray, coarse_idx: np.ndarray, n: int, out: np.ndarray, rows: int) -> None:
    """Trilinearly interpolate a coarse lattice onto the full grid ``out``, ``rows`` x-planes at a time.

    Interpolation never leaves the range of a cell's corners, so a cell whose corners all lie on one side
    of the iso level stays on that side everywhere: those voxels can skip the network.
    """
    fine = np.arange(n)
    cell = np.clip(np.searchsorted(coarse_idx, fine, side="right") - 1, 0, len(coarse_idx) - 2)
    t = ((fine - coarse_idx[cell]) / (coarse_idx[cell + 1] - coarse_idx[cell])).astype(np.float32)

    def along(values: np.ndarray, axis: int, pick: slice) -> np.ndarray:
        lo, hi, w = cell[pick], cell[pick] + 1, t[pick]
        shape = [1, 1, 1]
        shape[axis] = len(w)
        w = w.reshape(shape)
        a, b = np.take(values, lo, axis=axis), np.take(values, hi, axis=axis)
        return a + (b - a) * w

    for start, stop in _chunks(n, rows):
        block = along(coarse, 0, slice(start, stop))
        block = along(block, 1, slice(None))
        out[start:stop] = along(block, 2, slice(None))


def _straddling_cells(coarse: np.ndarray, iso: float) -> np.ndarray:
    """Coarse cells whose eight corners straddle (or touch) the iso level."""
    m = coarse.shape[0] - 1
    corners = [coarse[i : i + m, j : j + m, k : k + m] for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    return (np.minimum.reduce(corners) <= iso) & (np.maximum.reduce(corners) >= iso)


def _active_cells(coarse: np.ndarray, coarse_idx: np.ndarray, config: MeshConfig) -> np.ndarray:
    """Coarse cells to query at full resolution: iso-crossings of the raw field and, when the boundary
    will be padded, of the padded field too (the caps closing a cut surface), grown by ``coarse_dilation``.
    """
    iso = float(config.iso_level)
    active = _straddling_cells(coarse, iso)
    if config.pad_boundary:
        n, w = config.resolution, config.pad_width
        in_pad = (coarse_idx < w) | (coarse_idx >= n - w)
        padded = coarse.copy()
        padded[in_pad] = padded[:, in_pad] = padded[:, :, in_pad] = config.pad_fill
        active |= _straddling_cells(padded, iso)
    dilation = config.coarse_dilation
    if dilation and active.any():
        active = scipy.ndimage.binary_dilation(active, structure=np.ones((3, 3, 3), bool), iterations=dilation)
    return active


def _refined_index_chunks(
    active: np.ndarray, coarse_idx: np.ndarray, n: int, chunk_size: int
) -> Iterator[tuple[np.ndarray, float]]:
    """Yield flat indices of every fine voxel on or inside an active coarse cell, ``chunk_size`` at a time.

    Each chunk comes with the fraction of x-planes scanned so far (for progress). A voxel on a coarse plane
    belongs to the cells on both sides, hence the two cell lookups per axis.
    """
    fine = np.arange(n)
    last = len(coarse_idx) - 2
    below = np.clip(np.searchsorted(coarse_idx, fine, side="right") - 1, 0, last)  # cell with idx in [lo, hi)
    above = np.clip(np.searchsorted(coarse_idx, fine, side="left") - 1, 0, last)  # cell with idx in (lo, hi]
    # Spread the cell mask onto fine voxels one axis at a time (z, then y, then x per slab of planes).
    covered = active[:, :, below] | active[:, :, above]
    covered = covered[:, below, :] | covered[:, above, :]  # (cells along x, n, n)
    rows = max(1, chunk_size // (n * n))
    pending: list[np.ndarray] = []
    pending_count = 0
    for start, stop in _chunks(n, rows):
        mask = covered[below[start:stop]] | covered[above[start:stop]]
        flat = np.flatnonzero(mask)
        if flat.size:
            pending.append(flat + start * n * n)
            pending_count += flat.size
        while pending_count >= chunk_size or (stop == n and pending_count):
            merged = np.concatenate(pending)
            yield merged[:chunk_size], stop / n
            rest = merged[chunk_size:]
            pending, pending_count = ([rest] if rest.size else []), rest.size


def sample_grid(
    density_fn: PointFn,
    config: MeshConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> np.ndarray:
    """Evaluate ``density_fn`` on the N³ grid of ``config`` and return it as a C-ordered float32 array.

    Points go to ``density_fn`` as float32 ``(M, 3)`` tensors on ``device``, at most ``config.chunk_size``
    at a time; memory is the float32 result plus a coarse copy and one chunk of points.

    With ``config.coarse_stride == 1`` every voxel is queried. With a larger stride the field is first
    sampled every ``coarse_stride`` voxels; only the coarse cells whose corners straddle the iso level
    (grown by ``coarse_dilation`` cells) are queried at full resolution, and the rest is trilinearly
    interpolated, which keeps it on the correct side of the iso level. The surface is therefore the dense
    one except where it enters a coarse cell without flipping any of its corners, more than
    ``coarse_dilation`` cells from a detected crossing — a blob thinner than a coarse cell and on its own,
    i.e. a floater that the largest-component cleanup would drop anyway. The refinement already covers the
    caps that ``config.pad_boundary`` will add, though the returned grid itself is not padded.
    ``progress(fraction)`` is called after each chunk (raise from
    it to cancel).
    """
    config = (config or MeshConfig()).validate()
    n = config.resolution
    device = torch.device(device)
    axes = grid_axes(config)
    report = progress or (lambda fraction: None)
    with torch.no_grad():
        stride = config.effective_coarse_stride
        if stride == 1:
            lattice = _Lattice(axes, device)
            grid = np.empty(n**3, dtype=np.float32)
            for start, stop in _chunks(n**3, config.chunk_size):
                grid[start:stop] = lattice.evaluate(density_fn, (start, stop))
                report(stop / n**3)
            return grid.reshape(n, n, n)

        coarse_idx = _coarse_indices(n, stride)
        m = len(coarse_idx)
        coarse_lattice = _Lattice([a[coarse_idx] for a in axes], device)
        coarse = np.empty(m**3, dtype=np.float32)
        for start, stop in _chunks(m**3, config.chunk_size):
            coarse[start:stop] = coarse_lattice.evaluate(density_fn, (start, stop))
            report(0.1 * stop / m**3)
        coarse = coarse.reshape(m, m, m)

        grid = np.empty((n, n, n), dtype=np.float32)
        _upsample_linear(coarse, coarse_idx, n, grid, rows=max(1, 2**22 // (n * n)))
        flat_grid = grid.reshape(-1)
        lattice = _Lattice(axes, device)
        active = _active_cells(coarse, coarse_idx, config)
        for flat, scanned in _refined_index_chunks(active, coarse_idx, n, config.chunk_size):
            flat_grid[flat] = lattice.evaluate(density_fn, flat)
            report(0.1 + 0.9 * scanned)
        report(1.0)
    return grid


# ------------------------------------------------------------------------------------------------------
# Surface extraction and cleanup
# ------------------------------------------------------------------------------------------------------
def pad_grid_boundary(grid: np.ndarray, width: int, value: float) -> np.ndarray:
    """Set the outer ``width`` layers of ``grid`` to ``value`` in place (closes surfaces cut by the box)."""
    w = width
    for axis in range(3):
        index = [slice(None)] * 3
        index[axis] = slice(0, w)
        grid[tuple(index)] = value
        index[axis] = slice(grid.shape[axis] - w, None)
        grid[tuple(index)] = value
    return grid


def marching_cubes(grid: np.ndarray, config: MeshConfig) -> tuple[np.ndarray, np.ndarray]:
    """Run marching cubes at ``config.iso_level``; return world-space float32 vertices and int32 faces.

    ``grid`` is used as-is (no padding here). Faces are wound outward for a dense-inside field.
    """
    volume = np.ascontiguousarray(grid, dtype=np.float32)  # mcubes is ~6x slower on non-C-ordered input
    verts, faces = mcubes.marching_cubes(volume, float(config.iso_level))
    if len(verts) >= 2**31:
        raise EngineError(f"marching cubes produced {len(verts)} vertices; too many for int32 faces")
    faces = faces.astype(np.int32)
    if not MCUBES_WINDS_OUTWARD_FOR_DENSE_INSIDE:
        faces = faces[:, ::-1].copy()
    return voxel_to_world(verts, config), faces


def remove_unused_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop vertices no face uses; return ``(vertices, faces, kept_old_indices)``."""
    used = np.zeros(len(vertices), dtype=bool)
    used[faces.ravel()] = True
    new_index = np.cumsum(used, dtype=np.int64) - 1
    kept = np.flatnonzero(used)
    return vertices[kept], new_index[faces].astype(faces.dtype), kept


def face_components(num_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Connected-component label of every face, where faces sharing a vertex are connected."""
    if len(faces) == 0:
        return np.zeros(0, dtype=np.int32)
    rows = np.concatenate((faces[:, 0], faces[:, 1]))
    cols = np.concatenate((faces[:, 1], faces[:, 2]))
    adjacency = scipy.sparse.coo_matrix(
        (np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(num_vertices, num_vertices)
    ).tocsr()
    _, vertex_labels = scipy.sparse.csgraph.connected_components(adjacency, directed=False)
    return vertex_labels[faces[:, 0]]


def keep_largest_component(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep only the connected component with the most faces (first one on ties).

    Returns ``(vertices, faces, kept_old_vertex_indices)``. Floaters — the small blobs of density that a
    GAN leaves around a head — are what this removes.
    """
    labels = face_components(len(vertices), faces)
    if len(labels) == 0:
        return vertices, faces, np.arange(len(vertices))
    biggest = np.argmax(np.bincount(labels))
    return remove_unused_vertices(vertices, faces[labels == biggest])


def face_normals(vertices: np.ndarray, faces: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Per-face normals ``(b − a) × (c − a)``; unnormalised, their length is twice the triangle's area."""
    v = vertices.astype(np.float64, copy=False)
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    n = np.cross(b - a, c - a)
    if normalize:
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
    return n


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (float32); a vertex with only degenerate faces gets a zero normal."""
    weighted = face_normals(vertices, faces, normalize=False)
    corners = faces.ravel()  # every face contributes its normal to each of its three corners
    acc = np.stack(
        [np.bincount(corners, weights=np.repeat(weighted[:, axis], 3), minlength=len(vertices)) for axis in range(3)],
        axis=1,
    )
    length = np.linalg.norm(acc, axis=1, keepdims=True)
    return np.where(length > 0, acc / np.where(length > 0, length, 1.0), 0.0).astype(np.float32)


# ------------------------------------------------------------------------------------------------------
# Colours
# ------------------------------------------------------------------------------------------------------
def sample_vertex_colors(
    color_fn: PointFn,
    vertices: np.ndarray,
    config: MeshConfig,
    normals: np.ndarray | None = None,
    *,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Query ``color_fn`` at the vertices (averaging ``color_samples`` points inward along the normal) → uint8.

    Colours are clipped to [0, 1] and rounded to 8 bits, which is what PLY and Blender's colour attributes
    store anyway.
    """
    device = torch.device(device)
    k = config.color_samples
    if k > 1 and (normals is None or normals.shape != vertices.shape):
        raise EngineError("sample_vertex_colors: color_samples > 1 needs (V, 3) vertex normals to step inward")
    # Offsets in world units along −normal: 0, d/(k−1), …, d with d = color_depth_voxels mean voxel sizes.
    depth = float(config.color_depth_voxels * np.mean(config.voxel_size))
    offsets = torch.linspace(0.0, depth, k, device=device, dtype=torch.float32) if k > 1 else None
    colors = np.empty((len(vertices), 3), dtype=np.uint8)
    per_chunk = max(1, config.chunk_size // k)
    with torch.no_grad():
        for start, stop in _chunks(len(vertices), per_chunk):
            p = torch.from_numpy(vertices[start:stop]).to(device)
            if offsets is not None:
                nrm = torch.from_numpy(normals[start:stop]).to(device)
                p = (p[:, None, :] - offsets[None, :, None] * nrm[:, None, :]).reshape(-1, 3)
            rgb = _query(color_fn, p, 3, "color_fn")
            if offsets is not None:
                rgb = rgb.reshape(-1, k, 3).mean(dim=1)
            colors[start:stop] = (rgb.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()
    return colors


# ------------------------------------------------------------------------------------------------------
# Whole pipeline
# ------------------------------------------------------------------------------------------------------
class _StageClock:
    """Adds the wall time of each named stage to an optional caller-supplied dict."""

    def __init__(self, sink: dict[str, float] | None):
        self.sink = sink
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self.sink is not None:
            self.sink[stage] = self.sink.get(stage, 0.0) + now - self.last
        self.last = now


def _mesh_from_owned_grid(
    grid: np.ndarray,
    config: MeshConfig,
    color_fn: PointFn | None,
    device: torch.device | str,
    clock: _StageClock,
) -> Mesh:
    """Pipeline after sampling; may overwrite ``grid`` (the boundary padding)."""
    if not np.isfinite(grid).all():
        raise EngineError(f"density grid holds {int((~np.isfinite(grid)).sum())} NaN/infinite values")
    low, high = float(grid.min()), float(grid.max())
    if config.pad_boundary:
        pad_grid_boundary(grid, config.pad_width, config.pad_fill)
    vertices, faces = marching_cubes(grid, config)
    clock.lap("marching_cubes")
    if len(faces) == 0:
        raise EngineError(
            f"no surface at iso level {config.iso_level:g}; density range is [{low:.4g}, {high:.4g}] over "
            f"bounds {config.bounds} at resolution {config.resolution} — lower/raise MeshConfig.iso_level"
        )
    if config.largest_component_only:
        vertices, faces, _ = keep_largest_component(vertices, faces)
    clock.lap("cleanup")
    normals = vertex_normals(vertices, faces) if (config.compute_normals or config.color_samples > 1) else None
    clock.lap("normals")
    colors = None
    if color_fn is not None:
        colors = sample_vertex_colors(color_fn, vertices, config, normals, device=device)
    clock.lap("colors")
    return Mesh(
        vertices=vertices,
        faces=faces,
        vertex_colors=colors,
        vertex_normals=normals if config.compute_normals else None,
        metadata={
            "iso_level": float(config.iso_level),
            "resolution": int(config.resolution),
            "bounds": [list(map(float, b)) for b in config.bounds],
            "density_range": [low, high],
        },
    )


def mesh_from_grid(
    grid: np.ndarray,
    config: MeshConfig | None = None,
    color_fn: PointFn | None = None,
    *,
    device: torch.device | str = "cpu",
    timings: dict[str, float] | None = None,
) -> Mesh:
    """Extract a mesh from an already sampled grid (e.g. to try several iso levels); ``grid`` is not modified."""
    config = (config or MeshConfig()).validate()
    n = config.resolution
    if grid.shape != (n, n, n):
        raise InputError(f"grid: expected shape ({n}, {n}, {n}) for MeshConfig.resolution={n}, got {grid.shape}")
    owned = np.array(grid, dtype=np.float32, order="C", copy=True)
    return _mesh_from_owned_grid(owned, config, color_fn, device, _StageClock(timings))


def extract_mesh(
    density_fn: PointFn,
    color_fn: PointFn | None = None,
    config: MeshConfig | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    timings: dict[str, float] | None = None,
) -> Mesh:
    """Sample ``density_fn`` on the config's grid and return the closed, cleaned, coloured iso-surface.

    ``timings``, when given, receives seconds per stage (``sample_grid``, ``marching_cubes``, ``cleanup``,
    ``normals``, ``colors``). Raises :class:`EngineError` when the field has no surface at the iso level.
    """
    config = (config or MeshConfig()).validate()
    clock = _StageClock(timings)
    grid = sample_grid(density_fn, config, device=device, progress=progress)
    clock.lap("sample_grid")
    return _mesh_from_owned_grid(grid, config, color_fn, device, clock)


# ------------------------------------------------------------------------------------------------------
# Writers and readers (all atomic)
# ------------------------------------------------------------------------------------------------------
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "<i2", "int16": "<i2",
    "ushort": "<u2", "uint16": "<u2", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}


def _ply_vertex_dtype(mesh: Mesh, with_normals: bool) -> np.dtype:
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if with_normals:
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if mesh.vertex_colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    return np.dtype(fields)


def write_ply(mesh: Mesh, path: str | os.PathLike, *, normals: bool = True) -> Path:
    """Binary little-endian PLY: float x y z, [float nx ny nz], [uchar red green blue], int faces."""
    mesh.check(str(path))
    with_normals = normals and mesh.vertex_normals is not None
    vdtype = _ply_vertex_dtype(mesh, with_normals)
    vertex_rows = np.empty(mesh.num_vertices, dtype=vdtype)
    for axis, name in enumerate("xyz"):
        vertex_rows[name] = mesh.vertices[:, axis]
        if with_normals:
            vertex_rows["n" + name] = mesh.vertex_normals[:, axis]
    if mesh.vertex_colors is not None:
        for axis, name in enumerate(("red", "green", "blue")):
            vertex_rows[name] = mesh.vertex_colors[:, axis]
    face_rows = np.empty(mesh.num_faces, dtype=np.dtype([("count", "u1"), ("index", "<i4", (3,))]))
    face_rows["count"] = 3
    face_rows["index"] = mesh.faces
    type_names = {"<f4": "float", "|u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment Head Stylizer engine mesh",
              f"element vertex {mesh.num_vertices}"]
    header += [f"property {type_names[vdtype[name].str]} {name}" for name in vdtype.names]
    header += [f"element face {mesh.num_faces}", "property list uchar int vertex_indices", "end_header"]

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(("\n".join(header) + "\n").encode("ascii"))
            fh.write(vertex_rows.tobytes())
            fh.write(face_rows.tobytes())

    return write_with(path, write)


def read_ply(path: str | os.PathLike, limits: InputLimits | None = None) -> Mesh:
    """Read a binary little-endian triangle PLY (what :func:`write_ply` writes, or similar).

    An untrusted file (:mod:`engine.io.untrusted`): a regular file within the size limit; the element counts
    the header claims are checked against the vertex/face limits and against the bytes that follow the
    header before any table is decoded; a ``comment TextureFile`` must stay inside the PLY's folder.
    """
    limits = active_limits(limits)
    name = str(path)
    data = read_bytes(path, "PLY", limits=limits)
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise InputError(f"{name}: not a PLY file (missing 'ply' magic or 'end_header')")
    newline = data.find(b"\n", end)
    if newline < 0:
        raise InputError(f"{name}: truncated PLY header (nothing after 'end_header')")
    body_start = newline + 1
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    check_ply_references(path, lines, limits)
    elements: list[tuple[str, int, list[list[str]]]] = []
    for line in lines[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) < 2 or words[1] != "binary_little_endian":
                raise InputError(f"{name}: only binary_little_endian PLY is supported, got {' '.join(words[1:2]) or 'nothing'}")
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise InputError(f"{name}: malformed PLY header line {line!r}")
            count = int(words[2])
            if words[1] == "vertex":
                check_count(name, "PLY header claims vertex count", count, limits.max_vertices, "max_vertices")
            elif words[1] == "face":
                check_count(name, "PLY header claims face count", count, limits.max_faces, "max_faces")
            elements.append((words[1], count, []))
        elif words[0] == "property" and elements:
            elements[-1][2].append(words[1:])
    try:
        vertex_table, faces = _read_ply_body(data, body_start, elements, name)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{name}: truncated or unsupported PLY body ({exc})") from None
    if vertex_table is None or faces is None:
        raise InputError(f"{name}: PLY needs both a vertex and a face element")
    names = vertex_table.dtype.names
    if not {"x", "y", "z"} <= set(names):
        raise InputError(f"{name}: PLY vertices lack x/y/z properties (have {list(names)})")

    def stack(keys: tuple[str, str, str], dtype) -> np.ndarray | None:
        if all(k in names for k in keys):
            return np.stack([vertex_table[k] for k in keys], axis=1).astype(dtype)
        return None

    return Mesh(
        vertices=stack(("x", "y", "z"), np.float32),
        faces=faces,
        vertex_colors=stack(("red", "green", "blue"), np.uint8),
        vertex_normals=stack(("nx", "ny", "nz"), np.float32),
    ).check(name)


def _read_ply_body(
    data: bytes, offset: int, elements: list[tuple[str, int, list[list[str]]]], name: str
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Decode the binary element tables; returns the vertex record array and (F, 3) int32 faces."""
    vertex_table = faces = None

    def need(dtype: np.dtype, count: int, element: str) -> None:
        size = dtype.itemsize * count
        if offset + size > len(data):
            raise InputError(
                f"{name}: PLY header claims {count:,} {element} records ({size:,} bytes) but only "
                f"{max(len(data) - offset, 0):,} bytes follow; the file is truncated or the count is false"
            )

    for element, count, props in elements:
        if element == "face":
            if len(props) != 1 or props[0][0] != "list":
                raise InputError(f"{name}: face element must be a single vertex_indices list")
            count_t, index_t = _PLY_TYPES[props[0][1]], _PLY_TYPES[props[0][2]]
            fdtype = np.dtype([("count", count_t), ("index", index_t, (3,))])
            need(fdtype, count, element)
            table = np.frombuffer(data, dtype=fdtype, count=count, offset=offset)
            if count and not np.all(table["count"] == 3):
                raise InputError(f"{name}: only triangle faces are supported")
            faces = table["index"].astype(np.int32)
            offset += fdtype.itemsize * count
        else:
            if any(p[0] == "list" for p in props):
                raise InputError(f"{name}: list properties are only supported on faces (element {element!r})")
            edtype = np.dtype([(p[1], _PLY_TYPES[p[0]]) for p in props])
            need(edtype, count, element)
            table = np.frombuffer(data, dtype=edtype, count=count, offset=offset)
            offset += edtype.itemsize * count
            if element == "vertex":
                vertex_table = table
    return vertex_table, faces


def _format_rows(fh: io.TextIOBase, row_format: str, table: np.ndarray, rows_per_block: int = 65536) -> None:
    """Write ``row_format % row`` for each row, formatting a block of rows with one ``%`` operation."""
    for start, stop in _chunks(len(table), rows_per_block):
        block = table[start:stop]
        fh.write((row_format * len(block)) % tuple(block.ravel().tolist()))


def write_obj(mesh: Mesh, path: str | os.PathLike, *, normals: bool = True) -> Path:
    """Wavefront OBJ with per-vertex colour as the widespread ``v x y z r g b`` extension (r, g, b in 0..1)."""
    mesh.check(str(path))
    with_normals = normals and mesh.vertex_normals is not None

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="ascii", newline="\n") as fh:
            fh.write("# Head Stylizer engine mesh\n")
            if mesh.vertex_colors is not None:
                table = np.concatenate(
                    (mesh.vertices.astype(np.float64), mesh.vertex_colors.astype(np.float64) / 255.0), axis=1
                )
                _format_rows(fh, "v %.9g %.9g %.9g %.6g %.6g %.6g\n", table)
            else:
                _format_rows(fh, "v %.9g %.9g %.9g\n", mesh.vertices.astype(np.float64))
            if with_normals:
                _format_rows(fh, "vn %.6g %.6g %.6g\n", mesh.vertex_normals.astype(np.float64))
            one_based = mesh.faces.astype(np.int64) + 1
            if with_normals:
                _format_rows(fh, "f %d//%d %d//%d %d//%d\n", np.repeat(one_based, 2, axis=1))
            else:
                _format_rows(fh, "f %d %d %d\n", one_based)

    return write_with(path, write)


def write_npz(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Compressed NumPy archive with ``vertices``, ``faces`` and, when present, colours and normals."""
    mesh.check(str(path))
    arrays = {"vertices": mesh.vertices, "faces": mesh.faces}
    if mesh.vertex_colors is not None:
        arrays["vertex_colors"] = mesh.vertex_colors
    if mesh.vertex_normals is not None:
        arrays["vertex_normals"] = mesh.vertex_normals

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object stops numpy from appending ".npz" to the temp name
            np.savez_compressed(fh, **arrays)

    return write_with(path, write)


def read_npz(path: str | os.PathLike, limits: InputLimits | None = None) -> Mesh:
    """Read a mesh written by :func:`write_npz` (array sizes checked from the headers, no pickles)."""
    limits = active_limits(limits)
    name = str(path)
    keys = {"vertices", "faces", "vertex_colors", "vertex_normals"}
    headers = npz_headers(path, "mesh NPZ", limits=limits)
    missing = {"vertices", "faces"} - set(headers)
    if missing:
        raise InputError(f"{name}: mesh NPZ lacks {sorted(missing)}")
    for key, limit, label in (("vertices", limits.max_vertices, "max_vertices"), ("faces", limits.max_faces, "max_faces")):
        shape = headers[key][0]
        check_count(name, f"'{key}' count", shape[0] if shape else 0, limit, label)
    arrays = load_npz(path, keys & set(headers), "mesh NPZ", limits=limits)
    return Mesh(
        vertices=arrays["vertices"],
        faces=arrays["faces"],
        vertex_colors=arrays.get("vertex_colors"),
        vertex_normals=arrays.get("vertex_normals"),
    ).check(name)


MESH_WRITERS: dict[str, Callable[[Mesh, str | os.PathLike], Path]] = {
    ".ply": write_ply,
    ".obj": write_obj,
    ".npz": write_npz,
}


def write_mesh(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write ``mesh`` in the format named by the file extension (.ply, .obj or .npz)."""
    suffix = Path(path).suffix.lower()
    writer = MESH_WRITERS.get(suffix)
    if writer is None:
        raise InputError(f"{path}: unsupported mesh format {suffix!r}; use one of {sorted(MESH_WRITERS)}")
    return writer(mesh, path)
