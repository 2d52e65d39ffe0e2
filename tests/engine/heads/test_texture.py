"""Textured scans: OBJ ``map_Kd``/``Kd`` and glTF ``baseColorTexture`` reach the field fit and the scan views.

The test quad faces the front camera (+z) and carries a 2×2 texture — red top-left, green top-right, blue
bottom-left, white bottom-right *as the viewer sees it* — so a flipped u or v, a wrong sRGB/linear step or a
wrong corner order shows as the wrong colour in the wrong quadrant.
"""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import InputError
from engine.generator.camera import CameraConfig, cameras_at
from engine.heads.gltf import read_gltf
from engine.heads.mesh_field import MeshQuery
from engine.heads.scan_views import ScanViewConfig, render_scan_views
from engine.heads.scans import map_file_name, read_obj, read_scan_mesh, transform_mesh
from engine.heads.texture import TextureSampler, sample_bilinear, srgb_to_linear
from engine.mesh import Mesh, SurfaceTexture

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
QUADRANTS = np.array([[RED, GREEN], [BLUE, WHITE]], np.uint8)  # image rows top → bottom
# quad corners (world, y up, facing +z) and their glTF UVs (v down from the image top)
CORNERS = np.array([[-0.2, -0.2, 0.0], [0.2, -0.2, 0.0], [0.2, 0.2, 0.0], [-0.2, 0.2, 0.0]], np.float32)
GLTF_UV = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
FACES = np.array([[0, 1, 2], [0, 2, 3]], np.int32)


def texture_image(size: int = 8) -> np.ndarray:
    return np.repeat(np.repeat(QUADRANTS, size // 2, axis=0), size // 2, axis=1)


def png_bytes(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def write_obj_quad(folder, *, texture: bool = True, kd: str | None = None, map_options: str = "") -> "Path":
    (folder / "quad.mtl").write_text("newmtl skin\n" + (f"Kd {kd}\n" if kd else "")
                                     + (f"map_Kd {map_options}skin tex.png\n" if texture else ""))
    obj_uv = GLTF_UV.copy()
    obj_uv[:, 1] = 1.0 - obj_uv[:, 1]  # OBJ counts v up from the bottom
    lines = ["mtllib quad.mtl"] + [f"v {x} {y} {z}" for x, y, z in CORNERS] + [f"vt {u} {v}" for u, v in obj_uv]
    lines += ["usemtl skin", "f 1/1 2/2 3/3 4/4"]
    path = folder / "quad.obj"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_glb_quad(path, *, image: bytes | None = None, uri: str | None = None, factor=None) -> None:
    """A one-quad GLB with TEXCOORD_0 and a base colour texture (embedded PNG, or an image file uri)."""
    positions, uvs, indices = CORNERS.tobytes(), GLTF_UV.tobytes(), FACES.astype(np.uint32).tobytes()
    blob = positions + uvs + indices
    views = [{"buffer": 0, "byteOffset": 0, "byteLength": len(positions)},
             {"buffer": 0, "byteOffset": len(positions), "byteLength": len(uvs)},
             {"buffer": 0, "byteOffset": len(positions) + len(uvs), "byteLength": len(indices)}]
    images = []
    if image is not None:
        pad = (-len(blob)) % 4
        blob += b"\0" * pad
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(image)})
        blob += image
        images.append({"bufferView": 3, "mimeType": "image/png"})
    elif uri is not None:
        images.append({"uri": uri})
    pbr = {"baseColorTexture": {"index": 0}} if images else {}
    if factor is not None:
        pbr["baseColorFactor"] = factor
    doc = {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2, "material": 0}]}],
        "materials": [{"pbrMetallicRoughness": pbr}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3", "min": [-0.2, -0.2, 0], "max": [0.2, 0.2, 0]},
            {"bufferView": 1, "componentType": 5126, "count": 4, "type": "VEC2"},
            {"bufferView": 2, "componentType": 5125, "count": 6, "type": "SCALAR"},
        ],
        "bufferViews": views, "buffers": [{"byteLength": len(blob)}],
    }
    if images:
        doc["textures"], doc["images"] = [{"source": 0}], images
    text = json.dumps(doc).encode()
    text += b" " * ((-len(text)) % 4)
    blob += b"\0" * ((-len(blob)) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    path.write_bytes(struct.pack("<III", 0x46546C67, 2, total) + struct.pack("<II", len(text), 0x4E4F534A) + text
                     + struct.pack("<II", len(blob), 0x004E4942) + blob)


def quadrant_points() -> np.ndarray:
    """World points at the centres of the viewer's top-left, top-right, bottom-left, bottom-right quadrants."""
    return np.array([[-0.1, 0.1, 0.0], [0.1, 0.1, 0.0], [-0.1, -0.1, 0.0], [0.1, -0.1, 0.0]])


def colours_at(mesh: Mesh) -> np.ndarray:
    query = MeshQuery(mesh)
    points = quadrant_points()
    _, face, closest = query.signed_distance(points)
    return query.colour_at(closest, face)


EXPECTED = np.array([RED, GREEN, BLUE, WHITE]) / 255.0


# ------------------------------------------------------------------------------------------------ sampler
def test_bilinear_sampling_hits_texel_centres_and_wraps():
    image = torch.tensor([[[0.0], [1.0]], [[2.0], [3.0]]])  # 2×2, one channel
    uv = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.5, 0.25], [0.5, 0.5], [1.25, 0.25], [0.0, 0.25]])
    got = sample_bilinear(image, uv)[:, 0]
    # texel centres exact; halfway between columns 0 and 1 → 0.5; the image centre → mean 1.5; u 1.25 ≡ 0.25;
    # u 0 lies halfway between column 1 (wrapped from the left) and column 0 → 0.5
    torch.testing.assert_close(got, torch.tensor([0.0, 1.0, 2.0, 0.5, 1.5, 0.0, 0.5]))


