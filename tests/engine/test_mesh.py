"""Mesh extraction on analytic fields: geometry, topology, orientation, cleanup, colours and file round trips."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.ndimage
import torch

from engine.errors import ConfigError, EngineError, InputError
from engine.mesh import (
    Mesh,
    MeshConfig,
    extract_mesh,
    grid_axes,
    keep_largest_component,
    mesh_from_grid,
    read_npz,
    read_ply,
    sample_grid,
    vertex_normals,
    write_mesh,
    write_npz,
    write_obj,
    write_ply,
)

RES = 48  # small grids keep the file fast on two cores


def sphere_density(center=(0.0, 0.0, 0.0), radius=0.3, slope=20.0):
    c = torch.tensor(center, dtype=torch.float32)

    def density(points: torch.Tensor) -> torch.Tensor:
        return slope * (radius - (points - c.to(points.device)).norm(dim=1))

    return density


def edge_counts(faces: np.ndarray) -> np.ndarray:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return counts


def euler_characteristic(mesh: Mesh) -> int:
    return mesh.num_vertices - len(edge_counts(mesh.faces)) + mesh.num_faces


def signed_volume(mesh: Mesh) -> float:
    v = mesh.vertices.astype(np.float64)
    a, b, c = v[mesh.faces[:, 0]], v[mesh.faces[:, 1]], v[mesh.faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


@pytest.fixture(scope="module")
def sphere_mesh() -> Mesh:
    config = MeshConfig(resolution=RES, iso_level=0.0)
    return extract_mesh(sphere_density(center=(0.05, -0.03, 0.02)), config=config)


# ---------------------------------------------------------------------------------------------------- grid
def test_grid_matches_naive_reference_with_corner_samples_on_the_box():
    bounds = ((-1.0, -0.25, 0.0), (1.0, 0.75, 3.0))
    config = MeshConfig(resolution=9, bounds=bounds, chunk_size=100, coarse_stride=1)
    field = lambda p: p[:, 0] * 100.0 + p[:, 1] * 10.0 + p[:, 2]  # noqa: E731 - distinct per axis
    grid = sample_grid(field, config)
    assert grid.shape == (9, 9, 9) and grid.dtype == np.float32 and grid.flags.c_contiguous
    xs, ys, zs = (np.linspace(lo, hi, 9) for lo, hi in zip(*bounds))
    x, y, z = np.meshgrid(xs, ys, zs, indexing="ij")
    np.testing.assert_allclose(grid, x * 100 + y * 10 + z, rtol=0, atol=1e-4)
    assert grid[0, 0, 0] == pytest.approx(-1 * 100 - 0.25 * 10 + 0)
    assert grid[-1, -1, -1] == pytest.approx(100 + 7.5 + 3)
    for axis, ref in zip(grid_axes(config), (xs, ys, zs)):
        np.testing.assert_allclose(axis, ref, atol=1e-12)


def test_chunk_size_does_not_change_the_grid():
    density = sphere_density(radius=0.27)
    for stride in (1, 4):
        grids = [
            sample_grid(density, MeshConfig(resolution=20, chunk_size=c, coarse_stride=stride))
            for c in (1000, 777, 20**3, 2**18)
        ]
        for g in grids[1:]:
            assert np.array_equal(g, grids[0])


def test_density_fn_sees_float32_chunks_and_progress_reaches_one():
    seen, fractions = [], []

    def density(points):
        seen.append((points.shape, points.dtype))
        return points[:, 0]

    sample_grid(density, MeshConfig(resolution=10, chunk_size=300, coarse_stride=1), progress=fractions.append)
    assert [s[0][0] for s in seen] == [300, 300, 300, 100]
    assert all(s[0][1] == 3 and s[1] == torch.float32 for s in seen)
    assert fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_bad_density_output_is_reported():
    assert MeshConfig(resolution=8).effective_coarse_stride == 1  # too small to refine: dense
    with pytest.raises(EngineError, match="shape"):
        sample_grid(lambda p: p, MeshConfig(resolution=8))
    with pytest.raises(EngineError, match="NaN"):
        sample_grid(lambda p: p[:, 0] / 0.0 * 0.0, MeshConfig(resolution=8))
    column = sample_grid(lambda p: p[:, :1], MeshConfig(resolution=8))  # (M, 1) is accepted
    assert column.shape == (8, 8, 8)


class CountingField:
    """Wraps a field and counts the points it is asked about."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, points):
        self.calls += points.shape[0]
        return self.fn(points)


