"""Head mode's input (engine/heads/head_input.py): what happens to a mesh with no faces, degenerate or repeated
triangles, a soup that encloses nothing, an inside-out surface, too many triangles, or a missing texture."""

from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ConfigError, InputError
from engine.heads.head_input import HeadInputConfig, read_head_mesh, simplify_to_budget
from engine.mesh import Mesh, SurfaceTexture, write_ply
from tests.engine.heads.shapes import uv_sphere
from tests.hostile.corpus import obj_text, ply_bytes

pytestmark = pytest.mark.usefixtures("single_thread")


def _sphere() -> Mesh:
    return uv_sphere()  # 2208 triangles, closed, wound outward


def test_points_only_files_are_refused_naming_the_file(tmp_path):
    points = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    cases = {
        "zero_faces.ply": (ply_bytes(points, np.zeros((0, 3), np.int32)), r"zero_faces\.ply: scan has no triangles"),
        "no_face_element.ply": (b"ply\nformat binary_little_endian 1.0\nelement vertex 50\nproperty float x\n"
                                b"property float y\nproperty float z\nend_header\n" + points.tobytes(),
                                r"no_face_element\.ply: PLY needs both a vertex and a face element"),
        "points.obj": ("".join(f"v {x} {y} {z}\n" for x, y, z in points).encode(), r"points\.obj: OBJ has no vertices or no faces"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError, match=message):
            read_head_mesh(tmp_path / name)


def test_zero_area_and_repeated_triangles_are_dropped_with_a_warning(tmp_path):
    """A double-sided export (every triangle again, wound the other way) would cancel its own winding number;
    the repeats and zero-area slivers go, the sphere stays, and so does nothing the dropped faces alone used."""
    sphere = _sphere()
    n = sphere.num_faces
    stray = len(sphere.vertices)  # a vertex only a zero-area triangle uses
    vertices = np.concatenate((sphere.vertices, [[0.5, 0.5, 0.5]])).astype(np.float32)
    faces = np.concatenate((sphere.faces, sphere.faces[:, ::-1],  # every face again, reversed
                            sphere.faces[:3],  # three repeated as they are
                            [[0, 0, 1], [stray, stray, stray]],  # a repeated corner
                            [[0, 1, 1]]))  # zero area
    path = write_ply(Mesh(vertices, faces.astype(np.int32)), tmp_path / "double_sided.ply")
    head = read_head_mesh(path)
    assert head.mesh.num_faces == n and head.mesh.num_vertices == len(sphere.vertices)
    assert head.record["dropped_repeated"] == n + 3 and head.record["dropped_zero_area"] == 3
    assert head.changed and head.record["triangles_fitted"] == n and head.record["enclosed_fraction"] > 0.4
    assert head.warnings == [f"{path}: dropped 3 zero-area and {n + 3:,} repeated triangles ({n:,} left)"]
    np.testing.assert_array_equal(head.mesh.faces, sphere.faces)  # the first of each repeat is the one kept


def test_a_mesh_of_nothing_but_zero_area_triangles_is_refused(tmp_path):
    line = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], np.float32)
    path = tmp_path / "line.ply"
    path.write_bytes(ply_bytes(line, np.array([[0, 1, 2], [1, 2, 3], [0, 0, 3]], np.int32)))
    with pytest.raises(InputError, match=r"line\.ply: all 3 triangles have zero area"):
        read_head_mesh(path)


def test_a_soup_or_a_flat_sheet_that_encloses_nothing_is_refused(tmp_path):
    """(A curved open surface is not refused: the winding number closes it, as it closes an open neck.)"""
    rng = np.random.default_rng(1)
    centres = rng.uniform(-1, 1, (3000, 1, 3))
    soup = (centres + 0.05 * rng.standard_normal((3000, 3, 3))).reshape(-1, 3).astype(np.float32)
    (tmp_path / "soup.ply").write_bytes(ply_bytes(soup, np.arange(len(soup)).reshape(-1, 3).astype(np.int32)))
    u, v = np.meshgrid(np.linspace(-0.2, 0.2, 12), np.linspace(-0.2, 0.2, 12), indexing="ij")
    tilt = np.array([[0.8, 0.0, 0.6], [0.36, 0.8, -0.48]])  # a planar square, turned so its box is not flat
    sheet = (np.stack((u.ravel(), v.ravel()), 1) @ tilt).astype(np.float32)
    i = (np.arange(11)[:, None] * 12 + np.arange(11)).ravel()
    grid = np.concatenate((np.stack((i, i + 12, i + 1), 1), np.stack((i + 1, i + 12, i + 13), 1))).astype(np.int32)
    write_ply(Mesh(sheet, grid), tmp_path / "sheet.ply")
    for name in ("soup.ply", "sheet.ply"):
        with pytest.raises(InputError, match=rf"{name}: the mesh encloses no volume \(inside at \d\.\d % of its "
                                             r"bounding box; heads fill 20–40 %\)"):
            read_head_mesh(tmp_path / name)


def test_a_closed_surface_of_unwelded_triangles_is_fitted_as_it_is(tmp_path):
    """Disconnected triangles that still close a volume (an STL-style export) are a head, not a soup."""
    sphere = _sphere()
    corners = sphere.vertices[sphere.faces].reshape(-1, 3)
    path = write_ply(Mesh(corners, np.arange(len(corners)).reshape(-1, 3).astype(np.int32)), tmp_path / "unwelded.ply")
    head = read_head_mesh(path)
    assert head.warnings == [] and not head.changed and head.mesh.num_faces == sphere.num_faces
    assert 0.45 < head.record["enclosed_fraction"] < 0.6  # a sphere fills π/6 of its box


