"""``engine head --mesh`` on bad input (#12): a mesh with no faces, a triangle soup, 5 M triangles, a missing
texture. Each is refused — exit 2, one ``error:`` line naming the file, nothing in --out, before any model is
touched — or falls back as documented, with a ``warning`` event (engine/heads/head_input.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.app.cli import main
from tests.engine.heads.shapes import uv_sphere
from tests.hostile.corpus import obj_text, ply_bytes

pytestmark = pytest.mark.usefixtures("single_thread")


def _head_argv(mesh: Path, out: Path, *extra: str) -> list[str]:
    return ["head", "--mesh", str(mesh), "--out", str(out), "--style-preset", "zombie", "--device", "cpu", "--json", *extra]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def no_models(monkeypatch):
    """Any attempt to resolve or load a model fails the test: bad input must be refused before that."""
    import engine.app.pipeline as pipeline

    def touched(*args, **kwargs):
        raise AssertionError("a model was resolved or loaded before the mesh was checked")

    monkeypatch.setattr(pipeline, "resolve_models", touched)
    monkeypatch.setattr(pipeline, "load_generator", touched)


def test_bad_meshes_exit_2_naming_the_file_before_any_model_and_leave_nothing(tmp_path, capsys, no_models):
    rng = np.random.default_rng(0)
    points = rng.random((40, 3)).astype(np.float32)
    soup = (rng.uniform(-1, 1, (2000, 1, 3)) + 0.05 * rng.standard_normal((2000, 3, 3))).reshape(-1, 3).astype(np.float32)
    line = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], np.float32)
    files = {
        "points.ply": (ply_bytes(points, np.zeros((0, 3), np.int32)), "scan has no triangles"),
        "points.obj": ("".join(f"v {x} {y} {z}\n" for x, y, z in points).encode(), "OBJ has no vertices or no faces"),
        "soup.ply": (ply_bytes(soup, np.arange(len(soup)).reshape(-1, 3).astype(np.int32)), "the mesh encloses no volume"),
        "zero_area.ply": (ply_bytes(line, np.array([[0, 1, 2]], np.int32)), "all 1 triangles have zero area"),
    }
    for name, (data, reason) in files.items():
        (tmp_path / name).write_bytes(data)
        out = tmp_path / f"out_{name}"
        rc = main(_head_argv(tmp_path / name, out))
        captured = capsys.readouterr()
        lines = [x for x in captured.err.splitlines() if x.strip()]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in captured.err, captured.err
        assert lines[0].startswith(f"error: {tmp_path / name}: {reason}"), lines[0]
        assert _events(captured.out) == [], captured.out  # not even the first stage event
        assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))
    rc = main(_head_argv(tmp_path / "points.ply", tmp_path / "o", "--max-fit-triangles", "10"))
    assert rc == 2 and "max fit triangles must be an integer ≥ 1,000, got 10" in capsys.readouterr().err


def test_a_missing_texture_is_a_warning_event_and_the_fit_goes_on(tmp_path, capsys):
    """The OBJ's map_Kd names a file that is not there: the head is fitted with the material's Kd colour, and
    the run says so in a ``warning`` event (the run is cancelled at the fit's first step to stay short)."""
    sphere = uv_sphere()
    (tmp_path / "bust.obj").write_text(obj_text(sphere.vertices, sphere.faces, "mtllib bust.mtl\nusemtl skin"))
    (tmp_path / "bust.mtl").write_text("newmtl skin\nKd 0.6 0.4 0.3\nmap_Kd textures/skin.png\n")
    (tmp_path / "stop").write_text("")
    rc = main(_head_argv(tmp_path / "bust.obj", tmp_path / "out", "--generator", "tiny", "--field-steps", "2",
                         "--cancel-file", str(tmp_path / "stop")))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    events = _events(captured.out)
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert f"{tmp_path / 'bust.obj'}: material 'skin': texture 'textures/skin.png' not found; its Kd colour is used" \
        in warnings, events
    names = [e["event"] for e in events]
    assert names.index("warning") < names.index("cancelled") and events[-1] == {"event": "cancelled", "stage": "fit"}


def ellipsoid(rings: int, segments: int, radii=(0.075, 0.11, 0.09)) -> tuple[np.ndarray, np.ndarray]:
    """A closed UV ellipsoid (head-sized, in metres) of 2·segments·(rings − 1) triangles, wound outward."""
    theta = np.linspace(0, np.pi, rings + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack((np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)), -1).reshape(-1, 3)
    vertices = (np.concatenate(([[0, 1, 0]], ring, [[0, -1, 0]])) * radii).astype(np.float32)
    s = np.arange(segments)
    after = (s + 1) % segments
    r = np.arange(rings - 2)[:, None]
    a, b = 1 + r * segments + s, 1 + r * segments + after
    last, base = len(vertices) - 1, 1 + (rings - 2) * segments
    faces = np.concatenate((
        np.stack((np.zeros(segments, np.int64), 1 + after, 1 + s), 1),
        np.stack((a, b, a + segments), -1).reshape(-1, 3),
        np.stack((b, b + segments, a + segments), -1).reshape(-1, 3),
        np.stack((np.full(segments, last), base + s, base + after), 1),
    ))
    return vertices, faces.astype(np.int32)


def write_binary_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(vertices)}\nproperty float x\n"
              f"property float y\nproperty float z\nelement face {len(faces)}\n"
              "property list uchar int vertex_indices\nend_header\n").encode("ascii")
    rows = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    rows["n"], rows["i"] = 3, faces
    path.write_bytes(header + vertices.astype("<f4").tobytes() + rows.tobytes())
    return path