def test_coarse_to_fine_grid_is_exact_near_the_surface_and_cheaper():
    n = 49
    dense_cfg = MeshConfig(resolution=n, iso_level=0.0, coarse_stride=1)
    field = CountingField(sphere_density(center=(0.03, 0.0, -0.04), radius=0.3))
    dense = sample_grid(field, dense_cfg)
    field.calls = 0
    refined = sample_grid(field, dense_cfg.replace(coarse_stride=4, chunk_size=5000))
    assert field.calls < 0.5 * n**3
    # Exact wherever a marching cube could see the surface: all voxels within 4 of a sign change.
    crossing = np.zeros_like(dense, dtype=bool)
    for axis in range(3):
        change = np.diff(np.sign(dense), axis=axis) != 0
        lo = [slice(None)] * 3
        lo[axis] = slice(0, n - 1)
        crossing[tuple(lo)] |= change
    near = scipy.ndimage.binary_dilation(crossing, iterations=4)
    assert np.array_equal(refined[near], dense[near])
    # Elsewhere interpolated, but always on the correct side of the iso level.
    assert np.array_equal(np.sign(refined), np.sign(dense))


def test_coarse_to_fine_interpolation_reproduces_multilinear_fields():
    # Far from the iso level no cell is refined, so the whole grid is the trilinear upsampling, which is
    # exact for multilinear fields — also across the shorter last coarse cell (47 = 11·4 + 3).
    field = CountingField(lambda p: 100.0 + p[:, 0] + 2.0 * p[:, 1] * p[:, 2] - 3.0 * p[:, 0] * p[:, 1] * p[:, 2])
    config = MeshConfig(resolution=48, iso_level=0.0, coarse_stride=4, pad_boundary=False)
    grid = sample_grid(field, config)
    assert field.calls == 13**3
    x, y, z = np.meshgrid(*grid_axes(config), indexing="ij")
    np.testing.assert_allclose(grid, 100.0 + x + 2 * y * z - 3 * x * y * z, rtol=0, atol=2e-5)


@pytest.mark.parametrize("dilation", [0, 1])
@pytest.mark.parametrize("case", ["sphere", "two_spheres", "cut_sphere"])
def test_coarse_to_fine_mesh_equals_dense_mesh(case, dilation):
    fields = {
        "sphere": sphere_density(center=(0.05, -0.03, 0.02)),
        "two_spheres": lambda p: torch.maximum(
            sphere_density((-0.2, 0.0, 0.0), 0.22)(p), sphere_density((0.28, 0.1, 0.0), 0.12)(p)
        ),
        "cut_sphere": sphere_density(radius=0.62),
    }
    # Dilation 0 refines only crossing cells: still exact here, so every voxel on a refined cell's
    # closed extent (faces included) must have been queried.
    config = MeshConfig(resolution=RES + 1, iso_level=0.0, largest_component_only=False, coarse_dilation=dilation)
    dense = extract_mesh(fields[case], config=config.replace(coarse_stride=1))
    refined = extract_mesh(fields[case], config=config.replace(coarse_stride=4))
    assert np.array_equal(dense.vertices, refined.vertices) and np.array_equal(dense.faces, refined.faces)


def test_dense_sampling_finds_a_blob_smaller_than_a_coarse_cell():
    # The documented limit of coarse-to-fine: an isolated blob between coarse samples is invisible to it.
    voxel = 1.0 / 48
    blob_center = (2 * voxel - 0.5 + 0.25, 0.02, 0.02)  # between coarse planes, far from the big sphere
    big, blob = sphere_density((0.25, 0.0, 0.0), 0.15), sphere_density(blob_center, 0.8 * voxel)
    both = lambda p: torch.maximum(big(p), blob(p))  # noqa: E731
    config = MeshConfig(resolution=49, iso_level=0.0, largest_component_only=False)
    dense = extract_mesh(both, config=config.replace(coarse_stride=1))
    refined = extract_mesh(both, config=config.replace(coarse_stride=8))
    assert euler_characteristic(dense) == 4 and euler_characteristic(refined) == 2


@pytest.mark.parametrize(
    "changes",
    [
        {"resolution": 3},
        {"bounds": ((0, 0, 0), (1, 0, 1))},
        {"bounds": ((0, 0), (1, 1))},
        {"chunk_size": 0},
        {"pad_value": 20.0, "iso_level": 10.0},
        {"pad_width": 10, "resolution": 16},
        {"color_samples": 0},
        {"coarse_stride": 0},
        {"coarse_dilation": -1},
    ],
)
def test_invalid_config_raises_config_error(changes):
    with pytest.raises(ConfigError):
        MeshConfig(**changes).validate()


