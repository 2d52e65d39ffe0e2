"""glTF 2.0 binary (``.glb``) writer and a reader for ``.glb``/``.gltf`` triangle meshes, in pure numpy.

Why our own: the batch exporter must run without Blender, and the reader must take artists' scans exported by
any tool. Only what a coloured head mesh needs is supported:

* Writing: one mesh, one triangle primitive with ``POSITION`` (float32, with the min/max the spec requires),
  ``NORMAL`` (unit float32), ``COLOR_0`` (float32 RGB, *linear* as the spec mandates — our meshes store 8-bit
  sRGB, so colours are converted on the way out and back on the way in) and uint32 ``indices``; provenance
  goes into ``asset.extras`` and the models' attribution into ``asset.copyright`` (:func:`with_asset_copyright`).
  Every buffer view is 4-byte aligned and the JSON chunk is space-padded and the
  BIN chunk zero-padded as the container format requires, so the Khronos validator reports no errors.
* Reading: every triangle primitive (mode 4, indexed or not) of every mesh reachable from the default scene,
  each moved by its node's world transform (TRS or matrix) and merged into one :class:`engine.mesh.Mesh`.
  Buffers may be the GLB's BIN chunk, base64 data URIs or ``.bin`` files next to a ``.gltf``. Sparse
  accessors, Draco/meshopt compression and strips/fans are refused with a clear :class:`InputError`.
  Base colour: ``COLOR_0`` × the material's ``baseColorFactor`` become vertex colours, and a
  ``baseColorTexture`` (PNG/JPEG from the BIN chunk, a data URI or a file beside the ``.gltf``) becomes the
  mesh's :class:`engine.mesh.SurfaceTexture` through its ``TEXCOORD_n``. A texture whose image file is
  missing is dropped with a warning in ``mesh.metadata["warnings"]`` (those faces keep their colour, as
  Blender's importer does); an image that is there but unreadable is an :class:`InputError`.
* Untrusted input (:mod:`engine.io.untrusted`): every buffer and image URI must name a regular file inside
  the glTF's own folder (no absolute paths, no ``..``, also percent-encoded, no symbolic link out), checked
  before anything is opened; accessor counts and vertex/face totals are checked against the limits before
  allocating, and the node hierarchy must be a tree.

Coordinates are written as given: glTF is y-up with the front facing +z, which is the generator's world frame.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.atomic import write_bytes
from ..io.scan_references import check_gltf_references, read_gltf_document
from ..io.untrusted import (InputLimits, active_limits, check_count, check_reference, decode_data_uri,
                            decode_image_rgba, read_reference)
from ..mesh import Mesh, SurfaceTexture, vertex_normals

GLB_MAGIC = 0x46546C67  # b"glTF"
CHUNK_JSON = 0x4E4F534A  # b"JSON"
CHUNK_BIN = 0x004E4942  # b"BIN\0"
TARGET_ARRAY_BUFFER = 34962
TARGET_ELEMENT_ARRAY_BUFFER = 34963
MODE_TRIANGLES = 4

# componentType → numpy dtype (little endian, as glTF mandates).
COMPONENT_DTYPES: dict[int, np.dtype] = {
    5120: np.dtype("<i1"),
    5121: np.dtype("<u1"),
    5122: np.dtype("<i2"),
    5123: np.dtype("<u2"),
    5125: np.dtype("<u4"),
    5126: np.dtype("<f4"),
}
TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


# --------------------------------------------------------------------------------------------------
# Colour space (glTF vertex colours are linear; our meshes carry sRGB bytes)
# --------------------------------------------------------------------------------------------------
def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


# --------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------
def _pad(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def _unit_normals(mesh: Mesh) -> np.ndarray:
    """Per-vertex unit normals; zero-length ones (isolated vertices) get +y so the validator sees unit vectors."""
    normals = mesh.vertex_normals
    if normals is None:
        normals = vertex_normals(mesh.vertices, mesh.faces)
    normals = np.asarray(normals, dtype=np.float64)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    bad = ~np.isfinite(length[:, 0]) | (length[:, 0] < 1e-12)
    normals = np.where(bad[:, None], np.array([0.0, 1.0, 0.0]), normals / np.where(bad[:, None], 1.0, length))
    return normals.astype(np.float32)


class _BinBuilder:
    """Accumulates 4-byte-aligned buffer views and their accessors."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, array: np.ndarray, component_type: int, kind: str, target: int, **accessor_fields: Any) -> int:
        data = np.ascontiguousarray(array, dtype=COMPONENT_DTYPES[component_type]).tobytes()
        offset = len(self.blob)
        self.blob += _pad(data, b"\x00")
        self.views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data), "target": target})
        count = int(array.shape[0]) if kind != "SCALAR" else int(array.size)
        self.accessors.append(
            {"bufferView": len(self.views) - 1, "componentType": component_type, "count": count, "type": kind,
             **accessor_fields}
        )
        return len(self.accessors) - 1

    def add_bytes(self, data: bytes) -> int:
        """A buffer view of raw bytes (an embedded image); returns the view's index."""
        offset = len(self.blob)
        self.blob += _pad(data, b"\x00")
        self.views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data)})
        return len(self.views) - 1


