"""Read the inputs of a batch — head scans, portrait images, W+ latents — and bring scans into the generator's frame.

Supported inputs (by suffix; anything else is reported as unsupported, never guessed):

* Scans: ``.ply`` (binary little-endian, via :func:`engine.mesh.read_ply`), ``.obj`` (``v x y z [r g b]``,
  polygons fan-triangulated, ``v/vt/vn`` references and negative indices accepted), ``.glb``/``.gltf``
  (:mod:`engine.heads.gltf`) and mesh ``.npz`` files (:func:`engine.mesh.write_npz`). ``.fbx`` is a proprietary
  format with no open reader: it is refused with a message pointing at the Blender batch operator, which
  imports it with Blender's own importer.
* Portraits: ``.png``/``.jpg``/``.jpeg``. The pose comes from the user (default: frontal).
* Latents: ``.npz`` holding ``w`` (what :func:`engine.generator.inference.load_w_plus` reads).

Normalisation convention (:func:`normalize_scan`) — what "the generator's frame" means for a scan:

1. **Up axis.** glTF is y-up by specification. For other files ``up_axis="auto"`` picks y or z, whichever
   the mesh is taller along (a head-and-shoulders bust is taller than it is wide or deep; x is never up).
2. **Facing.** y-up files are taken to face +z (glTF / the generator); z-up files to face −y (Blender's and
   most scanners' "front" view). z-up is turned to y-up by ``world = (x, z, −y)``; ``yaw_degrees`` then undoes
   a turntable that was not at zero (rotation about the up axis by −yaw).
3. **Scale.** ``units="auto"`` reads the up-extent ``h``: ``h ≥ 100`` → millimetres, ``5 ≤ h < 100`` →
   centimetres, both converted with the world's 0.016 units per cm; smaller meshes (metres or already world
   units, which cannot be told apart) are scaled to the reference bust height. Explicit units: ``mm``, ``cm``,
   ``m``, ``world`` (no scaling) or ``fit`` (always scale to the reference height).
4. **Centre.** The bounding-box centre goes to the procedural world's mean bust centre
   (:data:`REFERENCE_CENTRE`), so the head sits where the generator's heads sit (tri-grid box [−0.5, 0.5]³,
   cameras looking at the origin).

5. **Face framing** (``framing="auto"``, the default; :mod:`engine.heads.face_framing`). Steps 1–4 guess from
   the mesh's extent; then the face is found: dlib's 68 landmarks on renders of the mesh, lifted to 3-D and
   fitted onto the procedural world's mean face, correct the facing direction (any yaw, and small pitch and
   roll) and the centre. The scale stays the units' (exact for mm / cm / m / world); for guessed units
   (``fit``) the height's, unless the face says it is off by more than 15 % (a bust with shoulders, a hat).
   No face found → steps 1–4 stand. ``"landmarks"`` requires a face (an error names the file otherwise),
   ``"heuristic"`` skips the search. Measured on 6 world scans turned by up to ±58° in mm/cm/m, z-up: mean
   vertex error 0.8–1.9 % of the head height and yaw within 1.2°, against 6.5–21 % and the full turn for
   steps 1–4 alone (``tests/engine/heads/test_face_framing.py``).

The result's ``scan_to_world`` matrix records exactly what was done (also written to the batch sidecar), and
``framing`` which of the two placed the head.

Inputs are untrusted (:mod:`engine.io.untrusted`): every reader opens only regular files within the size
limit, checks claimed vertex/face/pixel counts before allocating, and refuses a file an input names (an
OBJ's ``mtllib`` and its textures, a glTF's buffers and images, a views manifest's PNGs) unless it lies inside
the input's own folder; :func:`check_input_entry` refuses batch entries that are symbolic links out of the
input folder, FIFOs or devices.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .face_framing import FRAMINGS
from ..io.scan_references import statement_names, check_obj_references, obj_mtllibs
from ..io.untrusted import (
    InputLimits,
    active_limits,
    check_count,
    check_file,
    check_reference,
    npz_headers,
    read_bytes,
    read_image_rgba,
    read_json,
)
from ..mesh import Mesh, SurfaceTexture, read_npz, read_ply
from .gltf import linear_to_srgb

SCAN_SUFFIXES = (".ply", ".obj", ".glb", ".gltf")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LATENT_SUFFIXES = (".npz",)  # a .npz is a latent when it holds "w", a mesh when it holds "vertices"
BLENDER_ONLY_SUFFIXES = (".fbx",)
INPUT_KINDS = ("scan", "image", "latent")

# Procedural world busts (engine.world.head_mesh), measured over the neutral and random identities: all are
# 0.496 wide (the shoulders), 0.71–0.76 tall and 0.36–0.38 deep, with bounding-box centre about
# (0, −0.105, −0.012). tests/engine/heads/test_scans.py re-measures them.
REFERENCE_CENTRE = (0.0, -0.105, -0.012)
REFERENCE_HEIGHT = 0.73
WORLD_UNITS_PER_CM = 0.016  # engine.world.sdf.WORLD_UNITS_PER_CM (kept here to avoid importing the world)
UNIT_TO_WORLD = {"mm": WORLD_UNITS_PER_CM / 10.0, "cm": WORLD_UNITS_PER_CM, "m": WORLD_UNITS_PER_CM * 100.0, "world": 1.0}
UP_AXES = ("auto", "y", "z")
UNITS = ("auto", "mm", "cm", "m", "world", "fit")


@dataclass(frozen=True)
class ScanNormalization:
    """How to bring a scan into the generator's frame (see the module docstring for the convention)."""

    up_axis: str = "auto"
    units: str = "auto"
    yaw_degrees: float = 0.0
    framing: str = "auto"  # auto: face landmarks, else the extent heuristic; landmarks: require a face; heuristic

    def validate(self) -> "ScanNormalization":
        if self.up_axis not in UP_AXES:
            raise ConfigError(f"scan up_axis must be one of {UP_AXES}, got {self.up_axis!r}")
        if self.units not in UNITS:
            raise ConfigError(f"scan units must be one of {UNITS}, got {self.units!r}")
        if self.framing not in FRAMINGS:
            raise ConfigError(f"scan framing must be one of {FRAMINGS}, got {self.framing!r}")
        if not math.isfinite(float(self.yaw_degrees)):
            raise ConfigError(f"scan yaw_degrees must be finite, got {self.yaw_degrees!r}")
        return self

    def to_dict(self) -> dict:
        return {"up_axis": self.up_axis, "units": self.units, "yaw_degrees": float(self.yaw_degrees), "framing": self.framing}