def test_for_box_warp_centres_the_cube():
    assert MeshConfig.for_box_warp(2.0).bounds == ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    assert MeshConfig().bounds == ((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    assert MeshConfig().iso_level == 10.0 and MeshConfig().resolution == 256


# ---------------------------------------------------------------------------------------------------- sphere
def test_sphere_vertices_lie_on_the_radius(sphere_mesh):
    voxel = 1.0 / (RES - 1)
    radii = np.linalg.norm(sphere_mesh.vertices - np.array([0.05, -0.03, 0.02], np.float32), axis=1)
    assert np.all(np.abs(radii - 0.3) < voxel)
    assert abs(radii.mean() - 0.3) < 0.2 * voxel
    assert sphere_mesh.vertices.dtype == np.float32 and sphere_mesh.faces.dtype == np.int32


def test_sphere_is_watertight_genus_zero(sphere_mesh):
    assert np.all(edge_counts(sphere_mesh.faces) == 2)
    assert euler_characteristic(sphere_mesh) == 2
    # Every vertex is used (no stray vertices after cleanup).
    assert len(np.unique(sphere_mesh.faces)) == sphere_mesh.num_vertices


def test_sphere_faces_and_normals_point_outward(sphere_mesh):
    volume = signed_volume(sphere_mesh)
    assert volume == pytest.approx(4.0 / 3.0 * np.pi * 0.3**3, rel=0.02)  # positive ⇒ outward winding
    rel = sphere_mesh.vertices - np.array([0.05, -0.03, 0.02], np.float32)
    normals = sphere_mesh.vertex_normals
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-5)
    cos = np.einsum("ij,ij->i", normals, rel / np.linalg.norm(rel, axis=1, keepdims=True))
    assert np.mean(cos > 0) > 0.999 and np.median(cos) > 0.99


def test_vertex_normals_match_hand_computed_tetrahedron():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)  # outward winding
    n = vertex_normals(verts, faces)
    # Vertex 0 touches three right triangles of area 1/2 facing −z, −y, −x.
    np.testing.assert_allclose(n[0], -np.ones(3) / np.sqrt(3), atol=1e-6)
    # Vertex 1: faces −z (area 1/2), −y (1/2), and the slanted face (area √3/2, normal (1,1,1)/√3).
    expected = np.array([0, 0, -0.5]) + np.array([0, -0.5, 0]) + np.array([0.5, 0.5, 0.5])
    np.testing.assert_allclose(n[1], expected / np.linalg.norm(expected), atol=1e-6)


def test_anisotropic_bounds_map_indices_to_world_exactly():
    bounds = ((-0.2, -0.5, 0.3), (0.6, 0.1, 1.5))
    center = (0.2, -0.2, 0.9)
    config = MeshConfig(resolution=40, bounds=bounds, iso_level=0.0)
    mesh = extract_mesh(sphere_density(center=center, radius=0.25), config=config)
    max_voxel = float(np.max(config.voxel_size))
    radii = np.linalg.norm(mesh.vertices - np.array(center, np.float32), axis=1)
    assert np.all(np.abs(radii - 0.25) < max_voxel)
    assert abs(radii.mean() - 0.25) < 0.2 * max_voxel


def test_sphere_cut_by_the_box_is_closed_by_padding():
    config = MeshConfig(resolution=32, iso_level=0.0)
    density = sphere_density(radius=0.62)  # pokes through all six faces of [-0.5, 0.5]³
    mesh = extract_mesh(density, config=config)
    assert np.all(edge_counts(mesh.faces) == 2) and euler_characteristic(mesh) == 2
    assert signed_volume(mesh) > 0
    # The caps sit on the last interior grid plane, one voxel inside the box.
    inner = 0.5 - 1.0 / 31
    assert np.abs(mesh.vertices).max() == pytest.approx(inner, abs=1e-3)
    open_mesh = extract_mesh(density, config=config.replace(pad_boundary=False))
    assert np.any(edge_counts(open_mesh.faces) == 1)  # without padding the cut surface has a rim


