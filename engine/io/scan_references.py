"""The files a scan names inside itself, each checked with :func:`engine.io.untrusted.check_reference`.

A scan is more than one file when it points at others: a ``.gltf`` (or ``.glb``) at buffers and images by
URI, an ``.obj`` at material libraries (``mtllib``) whose texture statements (``map_Kd`` …) name images, a
``.ply`` at a texture (MeshLab's ``comment TextureFile``). The engine's readers only *read* glTF buffers, but
Blender's importers follow every one of these names, so the Blender batch checks them all
(:func:`check_scan_references`) before it hands a scan to an importer, and the engine's readers refuse the
same scans, so both paths agree on what is hostile. Every reference must stay inside the scan's own folder;
a missing texture or material is tolerated (importers only warn about those), a refused one never is.

Standard library only (the Blender side imports this module).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from .untrusted import InputLimits, active_limits, check_file, check_reference, open_checked, parse_json, read_bytes

GLB_MAGIC = b"glTF"
_CHUNK_JSON = 0x4E4F534A  # b"JSON"
_CHUNK_BIN = 0x004E4942  # b"BIN\0"
_MTL_MAPS = ("map_ka", "map_kd", "map_ks", "map_ke", "map_ns", "map_d", "map_bump", "map_disp", "map_refl",
             "map_pr", "map_pm", "map_ps", "map_norm", "bump", "disp", "decal", "refl", "norm")
_PLY_HEADER_MAX = 1 << 16


# --------------------------------------------------------------------------------------------------
# glTF
# --------------------------------------------------------------------------------------------------
def split_glb(data: bytes, name: str) -> tuple[bytes, bytes | None]:
    """(JSON chunk, BIN chunk or None) of a binary glTF container; a ``.gltf`` is all JSON."""
    if data[:4] != GLB_MAGIC:
        return data, None
    if len(data) < 20:
        raise InputError(f"{name}: truncated GLB header")
    _, version, length = struct.unpack_from("<III", data, 0)
    if version != 2:
        raise InputError(f"{name}: GLB version {version} is not supported (need 2)")
    if length > len(data):
        raise InputError(f"{name}: truncated GLB ({len(data)} of {length} bytes)")
    offset, json_bytes, bin_chunk = 12, None, None
    while offset + 8 <= length:
        chunk_len, chunk_type = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8 : offset + 8 + chunk_len]
        if len(chunk) != chunk_len:
            raise InputError(f"{name}: truncated GLB chunk")
        if chunk_type == _CHUNK_JSON and json_bytes is None:
            json_bytes = chunk
        elif chunk_type == _CHUNK_BIN and bin_chunk is None:
            bin_chunk = chunk
        offset += 8 + chunk_len
    if json_bytes is None:
        raise InputError(f"{name}: GLB has no JSON chunk")
    return json_bytes, bin_chunk


def read_gltf_document(path: str | os.PathLike, limits: InputLimits | None = None) -> tuple[dict, bytes | None]:
    """(JSON document, GLB BIN chunk or None) of a ``.glb``/``.gltf``, size- and depth-checked."""
    limits = active_limits(limits)
    name = str(path)
    json_bytes, bin_chunk = split_glb(read_bytes(path, "glTF", limits=limits), name)
    # A .gltf may embed its buffers as data URIs, so its JSON may be as large as a scan file.
    document = parse_json(json_bytes, name, "glTF JSON", limits=limits, max_bytes=limits.max_file_bytes)
    if not isinstance(document, dict):
        raise InputError(f"{name}: not a glTF 2.0 document (the JSON is a {type(document).__name__})")
    return document, bin_chunk


def gltf_uris(document: dict) -> Iterable[tuple[str, int, Any]]:
    """("buffer" | "image", index, uri) for every entry that has a ``uri``."""
    for kind, key in (("buffer", "buffers"), ("image", "images")):
        entries = document.get(key, [])
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            if isinstance(entry, dict) and "uri" in entry:
                yield kind, i, entry["uri"]


def check_gltf_references(document: dict, path: str | os.PathLike, limits: InputLimits | None = None) -> list[Path]:
    """Check every buffer and image URI of a glTF document; returns the local files they name."""
    limits = active_limits(limits)
    found = []
    for kind, index, uri in gltf_uris(document):
        if isinstance(uri, str) and uri.startswith("data:"):
            if len(uri) * 3 // 4 > limits.max_file_bytes:
                raise InputError(f"{path}: {kind} {index} data URI exceeds the input limit")
            continue
        target = check_reference(uri, owner=path, what=f"{kind} {index} uri", uri=True, missing_ok=kind == "image",
                                 limits=limits)
        if target is not None:
            found.append(target)
    return found


# --------------------------------------------------------------------------------------------------
# OBJ / MTL / PLY
# --------------------------------------------------------------------------------------------------
def statement_names(rest: str) -> list[str]:
    """The candidate file names of a statement's arguments: the whole rest (names with spaces) and each word."""
    rest = rest.strip()
    words = [w for w in rest.split() if w]
    return list(dict.fromkeys([rest, *words])) if rest else []