@dataclass
class NormalizedScan:
    mesh: Mesh  # in world coordinates
    scan_to_world: np.ndarray  # (4, 4) float64
    up_axis: str  # the one used ("y" or "z")
    units: str  # the one used (mm, cm, m, world or fit)
    framing: dict = field(default_factory=lambda: {"method": "heuristic", "reason": "not requested"})


# --------------------------------------------------------------------------------------------------
# Input classification
# --------------------------------------------------------------------------------------------------
def npz_kind(path: Path) -> str:
    """"latent" or "scan" for a ``.npz``, by its arrays (read from the headers only); unreadable → InputError."""
    keys = set(npz_headers(path, ".npz file"))
    if "w" in keys:
        return "latent"
    if {"vertices", "faces"} <= keys:
        return "scan"
    raise InputError(f"{path}: .npz holds neither a W+ latent ('w') nor a mesh ('vertices', 'faces'): {sorted(keys)}")


def check_input_entry(path: str | os.PathLike) -> Path:
    """An entry of an input folder that may be read: a symbolic link must stay inside the folder, and a
    file must be a regular file within the size limit (checked with ``os.stat``, nothing is opened)."""
    path = Path(path)
    if os.path.islink(path):
        real, folder = path.resolve(), path.parent.resolve()
        if not (real == folder or folder in real.parents):
            raise InputError(f"{path}: symbolic link to {real}, outside the input folder {path.parent}; refused")
    if not path.is_dir():
        check_file(path, "input", root=path.parent)
    return path


