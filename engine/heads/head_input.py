"""Head mode's input: an artist's mesh file, checked, cleaned and (when very dense) simplified before the fit.

:func:`engine.heads.scans.read_scan_mesh` refuses what cannot be read at all (no triangles, NaN vertices,
indices out of range, files reaching outside their folder). Head mode needs more of a mesh than that: its
fit takes inside and outside from the generalised winding number and colour from the closest surface point
(:mod:`engine.heads.mesh_field`), so the surface must enclose something, and its triangle count must suit
closest-point queries and rasterised views run thousands of times. :func:`read_head_mesh` settles all of
this before any model is loaded, so a bad file costs seconds, emits no event and leaves nothing in the
output folder. What it does with each kind of input:

* **no faces** (points only) — refused by the reader, naming the file;
* **zero-area or repeated triangles** (a repeated corner, the same three corners twice — either winding, as a
  "double-sided" export writes them, whose two windings would cancel in the winding number) — dropped, with
  a warning; a file with nothing else is refused;
* **a surface that encloses (almost) nothing** — a soup of scattered triangles, a flat sheet — refused: the
  winding number is above ½ at under :data:`MIN_ENCLOSED_FRACTION` of probe points filling the bounding box,
  so the fit would have no inside to fit. A closed head whose triangles are merely unwelded encloses its
  volume and is fitted as it is; so is an open surface the winding number closes — a scan with an open neck,
  or a face without the back of the head, which is fitted as the solid the winding number closes it to
  (a mask-like shell, not a head: that is what the artist gave). If the volume is enclosed with the wrong
  winding (inside out), the faces are flipped, with a warning;
* **more triangles than the budget** (:attr:`HeadInputConfig.max_triangles`, default 300 000: finer than the
  fitted tri-grid can hold) — simplified by quadric edge collapse (``fast-simplification``) to the budget,
  with a warning; colours come across as vertex colours (a texture is sampled at the vertices first);
* **a texture file that is missing** — the reader's warning (:func:`engine.heads.scans.read_obj`) is passed
  on; the faces keep their material colour or vertex colour, else the neutral albedo.

The result stays in the file's own coordinates; :func:`engine.heads.scans.normalize_scan` places it next.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from ..io.configs import JsonConfig
from ..mesh import Mesh, face_normals, remove_unused_vertices
from .scans import check_input_entry, input_kind, read_scan_mesh

DEFAULT_MAX_TRIANGLES = 300_000
MIN_MAX_TRIANGLES = 1_000
PROBES_PER_AXIS = 16  # 4096 winding-number probes at the cell centres of the bounding box
# Heads fill 20–40 % of their bounding box (procedural world busts ~39 %, the MakeHuman heads of
# tests/data/real_heads ~20 %); a soup of random triangles or an open sheet ~0 %.
MIN_ENCLOSED_FRACTION = 0.02
ZERO_AREA = 1e-12  # a triangle's doubled area, relative to the squared bounding-box diagonal


@dataclass(frozen=True)
class HeadInputConfig(JsonConfig):
    """What head mode accepts of a mesh before fitting it."""

    config_label = "head mode input"

    max_triangles: int = DEFAULT_MAX_TRIANGLES  # denser meshes are simplified down to this before the fit

    def validate(self) -> "HeadInputConfig":
        if isinstance(self.max_triangles, bool) or not isinstance(self.max_triangles, int) \
                or self.max_triangles < MIN_MAX_TRIANGLES:
            raise ConfigError(f"head mode: max fit triangles must be an integer ≥ {MIN_MAX_TRIANGLES:,}, "
                              f"got {self.max_triangles!r}")
        return self


@dataclass
class HeadMesh:
    """A mesh file as head mode fits it: the mesh (file coordinates), the warnings to pass on, and a record
    of what was changed (saved in the fit record, ``fit.json``)."""

    path: Path
    mesh: Mesh
    warnings: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """True when the fitted triangles are not the file's (so the fit's cache key must say how)."""
        r = self.record
        return bool(r.get("dropped_zero_area") or r.get("dropped_repeated") or r.get("flipped") or r.get("simplified"))


def read_head_mesh(path: str | os.PathLike, config: HeadInputConfig = HeadInputConfig()) -> HeadMesh:
    """Read ``path`` for head mode and apply the module docstring's checks; :class:`InputError` names the file."""
    config = config.validate()
    path = Path(path)
    check_input_entry(path)  # a FIFO, a device or a link out of its folder: refused before anything is opened
    kind = input_kind(path)
    if kind != "scan":
        raise InputError(f"{path}: head mode needs a mesh, but this is a {kind}"
                         + (" (give a W+ latent with --latent)" if kind == "latent" else ""))
    mesh = read_scan_mesh(path)
    warnings = list(mesh.metadata.get("warnings", []))  # e.g. a map_Kd texture that is missing
    record: dict = {"triangles_read": mesh.num_faces, "max_triangles": config.max_triangles}
    mesh, zero_area, repeated = drop_degenerate_triangles(mesh, path)
    record.update(dropped_zero_area=zero_area, dropped_repeated=repeated)
    if zero_area or repeated:
        warnings.append(f"{path}: dropped {zero_area:,} zero-area and {repeated:,} repeated triangles "
                        f"({mesh.num_faces:,} left)")
    record["simplified"] = mesh.num_faces > config.max_triangles
    if record["simplified"]:
        before, textured = mesh.num_faces, mesh.texture is not None
        mesh = simplify_to_budget(mesh, config.max_triangles)
        warnings.append(f"{path}: {before:,} triangles, over head mode's budget of {config.max_triangles:,}; "
                        f"simplified to {mesh.num_faces:,} before the fit"
                        + (" (its texture carried over as vertex colours)" if textured else "")
                        + " — raise --max-fit-triangles to keep more")
    inside, inverted = enclosed_fractions(mesh, path)
    record.update(enclosed_fraction=round(inside, 4), flipped=False)
    if inside < MIN_ENCLOSED_FRACTION <= inverted:
        mesh = flip_faces(mesh)
        record.update(enclosed_fraction=round(inverted, 4), flipped=True)
        warnings.append(f"{path}: the surface is wound inside out (its normals point in); faces flipped")
    elif inside < MIN_ENCLOSED_FRACTION:
        raise InputError(
            f"{path}: the mesh encloses no volume (inside at {100 * inside:.1f} % of its bounding box; "
            f"heads fill 20–40 %): a soup of scattered triangles or a flat sheet has no inside for head mode to fit; "
            "give a closed (or nearly closed) head mesh")
    record["triangles_fitted"] = mesh.num_faces
    return HeadMesh(path, mesh, warnings, record)


