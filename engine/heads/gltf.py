"""glTF 2.0 binary (``.glb``) writer and a reader for ``.glb``/``.gltf`` triangle meshes, in pure numpy.

Why our own: the batch exporter must run without Blender, and the reader must take artists' scans exported by
any tool. Only what a coloured head mesh needs is supported:

* Writing: one mesh, one triangle primitive with ``POSITION`` (float32, with the min/max the spec requires),
  ``NORMAL`` (unit float32), ``COLOR_0`` (float32 RGB, *linear* as the spec mandates — our meshes store 8-bit
  sRGB, so colours are converted on the way out and back on the way in) and uint32 ``indices``; provenance
  goes into ``asset.extras``. Every buffer view is 4-byte aligned and the JSON chunk is space-padded and the
  BIN chunk zero-padded as the container format requires, so the Khronos validator reports no errors.
* Reading: every triangle primitive (mode 4, indexed or not) of every mesh reachable from the default scene,
  each moved by its node's world transform (TRS or matrix) and merged into one :class:`engine.mesh.Mesh`.
  Buffers may be the GLB's BIN chunk, base64 data URIs or ``.bin`` files next to a ``.gltf``. Sparse
  accessors, Draco/meshopt compression and strips/fans are refused with a clear :class:`InputError`.

Coordinates are written as given: glTF is y-up with the front facing +z, which is the generator's world frame.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io.atomic import write_bytes
from ..mesh import Mesh, vertex_normals

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
    json_chunk = _pad(json.dumps(document, separators=(",", ":"), allow_nan=False).encode("utf-8"), b" ")
    bin_chunk = bytes(builder.blob)
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


def write_glb(mesh: Mesh, path: str | os.PathLike, extras: dict | None = None, name: str = "head") -> Path:
    """Write ``mesh`` as a binary glTF atomically."""
    return write_bytes(path, glb_bytes(mesh, extras, name=name))


# --------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------
class GltfDocument:
    """A parsed glTF: the JSON document and its buffers as bytes."""

    def __init__(self, document: dict, buffers: list[bytes], name: str):
        self.document, self.buffers, self.name = document, buffers, name

    @property
    def extras(self) -> dict:
        extras = self.document.get("asset", {}).get("extras", {})
        return extras if isinstance(extras, dict) else {}

    def accessor(self, index: int) -> np.ndarray:
        """Accessor ``index`` as an (count, components) array (float for normalised integers)."""
        try:
            acc = self.document["accessors"][index]
            if "sparse" in acc:
                raise InputError(f"{self.name}: sparse accessors are not supported")
            dtype = COMPONENT_DTYPES[acc["componentType"]]
            width = TYPE_SIZES[acc["type"]]
            count = int(acc["count"])
            if "bufferView" not in acc:
                return np.zeros((count, width), dtype=dtype)
            view = self.document["bufferViews"][acc["bufferView"]]
            buffer = self.buffers[view["buffer"]]
        except (KeyError, IndexError, TypeError) as exc:
            raise InputError(f"{self.name}: malformed accessor {index} ({exc!r})") from None
        start = int(view.get("byteOffset", 0)) + int(acc.get("byteOffset", 0))
        element = dtype.itemsize * width
        stride = int(view.get("byteStride", element) or element)
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


def _read_uri(uri: str, base: Path, name: str) -> bytes:
    if uri.startswith("data:"):
        head, _, payload = uri.partition(",")
        if not head.endswith(";base64"):
            raise InputError(f"{name}: only base64 data URIs are supported")
        return base64.b64decode(payload)
    target = (base / uri).resolve()
    try:
        return target.read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot read buffer {uri!r} ({exc.strerror})") from None


def parse_gltf(path: str | os.PathLike) -> GltfDocument:
    """Parse a ``.glb`` or ``.gltf`` file (any problem → :class:`InputError` naming the file)."""
    path = Path(path)
    name = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{name}: cannot read glTF ({exc.strerror})") from None
    bin_chunk: bytes | None = None
    if data[:4] == b"glTF":
        if len(data) < 20:
            raise InputError(f"{name}: truncated GLB header")
        _, version, length = struct.unpack_from("<III", data, 0)
        if version != 2:
            raise InputError(f"{name}: GLB version {version} is not supported (need 2)")
        if length > len(data):
            raise InputError(f"{name}: truncated GLB ({len(data)} of {length} bytes)")
        offset, json_bytes = 12, None
        while offset + 8 <= length:
            chunk_len, chunk_type = struct.unpack_from("<II", data, offset)
            chunk = data[offset + 8 : offset + 8 + chunk_len]
            if len(chunk) != chunk_len:
                raise InputError(f"{name}: truncated GLB chunk")
            if chunk_type == CHUNK_JSON and json_bytes is None:
                json_bytes = chunk
            elif chunk_type == CHUNK_BIN and bin_chunk is None:
                bin_chunk = chunk
            offset += 8 + chunk_len
        if json_bytes is None:
            raise InputError(f"{name}: GLB has no JSON chunk")
    else:
        json_bytes = data
    try:
        document = json.loads(json_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{name}: glTF JSON is unreadable ({exc})") from None
    if not isinstance(document, dict) or str(document.get("asset", {}).get("version", "")).split(".")[0] != "2":
        raise InputError(f"{name}: not a glTF 2.0 document")
    required = set(document.get("extensionsRequired", []))
    if required:
        raise InputError(f"{name}: needs unsupported glTF extensions {sorted(required)} (export without compression)")
    buffers = []
    for i, buf in enumerate(document.get("buffers", [])):
        if "uri" in buf:
            buffers.append(_read_uri(buf["uri"], path.parent, name))
        elif i == 0 and bin_chunk is not None:
            buffers.append(bin_chunk)
        else:
            raise InputError(f"{name}: buffer {i} has no data")
    return GltfDocument(document, buffers, name)


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
    """(mesh index, world matrix) for every mesh node under the default scene (all roots if no scene)."""
    d = doc.document
    nodes = d.get("nodes", [])
    scenes = d.get("scenes", [])
    if scenes:
        roots = scenes[int(d.get("scene", 0))].get("nodes", [])
    else:
        children = {c for n in nodes for c in n.get("children", [])}
        roots = [i for i in range(len(nodes)) if i not in children]
    found: list[tuple[int, np.ndarray]] = []
    stack = [(int(r), np.eye(4), 0) for r in roots]
    while stack:
        index, parent, depth = stack.pop()
        if depth > 256 or index >= len(nodes):
            raise InputError(f"{doc.name}: node hierarchy is cyclic or references a missing node")
        node = nodes[index]
        world = parent @ node_matrix(node)
        if "mesh" in node:
            found.append((int(node["mesh"]), world))
        stack.extend((int(c), world, depth + 1) for c in node.get("children", []))
    if not found and not nodes:
        found = [(i, np.eye(4)) for i in range(len(d.get("meshes", [])))]
    return found


def _colors_to_srgb_bytes(colors: np.ndarray) -> np.ndarray:
    rgb = colors[:, :3].astype(np.float64)
    return np.round(linear_to_srgb(rgb) * 255.0).astype(np.uint8)


def read_gltf(path: str | os.PathLike) -> tuple[Mesh, dict]:
    """All triangles of a ``.glb``/``.gltf`` as one world-space :class:`Mesh`, plus ``asset.extras``."""
    doc = parse_gltf(path)
    parts_v, parts_f, parts_c, parts_n = [], [], [], []
    any_colors, offset = False, 0
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
            v = doc.accessor(attrs["POSITION"]).astype(np.float64)
            v = v @ world[:3, :3].T + world[:3, 3]
            if "indices" in prim:
                f = doc.accessor(prim["indices"]).reshape(-1).astype(np.int64)
            else:
                f = np.arange(len(v), dtype=np.int64)
            if f.size % 3:
                raise InputError(f"{doc.name}: triangle index count {f.size} is not a multiple of 3")
            if f.size and (f.min() < 0 or f.max() >= len(v)):
                raise InputError(f"{doc.name}: triangle indices out of range")
            n = None
            if "NORMAL" in attrs:
                n = doc.accessor(attrs["NORMAL"]).astype(np.float64) @ np.linalg.inv(world[:3, :3])
                n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
            c = None
            if "COLOR_0" in attrs:
                c = _colors_to_srgb_bytes(doc.accessor(attrs["COLOR_0"]))
                any_colors = True
            parts_v.append(v)
            parts_f.append(f.reshape(-1, 3) + offset)
            parts_c.append(c if c is not None else np.full((len(v), 3), 255, np.uint8))
            parts_n.append(n)
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
    ).check(doc.name)
    return mesh, doc.extras