# ---------------------------------------------------------------------------------------------------- cleanup
def test_largest_component_keeps_the_bigger_sphere():
    big, small = sphere_density((-0.2, 0.0, 0.0), 0.22), sphere_density((0.28, 0.1, 0.0), 0.12)
    both = lambda p: torch.maximum(big(p), small(p))  # noqa: E731
    config = MeshConfig(resolution=RES, iso_level=0.0)
    mesh = extract_mesh(both, config=config)
    assert np.all(np.linalg.norm(mesh.vertices - np.array([-0.2, 0, 0], np.float32), axis=1) < 0.25)
    assert euler_characteristic(mesh) == 2
    everything = extract_mesh(both, config=config.replace(largest_component_only=False))
    assert euler_characteristic(everything) == 4 and everything.num_faces > mesh.num_faces


def test_keep_largest_component_reindexes_vertices():
    # Triangle (3 faces fan) + separate single triangle listed first; unused vertex 9 also dropped.
    verts = np.arange(30, dtype=np.float32).reshape(10, 3)
    faces = np.array([[6, 7, 8], [0, 1, 2], [0, 2, 3], [0, 3, 4]], np.int32)
    v, f, kept = keep_largest_component(verts, faces)
    assert kept.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(v, verts[:5])
    np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3], [0, 3, 4]])


# ---------------------------------------------------------------------------------------------------- colours
def test_colors_come_from_color_fn_at_vertex_positions(sphere_mesh):
    lo, hi = -0.5, 0.5
    color_fn = lambda p: (p - lo) / (hi - lo)  # noqa: E731 - position → colour, exactly checkable
    config = MeshConfig(resolution=RES, iso_level=0.0, chunk_size=1000)
    mesh = extract_mesh(sphere_density(center=(0.05, -0.03, 0.02)), color_fn, config)
    assert mesh.vertex_colors.dtype == np.uint8 and mesh.vertex_colors.shape == mesh.vertices.shape
    expected = np.round((mesh.vertices.astype(np.float64) - lo) / (hi - lo) * 255)
    assert np.abs(mesh.vertex_colors - expected).max() <= 1


def test_color_samples_average_inward_along_the_normal():
    # Colour = depth below the sphere surface, in voxels, scaled; averaging 0..2 voxels inward gives 1 voxel.
    config = MeshConfig(resolution=RES, iso_level=0.0, color_samples=5, color_depth_voxels=2.0)
    voxel = 1.0 / (RES - 1)
    color_fn = lambda p: ((0.3 - p.norm(dim=1, keepdim=True)) / voxel * 0.25 + 0.5).expand(-1, 3)  # noqa: E731
    mesh = extract_mesh(sphere_density(), color_fn, config)
    mean = mesh.vertex_colors.astype(np.float64).mean() / 255
    assert mean == pytest.approx(0.5 + 0.25, abs=0.02)
    surface_only = extract_mesh(sphere_density(), color_fn, config.replace(color_samples=1))
    assert surface_only.vertex_colors.astype(np.float64).mean() / 255 == pytest.approx(0.5, abs=0.02)


def test_colors_are_clipped_to_unit_range():
    config = MeshConfig(resolution=16, iso_level=0.0)
    mesh = extract_mesh(sphere_density(), lambda p: p * 100.0, config)
    assert set(np.unique(mesh.vertex_colors)) <= {0, 255}


# ---------------------------------------------------------------------------------------------------- errors
def test_empty_field_raises_with_density_range():
    with pytest.raises(EngineError, match=r"no surface at iso level 10.*\[-5, -5\]"):
        extract_mesh(lambda p: torch.full((p.shape[0],), -5.0), config=MeshConfig(resolution=12))
    with pytest.raises(EngineError, match="no surface"):  # everything inside, nothing to close it
        extract_mesh(lambda p: torch.full((p.shape[0],), 50.0), config=MeshConfig(resolution=12, pad_boundary=False))


def test_mesh_from_grid_leaves_the_grid_alone_and_checks_shape():
    config = MeshConfig(resolution=24, iso_level=0.0)
    grid = sample_grid(sphere_density(radius=0.7), config)
    before = grid.copy()
    mesh = mesh_from_grid(grid, config)
    assert np.array_equal(grid, before) and mesh.num_faces > 0
    with pytest.raises(InputError, match="shape"):
        mesh_from_grid(grid[:-1], config)


def test_timings_are_reported_per_stage():
    timings: dict[str, float] = {}
    extract_mesh(sphere_density(), lambda p: p.abs(), MeshConfig(resolution=16, iso_level=0.0), timings=timings)
    assert set(timings) == {"sample_grid", "marching_cubes", "cleanup", "normals", "colors"}
    assert all(t >= 0 for t in timings.values())