def input_kind(path: str | os.PathLike) -> str:
    """"scan", "image" or "latent" for a supported file; :class:`InputError` (with the reason) otherwise.

    By suffix (only a ``.npz`` is opened, to tell a latent from a mesh); :func:`check_input_entry` is what
    refuses links out of the folder, FIFOs and devices.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in BLENDER_ONLY_SUFFIXES:
        raise InputError(
            f"{path}: {suffix} scans have no open reader; import them with the Blender batch operator "
            "(Head Stylizer › Batch), which uses Blender's importer and renders the views for the engine"
        )
    supported = SCAN_SUFFIXES + IMAGE_SUFFIXES + LATENT_SUFFIXES + BLENDER_ONLY_SUFFIXES
    if suffix not in supported:
        raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r}; supported: {', '.join(supported)}")
    if suffix in SCAN_SUFFIXES:
        return "scan"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return npz_kind(path)


def list_inputs(folder: str | os.PathLike) -> list[Path]:
    """Every non-hidden entry of ``folder`` that is not a folder (sorted; sidecars ``.json``, ``.mtl``,
    ``.bin`` … excluded). FIFOs, devices and symbolic links are listed too, so that the batch reports them
    as failed with the reason instead of silently skipping them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: input folder not found")
    skip = {".json", ".mtl", ".bin", ".csv", ".txt", ".md"}
    return sorted(
        p for p in folder.iterdir()
        if not p.name.startswith(".") and p.suffix.lower() not in skip and (p.is_symlink() or not p.is_dir())
    )


# --------------------------------------------------------------------------------------------------
# Mesh readers
# --------------------------------------------------------------------------------------------------
@dataclass
class ObjMaterial:
    """What head mode uses of an MTL material: the diffuse colour and the diffuse texture."""

    kd: tuple[float, float, float] | None = None  # linear, as written
    map_kd: str | None = None  # the statement's arguments (options and file name), as written
    mtl: Path | None = None  # the material library it came from


_MAP_OPTIONS_WITH_ARGS = {"-blendu": 1, "-blendv": 1, "-bm": 1, "-boost": 1, "-cc": 1, "-clamp": 1, "-imfchan": 1,
                          "-mm": 2, "-o": 3, "-s": 3, "-t": 3, "-texres": 1, "-type": 1}


def map_file_name(arguments: str) -> str:
    """The file name of a ``map_Kd`` statement: its arguments after the options (``-s 1 1 1`` …), spaces kept."""
    words = arguments.split()
    i = 0
    while i < len(words) and words[i].lower() in _MAP_OPTIONS_WITH_ARGS:
        most = _MAP_OPTIONS_WITH_ARGS[words[i].lower()]
        i += 1
        if most == 1:  # one argument of any kind (-clamp on, -imfchan r, -bm 0.5 …)
            i += 1
            continue
        taken = 0  # -mm takes 2 numbers, -o/-s/-t 1 to 3
        while taken < most and i < len(words) and _is_number(words[i]):
            i, taken = i + 1, taken + 1
    return " ".join(words[i:])


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def read_mtl(obj_path: Path, mtllibs: list[str], limits: InputLimits) -> dict[str, ObjMaterial]:
    """Materials of the OBJ's libraries by name (a missing library is skipped: importers only warn)."""
    materials: dict[str, ObjMaterial] = {}
    for rest in mtllibs:
        for name in statement_names(rest):
            mtl = check_reference(name, owner=obj_path, what="mtllib", missing_ok=True, limits=limits)
            if mtl is None:
                continue
            text = read_bytes(mtl, "material library", root=obj_path.parent, limits=limits).decode("utf-8", "replace")
            current: ObjMaterial | None = None
            for line in text.splitlines():
                words = line.split(None, 1)
                if not words:
                    continue
                key, args = words[0].lower(), (words[1].strip() if len(words) > 1 else "")
                if key == "newmtl":
                    current = materials.setdefault(args, ObjMaterial(mtl=mtl))
                elif current is not None and key == "kd":
                    values = args.split()
                    try:
                        kd = tuple(float(x) for x in values[:3])
                    except ValueError:
                        raise InputError(f"{mtl}: malformed Kd {args!r}") from None
                    if len(kd) == 3 and all(math.isfinite(x) for x in kd):
                        current.kd = tuple(min(max(x, 0.0), 1.0) for x in kd)  # type: ignore[assignment]
                elif current is not None and key == "map_kd" and args:
                    current.map_kd = args
            break  # the first name form that exists is the library
    return materials


