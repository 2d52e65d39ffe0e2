"""Scan inputs: OBJ/PLY/glTF readers, the normalisation convention (recovering the procedural world's frame
from scanner-like exports), input classification, and the calibrated scan rasteriser against the world's own
sphere-traced renders through the same cameras."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from engine.errors import InputError
from engine.generator.camera import CameraConfig, cameras_at
from engine.heads.scan_views import ScanViewConfig, project, render_scan_views
from engine.heads.scans import (
    REFERENCE_CENTRE,
    REFERENCE_HEIGHT,
    ScanNormalization,
    input_kind,
    load_scan,
    read_image,
    read_obj,
)
from engine.mesh import Mesh, write_ply
from engine.world import ScanExport, export_scan, head_mesh, neutral_identities, render_heads, sample_identities

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def identity():
    return sample_identities(1, torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def world_mesh(identity):
    return head_mesh(identity, 48)


def test_obj_reader_fans_polygons_and_resolves_references(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text(
        "# quad and a triangle with v/vt/vn and negative indices\n"
        "v 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 1 1 0 0 0 1\nv 0 1 0 1 1 1\nv 2 2 2 0.5 0.5 0.5\n"
        "vt 0 0\nvn 0 0 1\n"
        "f 1/1/1 2/1/1 3/1/1 4/1/1\n"
        "f -1//1 -2//1 -3//1\n"
    )
    mesh = read_obj(path)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3], [4, 3, 2]])
    np.testing.assert_array_equal(mesh.vertex_colors[:2], [[255, 0, 0], [0, 255, 0]])


def test_input_kinds(tmp_path):
    (tmp_path / "a.fbx").write_bytes(b"x")
    (tmp_path / "a.xyz").write_bytes(b"x")
    np.savez(tmp_path / "lat.npz", w=np.zeros((1, 4, 8), np.float32))
    np.savez(tmp_path / "mesh.npz", vertices=np.zeros((3, 3), np.float32), faces=np.zeros((1, 3), np.int32))
    assert input_kind(tmp_path / "lat.npz") == "latent"
    assert input_kind(tmp_path / "mesh.npz") == "scan"
    assert input_kind(tmp_path / "s.glb") == "scan" and input_kind(tmp_path / "p.JPG") == "image"
    with pytest.raises(InputError, match="Blender batch operator"):
        input_kind(tmp_path / "a.fbx")
    with pytest.raises(InputError, match="unsupported file type"):
        input_kind(tmp_path / "a.xyz")


def test_reference_frame_matches_the_world():
    v = head_mesh(neutral_identities(1), 48).vertices
    lo, hi = v.min(axis=0), v.max(axis=0)
    np.testing.assert_allclose((lo + hi) / 2, REFERENCE_CENTRE, atol=0.01)
    assert abs((hi - lo)[1] - REFERENCE_HEIGHT) < 0.02


@pytest.mark.parametrize(
    "export, normalization",
    [
        (ScanExport(resolution=48, units="mm", up_axis="z", origin="base"), ScanNormalization(framing="heuristic")),
        (ScanExport(resolution=48, units="cm", up_axis="y", origin="base", offset=(3.0, 1.0, -2.0)),
         ScanNormalization(framing="heuristic")),
        (ScanExport(resolution=48, units="mm", up_axis="z", yaw_degrees=30.0), ScanNormalization(yaw_degrees=30.0, framing="heuristic")),
    ],
)
def test_normalisation_recovers_the_world_frame(tmp_path, identity, world_mesh, export, normalization):
    # Steps 1–4 of the convention (the extent heuristic); face framing has its own tests (test_face_framing.py).
    result = export_scan(identity, tmp_path / "scan", export)
    scan = load_scan(result.paths[0], normalization)
    # same vertices (the export keeps vertex order), back in world units: only the centring heuristic differs
    error = np.abs(scan.mesh.vertices - world_mesh.vertices).max()
    assert error < 0.03, error
    assert scan.units == export.units and scan.up_axis == export.up_axis


def test_gltf_scans_are_read_y_up(tmp_path, identity, world_mesh):
    from engine.heads.gltf import write_glb

    path = write_glb(world_mesh, tmp_path / "w.glb")
    scan = load_scan(path, ScanNormalization(units="world", framing="heuristic"))
    assert scan.up_axis == "y"
    assert np.abs(scan.mesh.vertices - world_mesh.vertices).max() < 0.03


def test_corrupt_scan_is_an_input_error(tmp_path):
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat ascii 1.0\nend_header\n1 2 3")
    with pytest.raises(InputError, match="bad.ply"):
        load_scan(tmp_path / "bad.ply")


def test_read_image_uses_alpha_as_mask(tmp_path):
    from PIL import Image

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 10:20, 3] = 255  # the centre 20×20 crop is columns 5..25: half of it opaque
    Image.fromarray(rgba).save(tmp_path / "p.png")
    image, mask = read_image(tmp_path / "p.png", 10)
    assert image.shape == (1, 3, 10, 10) and float(image[0, 0].mean()) == pytest.approx(1.0)
    assert float(mask.mean()) == pytest.approx(0.5)


def test_projection_inverts_the_generator_rays():
    """A point on the ray through pixel (row 3, col 5) projects back onto that pixel."""
    from engine.generator.renderer import pixel_rays

    cams = cameras_at(torch.tensor([0.4]), torch.tensor([-0.2]), CameraConfig(pivot=(0, 0, 0))).c
    c2w, K = cams[:, :16].reshape(1, 4, 4), cams[:, 16:].reshape(1, 3, 3)
    origins, dirs = pixel_rays(c2w, K, 16)
    point = origins[0, 3 * 16 + 5] + 2.5 * dirs[0, 3 * 16 + 5]
    screen, z = project(point[None], c2w[0], K[0], 16)
    np.testing.assert_allclose(screen[0].numpy(), [5.0, 3.0], atol=1e-3)


def test_scan_views_match_world_renders(identity, world_mesh):
    cams = cameras_at(torch.tensor([0.0, 1.2, -2.0]), torch.tensor([0.0, -0.3, 0.2]), CameraConfig(pivot=(0, 0, 0))).c
    ours = render_scan_views(world_mesh, cams, ScanViewConfig(resolution=48, supersample=1))
    world = render_heads(identity.expand(3, -1), cams, 48)
    a, b = ours["mask"] > 0.5, world["mask"] > 0.5
    iou = (a & b).sum() / (a | b).sum()
    assert float(iou) > 0.9
    both = (ours["mask"] > 0.99) & (world["mask"] > 0.99)
    assert float((ours["depth"] - world["depth"])[both].abs().mean()) < 0.01
    assert ours["image"].min() >= -1 and ours["image"].max() <= 1


def test_rasteriser_z_buffer_and_chunking():
    """Two overlapping squares at different depths: the nearer one wins, whatever the chunk size."""
    quad = lambda z, c: (np.array([[-0.1, -0.1, z], [0.1, -0.1, z], [0.1, 0.1, z], [-0.1, 0.1, z]], np.float32), c)  # noqa: E731
    (v1, c1), (v2, c2) = quad(0.0, 255), quad(0.3, 0)  # z = 0.3 is nearer to a front camera on +z
    v = np.concatenate((v1, v2))
    f = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]], np.int32)
    colours = np.concatenate((np.full((4, 3), c1, np.uint8), np.full((4, 3), c2, np.uint8)))
    mesh = Mesh(v, f, colours)
    cams = cameras_at(0.0, 0.0, CameraConfig(pivot=(0, 0, 0))).c
    small = render_scan_views(mesh, cams, ScanViewConfig(resolution=32, supersample=1, lighting=0.0, max_candidates=1024))
    big = render_scan_views(mesh, cams, ScanViewConfig(resolution=32, supersample=1, lighting=0.0))
    torch.testing.assert_close(small["image"], big["image"])
    centre = small["image"][0, :, 16, 16]
    assert torch.allclose(centre, torch.full((3,), -1.0), atol=1e-4)  # black (nearer) square in front
    assert float(small["depth"][0, 0, 16, 16]) == pytest.approx(2.7 - 0.3, abs=2e-3)


def test_head_fixed_lights_shade_a_surface_point_alike_from_every_view():
    """lights="head": a point's colour does not depend on the camera (what the v2 pack generator learned);
    lights="camera": the lights turn with the camera, so the same point is shaded differently."""
    from engine.mesh import Mesh as _Mesh
    from tests.engine.heads.shapes import uv_sphere

    sphere = uv_sphere(rings=48, segments=96)
    grey = _Mesh(sphere.vertices, sphere.faces, np.full(sphere.vertices.shape, 180, np.uint8))
    yaws = torch.tensor([0.0, 0.8])
    cams = cameras_at(yaws, torch.zeros(2), CameraConfig(pivot=(0, 0, 0))).c
    point = torch.tensor([[0.2 * np.sin(0.4), 0.0, 0.2 * np.cos(0.4)]], dtype=torch.float32)  # seen by both
    colours = {}
    for lights in ("head", "camera"):
        views = render_scan_views(grey, cams, ScanViewConfig(resolution=64, supersample=1, lights=lights))
        seen = []
        for v in range(2):
            c2w, K = cams[v, :16].reshape(4, 4), cams[v, 16:].reshape(3, 3)
            screen, _ = project(point, c2w, K, 64)  # (x, y) = (column, row), pixel centres at integers
            col, row = (int(round(float(x))) for x in screen[0])
            seen.append(views["image"][v, :, row, col])
        colours[lights] = seen
    assert float((colours["head"][0] - colours["head"][1]).abs().max()) < 0.02
    assert float((colours["camera"][0] - colours["camera"][1]).abs().max()) > 0.05
    torch.testing.assert_close(colours["head"][0], colours["camera"][0])  # the front camera is the light camera


def test_a_flat_mesh_is_refused_naming_the_file(tmp_path):
    """A mesh with no height along its up axis (a triangle lying in the floor plane, z up) cannot be placed
    as a head: one error naming the file, before any framing."""
    flat = Mesh(np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0]], np.float32), np.array([[0, 1, 2]], np.int32))
    path = write_ply(flat, tmp_path / "floor.ply")
    with pytest.raises(InputError, match=r"floor\.ply: the mesh is flat along its up axis \(z\)"):
        load_scan(path, ScanNormalization(up_axis="z"))
