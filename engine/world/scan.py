"""Export a procedural head as a "scan": a closed, vertex-coloured triangle mesh in scanner-like coordinates.

The mesh is the zero level set of the head's SDF, extracted with the project's marching-cubes pipeline
(:func:`engine.mesh.extract_mesh`, density = −SDF, iso level 0), coloured with the photo style's albedo
(no lighting baked in), and written as PLY and OBJ with :func:`engine.mesh.write_mesh`.

Real scanners do not export in the generator's frame, so :class:`ScanExport` can move the mesh the way one
would: into millimetres (or cm / m), z-up instead of y-up, turned on the turntable, with the origin on the
base of the bust and an arbitrary extra offset. The exact world→scan matrix is recorded in a JSON sidecar,
which gives the scan-normalisation step something realistic to undo and its tests the ground truth.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..io.atomic import write_json
from ..mesh import Mesh, MeshConfig, extract_mesh, write_mesh
from .identity import check_identity, to_physical
from .sdf import HEAD_BOUNDS, WORLD_UNITS_PER_CM, HeadGeometry, geometry_distance, geometry_sdf_and_material
from .styles import albedo_table, linear_to_srgb

# Scan units per world unit.
UNIT_SCALES = {
    "world": 1.0,
    "m": 0.01 / WORLD_UNITS_PER_CM,
    "cm": 1.0 / WORLD_UNITS_PER_CM,
    "mm": 10.0 / WORLD_UNITS_PER_CM,
}
UP_AXES = ("y", "z")
ORIGINS = ("world", "base")

# The grid extends this far (world units) beyond HEAD_BOUNDS so the flat cut under the torso lies strictly
# inside it and the surface closes by itself.
_GRID_MARGIN = 0.02


@dataclass(frozen=True)
class ScanExport:
    """How to mesh the head and where to put it.

    ``units``: world (the generator's frame), m, cm or mm of the real head. ``up_axis``: "y" keeps the
    world's y-up, "z" turns it z-up as many scanners export. ``yaw_degrees`` turns the head about its up axis
    (a turntable that was not at zero). ``origin``: "world" keeps the generator's origin, "base" puts the
    origin at the centre of the bust's flat base. ``offset`` is added last, in scan units.
    """

    resolution: int = 112
    units: str = "mm"
    up_axis: str = "z"
    yaw_degrees: float = 0.0
    origin: str = "base"
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    formats: tuple[str, ...] = (".ply", ".obj")

    def validate(self) -> "ScanExport":
        if self.units not in UNIT_SCALES:
            raise ConfigError(f"ScanExport.units must be one of {sorted(UNIT_SCALES)}, got {self.units!r}")
        if self.up_axis not in UP_AXES:
            raise ConfigError(f"ScanExport.up_axis must be one of {UP_AXES}, got {self.up_axis!r}")
        if self.origin not in ORIGINS:
            raise ConfigError(f"ScanExport.origin must be one of {ORIGINS}, got {self.origin!r}")
        if not isinstance(self.resolution, int) or self.resolution < 16:
            raise ConfigError(f"ScanExport.resolution must be an integer ≥ 16, got {self.resolution!r}")
        if len(self.offset) != 3 or not all(math.isfinite(float(v)) for v in self.offset):
            raise ConfigError(f"ScanExport.offset must be three finite numbers, got {self.offset!r}")
        bad = [f for f in self.formats if f not in (".ply", ".obj", ".npz")]
        if bad or not self.formats:
            raise ConfigError(f"ScanExport.formats must be a non-empty subset of .ply/.obj/.npz, got {self.formats!r}")
        return self


@dataclass
class ScanResult:
    """The exported mesh (in scan coordinates), the files written and the transform that was applied."""

    mesh: Mesh
    paths: list[Path]
    sidecar: Path
    world_to_scan: np.ndarray  # (4, 4) float64: scan = M @ [world, 1]


def _single_identity(identity: Tensor) -> Tensor:
    identity = check_identity(identity)
    if identity.shape[0] != 1:
        raise ConfigError(f"a scan exports one head; got a batch of {identity.shape[0]} identities")
    return identity.float()


def head_mesh(identity: Tensor, resolution: int = 112) -> Mesh:
    """Closed, vertex-coloured mesh of one head in world units (colours: photo albedo, 8-bit sRGB)."""
    identity = _single_identity(identity)
    physical = to_physical(identity)
    geometry = HeadGeometry.from_physical(physical)
    table = albedo_table(physical)[0]  # (materials, 3) linear

    def density(points: Tensor) -> Tensor:
        return -geometry_distance(points.unsqueeze(0), geometry)[0]

    def colour(points: Tensor) -> Tensor:
        _, material = geometry_sdf_and_material(points.unsqueeze(0), geometry)
        return linear_to_srgb(table[material[0]]).clamp(0.0, 1.0)

    lo = tuple(v - _GRID_MARGIN for v in HEAD_BOUNDS[0])
    hi = tuple(v + _GRID_MARGIN for v in HEAD_BOUNDS[1])
    config = MeshConfig(resolution=int(resolution), bounds=(lo, hi), iso_level=0.0, coarse_stride=1).validate()
    with torch.no_grad():
        return extract_mesh(density, colour, config)


def _rotation_about(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def scan_transform(vertices_world: np.ndarray, config: ScanExport) -> np.ndarray:
    """(4, 4) world→scan matrix: scale to units, turn about up, re-orient up, move the origin, offset."""
    config = config.validate()
    linear = _rotation_about(1, config.yaw_degrees) * UNIT_SCALES[config.units]
    if config.up_axis == "z":
        linear = _rotation_about(0, 90.0) @ linear  # world +y → scan +z, world +z → scan −y
    moved = vertices_world.astype(np.float64) @ linear.T
    translation = np.zeros(3)
    if config.origin == "base":
        up = 2 if config.up_axis == "z" else 1
        lo, hi = moved.min(axis=0), moved.max(axis=0)
        translation = -(lo + hi) / 2
        translation[up] = -lo[up]
    translation = translation + np.asarray(config.offset, dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = linear, translation
    return matrix


def apply_transform(mesh: Mesh, matrix: np.ndarray) -> Mesh:
    """A copy of ``mesh`` moved by the similarity ``matrix`` (normals rotated and renormalised)."""
    vertices = mesh.vertices.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
    normals = None
    if mesh.vertex_normals is not None:
        rotated = mesh.vertex_normals.astype(np.float64) @ matrix[:3, :3].T
        length = np.linalg.norm(rotated, axis=1, keepdims=True)
        normals = (rotated / np.where(length > 0, length, 1.0)).astype(np.float32)
    return Mesh(
        vertices=vertices.astype(np.float32),
        faces=mesh.faces,
        vertex_colors=mesh.vertex_colors,
        vertex_normals=normals,
        metadata=dict(mesh.metadata),
    )


def export_scan(identity: Tensor, path: str | os.PathLike, config: ScanExport = ScanExport()) -> ScanResult:
    """Mesh one head (identity (D,) or (1, D)), move it as a scanner would and write it.

    ``path`` is the file stem: ``<path>.ply`` / ``<path>.obj`` (per ``config.formats``) and the sidecar
    ``<path>.json`` holding the world→scan and scan→world matrices, the units and the identity.
    """
    config = config.validate()
    identity = _single_identity(identity)
    world_mesh = head_mesh(identity, config.resolution)
    matrix = scan_transform(world_mesh.vertices, config)
    mesh = apply_transform(world_mesh, matrix)
    stem = Path(path)
    stem = stem.with_suffix("") if stem.suffix.lower() in (".ply", ".obj", ".npz", ".json") else stem
    paths = [write_mesh(mesh, stem.with_name(stem.name + fmt)) for fmt in config.formats]
    voxel = (np.asarray(HEAD_BOUNDS[1]) - np.asarray(HEAD_BOUNDS[0]) + 2 * _GRID_MARGIN) / (config.resolution - 1)
    sidecar = write_json(
        stem.with_name(stem.name + ".json"),
        {
            "kind": "procedural head scan",
            "export": {**asdict(config), "offset": list(config.offset), "formats": list(config.formats)},
            "units": config.units,
            "scan_units_per_world_unit": UNIT_SCALES[config.units],
            "world_units_per_cm": WORLD_UNITS_PER_CM,
            "world_to_scan": matrix.tolist(),
            "scan_to_world": np.linalg.inv(matrix).tolist(),
            "voxel_size_world": voxel.tolist(),
            "num_vertices": mesh.num_vertices,
            "num_faces": mesh.num_faces,
            "identity": identity[0].tolist(),
        },
    )
    return ScanResult(mesh=mesh, paths=paths, sidecar=sidecar, world_to_scan=matrix)


def load_scan_transform(sidecar: str | os.PathLike) -> np.ndarray:
    """The (4, 4) world→scan matrix recorded next to an exported scan."""
    data = json.loads(Path(sidecar).read_text(encoding="utf-8"))
    return np.asarray(data["world_to_scan"], dtype=np.float64)