@pytest.mark.slow
def test_five_million_triangles_are_simplified_to_the_budget_with_a_warning_and_a_fit_record(tmp_path):
    """A 5 M-triangle head (a finely divided ellipsoid) is within the input limits, so it must work: it is
    simplified to the 300 000-triangle budget before the fit, a warning event says so, and fit.json records it."""
    from engine.app.head_mode import FIT_FILE, fitted_head_field
    from engine.heads.head_input import DEFAULT_MAX_TRIANGLES
    from engine.heads.mesh_field import MeshFieldConfig
    from engine.heads.scans import ScanNormalization
    from engine.pack import pack_paths
    from engine.stylize.cancel import CancelToken

    vertices, faces = ellipsoid(1251, 2000)
    assert len(faces) == 5_000_000
    path = write_binary_ply(tmp_path / "dense_bust.ply", vertices, faces)
    del vertices, faces
    events = []
    fit_config = MeshFieldConfig(steps=1, photo_every=0, density_points=64, colour_points=16)
    field = fitted_head_field(path, str(pack_paths().generator), None, tmp_path / "cache", fit_config, "cpu", CancelToken(),
                              lambda event, **fields: events.append((event, fields)),
                              ScanNormalization(units="m", framing="heuristic"))
    assert field is not None and not field.reused
    budget = DEFAULT_MAX_TRIANGLES
    warnings = [f["message"] for e, f in events if e == "warning"]
    fitted = field.scan.mesh.num_faces
    assert 0.95 * budget <= fitted <= budget
    assert warnings == [f"{path}: 5,000,000 triangles, over head mode's budget of {budget:,}; simplified to {fitted:,} "
                        "before the fit — raise --max-fit-triangles to keep more"]
    record = json.loads((field.path.parent / FIT_FILE).read_text())
    assert record["warnings"] == warnings and record == json.loads(json.dumps(field.fit))
    assert record["input"] == {"triangles_read": 5_000_000, "max_triangles": budget, "dropped_zero_area": 0,
                               "dropped_repeated": 0, "simplified": True, "enclosed_fraction": record["input"]["enclosed_fraction"],
                               "flipped": False, "triangles_fitted": fitted}
    assert 0.45 < record["input"]["enclosed_fraction"] < 0.6  # still the ellipsoid (π/6 of its box)
    extent = field.scan.mesh.vertices.max(axis=0) - field.scan.mesh.vertices.min(axis=0)
    np.testing.assert_allclose(extent / extent[1], np.array([0.15, 0.22, 0.18]) / 0.22, atol=0.01)  # its shape kept


def test_a_cached_polished_fit_without_its_unpolished_super_resolution_is_fitted_again(tmp_path):
    """A field cached before head mode kept the fit's unpolished super-resolution beside it would start the
    stylization from the polished one (which holds the style back): such an entry is refitted, not reused."""
    from engine.app.head_mode import STYLIZE_SR_FILE, fitted_head_field
    from engine.heads.mesh_field import MeshFieldConfig
    from engine.heads.scans import ScanNormalization
    from engine.pack import pack_paths
    from engine.stylize.cancel import CancelToken

    path = write_binary_ply(tmp_path / "bust.ply", *ellipsoid(12, 16))
    config = MeshFieldConfig(steps=2, photo_every=1, photo_views=2, density_points=64, colour_points=16)
    assert config.polish_steps() > 0

    def fit():
        return fitted_head_field(path, str(pack_paths().generator), None, tmp_path / "cache", config, "cpu",
                                 CancelToken(), lambda event, **fields: None, ScanNormalization(units="m", framing="heuristic"))

    first = fit()
    start = first.path.parent / STYLIZE_SR_FILE
    assert not first.reused and first.stylize_superresolution == start and start.is_file()
    assert fit().reused
    start.unlink()  # as an entry cached before the file existed
    again = fit()
    assert not again.reused and again.stylize_superresolution == start and start.is_file()