def _material_images(obj_path: Path, materials: dict[str, ObjMaterial], used: list[str],
                     limits: InputLimits) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """(images, image slot per used material (−1: none), warnings): a ``map_Kd`` image, or a 1×1 image of the
    material's ``Kd`` colour (so that per-face material colours need no per-vertex colour)."""
    images: list[np.ndarray] = []
    slots = np.full(len(used), -1, np.int32)
    warnings: list[str] = []
    loaded: dict[Path, int] = {}
    for i, name in enumerate(used):
        material = materials.get(name)
        if material is None:
            continue
        if material.map_kd:
            file_name = map_file_name(material.map_kd)
            target = None
            for candidate in dict.fromkeys([file_name, material.map_kd.strip()]):
                if candidate:
                    target = check_reference(candidate, owner=material.mtl, base=material.mtl.parent, root=obj_path.parent,
                                             what="map_Kd texture", missing_ok=True, limits=limits)
                    if target is not None:
                        break
            if target is not None:
                if target not in loaded:
                    loaded[target] = len(images)
                    images.append(np.ascontiguousarray(
                        read_image_rgba(target, "map_Kd texture", root=obj_path.parent, limits=limits)[:, :, :3]))
                slots[i] = loaded[target]
                continue
            warnings.append(f"{obj_path}: material {name!r}: texture {file_name!r} not found; "
                            + ("its Kd colour is used" if material.kd else "its faces keep their vertex colour"))
        if material.kd is not None:
            srgb = np.round(linear_to_srgb(np.asarray(material.kd)) * 255.0).astype(np.uint8)
            slots[i] = len(images)
            images.append(srgb.reshape(1, 1, 3))
    return images, slots, warnings


def _obj_refs(parts: list[list[str]], slot: int, count: int, name: str, what: str) -> np.ndarray:
    """The ``slot``-th index of every face token (split at ``/``), 0-based (−1 where absent; OBJ is 1-based
    and negative indices count back from the end of the table so far — here, of the whole table)."""
    raw = [p[slot] if len(p) > slot and p[slot] else "0" for p in parts]
    try:
        refs = np.array(raw, dtype=np.int64)
    except (ValueError, OverflowError):
        raise InputError(f"{name}: malformed OBJ face ({what} indices are not integers)") from None
    out = np.where(refs < 0, refs + count, refs - 1)
    out[refs == 0] = -1
    if (refs != 0).any() and (out[refs != 0].min() < 0 or out[refs != 0].max() >= count):
        raise InputError(f"{name}: OBJ face references a missing {what}")
    return out