# ---------------------------------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def colored_mesh() -> Mesh:
    config = MeshConfig(resolution=20, iso_level=0.0)
    return extract_mesh(sphere_density(radius=0.33), lambda p: p.abs() * 2, config)


def _assert_same(a: Mesh, b: Mesh, normals: bool = True) -> None:
    assert np.array_equal(a.vertices, b.vertices) and a.vertices.dtype == b.vertices.dtype
    assert np.array_equal(a.faces, b.faces)
    assert np.array_equal(a.vertex_colors, b.vertex_colors)
    if normals:
        assert np.array_equal(a.vertex_normals, b.vertex_normals)


def test_ply_round_trip_is_exact_and_header_is_standard(colored_mesh, tmp_path):
    path = write_ply(colored_mesh, tmp_path / "head.ply")
    _assert_same(colored_mesh, read_ply(path))
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    assert "format binary_little_endian 1.0" in header
    assert f"element vertex {colored_mesh.num_vertices}" in header
    assert "property uchar red" in header and "property float nx" in header
    assert "property list uchar int vertex_indices" in header
    expected_size = len(header) + len("end_header\n") + colored_mesh.num_vertices * (12 + 12 + 3)
    assert path.stat().st_size == expected_size + colored_mesh.num_faces * 13
    bare = read_ply(write_ply(colored_mesh, tmp_path / "bare.ply", normals=False))
    assert bare.vertex_normals is None
    _assert_same(colored_mesh, bare, normals=False)
    assert sorted(os.listdir(tmp_path)) == ["bare.ply", "head.ply"]  # no temp files left behind


def test_npz_round_trip_is_exact(colored_mesh, tmp_path):
    _assert_same(colored_mesh, read_npz(write_npz(colored_mesh, tmp_path / "head.npz")))
    # A destination without .npz must not gain a second extension.
    odd = write_npz(colored_mesh, tmp_path / "head.meshdata")
    assert odd.exists() and not (tmp_path / "head.meshdata.npz").exists()
    _assert_same(colored_mesh, read_npz(odd))


def test_obj_parses_back_to_the_mesh(colored_mesh, tmp_path):
    text = write_obj(colored_mesh, tmp_path / "head.obj").read_text()
    lines = text.splitlines()
    v = np.array([[float(x) for x in ln.split()[1:]] for ln in lines if ln.startswith("v ")])
    vn = np.array([[float(x) for x in ln.split()[1:]] for ln in lines if ln.startswith("vn ")])
    f = np.array([[int(c.split("//")[0]) for c in ln.split()[1:]] for ln in lines if ln.startswith("f ")])
    assert v.shape == (colored_mesh.num_vertices, 6) and f.shape == (colored_mesh.num_faces, 3)
    np.testing.assert_array_equal(v[:, :3].astype(np.float32), colored_mesh.vertices)
    np.testing.assert_array_equal(np.round(v[:, 3:] * 255).astype(np.uint8), colored_mesh.vertex_colors)
    np.testing.assert_allclose(vn, colored_mesh.vertex_normals, atol=1e-5)
    np.testing.assert_array_equal(f - 1, colored_mesh.faces)
    plain = Mesh(colored_mesh.vertices, colored_mesh.faces)
    plain_lines = write_obj(plain, tmp_path / "plain.obj").read_text().splitlines()
    assert all(len(ln.split()) == 4 for ln in plain_lines if ln[:2] in ("v ", "f "))


def test_write_mesh_dispatches_on_extension(colored_mesh, tmp_path):
    for suffix in (".ply", ".obj", ".npz"):
        assert write_mesh(colored_mesh, tmp_path / f"m{suffix}").exists()
    with pytest.raises(InputError, match="unsupported"):
        write_mesh(colored_mesh, tmp_path / "m.stl")


def test_bad_files_raise_input_error(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"not a ply at all")
    with pytest.raises(InputError, match="bad.ply"):
        read_ply(bad)
    ascii_ply = tmp_path / "ascii.ply"
    ascii_ply.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(InputError, match="binary_little_endian"):
        read_ply(ascii_ply)
    truncated = tmp_path / "truncated.ply"
    header = (
        "ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\n"
        "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
    )
    truncated.write_bytes(header.encode() + b"\x00" * 7)  # 5 floats need 20 bytes
    with pytest.raises(InputError, match="truncated"):
        read_ply(truncated)
    with pytest.raises(InputError, match="face indices"):
        write_ply(Mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 5]], np.int32)), tmp_path / "x.ply")
    assert not (tmp_path / "x.ply").exists()