def test_an_inside_out_surface_is_flipped_with_a_warning(tmp_path):
    sphere = _sphere()
    path = write_ply(Mesh(sphere.vertices, np.ascontiguousarray(sphere.faces[:, ::-1])), tmp_path / "inside_out.ply")
    head = read_head_mesh(path)
    np.testing.assert_array_equal(head.mesh.faces, sphere.faces)
    assert head.record["flipped"] and head.changed and head.record["enclosed_fraction"] > 0.45
    assert head.warnings == [f"{path}: the surface is wound inside out (its normals point in); faces flipped"]


def test_a_dense_mesh_is_simplified_to_the_budget_keeping_its_shape_and_colours(tmp_path):
    """Over the budget: quadric edge collapse to it; vertex colours and a texture both come across as vertex
    colours (green texture on the +x half, white on the −x half; red above y = 0 and blue below)."""
    sphere = _sphere()
    x = sphere.vertices[sphere.faces].mean(axis=1)[:, 0]
    images = [np.array([[[0, 200, 0]]], np.uint8), np.array([[[255, 255, 255]]], np.uint8)]
    texture = SurfaceTexture(np.zeros((sphere.num_faces, 3, 2), np.float32), np.where(x >= 0, 0, 1).astype(np.int32), images)
    textured = Mesh(sphere.vertices, sphere.faces, None, None, {}, texture)
    budget = HeadInputConfig(max_triangles=1000)
    for label, mesh in (("vertex colours", sphere), ("texture", textured)):  # (no file format here has both)
        simplified = simplify_to_budget(mesh, budget.max_triangles)
        assert 900 <= simplified.num_faces <= 1000, label
        radius = np.linalg.norm(simplified.vertices, axis=1)
        assert np.abs(radius - 0.2).max() < 0.01, label  # still the sphere
        assert simplified.texture is None and simplified.vertex_colors is not None, label
        v, c = simplified.vertices, simplified.vertex_colors.astype(int)
        if mesh is sphere:
            assert (c[v[:, 1] > 0.02] == (230, 20, 20)).all() and (c[v[:, 1] < -0.02] == (20, 20, 230)).all()
        else:
            assert (c[v[:, 0] > 0.02] == (0, 200, 0)).all() and (c[v[:, 0] < -0.02] == 255).all()
    dense = write_ply(sphere, tmp_path / "dense.ply")
    head = read_head_mesh(dense, budget)
    assert head.record["simplified"] and head.record["triangles_read"] == sphere.num_faces
    assert head.record["triangles_fitted"] == head.mesh.num_faces <= 1000 and head.changed
    assert head.warnings == [f"{dense}: {sphere.num_faces:,} triangles, over head mode's budget of 1,000; simplified to "
                             f"{head.mesh.num_faces:,} before the fit — raise --max-fit-triangles to keep more"]
    assert not read_head_mesh(dense).record["simplified"]  # the default budget (300 000) keeps it whole
    with pytest.raises(ConfigError, match="max fit triangles must be an integer ≥ 1,000, got 10"):
        read_head_mesh(dense, HeadInputConfig(max_triangles=10))


def test_a_missing_texture_falls_back_to_the_material_colour_or_the_vertex_colours_with_a_warning(tmp_path):
    from engine.heads.mesh_field import NEUTRAL_ALBEDO, MeshQuery

    sphere = _sphere()
    body = obj_text(sphere.vertices, sphere.faces, "mtllib skin.mtl\nusemtl skin")
    (tmp_path / "head.obj").write_text(body)
    (tmp_path / "skin.mtl").write_text("newmtl skin\nKd 0.5 0.25 0.125\nmap_Kd -s 1 1 1 skin_diffuse.png\n")
    head = read_head_mesh(tmp_path / "head.obj")
    assert head.warnings == [f"{tmp_path / 'head.obj'}: material 'skin': texture 'skin_diffuse.png' not found; "
                             "its Kd colour is used"]
    assert [img.tolist() for img in head.mesh.texture.images] == [[[[188, 137, 99]]]]  # Kd in sRGB
    # without a Kd the faces keep their vertex colours — here none, so the fit's neutral albedo
    (tmp_path / "skin.mtl").write_text("newmtl skin\nmap_Kd skin_diffuse.png\n")
    head = read_head_mesh(tmp_path / "head.obj")
    assert head.warnings == [f"{tmp_path / 'head.obj'}: material 'skin': texture 'skin_diffuse.png' not found; "
                             "its faces keep their vertex colour"]
    assert head.mesh.texture is None and head.mesh.vertex_colors is None
    query = MeshQuery(head.mesh)
    points, _, colours = query.sample_surface(16, np.random.default_rng(0))
    np.testing.assert_allclose(colours, np.broadcast_to(NEUTRAL_ALBEDO, colours.shape))


def test_a_latent_or_a_folder_given_as_the_mesh_is_refused(tmp_path):
    np.savez(tmp_path / "w.npz", w=np.zeros((1, 4, 8), np.float32))
    with pytest.raises(InputError, match=r"w\.npz: head mode needs a mesh, but this is a latent \(give a W\+ latent with --latent\)"):
        read_head_mesh(tmp_path / "w.npz")
    (tmp_path / "folder.ply").mkdir()
    with pytest.raises(InputError, match=r"folder\.ply"):
        read_head_mesh(tmp_path / "folder.ply")