def read_obj(path: str | os.PathLike, limits: InputLimits | None = None) -> Mesh:
    """Wavefront OBJ triangles (polygons fan-triangulated) with optional ``v x y z r g b`` colours, and the
    base colour of its materials: ``vt`` coordinates with each ``usemtl`` material's ``map_Kd`` image, or its
    ``Kd`` colour where it has no texture (both become the mesh's :class:`~engine.mesh.SurfaceTexture`).

    Every ``mtllib`` and the texture maps it names must stay inside the OBJ's folder
    (:func:`engine.io.scan_references.check_obj_references`), as for Blender's importer. A missing material
    library or texture is a warning in ``mesh.metadata["warnings"]`` (those faces keep their colour), as
    importers do; an unreadable one is an :class:`InputError`. Vertex and face counts are checked against the
    limits before the tables are built.
    """
    limits = active_limits(limits)
    path = Path(path)
    name = str(path)
    text = read_bytes(path, "OBJ", limits=limits).decode("utf-8", errors="replace")
    mtllibs = obj_mtllibs(text)
    check_obj_references(path, mtllibs, limits)
    lines = text.splitlines()
    v_lines = [line[2:] for line in lines if line.startswith("v ")]
    check_count(name, "OBJ vertex count", len(v_lines), limits.max_vertices, "max_vertices")
    vt_lines = [line[3:] for line in lines if line.startswith("vt ")]
    check_count(name, "OBJ texture coordinate count", len(vt_lines), limits.max_vertices, "max_vertices")
    f_lines, face_material, used = [], [], {}
    current = -1
    for line in lines:  # faces and the material in force for each (usemtl applies to the faces after it)
        if line.startswith("f "):
            f_lines.append(line[2:].split())
            face_material.append(current)
        elif line.startswith("usemtl"):
            current = used.setdefault(line[6:].strip(), len(used))
    if not v_lines or not f_lines:
        raise InputError(f"{name}: OBJ has no vertices or no faces")
    check_count(name, "OBJ triangle count", sum(max(len(f) - 2, 0) for f in f_lines), limits.max_faces, "max_faces")
    try:
        widths = {len(line.split()) for line in v_lines}
        if len(widths) != 1 or widths.pop() not in (3, 4, 6, 7):
            raise ValueError("vertex lines must all have 3 (or 6 with colour) numbers")
        table = np.array(" ".join(v_lines).split(), dtype=np.float64).reshape(len(v_lines), -1)
        counts = np.array([len(f) for f in f_lines])
    except (ValueError, OverflowError) as exc:
        raise InputError(f"{name}: malformed OBJ ({exc})") from None
    if counts.min() < 3:
        raise InputError(f"{name}: OBJ face with fewer than 3 vertices")
    parts = [tok.split("/") for f in f_lines for tok in f]  # v, v/vt, v/vt/vn or v//vn
    refs = _obj_refs(parts, 0, len(table), name, "vertex")
    if (refs < 0).any():
        raise InputError(f"{name}: OBJ face references a missing vertex")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # fan triangulation: polygon (a, b, c, d, …) → (a, b, c), (a, c, d), …  — vectorised over all polygons
    tris_per_face = counts - 2
    face_of_tri = np.repeat(np.arange(len(counts)), tris_per_face)
    k = np.arange(tris_per_face.sum()) - np.repeat(np.cumsum(tris_per_face) - tris_per_face, tris_per_face)
    first = starts[face_of_tri]
    corners = np.stack((first, first + k + 1, first + k + 2), axis=1)  # (T, 3) token positions
    faces = refs[corners]
    colors = None
    if table.shape[1] >= 6:
        rgb = table[:, 3:6] if table.shape[1] == 6 else table[:, 4:7]
        scale = 255.0 if rgb.max() <= 1.0 + 1e-6 else 1.0
        colors = np.clip(np.nan_to_num(np.round(rgb * scale)), 0, 255).astype(np.uint8)
    mesh = Mesh(vertices=table[:, :3].astype(np.float32), faces=faces.astype(np.int32), vertex_colors=colors)
    warnings: list[str] = []
    if used:
        materials = read_mtl(path, mtllibs, limits)
        missing = [m for m in used if m not in materials]
        if missing:
            warnings.append(f"{name}: materials {missing[:5]} are not defined in its material libraries; "
                            "their faces keep their vertex colour")
        images, slots, image_warnings = _material_images(path, materials, list(used), limits)
        warnings += image_warnings
        if images:
            mesh.texture = _obj_texture(vt_lines, parts, corners, face_of_tri, np.asarray(face_material), slots, images, name)
    if warnings:
        mesh.metadata["warnings"] = warnings
    return mesh.check(name)