def test_sampler_reads_per_face_images_and_leaves_untextured_faces_white():
    texture = SurfaceTexture(np.tile(GLTF_UV[FACES][None], (1, 1, 1, 1))[0], np.array([0, -1], np.int32),
                             [texture_image()])
    sampler = TextureSampler(texture)
    colour, textured = sampler.sample(torch.tensor([0, 1]), torch.tensor([[0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3]]))
    assert textured.tolist() == [True, False]
    torch.testing.assert_close(colour[1], torch.ones(3))


# ------------------------------------------------------------------------------------------------ readers
def test_obj_map_kd_texture_lands_on_the_right_quadrants(tmp_path):
    write_obj_quad(tmp_path)
    Image.fromarray(texture_image()).save(tmp_path / "skin tex.png")
    mesh = read_obj(tmp_path / "quad.obj")
    assert mesh.texture is not None and mesh.vertex_colors is None
    np.testing.assert_allclose(colours_at(mesh), EXPECTED, atol=1e-6)


def test_obj_kd_colour_without_a_texture(tmp_path):
    write_obj_quad(tmp_path, texture=False, kd="0.2140 0.2140 0.2140")  # linear 0.214 = sRGB 0.5
    colours = colours_at(read_obj(tmp_path / "quad.obj"))
    np.testing.assert_allclose(colours, np.full((4, 3), 128 / 255), atol=1 / 255)


def test_obj_missing_texture_falls_back_with_a_warning(tmp_path):
    write_obj_quad(tmp_path, kd="1 0 0")
    mesh = read_obj(tmp_path / "quad.obj")
    assert any("not found" in w and "Kd colour" in w for w in mesh.metadata["warnings"])
    np.testing.assert_allclose(colours_at(mesh), np.tile([[1.0, 0, 0]], (4, 1)), atol=1e-6)


