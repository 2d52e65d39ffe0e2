"""A hostile-input corpus, generated (never committed): every reader and every command that takes files must
refuse each of these with a clear message naming the file, quickly, and leave no output behind.

``build_corpus(root)`` writes it under ``root`` and returns the :class:`Case` list:

* ``root/in/``       — files a batch (``--in``) or ``invert`` gets: scans, portraits, latents, special files;
* ``root/views/``    — folders Blender would have rendered (``--views``), with hostile ``cameras.json``;
* ``root/ckpt/``     — generator checkpoints / configs / pickles for ``generate --checkpoint``;
* ``root/outside/``  — what the traversal cases point at: ``secret.fifo`` is a FIFO with no writer (opening it
  for reading would block forever) and ``secret.bin`` a file whose bytes must never be read.

Run as a script (``python tests/hostile/corpus.py DIR``) to look at the files.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Readers (test_readers._reader) a case is run against besides its format's own: "scan" is what the batch and
# `invert` use for any scan; "scan_refs" is the Blender batch's check before Blender's importer runs, which
# looks only at the file itself and the files it names (content is the importer's business), so it is listed
# only for those cases.
REFS = "scan_refs"


@dataclass
class Case:
    name: str
    path: Path  # what the reader / command is given
    readers: tuple[str, ...]  # reader names (test_readers.READERS)
    command: str | None  # "invert", "head" (--latent), "generate" (--checkpoint), "stylize" (--config) or None
    match: str  # regular expression the message must match (the reason)
    batch: bool = False  # one of the --in / --views items of the batch
    traversal: bool = False  # names a file outside the input's folder: must be refused before any read of it
    names: tuple[str, ...] = ()  # text the message must contain besides the input's file name
    note: str = ""
    seconds: float | None = None  # a longer time bound than READ_SECONDS, with the reason in ``note``

    @property
    def label(self) -> str:
        return self.name


# --------------------------------------------------------------------------------------------------
# Bytes of the formats
# --------------------------------------------------------------------------------------------------
TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1.5, 0], [0, 0, 1]], np.float32)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)


def ply_bytes(vertices: np.ndarray, faces: np.ndarray, header_extra: str = "", vertex_count: int | None = None,
              truncate: int | None = None) -> bytes:
    header = (
        "ply\nformat binary_little_endian 1.0\n" + header_extra
        + f"element vertex {len(vertices) if vertex_count is None else vertex_count}\n"
        + "property float x\nproperty float y\nproperty float z\n"
        + f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    body = np.asarray(vertices, "<f4").tobytes()
    body += b"".join(struct.pack("<B3i", 3, *map(int, f)) for f in faces)
    data = header.encode("ascii") + body
    return data if truncate is None else data[:truncate]


def obj_text(vertices, faces, head: str = "") -> str:
    lines = [head] if head else []
    lines += [f"v {x} {y} {z}" for x, y, z in vertices]
    lines += ["f " + " ".join(str(int(i) + 1) for i in f) for f in faces]
    return "\n".join(lines) + "\n"


def gltf_document(buffer_uri: str | None = None, vertices=TETRA_V, faces=TETRA_F, *, images=None, nodes=None,
                  extras=None, count=None) -> dict:
    """A .gltf with one triangle mesh; the buffer is a data URI unless ``buffer_uri`` names one."""
    blob = np.asarray(vertices, "<f4").tobytes() + np.asarray(faces, "<u4").tobytes()
    uri = buffer_uri if buffer_uri is not None else "data:application/octet-stream;base64," + base64.b64encode(blob).decode()
    doc = {
        "asset": {"version": "2.0", **({"extras": extras} if extras is not None else {})},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": nodes if nodes is not None else [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "mode": 4}]}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": len(vertices) if count is None else count, "type": "VEC3"},
            {"bufferView": 1, "componentType": 5125, "count": int(np.asarray(faces).size), "type": "SCALAR"},
        ],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(vertices) * 12},
            {"buffer": 0, "byteOffset": len(vertices) * 12, "byteLength": int(np.asarray(faces).size) * 4},
        ],
        "buffers": [{"uri": uri, "byteLength": len(blob)}],
    }
    if images is not None:
        doc["images"] = images
    return doc


def glb_bytes(doc: dict, bin_chunk: bytes = b"", declared_length: int | None = None, version: int = 2) -> bytes:
    js = json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    chunks = struct.pack("<II", len(js), 0x4E4F534A) + js
    if bin_chunk:
        bin_chunk += b"\0" * (-len(bin_chunk) % 4)
        chunks += struct.pack("<II", len(bin_chunk), 0x004E4942) + bin_chunk
    total = 12 + len(chunks)
    return struct.pack("<III", 0x46546C67, version, total if declared_length is None else declared_length) + chunks


def png_bytes(width: int, height: int, pixels: bytes | None = None) -> bytes:
    """A PNG whose IHDR declares width × height (RGB, 8 bit) and whose IDAT holds ``pixels`` (default:
    a few bytes) — a decompression bomb's header over a tiny file."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(pixels if pixels is not None else b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def npz_with_headers(path: Path, arrays: dict[str, tuple[str, tuple[int, ...], bytes]]) -> Path:
    """A .npz whose members declare (dtype, shape) but hold only the given bytes (a claim, not the data)."""
    import io

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, (descr, shape, data) in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
            zf.writestr(key + ".npy", buf.getvalue() + data)
    return path


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def sparse_file(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(size)  # sparse: no disk space used, but os.stat reports the size
    return path


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------
def build_corpus(root: Path) -> list[Case]:
    root = Path(root)
    inp, views, ckpt, outside = (root / n for n in ("in", "views", "ckpt", "outside"))
    for d in (inp, views, ckpt, outside):
        d.mkdir(parents=True, exist_ok=True)
    secret_fifo = outside / "secret.fifo"
    os.mkfifo(secret_fifo)
    (outside / "secret.bin").write_bytes(b"PRIVATE KEY MATERIAL " * 8)
    (outside / "secret.ply").write_bytes(ply_bytes(TETRA_V, TETRA_F))
    (outside / "dir").mkdir()
    cases: list[Case] = []

    def add(name: str, data: bytes | str | None, readers, command, match, *, batch=True, traversal=False, names=(),
            folder=inp, note="", seconds=None) -> Path:
        path = folder / name
        if isinstance(data, str):
            path.write_text(data)
        elif data is not None:
            path.write_bytes(data)
        cases.append(Case(name, path, tuple(readers), command, match, batch, traversal, tuple(names), note, seconds))
        return path

    # ---- good inputs (the batch must still process these) -------------------------------------------------
    (inp / "good.ply").write_bytes(ply_bytes(TETRA_V, TETRA_F))
    (inp / "good.obj").write_text(obj_text(TETRA_V, TETRA_F))

    # ---- PLY ----------------------------------------------------------------------------------------------
    ply_r = ("ply", "scan")
    add("ply_truncated.ply", ply_bytes(TETRA_V, TETRA_F, truncate=200), ply_r, "invert", r"truncated")
    add("ply_huge_claim.ply", ply_bytes(TETRA_V, TETRA_F, vertex_count=2**40), ply_r, "invert", r"1,099,511,627,776 exceeds the limit")
    add("ply_wrong_magic.ply", b"PK\x03\x04" + b"\0" * 64, ply_r, "invert", r"not a PLY file")
    add("ply_no_newline.ply", b"ply\nformat binary_little_endian 1.0\nend_header", ply_r, "invert", r"truncated PLY header")
    add("ply_ascii.ply", b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n0\n", ply_r, "invert", r"only binary_little_endian")
    add("ply_nan.ply", ply_bytes(np.array([[np.nan, 0, 0], *TETRA_V[1:]], np.float32), TETRA_F), ply_r, "invert", r"NaN or infinite")
    add("ply_inf.ply", ply_bytes(np.array([[np.inf, 0, 0], *TETRA_V[1:]], np.float32), TETRA_F), ply_r, "invert", r"NaN or infinite")
    add("ply_bad_index.ply", ply_bytes(TETRA_V, np.array([[0, 1, 999]], np.int32)), ply_r, "invert", r"face indices must lie in")
    add("ply_texture_traversal.ply", ply_bytes(TETRA_V, TETRA_F, header_extra="comment TextureFile ../outside/secret.fifo\n"),
        ply_r + (REFS,), "invert", r"leaves the file's folder", traversal=True, names=("../outside/secret.fifo",))
    sparse_file(inp / "ply_over_size_limit.ply", (2 << 30) + 1, b"ply\n")
    cases.append(Case("ply_over_size_limit.ply", inp / "ply_over_size_limit.ply", ply_r + (REFS,), "invert", r"is 2,147,483,649 bytes, over the 2048.0 MB input limit",
                      True, note="sparse 2 GiB + 1 file: refused from os.stat"))

    # ---- OBJ (+ MTL) --------------------------------------------------------------------------------------
    obj_r = ("obj", "scan")
    add("obj_truncated.obj", "v 0 0 0\nv 1 0 0\nv 0 1\nf 1 2 3\n", obj_r, "invert", r"malformed OBJ")
    add("obj_bad_index.obj", obj_text(TETRA_V, [[0, 1, 98]]), obj_r, "invert", r"missing vertex")
    add("obj_nan.obj", obj_text([[float("nan"), 0, 0], *TETRA_V[1:].tolist()], TETRA_F), obj_r, "invert", r"NaN or infinite")
    add("obj_inf.obj", obj_text([[float("inf"), 0, 0], *TETRA_V[1:].tolist()], TETRA_F), obj_r, "invert", r"NaN or infinite")
    add("obj_mtllib_traversal.obj", obj_text(TETRA_V, TETRA_F, "mtllib ../outside/secret.fifo"), obj_r + (REFS,), "invert",
        r"leaves the file's folder", traversal=True, names=("mtllib", "../outside/secret.fifo"))
    add("obj_mtllib_absolute.obj", obj_text(TETRA_V, TETRA_F, "mtllib /dev/zero"), obj_r + (REFS,), "invert", r"is absolute",
        traversal=True, names=("/dev/zero",))
    add("obj_mtllib_percent.obj", obj_text(TETRA_V, TETRA_F, "mtllib %2e%2e/outside/secret.fifo"), obj_r + (REFS,), "invert",
        r"decoded: '\.\./outside/secret\.fifo'.*leaves the file's folder", traversal=True)
    (inp / "evil.mtl").write_text("newmtl skin\nKd 1 1 1\nmap_Kd -s 1 1 1 ../outside/secret.fifo\n")
    add("obj_mtl_texture_traversal.obj", obj_text(TETRA_V, TETRA_F, "mtllib evil.mtl"), obj_r + (REFS,), "invert",
        r"evil\.mtl: map_Kd texture .*leaves the file's folder", traversal=True)
    os.symlink("/dev/zero", inp / "zero.mtl")
    add("obj_mtllib_device_link.obj", obj_text(TETRA_V, TETRA_F, "mtllib zero.mtl"), obj_r + (REFS,), "invert",
        r"resolves to /dev/zero, outside the file's folder", traversal=True, names=("zero.mtl",))

    # ---- glTF ---------------------------------------------------------------------------------------------
    gl_r = ("gltf", "scan")
    trav = r"leaves the file's folder"
    add("gltf_traversal.gltf", json.dumps(gltf_document("../outside/secret.fifo")), gl_r + (REFS,), "invert", trav, traversal=True,
        names=("buffer 0 uri", "../outside/secret.fifo"))
    add("gltf_traversal_bin.gltf", json.dumps(gltf_document("../../../../../../../../outside/secret.bin")), gl_r + (REFS,), "invert", trav, traversal=True)
    add("gltf_absolute.gltf", json.dumps(gltf_document(str(outside / "secret.bin"))), gl_r + (REFS,), "invert", r"is absolute", traversal=True)
    add("gltf_dev_zero.gltf", json.dumps(gltf_document("/dev/zero")), gl_r + (REFS,), "invert", r"is absolute", traversal=True, names=("/dev/zero",))
    add("gltf_file_url.gltf", json.dumps(gltf_document("file:///etc/passwd")), gl_r + (REFS,), "invert", r"is absolute or a URL", traversal=True)
    add("gltf_percent.gltf", json.dumps(gltf_document("%2e%2e%2foutside%2fsecret.fifo")), gl_r + (REFS,), "invert",
        r"decoded: '\.\./outside/secret\.fifo'.*" + trav, traversal=True)
    add("gltf_double_percent.gltf", json.dumps(gltf_document("%252e%252e%252foutside%252fsecret.fifo")), gl_r + (REFS,), "invert",
        r"decoded: '\.\./outside/secret\.fifo'.*" + trav, traversal=True)
    add("gltf_backslash.gltf", json.dumps(gltf_document("..\\outside\\secret.fifo")), gl_r + (REFS,), "invert", trav, traversal=True)
    os.symlink(os.path.relpath(secret_fifo, inp), inp / "link.bin")
    add("gltf_symlink.gltf", json.dumps(gltf_document("link.bin")), gl_r + (REFS,), "invert", r"resolves to .*secret\.fifo, outside the file's folder",
        traversal=True, names=("link.bin",))
    os.mkfifo(inp / "pipe.bin")
    add("gltf_fifo.gltf", json.dumps(gltf_document("pipe.bin")), gl_r + (REFS,), "invert", r"is a FIFO", traversal=True, names=("pipe.bin",))
    add("gltf_image_traversal.gltf", json.dumps(gltf_document(images=[{"uri": "../outside/secret.fifo"}])), gl_r + (REFS,), "invert",
        r"image 0 uri .*" + trav, traversal=True)
    add("gltf_deep.gltf", '{"asset": {"version": "2.0", "extras": ' + deep_json(100_000) + "}}", gl_r + (REFS,), "invert", r"nests 100002 levels deep")
    add("gltf_nan_constant.gltf", '{"asset": {"version": "2.0"}, "nodes": [{"matrix": [NaN]}]}', gl_r + (REFS,), "invert", r"non-standard JSON constant NaN")
    add("gltf_nan.gltf", json.dumps(gltf_document(vertices=np.array([[np.nan, 0, 0], *TETRA_V[1:]], np.float32))), gl_r, "invert", r"NaN or infinite")
    add("gltf_bad_index.gltf", json.dumps(gltf_document(faces=np.array([[0, 1, 77]]))), gl_r, "invert", r"indices out of range")
    add("gltf_huge_count.gltf", json.dumps(gltf_document(count=10**12)), gl_r, "invert", r"claims 1,000,000,000,000 elements.*exceeds the limit")
    doc = gltf_document()
    doc["accessors"][0] = {"componentType": 5126, "count": 100_000_000, "type": "MAT4"}  # no bufferView: zeros
    add("gltf_mat4_zeros.gltf", json.dumps(doc), gl_r, "invert", r"accessor 0 has type 'MAT4'|value count 1,600,000,000 exceeds",
        note="1.6 G implicit zeros; POSITION must be VEC3")
    bomb_nodes = [{"children": [i + 1, i + 1]} for i in range(60)] + [{"mesh": 0}]
    add("gltf_node_bomb.gltf", json.dumps(gltf_document(nodes=bomb_nodes)), gl_r, "invert", r"reached twice",
        note="61 nodes, each child listed twice: 2^60 mesh instances for a naive walk")
    add("gltf_bad_base64.gltf", json.dumps(gltf_document("data:application/octet-stream;base64,!!!!")), gl_r, "invert", r"not valid base64")
    doc = gltf_document()
    doc["buffers"] = [{"byteLength": 8}]
    doc["accessors"][0]["count"] = 10**12
    add("glb_huge_accessor.glb", glb_bytes(doc, b"\0" * 8), gl_r, "invert", r"exceeds the limit")
    add("glb_truncated.glb", glb_bytes(gltf_document(), declared_length=10**6), gl_r + (REFS,), "invert", r"truncated GLB")
    add("glb_version1.glb", glb_bytes(gltf_document(), version=1), gl_r + (REFS,), "invert", r"GLB version 1")
    add("glb_wrong_magic.glb", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, gl_r + (REFS,), "invert", r"invalid JSON")

    # ---- NPZ meshes ---------------------------------------------------------------------------------------
    npz_r = ("mesh_npz", "scan")
    np.savez(inp / "npz_pickle.npz", vertices=np.array([{"__reduce__": "os.system"}] * 3, dtype=object), faces=TETRA_F)
    cases.append(Case("npz_pickle.npz", inp / "npz_pickle.npz", npz_r, "invert", r"pickled Python objects", True))
    npz_with_headers(inp / "npz_bomb.npz", {"vertices": ("<f4", (10**10, 3), b"\0" * 48), "faces": ("<i4", (1, 3), b"\0" * 12)})
    cases.append(Case("npz_bomb.npz", inp / "npz_bomb.npz", npz_r, "invert", r"declares shape \(10000000000, 3\)", True,
                      note="120 GB declared in a tiny zip"))
    npz_with_headers(inp / "npz_count_claim.npz", {"vertices": ("<f4", (60_000_000, 3), b"\0" * 48), "faces": ("<i4", (1, 3), b"\0" * 12)})
    npz_with_headers(inp / "npz_total_bomb.npz", {"vertices": ("<f8", (40_000_000, 3), b"\0" * 48),
                                                  "faces": ("<i8", (40_000_000, 3), b"\0" * 48),
                                                  "vertex_normals": ("<f8", (40_000_000, 3), b"\0" * 48)})
    cases.append(Case("npz_total_bomb.npz", inp / "npz_total_bomb.npz", npz_r, "invert", r"for all arrays together", True,
                      note="three 0.96 GB arrays, each under the limit"))
    cases.append(Case("npz_count_claim.npz", inp / "npz_count_claim.npz", npz_r, "invert", r"'vertices' count 60,000,000 exceeds the limit", True))
    np.savez(inp / "npz_truncated.npz", vertices=TETRA_V, faces=TETRA_F)
    data = (inp / "npz_truncated.npz").read_bytes()
    (inp / "npz_truncated.npz").write_bytes(data[: len(data) // 2])
    cases.append(Case("npz_truncated.npz", inp / "npz_truncated.npz", ("scan",), "invert", r"not a readable", True))
    add("npz_wrong_magic.npz", b"this is not a zip file at all", ("scan",), "invert", r"not a readable")

    # ---- portraits ----------------------------------------------------------------------------------------
    img_r = ("image",)
    add("png_bomb.png", png_bytes(100_000, 100_000), img_r, "invert", r"10,000,000,000 pixels|too large to decode",
        note="10 gigapixels declared in ~100 bytes")
    add("png_over_limit.png", png_bytes(12_000, 12_000), img_r, "invert", r"too large to decode|over the limit",
        note="144 Mpx: between Pillow's warning and error; the warning is an error")
    add("png_truncated.png", png_bytes(64, 64)[:60], img_r, "invert", r"not a readable image")
    add("jpg_wrong_magic.jpg", b"GIF89a-but-not-really", img_r, "invert", r"not a readable image")

    # ---- special files and links in the input folder -------------------------------------------------------
    os.mkfifo(inp / "fifo.ply")
    cases.append(Case("fifo.ply", inp / "fifo.ply", ("ply", "scan", REFS, "entry"), "invert", r"is a FIFO", True))
    os.symlink("/dev/zero", inp / "dev_zero.ply")
    cases.append(Case("dev_zero.ply", inp / "dev_zero.ply", ("entry", REFS), "invert", r"outside|character device", True))
    cases.append(Case("dev_zero.ply (reader)", inp / "dev_zero.ply", ("ply", "scan"), None, r"is a character device", False))
    os.symlink(os.path.relpath(outside / "secret.ply", inp), inp / "outside_link.ply")
    cases.append(Case("outside_link.ply", inp / "outside_link.ply", ("entry", REFS), "invert",
                      r"symbolic link to .*secret\.ply, outside", True, traversal=True))
    os.symlink(os.path.relpath(outside / "dir", inp), inp / "outside_dir.ply")
    cases.append(Case("outside_dir.ply", inp / "outside_dir.ply", ("entry",), "invert", r"symbolic link to .*dir, outside", True))
    sock_path = inp / "sock.ply"
    if len(str(sock_path)) < 100:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(sock_path))
        s.close()
        cases.append(Case("sock.ply", sock_path, ("ply", "entry", REFS), "invert", r"is a socket", True))

    # ---- W+ latents ---------------------------------------------------------------------------------------
    lat_r = ("latent",)
    np.savez(inp / "latent_pickle.npz", w=np.array([[{"x": 1}]], dtype=object))
    cases.append(Case("latent_pickle.npz", inp / "latent_pickle.npz", lat_r, "head", r"pickled Python objects", True))
    np.savez(inp / "latent_nan.npz", w=np.full((1, 4, 8), np.nan, np.float32))
    cases.append(Case("latent_nan.npz", inp / "latent_nan.npz", lat_r, "head", r"finite", True))
    npz_with_headers(inp / "latent_huge.npz", {"w": ("<f4", (1, 10**9), b"\0" * 16)})
    cases.append(Case("latent_huge.npz", inp / "latent_huge.npz", lat_r, "head", r"declares shape \(1, 1000000000\) .*over the (16|2048).0 MB limit", True))
    add("latent_wrong_magic.npz", b"\x93NUMPY not a zip", lat_r, "head", r"not a readable", batch=True)
    np.savez(inp / "latent_truncated.npz", w=np.zeros((1, 4, 8), np.float32))
    data = (inp / "latent_truncated.npz").read_bytes()
    (inp / "latent_truncated.npz").write_bytes(data[:100])
    cases.append(Case("latent_truncated.npz", inp / "latent_truncated.npz", lat_r, "head", r"not a readable", True))
    os.mkfifo(inp / "latent_fifo.npz")
    cases.append(Case("latent_fifo.npz", inp / "latent_fifo.npz", lat_r + ("entry",), "head", r"is a FIFO", True))

    # ---- views folders (as Blender writes them) ------------------------------------------------------------
    cam = [1.0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2.7, 0, 0, 0, 1, 4.26, 0, 0.5, 0, 4.26, 0.5, 0, 0, 1]

    def views_case(name: str, entries: list | str | None, match: str, *, traversal=False, extra=None, names=(),
                   readers=("views", "manifest")) -> Path:
        folder = views / name
        folder.mkdir()
        if extra:
            extra(folder)
        if entries is not None:
            text = entries if isinstance(entries, str) else json.dumps({"source": f"{name}.obj", "views": entries})
            (folder / "cameras.json").write_text(text)
        cases.append(Case(f"views/{name}", folder, readers, "invert", match, True, traversal, tuple(names)))
        return folder

    view_r = r"leaves the file's folder"
    views_case("traversal", [{"name": "front", "file": "../../outside/secret.fifo", "camera": cam}], view_r, traversal=True,
               names=("view 0 file",))
    views_case("absolute", [{"name": "front", "file": "/dev/zero", "camera": cam}], r"is absolute", traversal=True)
    views_case("percent", [{"name": "front", "file": "%2e%2e/%2e%2e/outside/secret.fifo", "camera": cam}], view_r, traversal=True)
    views_case("link", [{"name": "front", "file": "front.png", "camera": cam}], r"resolves to .*secret\.fifo, outside", traversal=True,
               extra=lambda f: os.symlink(os.path.relpath(secret_fifo, f), f / "front.png"))
    views_case("fifo_png", [{"name": "front", "file": "front.png", "camera": cam}], r"is a FIFO",
               extra=lambda f: os.mkfifo(f / "front.png"))
    views_case("png_bomb", [{"name": "front", "file": "front.png", "camera": cam}], r"10,000,000,000 pixels|too large to decode",
               extra=lambda f: (f / "front.png").write_bytes(png_bytes(100_000, 100_000)), readers=("views",))
    views_case("deep", '{"views": ' + deep_json(50_000) + "}", r"nests 50001 levels deep")
    views_case("nan_camera", '{"views": [{"file": "a.png", "camera": [NaN' + ", 0" * 24 + "]}]}", r"non-standard JSON constant NaN")
    views_case("huge_manifest", None, r"over the 64.0 MB JSON limit",
               extra=lambda f: sparse_file(f / "cameras.json", 65 << 20, b'{"views": ['))
    views_case("manifest_fifo", None, r"views manifest is a FIFO|has no cameras.json", extra=lambda f: os.mkfifo(f / "cameras.json"))
    os.symlink(os.path.relpath(outside / "dir", views), views / "outside_dir")
    (outside / "dir" / "cameras.json").write_text(json.dumps({"views": []}))
    cases.append(Case("views/outside_dir", views / "outside_dir", ("entry",), "invert", r"symbolic link to .*dir, outside", True))

    # ---- checkpoints (generate --checkpoint) --------------------------------------------------------------
    ck_r = ("checkpoint",)
    _build_checkpoints(ckpt, add, ck_r)
    return cases


def _build_checkpoints(ckpt: Path, add, ck_r) -> None:
    from engine.generator.config import PRESETS
    from engine.generator.loading import load_generator, save_generator

    good = ckpt / "good.safetensors"
    save_generator(load_generator("tiny").generator, good)
    meta = json.loads(good.with_suffix(".json").read_text())
    tensors = good.read_bytes()

    (ckpt / "fifo_meta.safetensors").write_bytes(tensors)
    os.mkfifo(ckpt / "fifo_meta.json")
    add("fifo_meta.safetensors", None, ck_r, "generate", r"fifo_meta\.json: checkpoint metadata file is a FIFO", batch=False, folder=ckpt)

    (ckpt / "deep_meta.safetensors").write_bytes(tensors)
    (ckpt / "deep_meta.json").write_text('{"format": ' + deep_json(100_000) + "}")
    add("deep_meta.safetensors", None, ck_r, "generate", r"deep_meta\.json: .*nests 100001 levels deep", batch=False, folder=ckpt)

    (ckpt / "big_meta.safetensors").write_bytes(tensors)
    sparse_file(ckpt / "big_meta.json", 65 << 20, b"{")
    add("big_meta.safetensors", None, ck_r, "generate", r"big_meta\.json: .*over the 64\.0 MB JSON limit", batch=False, folder=ckpt)

    import hashlib

    garbage = b"\xff" * 64
    (ckpt / "wrong_magic.safetensors").write_bytes(garbage)
    (ckpt / "wrong_magic.json").write_text(json.dumps({**meta, "tensors_sha256": hashlib.sha256(garbage).hexdigest(), "tensors_bytes": 64}))
    add("wrong_magic.safetensors", None, ck_r, "generate", r"wrong_magic\.safetensors: corrupt safetensors", batch=False, folder=ckpt)

    (ckpt / "truncated.safetensors").write_bytes(tensors[: len(tensors) // 2])
    (ckpt / "truncated.json").write_text(json.dumps(meta))
    add("truncated.safetensors", None, ck_r, "generate", r"truncated\.safetensors: SHA-256 does not match", batch=False, folder=ckpt)

    (ckpt / "tensors_fifo.json").write_text(json.dumps(meta))
    os.mkfifo(ckpt / "tensors_fifo.safetensors")
    add("tensors_fifo.json", None, ck_r, "generate", r"tensors_fifo\.safetensors: checkpoint tensors file is a FIFO", batch=False, folder=ckpt)

    config = PRESETS["tiny"].to_dict()
    config["z_dim"] = 100_000_000  # mapping's first layer alone: 3.2 G parameters
    add("huge_config.json", json.dumps(config), ck_r, "generate", r"huge_config\.json: the generator config asks for [\d,]+ parameters, over the limit",
        batch=False, folder=ckpt,
        note="counted exactly on torch's meta device; the first meta build in a process imports torch._dynamo (~10 s)",
        seconds=30.0)
    add("deep_config.json", deep_json(100_000), ck_r, "generate", r"deep_config\.json: .*nests 100000 levels deep", batch=False, folder=ckpt)
    add("wrong_magic.pkl", b"this is not a pickle", ck_r, "generate", r"wrong_magic\.pkl: not a readable network pickle", batch=False, folder=ckpt)
    os.mkfifo(ckpt / "fifo.pkl")
    add("fifo.pkl", None, ck_r, "generate", r"fifo\.pkl: file is a FIFO", batch=False, folder=ckpt)
    os.symlink("/dev/zero", ckpt / "dev_zero.pkl")
    add("dev_zero.pkl", None, ck_r, "generate", r"dev_zero\.pkl: file is a character device", batch=False, folder=ckpt)

    # stylize --config (a StylizeConfig JSON)
    os.mkfifo(ckpt / "stylize_fifo.json")
    add("stylize_fifo.json", None, (), "stylize", r"stylize config is a FIFO", batch=False, folder=ckpt)
    add("stylize_deep.json", '{"prompt": ' + deep_json(100_000) + "}", (), "stylize", r"nests 100001 levels deep", batch=False, folder=ckpt)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-corpus")
    for case in build_corpus(target):
        print(f"{case.name:32s} {','.join(case.readers):28s} {case.command or '-':9s} {case.match}")