def _obj_texture(vt_lines: list[str], parts: list[list[str]], corners: np.ndarray, face_of_tri: np.ndarray,
                 face_material: np.ndarray, slots: np.ndarray, images: list[np.ndarray], name: str) -> SurfaceTexture:
    """Per-corner UVs (v flipped to glTF's top-down convention) and image slots of the OBJ's triangles.
    A face whose material has a texture image but whose corners lack ``vt`` shows its colour untextured."""
    uv_table = np.zeros((0, 2))
    if vt_lines:
        try:
            rows = [line.split()[:2] for line in vt_lines]
            uv_table = np.array(rows, dtype=np.float64)
        except (ValueError, OverflowError):
            raise InputError(f"{name}: malformed OBJ texture coordinate (vt) line") from None
        if uv_table.ndim != 2 or uv_table.shape[1] != 2 or not np.isfinite(uv_table).all():
            raise InputError(f"{name}: OBJ texture coordinates (vt) need two finite numbers each")
        uv_table[:, 1] = 1.0 - uv_table[:, 1]
    vt_refs = _obj_refs(parts, 1, len(uv_table), name, "texture coordinate")[corners]  # (T, 3)
    slot = np.where(face_material[face_of_tri] >= 0, slots[face_material[face_of_tri].clip(0)], -1)
    has_uv = (vt_refs >= 0).all(axis=1)
    is_constant = np.array([img.shape[:2] == (1, 1) for img in images])
    # a 1×1 Kd image needs no coordinates; a real texture does
    slot = np.where((slot >= 0) & ~has_uv & ~is_constant[slot.clip(0)], -1, slot)
    corner_uv = uv_table[vt_refs.clip(0)] if len(uv_table) else np.zeros((len(vt_refs), 3, 2))
    corner_uv = np.where(has_uv[:, None, None], corner_uv, 0.0)
    return SurfaceTexture(corner_uv.astype(np.float32), slot.astype(np.int32), images)