def glb_bytes(mesh: Mesh, extras: dict | None = None, name: str = "head", generator: str = "head-stylizer") -> bytes:
    """The ``.glb`` file for ``mesh`` (see module docstring) with ``extras`` as ``asset.extras``."""
    mesh.check(name)
    if mesh.num_faces == 0:
        raise InputError(f"{name}: cannot write a glTF mesh without triangles")
    positions = mesh.vertices.astype(np.float32)
    builder = _BinBuilder()
    attributes = {
        "POSITION": builder.add(
            positions, 5126, "VEC3", TARGET_ARRAY_BUFFER,
            min=[float(v) for v in positions.min(axis=0)], max=[float(v) for v in positions.max(axis=0)],
        ),
        "NORMAL": builder.add(_unit_normals(mesh), 5126, "VEC3", TARGET_ARRAY_BUFFER),
    }
    if mesh.vertex_colors is not None:
        linear = srgb_to_linear(mesh.vertex_colors.astype(np.float64) / 255.0).astype(np.float32)
        attributes["COLOR_0"] = builder.add(linear, 5126, "VEC3", TARGET_ARRAY_BUFFER)
    indices = builder.add(mesh.faces.astype(np.uint32).reshape(-1), 5125, "SCALAR", TARGET_ELEMENT_ARRAY_BUFFER)
    asset: dict[str, Any] = {"version": "2.0", "generator": generator}
    if extras:
        asset["extras"] = extras
    document = {
        "asset": asset,
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [{"attributes": attributes, "indices": indices, "mode": MODE_TRIANGLES}]}],
        "accessors": builder.accessors,
        "bufferViews": builder.views,
        "buffers": [{"byteLength": len(builder.blob)}],
    }
    return glb_container(document, bytes(builder.blob))


