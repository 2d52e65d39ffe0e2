"""glTF writer/reader: exact round trip, container layout the spec demands, node transforms, bad files,
and 0 errors from the Khronos validator when it is installed."""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.errors import InputError
from engine.heads.gltf import glb_bytes, linear_to_srgb, parse_gltf, read_gltf, srgb_to_linear, write_glb
from engine.mesh import Mesh, vertex_normals

ROOT = Path(__file__).resolve().parents[3]


def tetra(colours: bool = True) -> Mesh:
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.int32)
    c = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 128, 200]], dtype=np.uint8) if colours else None
    return Mesh(v, f, c, vertex_normals(v, f))


def test_round_trip_is_exact(tmp_path):
    mesh = tetra()
    path = write_glb(mesh, tmp_path / "t.glb", extras={"prompt": "a zombie", "consent": True})
    back, extras = read_gltf(path)
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(back.vertex_colors, mesh.vertex_colors)  # sRGB → linear float → sRGB is lossless for bytes
    np.testing.assert_allclose(np.linalg.norm(back.vertex_normals, axis=1), 1.0, atol=1e-6)
    assert extras == {"prompt": "a zombie", "consent": True}


def test_container_layout_follows_the_spec():
    data = glb_bytes(tetra(), {"k": "v"})
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_len % 4 == 0
    doc = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == 0x004E4942 and bin_len % 4 == 0 and doc["buffers"][0]["byteLength"] <= bin_len
    assert all(view["byteOffset"] % 4 == 0 for view in doc["bufferViews"])
    prim = doc["meshes"][0]["primitives"][0]
    assert set(prim["attributes"]) == {"POSITION", "NORMAL", "COLOR_0"}
    pos = doc["accessors"][prim["attributes"]["POSITION"]]
    assert pos["min"] == [0.0, 0.0, 0.0] and pos["max"] == [1.0, 1.0, 1.0]
    assert doc["accessors"][prim["indices"]]["componentType"] == 5125


def test_colours_are_stored_linear():
    assert srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.21404, abs=1e-4)  # the sRGB curve at mid-grey
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(np.linspace(0, 1, 11))), np.linspace(0, 1, 11), atol=1e-9)


def test_gltf_with_data_uri_and_node_transform(tmp_path):
    """A hand-written .gltf: non-indexed triangle, ubyte-normalised VEC4 colours, node translation + scale."""
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32).tobytes()
    colours = np.array([[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]], dtype=np.uint8).tobytes()
    blob = positions + colours
    doc = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"children": [1], "translation": [10, 0, 0]}, {"mesh": 0, "scale": [2, 2, 2]}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}}]}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"},
            {"bufferView": 1, "componentType": 5121, "normalized": True, "count": 3, "type": "VEC4"},
        ],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36, "byteLength": 12}],
        "buffers": [{"byteLength": len(blob), "uri": "data:application/octet-stream;base64," + base64.b64encode(blob).decode()}],
    }
    path = tmp_path / "hand.gltf"
    path.write_text(json.dumps(doc))
    mesh, _ = read_gltf(path)
    np.testing.assert_allclose(mesh.vertices, [[10, 0, 0], [12, 0, 0], [10, 2, 0]])
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2]])
    np.testing.assert_array_equal(mesh.vertex_colors, [[255, 0, 0], [0, 255, 0], [0, 0, 255]])


@pytest.mark.parametrize(
    "payload, message",
    [(b"glTF\x02\x00\x00\x00\xff\x00\x00\x00", "truncated"), (b"not json at all", "unreadable"), (b'{"asset": {"version": "1.0"}}', "2.0")],
)
def test_bad_files_raise_input_errors(tmp_path, payload, message):
    path = tmp_path / "bad.glb"
    path.write_bytes(payload)
    with pytest.raises(InputError, match=message):
        parse_gltf(path)


def test_compressed_files_are_refused(tmp_path):
    path = tmp_path / "draco.gltf"
    path.write_text(json.dumps({"asset": {"version": "2.0"}, "extensionsRequired": ["KHR_draco_mesh_compression"]}))
    with pytest.raises(InputError, match="KHR_draco_mesh_compression"):
        read_gltf(path)


VALIDATOR = ROOT / "tools" / "gltf-validator"


@pytest.mark.skipif(not (VALIDATOR / "node_modules").is_dir() or shutil.which("node") is None,
                    reason="Khronos glTF validator not installed (tools/gltf-validator/node_modules; run scripts/setup.sh)")
def test_khronos_validator_reports_no_errors(tmp_path):
    from engine.world import head_mesh, sample_identities
    import torch

    mesh = head_mesh(sample_identities(1, torch.Generator().manual_seed(0)), 32)
    path = write_glb(mesh, tmp_path / "head.glb", extras={"tool": "head-stylizer"})
    proc = subprocess.run(["node", str(VALIDATOR / "validate.js"), str(path)], capture_output=True, text=True, timeout=60)
    text = proc.stdout
    report = json.loads(text[text.index("{"):])
    assert report["issues"]["numErrors"] == 0, report["issues"]