def read_scan_mesh(path: str | os.PathLike) -> Mesh:
    """The scan's triangles in its own coordinates (normals are recomputed later)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        mesh = read_ply(path)
    elif suffix == ".obj":
        mesh = read_obj(path)
    elif suffix in (".glb", ".gltf"):
        from .gltf import read_gltf

        mesh, _ = read_gltf(path)
    elif suffix == ".npz":
        mesh = read_npz(path)
    else:
        input_kind(path)  # raises the right message
        raise InputError(f"{path}: not a scan mesh")
    if mesh.num_faces == 0:
        raise InputError(f"{path}: scan has no triangles")
    if not np.isfinite(mesh.vertices).all():
        raise InputError(f"{path}: scan has NaN or infinite vertex positions")
    return mesh


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------
def _yaw_matrix(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # (x, y, z) → (x, z, −y)


def detect_up_axis(vertices: np.ndarray) -> str:
    extent = vertices.max(axis=0) - vertices.min(axis=0)
    return "z" if extent[2] > extent[1] else "y"


def detect_units(height: float) -> str:
    if height >= 100.0:
        return "mm"
    if height >= 5.0:
        return "cm"
    return "fit"


def normalization_matrix(vertices: np.ndarray, config: ScanNormalization, up_axis_hint: str | None = None,
                         name: str = "scan") -> tuple[np.ndarray, str, str]:
    """(4, 4) scan→world similarity for ``vertices`` (V, 3), with the up axis and units it settled on
    (``name`` labels errors)."""
    config = config.validate()
    v = np.asarray(vertices, dtype=np.float64)
    up = config.up_axis if config.up_axis != "auto" else (up_axis_hint or detect_up_axis(v))
    rotation = _yaw_matrix(-float(config.yaw_degrees)) @ (Z_UP_TO_Y_UP if up == "z" else np.eye(3))
    turned = v @ rotation.T
    lo, hi = turned.min(axis=0), turned.max(axis=0)
    height = float(hi[1] - lo[1])
    if height <= 0:
        raise InputError(f"{name}: the mesh is flat along its up axis ({up}); cannot place it as a head")
    units = config.units if config.units != "auto" else detect_units(height)
    scale = REFERENCE_HEIGHT / height if units == "fit" else UNIT_TO_WORLD[units]
    linear = rotation * scale
    translation = np.asarray(REFERENCE_CENTRE) - scale * (lo + hi) / 2.0
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = linear, translation
    return matrix, up, units


def transform_mesh(mesh: Mesh, matrix: np.ndarray) -> Mesh:
    """``mesh`` moved by a similarity transform, with fresh unit normals."""
    from ..mesh import vertex_normals

    vertices = (mesh.vertices.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)
    faces, texture = mesh.faces.astype(np.int32), mesh.texture
    if np.linalg.det(matrix[:3, :3]) < 0:
        faces = faces[:, ::-1].copy()  # a reflection would turn the triangles inside out
        texture = texture.reverse_winding() if texture is not None else None
    return Mesh(vertices, faces, mesh.vertex_colors, vertex_normals(vertices, faces), dict(mesh.metadata), texture)


FIT_SCALE_TOLERANCE = 1.15  # guessed units: the face overrides the height's scale beyond this ratio


def normalize_scan(mesh: Mesh, config: ScanNormalization = ScanNormalization(), up_axis_hint: str | None = None,
                   name: str = "scan") -> NormalizedScan:
    """``mesh`` in the generator's frame by the convention of the module docstring (``name`` labels errors).

    When the up axis is a guess (``auto`` and no hint from the format) and no face is found standing the
    head on the guessed axis, the other one is tried: the extent rule cannot tell a head with shoulders
    turned side-on (as wide as it is tall) from one lying down, and the face can."""
    from .face_framing import FaceFramingConfig, frame_by_landmarks

    def stand(axis_hint: str | None):
        """(matrix, up, units, the mesh moved by it) for an up-axis hint (None: the extent rule's guess)."""
        matrix, up, units = normalization_matrix(mesh.vertices, config, axis_hint, name)
        return matrix, up, units, transform_mesh(mesh, matrix)

    def find_face(moved: Mesh, units: str):
        return frame_by_landmarks(moved, FaceFramingConfig(fit_scale_beyond=FIT_SCALE_TOLERANCE if units == "fit" else None))

    config = config.validate()
    matrix, up, units, moved = stand(up_axis_hint)
    if config.framing == "heuristic":
        return NormalizedScan(moved, matrix, up, units, {"method": "heuristic", "reason": "requested"})
    face = find_face(moved, units)
    if face.method != "landmarks" and config.up_axis == "auto" and up_axis_hint is None:
        try:
            other = stand("y" if up == "z" else "z")
        except InputError:  # flat that way: the guess stands
            other = None
        if other is not None:
            other_face = find_face(other[3], other[2])
            if other_face.method == "landmarks":
                face, (matrix, up, units, moved) = other_face, other
    if face.method != "landmarks":
        if config.framing == "landmarks":
            raise InputError(f"{name}: face framing was required, but {face.reason}")
        return NormalizedScan(moved, matrix, up, units, face.to_dict())
    corrected = face.matrix @ matrix
    return NormalizedScan(transform_mesh(mesh, corrected), corrected, up, units, face.to_dict())


def up_axis_hint(path: str | os.PathLike) -> str | None:
    """The up axis a scan file's format fixes: "y" for glTF (by specification), None (guess) otherwise."""
    return "y" if Path(path).suffix.lower() in (".glb", ".gltf") else None


def load_scan(path: str | os.PathLike, config: ScanNormalization = ScanNormalization()) -> NormalizedScan:
    """Read and normalise a scan file (glTF files are y-up by specification)."""
    path = Path(path)
    return normalize_scan(read_scan_mesh(path), config, up_axis_hint(path), name=path.name)


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------
def read_image(path: str | os.PathLike, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A portrait as ((1, 3, R, R) in [-1, 1], (1, 1, R, R) mask): centre-cropped square, resized.

    The mask is the alpha channel when there is one (a cut-out portrait), else all ones. The file is read
    with :func:`engine.io.untrusted.read_image_rgba` (regular file, size and pixel limits before decoding).
    """
    path = Path(path)
    rgba = read_image_rgba(path, "image").astype(np.float32) / 255.0
    h, w = rgba.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(rgba[top : top + side, left : left + side])).permute(2, 0, 1)[None]
    square = torch.nn.functional.interpolate(square, size=(resolution, resolution), mode="area")
    return square[:, :3] * 2.0 - 1.0, square[:, 3:4]


@dataclass
class Portrait:
    """A portrait read for inversion: image (1, 3, R, R) in [-1, 1], mask (1, 1, R, R), the pose to invert it
    from, and how it was cropped (``framing``: landmarks with the fit, or the centre crop with the reason)."""

    image: torch.Tensor
    mask: torch.Tensor
    yaw_degrees: float
    pitch_degrees: float
    framing: dict


def read_portrait(path: str | os.PathLike, resolution: int, camera_config, yaw_degrees: float = 0.0, pitch_degrees: float = 0.0,
                  framing: str = "auto") -> Portrait:
    """A portrait cropped the way the generator's camera (``camera_config``) sees a head.

    ``framing`` auto / landmarks: dlib's landmarks place the face where the generator's heads have theirs and
    give the yaw (searched in ±45°; the pitch is the caller's) — :func:`engine.heads.face_framing.frame_portrait`;
    no face → auto falls back to the centre crop at the caller's pose, landmarks is an error. heuristic: the
    centre crop (:func:`read_image`) at the caller's pose.
    """
    from .face_framing import frame_portrait

    path = Path(path)
    if framing not in FRAMINGS:
        raise ConfigError(f"portrait framing must be one of {FRAMINGS}, got {framing!r}")
    if framing != "heuristic":
        framed = frame_portrait(read_image_rgba(path, "image"), camera_config, resolution, pitch_degrees)
        if framed is not None:
            return Portrait(framed.image, framed.mask, framed.yaw_degrees, framed.pitch_degrees, framed.record)
        if framing == "landmarks":
            raise InputError(f"{path.name}: face framing was required, but no face was found in the portrait")
        reason = "no face found in the portrait"
    else:
        reason = "requested"
    image, mask = read_image(path, resolution)
    return Portrait(image, mask, float(yaw_degrees), float(pitch_degrees), {"method": "centre crop", "reason": reason})


# --------------------------------------------------------------------------------------------------
# Views rendered by Blender
# --------------------------------------------------------------------------------------------------
VIEWS_MANIFEST = "cameras.json"


@dataclass
class ManifestView:
    name: str
    file: Path
    camera: list[float]


def read_views_manifest(folder: str | os.PathLike, limits: InputLimits | None = None) -> tuple[dict, list[ManifestView]]:
    """The ``cameras.json`` of a folder Blender rendered (see bridge/scan_render.py) and its views.

    Untrusted like any input: the manifest is size- and depth-limited, must be a regular file inside the
    folder, and every view ``file`` must name a regular file inside the folder (checked before it is read).
    """
    folder = Path(folder)
    manifest = folder / VIEWS_MANIFEST
    data = read_json(manifest, "views manifest", root=folder, limits=limits)
    if not isinstance(data, dict) or not isinstance(data.get("views"), list):
        raise InputError(f"{manifest}: malformed views manifest (expected an object with a 'views' list)")
    if not data["views"]:
        raise InputError(f"{manifest}: lists no views")
    views = []
    for i, view in enumerate(data["views"]):
        if not isinstance(view, dict) or not isinstance(view.get("camera"), list) or len(view["camera"]) != 25:
            raise InputError(f"{manifest}: view {i} needs a 'file' and a 'camera' of 25 numbers")
        camera = view["camera"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in camera):
            raise InputError(f"{manifest}: view {i} camera holds a non-number or non-finite value")
        file = check_reference(view.get("file"), owner=manifest, root=folder, what=f"view {i} file", limits=limits)
        assert file is not None
        views.append(ManifestView(str(view.get("name", view.get("file"))), file, [float(v) for v in camera]))
    return data, views