def test_obj_texture_options_are_not_part_of_the_file_name(tmp_path):
    assert map_file_name("-s 1 1 1 -o 0 0 skin tex.png") == "skin tex.png"
    assert map_file_name("-clamp on -mm 0 1 face.jpg") == "face.jpg"
    write_obj_quad(tmp_path, map_options="-s 1 1 1 -bm 0.5 ")
    Image.fromarray(texture_image()).save(tmp_path / "skin tex.png")
    np.testing.assert_allclose(colours_at(read_obj(tmp_path / "quad.obj")), EXPECTED, atol=1e-6)


def test_gltf_embedded_base_colour_texture(tmp_path):
    write_glb_quad(tmp_path / "quad.glb", image=png_bytes(texture_image()))
    mesh, _ = read_gltf(tmp_path / "quad.glb")
    np.testing.assert_allclose(colours_at(mesh), EXPECTED, atol=1e-6)


def test_gltf_base_colour_factor_multiplies_the_texture_in_linear_light(tmp_path):
    write_glb_quad(tmp_path / "quad.glb", image=png_bytes(texture_image()), factor=[0.5, 1.0, 1.0, 1.0])
    mesh, _ = read_gltf(tmp_path / "quad.glb")
    white_quadrant = colours_at(mesh)[3]
    half = float(((0.5 * 1.0) ** (1 / 2.4)) * 1.055 - 0.055)  # linear 0.5 → sRGB 0.735
    np.testing.assert_allclose(white_quadrant, [round(half * 255) / 255, 1.0, 1.0], atol=1.5 / 255)


def test_gltf_missing_image_file_falls_back_with_a_warning(tmp_path):
    write_glb_quad(tmp_path / "quad.glb", uri="gone.png")
    mesh, _ = read_gltf(tmp_path / "quad.glb")
    assert mesh.texture is None and any("gone.png" in w for w in mesh.metadata["warnings"])


def test_gltf_corrupt_embedded_image_is_a_clear_error(tmp_path):
    write_glb_quad(tmp_path / "quad.glb", image=b"\x89PNG not really")
    with pytest.raises(InputError, match=r"quad\.glb: not a readable image 0"):
        read_scan_mesh(tmp_path / "quad.glb")


def test_texture_survives_a_reflecting_transform(tmp_path):
    write_glb_quad(tmp_path / "quad.glb", image=png_bytes(texture_image()))
    mesh, _ = read_gltf(tmp_path / "quad.glb")
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirrored = transform_mesh(mesh, mirror)
    colours = colours_at(mirrored)  # the viewer's left now shows what was on the right
    np.testing.assert_allclose(colours, EXPECTED[[1, 0, 3, 2]], atol=1e-6)


# ------------------------------------------------------------------------------------------------ views
def test_scan_views_show_the_texture_the_right_way_round(tmp_path):
    write_glb_quad(tmp_path / "quad.glb", image=png_bytes(texture_image()))
    mesh, _ = read_gltf(tmp_path / "quad.glb")
    front = cameras_at(0.0, 0.0, CameraConfig(pivot=(0, 0, 0))).c
    view = render_scan_views(mesh, front, ScanViewConfig(resolution=64, supersample=1, lighting=0.0))
    rgb = (view["image"][0] + 1) / 2  # (3, 64, 64)
    quad_px = 0.2 / 2.7 * (1 / (np.tan(np.radians(18.837 / 2)) * 1.414)) * 64  # half-size of the quad in pixels
    offset = int(round(quad_px / 2))
    centre = 32
    samples = [rgb[:, centre - offset, centre - offset], rgb[:, centre - offset, centre + offset - 1],
               rgb[:, centre + offset - 1, centre - offset], rgb[:, centre + offset - 1, centre + offset - 1]]
    got = torch.stack(samples).numpy()
    np.testing.assert_allclose(got, EXPECTED, atol=0.02)
    assert float(srgb_to_linear(torch.tensor(0.5))) == pytest.approx(0.214, abs=1e-3)