def _bounding_diagonal(vertices: np.ndarray) -> float:
    return float(np.linalg.norm(vertices.max(axis=0).astype(np.float64) - vertices.min(axis=0)))


def _select_faces(mesh: Mesh, keep: np.ndarray) -> Mesh:
    """``mesh`` with only the faces ``keep`` (indices or mask) and the vertices they use."""
    faces = mesh.faces[keep]
    vertices, faces, kept = remove_unused_vertices(mesh.vertices, faces)
    return Mesh(vertices, faces, None if mesh.vertex_colors is None else mesh.vertex_colors[kept],
                None if mesh.vertex_normals is None else mesh.vertex_normals[kept], dict(mesh.metadata),
                None if mesh.texture is None else mesh.texture.select_faces(keep))


def drop_degenerate_triangles(mesh: Mesh, path: Path) -> tuple[Mesh, int, int]:
    """(mesh without zero-area and repeated triangles, zero-area count, repeated count); :class:`InputError`
    when nothing is left. Repeated = the same three corners as an earlier triangle, in any order."""
    f = mesh.faces.astype(np.int64)
    doubled_area = np.linalg.norm(face_normals(mesh.vertices, f, normalize=False), axis=1)
    flat = doubled_area <= ZERO_AREA * max(_bounding_diagonal(mesh.vertices), 1e-30) ** 2
    if flat.all():
        raise InputError(f"{path}: all {len(f):,} triangles have zero area (or repeat a corner); there is no "
                         "surface to fit")
    corners = np.sort(f, axis=1)
    order = np.lexsort(corners.T[::-1])
    ranked = corners[order]
    same = np.zeros(len(f), bool)
    same[order[1:]] = (ranked[1:] == ranked[:-1]).all(axis=1)  # all but the first of each run (lexsort is stable)
    repeated = same & ~flat
    keep = ~(flat | repeated)
    if keep.all():
        return mesh, 0, 0
    return _select_faces(mesh, keep), int(flat.sum()), int(repeated.sum())