_MTLLIB = re.compile(r"^[ \t]*mtllib[ \t]+(.*?)[ \t]*\r?$", re.M)
_MTL_MAP = re.compile(r"^[ \t]*(" + "|".join(_MTL_MAPS) + r")[ \t]+(.*?)[ \t]*\r?$", re.M | re.I)


def check_mtl_references(mtl: Path, text: str, root: str | os.PathLike, limits: InputLimits | None = None) -> list[Path]:
    """Texture maps of a material library (relative to the MTL's folder, inside ``root``)."""
    found = []
    for match in _MTL_MAP.finditer(text):
        for name in statement_names(match.group(2)):
            target = check_reference(name, owner=mtl, base=mtl.parent, root=root, what=f"{match.group(1)} texture",
                                     missing_ok=True, limits=limits)
            if target is not None:
                found.append(target)
    return found


def check_obj_references(path: str | os.PathLike, mtllibs: Iterable[str], limits: InputLimits | None = None) -> list[Path]:
    """The OBJ's material libraries (``mtllib`` arguments) and the textures they name."""
    limits = active_limits(limits)
    path = Path(path)
    found = []
    for rest in mtllibs:
        for name in statement_names(rest):
            mtl = check_reference(name, owner=path, what="mtllib", missing_ok=True, limits=limits)
            if mtl is None:
                continue
            found.append(mtl)
            try:
                text = read_bytes(mtl, "material library", root=path.parent, limits=limits)
                found += check_mtl_references(mtl, text.decode("utf-8", errors="replace"), path.parent, limits)
            except InputError as exc:
                raise InputError(f"{path}: mtllib {name!r}: {exc}") from None
    return found


def obj_mtllibs(text: str) -> list[str]:
    """The arguments of every ``mtllib`` statement of OBJ text."""
    return [m.group(1) for m in _MTLLIB.finditer(text)]


def check_ply_references(path: str | os.PathLike, header_lines: Iterable[str], limits: InputLimits | None = None) -> list[Path]:
    """MeshLab's ``comment TextureFile <name>`` lines of a PLY header."""
    found = []
    for line in header_lines:
        words = line.split(None, 2)
        if len(words) == 3 and words[0] in ("comment", "obj_info") and words[1].lower() == "texturefile":
            target = check_reference(words[2].strip(), owner=path, what="TextureFile", missing_ok=True, limits=limits)
            if target is not None:
                found.append(target)
    return found


# --------------------------------------------------------------------------------------------------
# Everything a scan file names (the Blender batch's check before an importer runs)
# --------------------------------------------------------------------------------------------------
def check_scan_references(path: str | os.PathLike, limits: InputLimits | None = None) -> list[Path]:
    """Check a scan and every file it names, before any importer reads it: the scan itself must be a regular
    file inside its folder (a symbolic link may not lead out of it) within the size limit, and every
    reference must pass :func:`check_reference`. Returns the referenced files that exist.

    FBX is binary and proprietary: only the scan file itself is checked.
    """
    limits = active_limits(limits)
    path = Path(path)
    check_file(path, "scan", root=path.parent, limits=limits)
    suffix = path.suffix.lower()
    if suffix in (".gltf", ".glb"):
        document, _ = read_gltf_document(path, limits)
        return check_gltf_references(document, path, limits)
    if suffix == ".obj":
        mtllibs = []
        with open_checked(path, "scan", root=path.parent, limits=limits) as fh:
            for raw in fh:  # streamed: an OBJ may be large, the mtllib lines are short
                if raw.lstrip()[:6].lower() == b"mtllib":
                    mtllibs += obj_mtllibs(raw.decode("utf-8", errors="replace").strip())
        return check_obj_references(path, mtllibs, limits)
    if suffix == ".ply":
        with open_checked(path, "scan", root=path.parent, limits=limits) as fh:
            head = fh.read(_PLY_HEADER_MAX)
        end = head.find(b"end_header")
        lines = head[: end if end >= 0 else len(head)].decode("ascii", errors="replace").splitlines()
        return check_ply_references(path, lines, limits)
    return []