def glb_container(document: dict, blob: bytes) -> bytes:
    """The GLB bytes of a glTF JSON ``document`` whose single buffer is ``blob`` (chunks padded as required)."""
    json_chunk = _pad(json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8"), b" ")
    bin_chunk = _pad(blob, b"\x00")
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join(
        (
            struct.pack("<III", GLB_MAGIC, 2, total),
            struct.pack("<II", len(json_chunk), CHUNK_JSON),
            json_chunk,
            struct.pack("<II", len(bin_chunk), CHUNK_BIN),
            bin_chunk,
        )
    )


def with_asset_copyright(glb: bytes, copyright: str) -> bytes:
    """The same ``.glb`` with ``asset.copyright`` set (the model attribution every output must carry).

    Done on the finished container rather than in each writer, so every writer (vertex-coloured, game-ready
    LODs) gets it from one place. Only the JSON chunk changes: buffer views address the BIN chunk from its own
    start, so it is copied untouched and nothing else moves."""
    if len(glb) < 20:
        raise InputError("glb: too short to be a binary glTF")
    magic, version, _total = struct.unpack_from("<III", glb, 0)
    json_length, json_type = struct.unpack_from("<II", glb, 12)
    if magic != GLB_MAGIC or version != 2 or json_type != CHUNK_JSON or 20 + json_length > len(glb):
        raise InputError("glb: not a glTF 2.0 binary with a JSON chunk first")
    document = json.loads(glb[20 : 20 + json_length].decode("utf-8"))
    document.setdefault("asset", {})["copyright"] = str(copyright)
    rest = glb[20 + json_length :]  # the BIN chunk (header included), if any
    json_chunk = _pad(json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8"), b" ")
    total = 12 + 8 + len(json_chunk) + len(rest)
    return b"".join((struct.pack("<III", GLB_MAGIC, 2, total), struct.pack("<II", len(json_chunk), CHUNK_JSON),
                     json_chunk, rest))


def write_glb(mesh: Mesh, path: str | os.PathLike, extras: dict | None = None, name: str = "head") -> Path:
    """Write ``mesh`` as a binary glTF atomically."""
    return write_bytes(path, glb_bytes(mesh, extras, name=name))


# Sampler: trilinear minification, clamped (an atlas must not wrap around its edges).
_ATLAS_SAMPLER = {"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}


def textured_lod_glb_bytes(
    levels: list[tuple[Mesh, np.ndarray, bytes]],
    screen_coverage: list[float],
    extras: dict | None = None,
    name: str = "head",
    generator: str = "head-stylizer",
) -> bytes:
    """A ``.glb`` with levels of detail, each a textured mesh: ``levels`` = (mesh, per-vertex uv (V, 2) in glTF's
    convention, PNG bytes of its base-colour texture), finest first.

    Level 0 is the scene's node; the others hang off it through ``MSFT_lod`` (engines without the extension
    show level 0), with ``MSFT_screencoverage`` in the node's extras. No ``COLOR_0``: glTF multiplies it into
    the base colour, which would darken the texture.
    """
    if not levels:
        raise InputError(f"{name}: no levels of detail to write")
    builder = _BinBuilder()
    nodes, meshes, materials, textures, images = [], [], [], [], []
    for level, (mesh, uv, png) in enumerate(levels):
        label = f"{name}_LOD{level}"
        mesh.check(label)
        if mesh.num_faces == 0:
            raise InputError(f"{label}: cannot write a glTF mesh without triangles")
        if uv.shape != (mesh.num_vertices, 2) or not np.isfinite(uv).all():
            raise InputError(f"{label}: need one finite (u, v) per vertex, got {uv.shape}")
        positions = mesh.vertices.astype(np.float32)
        attributes = {
            "POSITION": builder.add(positions, 5126, "VEC3", TARGET_ARRAY_BUFFER,
                                    min=[float(v) for v in positions.min(axis=0)],
                                    max=[float(v) for v in positions.max(axis=0)]),
            "NORMAL": builder.add(_unit_normals(mesh), 5126, "VEC3", TARGET_ARRAY_BUFFER),
            "TEXCOORD_0": builder.add(uv.astype(np.float32), 5126, "VEC2", TARGET_ARRAY_BUFFER),
        }
        indices = builder.add(mesh.faces.astype(np.uint32).reshape(-1), 5125, "SCALAR", TARGET_ELEMENT_ARRAY_BUFFER)
        images.append({"bufferView": builder.add_bytes(png), "mimeType": "image/png", "name": f"{label}_basecolor"})
        textures.append({"sampler": 0, "source": level})
        materials.append({"name": f"{label}_material",
                          "pbrMetallicRoughness": {"baseColorTexture": {"index": level, "texCoord": 0},
                                                   "metallicFactor": 0.0, "roughnessFactor": 0.8}})
        meshes.append({"name": label, "primitives": [{"attributes": attributes, "indices": indices,
                                                      "material": level, "mode": MODE_TRIANGLES}]})
        nodes.append({"mesh": level, "name": label})
    document: dict[str, Any] = {"asset": {"version": "2.0", "generator": generator}}
    if extras:
        document["asset"]["extras"] = extras
    if len(levels) > 1:
        nodes[0]["extensions"] = {"MSFT_lod": {"ids": list(range(1, len(levels)))}}
        nodes[0]["extras"] = {"MSFT_screencoverage": [float(c) for c in screen_coverage[: len(levels)]]}
        document["extensionsUsed"] = ["MSFT_lod"]
    document.update({
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": nodes,
        "meshes": meshes,
        "materials": materials,
        "textures": textures,
        "images": images,
        "samplers": [_ATLAS_SAMPLER],
        "accessors": builder.accessors,
        "bufferViews": builder.views,
        "buffers": [{"byteLength": len(builder.blob)}],
    })
    return glb_container(document, bytes(builder.blob))


# --------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------
class GltfDocument:
    """A parsed glTF: the JSON document and its buffers as bytes."""

    def __init__(self, document: dict, buffers: list[bytes], name: str, limits: InputLimits | None = None):
        self.document, self.buffers, self.name = document, buffers, name
        self.limits = active_limits(limits)

    def _entry(self, key: str, index: Any, what: str) -> dict:
        entries = self.document.get(key, [])
        index = self._index(index, what)
        if not isinstance(entries, list) or index >= len(entries) or not isinstance(entries[index], dict):
            raise InputError(f"{self.name}: {what} {index} does not exist")
        return entries[index]

    def buffer_view_bytes(self, index: Any) -> bytes:
        """The bytes of buffer view ``index`` (e.g. an embedded PNG)."""
        view = self._entry("bufferViews", index, "bufferView")
        buffer = self.buffers[self._index(view.get("buffer"), "bufferView buffer")]
        start = self._index(view.get("byteOffset", 0), "byteOffset")
        length = self._index(view.get("byteLength"), "byteLength")
        if start + length > len(buffer):
            raise InputError(f"{self.name}: bufferView {index} reads past the end of its buffer")
        return buffer[start : start + length]

    def image_rgb(self, index: Any) -> np.ndarray | None:
        """Image ``index`` as (H, W, 3) uint8 sRGB, or None when its file is missing (warned by the caller).
        Alpha is dropped: a head's base colour is opaque."""
        image = self._entry("images", index, "image")
        what = f"image {index}"
        if "bufferView" in image:
            data = self.buffer_view_bytes(image["bufferView"])
        elif isinstance(image.get("uri"), str) and image["uri"].startswith("data:"):
            data = decode_data_uri(image["uri"], self.name, what, self.limits)
        else:
            target = check_reference(image.get("uri"), owner=self.name, what=f"{what} uri", uri=True, missing_ok=True,
                                     limits=self.limits)
            if target is None:
                return None
            data = read_reference(image["uri"], owner=self.name, what=f"{what} uri", uri=True, limits=self.limits)
        return np.ascontiguousarray(decode_image_rgba(data, self.name, what, limits=self.limits)[:, :, :3])

    @property
    def extras(self) -> dict:
        asset = self.document.get("asset", {})
        extras = asset.get("extras", {}) if isinstance(asset, dict) else {}
        return extras if isinstance(extras, dict) else {}

    def _index(self, value: Any, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(f"{self.name}: {what} must be a non-negative integer, got {value!r}")
        return value

    def accessor(self, index: int, types: tuple[str, ...] | None = None) -> np.ndarray:
        """Accessor ``index`` as an (count, components) array (float for normalised integers).

        ``types``: the accessor types the caller can use (e.g. ``("VEC3",)`` for positions). The type and
        the number of values are checked before anything is allocated: no accessor of a triangle mesh holds
        more values than three indices per face.
        """
        try:
            acc = self.document["accessors"][index]
            if "sparse" in acc:
                raise InputError(f"{self.name}: sparse accessors are not supported")
            dtype = COMPONENT_DTYPES[acc["componentType"]]
            if types is not None and acc["type"] not in types:
                raise InputError(f"{self.name}: accessor {index} has type {acc['type']!r}; expected {' or '.join(types)}")
            width = TYPE_SIZES[acc["type"]]
            count = self._index(acc["count"], f"accessor {index} count")
            check_count(self.name, f"accessor {index} claims {count:,} elements; its value count", count * width,
                        3 * self.limits.max_faces, "3 × max_faces")
            if "bufferView" not in acc:
                return np.zeros((count, width), dtype=dtype)
            view = self.document["bufferViews"][self._index(acc["bufferView"], f"accessor {index} bufferView")]
            buffer = self.buffers[self._index(view["buffer"], f"bufferView {acc['bufferView']} buffer")]
            start = self._index(view.get("byteOffset", 0), "byteOffset") + self._index(acc.get("byteOffset", 0), "byteOffset")
            element = dtype.itemsize * width
            stride = self._index(view.get("byteStride", element) or element, "byteStride")
        except (KeyError, IndexError, TypeError) as exc:
            raise InputError(f"{self.name}: malformed accessor {index} ({exc!r})") from None
        if count and start + stride * (count - 1) + element > len(buffer):
            raise InputError(f"{self.name}: accessor {index} reads past the end of its buffer")
        if count == 0:
            return np.zeros((0, width), dtype=dtype)
        raw = np.frombuffer(buffer, dtype=np.uint8, count=stride * (count - 1) + element, offset=start)
        rows = np.lib.stride_tricks.as_strided(raw, shape=(count, element), strides=(stride, 1))
        values = np.ascontiguousarray(rows).view(dtype).reshape(count, width)
        if acc.get("normalized") and dtype.kind in "iu":
            info = np.iinfo(dtype)
            values = np.maximum(values.astype(np.float64) / info.max, -1.0)
        return values


def parse_gltf(path: str | os.PathLike, limits: InputLimits | None = None) -> GltfDocument:
    """Parse a ``.glb`` or ``.gltf`` file (any problem → :class:`InputError` naming the file).

    Every buffer and image URI must name a regular file inside the glTF's own folder
    (:func:`engine.io.scan_references.check_gltf_references`); refused URIs are never opened.
    """
    limits = active_limits(limits)
    path = Path(path)
    name = str(path)
    document, bin_chunk = read_gltf_document(path, limits)
    asset = document.get("asset", {})
    if not isinstance(asset, dict) or str(asset.get("version", "")).split(".")[0] != "2":
        raise InputError(f"{name}: not a glTF 2.0 document")
    required = document.get("extensionsRequired", [])
    if required:
        shown = sorted(map(str, required)) if isinstance(required, list) else required
        raise InputError(f"{name}: needs unsupported glTF extensions {shown} (export without compression)")
    check_gltf_references(document, path, limits)  # images too: Blender's importer would read them
    buffers = []
    entries = document.get("buffers", [])
    if not isinstance(entries, list):
        raise InputError(f"{name}: 'buffers' is not a list")
    for i, buf in enumerate(entries):
        if isinstance(buf, dict) and "uri" in buf:
            uri = buf["uri"]
            if isinstance(uri, str) and uri.startswith("data:"):
                buffers.append(decode_data_uri(uri, name, f"buffer {i}", limits))
            else:
                buffers.append(read_reference(uri, owner=path, what=f"buffer {i} uri", uri=True, limits=limits))
        elif i == 0 and bin_chunk is not None:
            buffers.append(bin_chunk)
        else:
            raise InputError(f"{name}: buffer {i} has no data")
    return GltfDocument(document, buffers, name, limits)


def _quaternion_matrix(q: list[float]) -> np.ndarray:
    x, y, z, w = (float(v) for v in q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def node_matrix(node: dict) -> np.ndarray:
    """(4, 4) local transform of a node: its ``matrix`` (column-major) or T·R·S."""
    if "matrix" in node:
        return np.asarray(node["matrix"], dtype=np.float64).reshape(4, 4).T
    m = np.eye(4)
    m[:3, :3] = _quaternion_matrix(node.get("rotation", [0, 0, 0, 1])) * np.asarray(node.get("scale", [1, 1, 1]), dtype=np.float64)
    m[:3, 3] = node.get("translation", [0, 0, 0])
    return m


def _mesh_instances(doc: GltfDocument) -> list[tuple[int, np.ndarray]]:
    """(mesh index, world matrix) for every mesh node under the default scene (all roots if no scene).

    glTF nodes form strict trees; a node reached twice (a cycle, or a shared child — which would let a few
    nodes multiply into exponentially many mesh instances) is refused.
    """
    d = doc.document
    nodes = d.get("nodes", [])
    scenes = d.get("scenes", [])
    if scenes:
        roots = scenes[doc._index(d.get("scene", 0), "scene")].get("nodes", [])
    else:
        children = {c for n in nodes for c in n.get("children", [])}
        roots = [i for i in range(len(nodes)) if i not in children]
    found: list[tuple[int, np.ndarray]] = []
    seen: set[int] = set()
    stack = [(doc._index(r, "scene node"), np.eye(4)) for r in roots]
    while stack:
        index, parent = stack.pop()
        if index >= len(nodes):
            raise InputError(f"{doc.name}: node hierarchy references a missing node {index}")
        if index in seen:
            raise InputError(f"{doc.name}: node {index} is reached twice; the node hierarchy must be a tree (no cycles or shared children)")
        seen.add(index)
        node = nodes[index]
        world = parent @ node_matrix(node)
        if "mesh" in node:
            found.append((doc._index(node["mesh"], f"node {index} mesh"), world))
        stack.extend((doc._index(c, f"node {index} child"), world) for c in node.get("children", []))
    if not found and not nodes:
        found = [(i, np.eye(4)) for i in range(len(d.get("meshes", [])))]
    return found


def _colors_to_srgb_bytes(colors: np.ndarray) -> np.ndarray:
    rgb = colors[:, :3].astype(np.float64)
    return np.round(linear_to_srgb(rgb) * 255.0).astype(np.uint8)


def read_gltf(path: str | os.PathLike, limits: InputLimits | None = None) -> tuple[Mesh, dict]:
    """All triangles of a ``.glb``/``.gltf`` as one world-space :class:`Mesh`, plus ``asset.extras``.

    Vertex and face totals (over every primitive and instance) are checked against the limits before each
    primitive is added; any malformed field is an :class:`InputError` naming the file.
    """
    limits = active_limits(limits)
    doc = parse_gltf(path, limits)
    try:
        return _read_mesh(doc, limits)
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, AttributeError, np.linalg.LinAlgError) as exc:
        raise InputError(f"{doc.name}: malformed glTF ({type(exc).__name__}: {exc})") from None


class _BaseColour:
    """Materials' base colour of one glTF: factors, and textures decoded once per image."""

    def __init__(self, doc: GltfDocument):
        self.doc = doc
        self.images: list[np.ndarray] = []  # the mesh's texture images, in order of first use
        self._slot: dict[int, int | None] = {}  # glTF image index → position in self.images (None: missing)
        self.warnings: list[str] = []

    def material(self, prim: dict) -> dict:
        if "material" not in prim:
            return {}
        pbr = self.doc._entry("materials", prim["material"], "material").get("pbrMetallicRoughness", {})
        return pbr if isinstance(pbr, dict) else {}

    def factor(self, prim: dict) -> np.ndarray:
        factor = np.asarray(self.material(prim).get("baseColorFactor", [1.0, 1.0, 1.0, 1.0]), dtype=np.float64)
        if factor.shape != (4,) or not np.isfinite(factor).all():
            raise InputError(f"{self.doc.name}: baseColorFactor must be 4 numbers, got {factor.tolist()}")
        return np.clip(factor[:3], 0.0, 1.0)

    def texture(self, prim: dict, num_vertices: int) -> tuple[int, np.ndarray | None]:
        """(slot in :attr:`images` or −1, per-vertex UV (V, 2) or None) of the primitive's base colour texture."""
        ref = self.material(prim).get("baseColorTexture")
        if not isinstance(ref, dict):
            return -1, None
        texture = self.doc._entry("textures", ref.get("index"), "texture")
        if "source" not in texture:
            self.warnings.append(f"{self.doc.name}: texture {ref.get('index')} has no image source; ignored")
            return -1, None
        image_index = self.doc._index(texture["source"], "texture source")
        if image_index not in self._slot:
            rgb = self.doc.image_rgb(image_index)
            if rgb is None:
                uri = self.doc._entry("images", image_index, "image").get("uri")
                self.warnings.append(f"{self.doc.name}: base colour texture {uri!r} not found; those faces keep "
                                     "their vertex or material colour")
                self._slot[image_index] = None
            else:
                self._slot[image_index] = len(self.images)
                self.images.append(rgb)
        slot = self._slot[image_index]
        if slot is None:
            return -1, None
        channel = f"TEXCOORD_{self.doc._index(ref.get('texCoord', 0), 'baseColorTexture texCoord')}"
        attrs = prim.get("attributes", {})
        if channel not in attrs:
            raise InputError(f"{self.doc.name}: a primitive's base colour texture reads {channel}, which it lacks")
        uv = self.doc.accessor(attrs[channel], ("VEC2",)).astype(np.float64)
        if len(uv) != num_vertices:
            raise InputError(f"{self.doc.name}: {channel} has {len(uv)} entries for {num_vertices} vertices")
        if not np.isfinite(uv).all():
            raise InputError(f"{self.doc.name}: {channel} holds NaN or infinite texture coordinates")
        return slot, uv


def _read_mesh(doc: GltfDocument, limits: InputLimits) -> tuple[Mesh, dict]:
    parts_v, parts_f, parts_c, parts_n, parts_uv, parts_slot = [], [], [], [], [], []
    any_colors, offset, faces = False, 0, 0
    base = _BaseColour(doc)
    for mesh_index, world in _mesh_instances(doc):
        try:
            primitives = doc.document["meshes"][mesh_index]["primitives"]
        except (KeyError, IndexError, TypeError):
            raise InputError(f"{doc.name}: node references missing mesh {mesh_index}") from None
        for prim in primitives:
            if prim.get("mode", MODE_TRIANGLES) != MODE_TRIANGLES:
                continue  # points/lines/strips carry no surface we can use
            attrs = prim.get("attributes", {})
            if "POSITION" not in attrs:
                raise InputError(f"{doc.name}: a primitive has no POSITION attribute")
            v = doc.accessor(attrs["POSITION"], ("VEC3",)).astype(np.float64)
            check_count(doc.name, "vertex count", offset + len(v), limits.max_vertices, "max_vertices")
            v = v @ world[:3, :3].T + world[:3, 3]
            if "indices" in prim:
                f = doc.accessor(prim["indices"], ("SCALAR",)).reshape(-1).astype(np.int64)
            else:
                f = np.arange(len(v), dtype=np.int64)
            if f.size % 3:
                raise InputError(f"{doc.name}: triangle index count {f.size} is not a multiple of 3")
            faces = check_count(doc.name, "face count", faces + f.size // 3, limits.max_faces, "max_faces")
            if f.size and (f.min() < 0 or f.max() >= len(v)):
                raise InputError(f"{doc.name}: triangle indices out of range")
            n = None
            if "NORMAL" in attrs:
                n = doc.accessor(attrs["NORMAL"], ("VEC3",)).astype(np.float64) @ np.linalg.inv(world[:3, :3])
                n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
            linear = np.ones((len(v), 3))
            if "COLOR_0" in attrs:
                linear = doc.accessor(attrs["COLOR_0"], ("VEC3", "VEC4"))[:, :3].astype(np.float64)
                any_colors = True
            factor = base.factor(prim)
            if (factor != 1.0).any():
                linear = linear * factor
                any_colors = True
            if (n is not None and n.shape != v.shape) or linear.shape != v.shape:
                raise InputError(f"{doc.name}: NORMAL/COLOR_0 counts differ from POSITION's {len(v)}")
            slot, uv = base.texture(prim, len(v))
            triangles = f.reshape(-1, 3)
            parts_v.append(v)
            parts_f.append(triangles + offset)
            parts_c.append(_colors_to_srgb_bytes(linear))
            parts_n.append(n)
            parts_uv.append(uv[triangles].astype(np.float32) if uv is not None else np.zeros((len(triangles), 3, 2), np.float32))
            parts_slot.append(np.full(len(triangles), slot, np.int32))
            offset += len(v)
    if not parts_f or offset == 0:
        raise InputError(f"{doc.name}: glTF holds no triangle meshes")
    normals = None
    if all(n is not None for n in parts_n):
        normals = np.concatenate(parts_n).astype(np.float32)
    mesh = Mesh(
        vertices=np.concatenate(parts_v).astype(np.float32),
        faces=np.concatenate(parts_f).astype(np.int32),
        vertex_colors=np.concatenate(parts_c) if any_colors else None,
        vertex_normals=normals,
        texture=SurfaceTexture(np.concatenate(parts_uv), np.concatenate(parts_slot), base.images) if base.images else None,
    )
    if base.warnings:
        mesh.metadata["warnings"] = list(base.warnings)
    return mesh.check(doc.name), doc.extras