def enclosed_fractions(mesh: Mesh, path: Path) -> tuple[float, float]:
    """(share of probe points inside, share inside with the opposite winding): probes at the centres of a
    16³ grid over the bounding box, inside where the generalised winding number is above ½ (below −½)."""
    import igl  # libigl's fast winding number, as the fit itself uses (engine.heads.mesh_field.MeshQuery)

    vertices = mesh.vertices.astype(np.float64)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    if ((hi - lo) <= 1e-6 * max(_bounding_diagonal(mesh.vertices), 1e-30)).any():
        return 0.0, 0.0  # flat: nothing can be inside
    centres = (np.arange(PROBES_PER_AXIS) + 0.5) / PROBES_PER_AXIS
    grid = np.stack(np.meshgrid(centres, centres, centres, indexing="ij"), axis=-1).reshape(-1, 3)
    probes = np.ascontiguousarray(lo + grid * (hi - lo))
    bvh = igl.FastWindingNumberBVH()
    bvh.init(vertices, mesh.faces.astype(np.int64), 2)
    winding = bvh.winding_number(probes, 2.0)
    if not np.isfinite(winding).all():
        raise InputError(f"{path}: the winding number of the mesh is not finite; cannot tell its inside")
    return float((winding > 0.5).mean()), float((winding < -0.5).mean())


def flip_faces(mesh: Mesh) -> Mesh:
    """``mesh`` with every triangle's winding reversed (texture corners kept with their vertices)."""
    return dataclasses.replace(mesh, faces=np.ascontiguousarray(mesh.faces[:, ::-1]), vertex_normals=None,
                               texture=None if mesh.texture is None else mesh.texture.reverse_winding())


def vertex_colours(mesh: Mesh) -> np.ndarray | None:
    """(V, 3) uint8 colours a vertex-coloured copy of ``mesh`` shows, or None for a mesh without colours.

    Vertex colours as they are; a texture is sampled where each vertex's first corner maps it and shown as the
    fit shows it (:class:`engine.heads.mesh_field.SurfaceColours`); vertices on untextured faces keep their
    vertex colour, or the neutral albedo without one."""
    if mesh.texture is None:
        return mesh.vertex_colors
    from .mesh_field import NEUTRAL_ALBEDO, SurfaceColours

    surface = SurfaceColours(mesh)
    corner = np.full(mesh.num_vertices, -1, np.int64)
    flat = mesh.faces.ravel()
    corner[flat[::-1]] = np.arange(len(flat) - 1, -1, -1)  # the first corner at each vertex wins
    base = np.broadcast_to(np.asarray(NEUTRAL_ALBEDO, np.float32) * 255, (mesh.num_vertices, 3)).astype(np.uint8)
    if mesh.vertex_colors is not None:
        base = mesh.vertex_colors
    out = base.copy()
    index = np.flatnonzero(corner >= 0)
    for start in range(0, len(index), 1 << 20):  # a million vertices at a time
        rows = index[start:start + (1 << 20)]
        bary = np.zeros((len(rows), 3))
        bary[np.arange(len(rows)), corner[rows] % 3] = 1.0
        shown, textured = surface.at(corner[rows] // 3, bary)
        out[rows[textured]] = np.round(shown[textured] * 255.0).astype(np.uint8)
    return out


def simplify_to_budget(mesh: Mesh, max_triangles: int) -> Mesh:
    """About ``max_triangles`` triangles of ``mesh`` by quadric edge collapse, colours as vertex colours.

    A mesh with more vertices than triangles (a closed welded surface has about half as many) is taken to be
    unwelded — triangles that share no edge, which leaves edge collapse nothing to collapse — and its
    coincident vertices are welded first. Each new vertex takes the colour of the nearest original vertex,
    which at a density worth simplifying lies within a fraction of a millimetre on a real head."""
    import fast_simplification  # pinned in requirements.txt (also the game asset's levels of detail)

    colours = vertex_colours(mesh)
    positions, faces = mesh.vertices, mesh.faces
    if mesh.num_vertices > mesh.num_faces:
        rows = np.ascontiguousarray(positions).view(np.dtype((np.void, positions.dtype.itemsize * 3))).ravel()
        _, first, weld = np.unique(rows, return_index=True, return_inverse=True)
        positions, faces = positions[first], weld.reshape(-1)[faces]
    vertices, faces = fast_simplification.simplify(positions.astype(np.float64), faces.astype(np.int32),
                                                   target_count=int(max_triangles))
    vertices, faces, _ = remove_unused_vertices(np.asarray(vertices, np.float32), np.asarray(faces, np.int32))
    new_colours = None
    if colours is not None:
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(mesh.vertices).query(vertices)
        new_colours = colours[nearest]
    return Mesh(vertices, faces, new_colours, None, dict(mesh.metadata))
