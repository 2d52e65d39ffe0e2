"""Batch driver: a folder of scans with a corrupt and an unsupported file, resume, kill-and-rerun, provenance,
consent — with stub models (fast), plus one end-to-end run on the embedded pack (slow)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.app.batch import BatchModels, ConsentRequired, HeadOutput, Inverted, collect_inputs, run_batch
from engine.heads.gltf import read_gltf
from engine.heads.provenance import REQUIRED_FIELDS, sha256_file
from engine.heads.scans import load_scan
from engine.world import ScanExport, export_scan, head_mesh, sample_identities

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[3]
TESTS = Path(__file__).resolve().parent


def stub_models() -> BatchModels:
    """Stand-ins for the model steps: 'inversion' = the scan's mean vertex colour as a 1-D latent,
    'stylization' = the normalised scan itself with colours inverted. Deterministic and instant."""
    cache: dict[str, object] = {}

    def invert(path: Path, kind: str) -> Inverted:
        scan = load_scan(path)
        cache["mesh"] = scan.mesh
        w = torch.from_numpy(scan.mesh.vertex_colors.mean(axis=0, keepdims=True).astype(np.float32))[None]
        return Inverted(w, torch.zeros(1, 3, 8, 8) + w.mean() / 255, {"kind": kind, "units": scan.units})

    def build_head(ws: torch.Tensor, score_cameras=None) -> HeadOutput:
        mesh = cache["mesh"]
        mesh.vertex_colors = (255 - mesh.vertex_colors).astype(np.uint8)
        return HeadOutput(mesh, torch.zeros(1, 3, 8, 8) + ws.mean() / 255)

    return BatchModels(
        invert=invert,
        build_head=build_head,
        similarity=lambda a, b: float(1.0 - (a - b).abs().mean()),
        model_sha256={"generator": "0" * 64},
        prompt="a zombie head",
        method="ld",
        settings={"stub": True},
    )


def quiet(*args, **kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    ids = sample_identities(5, torch.Generator().manual_seed(11))
    for i in range(5):
        fmt = (".ply", ".obj")[i % 2]
        export_scan(ids[i : i + 1], folder / f"head{i}", ScanExport(resolution=24, formats=(fmt,)))
    (folder / "broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n\x00\x01")
    (folder / "notes.xyz").write_text("1 2 3\n")
    return folder


def copy_folder(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_folder_gives_five_heads_and_two_failures(scan_folder, tmp_path):
    out = tmp_path / "out"
    report = run_batch(collect_inputs(scan_folder), out, stub_models(), consent=True, on_event=quiet)
    assert report.counts()["done"] == 5 and report.counts()["failed"] == 2
    assert sorted(p.name for p in out.glob("*.glb")) == [f"head{i}.glb" for i in range(5)]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["input"].split("/")[-1] for r in rows] == sorted(p.name for p in scan_folder.iterdir() if p.suffix != ".json")
    failed = {Path(r["input"]).name: r["error"] for r in rows if r["status"] == "failed"}
    assert set(failed) == {"broken.ply", "notes.xyz"}
    assert "broken.ply" in failed["broken.ply"] and "unsupported file type" in failed["notes.xyz"]
    done = [r for r in rows if r["status"] == "done"]
    assert all(r["output"].endswith(".glb") and float(r["seconds"]) >= 0 and r["identity_similarity"] for r in done)
    data = json.loads((out / "report.json").read_text())
    assert data["counts"] == {"done": 5, "skipped": 0, "failed": 2, "cancelled": 0} and data["consent"] is True
    # the glb holds the stylized (colour-inverted) normalised scan
    mesh, extras = read_gltf(out / "head0.glb")
    source = load_scan(scan_folder / "head0.ply").mesh
    np.testing.assert_allclose(mesh.vertices, source.vertices, atol=1e-6)
    np.testing.assert_array_equal(mesh.vertex_colors, 255 - source.vertex_colors)


def test_provenance_in_glb_and_sidecar(scan_folder, tmp_path):
    out = tmp_path / "out"
    run_batch(collect_inputs(scan_folder), out, stub_models(), consent=True, on_event=quiet)
    _, extras = read_gltf(out / "head1.glb")
    prov = extras["head_stylizer"]
    assert all(key in prov for key in REQUIRED_FIELDS)
    assert prov["source_sha256"] == sha256_file(scan_folder / "head1.obj")
    assert prov["consent"] is True and prov["prompt"] == "a zombie head" and prov["method"] == "ld"
    assert prov["model_sha256"] == {"generator": "0" * 64}
    sidecar = json.loads((out / "head1.json").read_text())
    assert sidecar["provenance"] == prov and sidecar["status"] == "done"
    # source files are never copied into the outputs
    sources = {p.read_bytes() for p in scan_folder.iterdir()}
    assert not any(p.read_bytes() in sources for p in out.iterdir() if p.is_file())


def test_second_run_does_nothing_new(scan_folder, tmp_path):
    out = tmp_path / "out"
    run_batch(collect_inputs(scan_folder), out, stub_models(), consent=True, on_event=quiet)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("head*")}
    calls = []
    models = stub_models()
    inner = models.invert
    models.invert = lambda p, k: calls.append(p) or inner(p, k)
    report = run_batch(collect_inputs(scan_folder), out, models, consent=True, on_event=quiet)
    assert [p.name for p in calls] == ["broken.ply"]  # only the failure is retried
    assert report.counts()["skipped"] == 5 and report.counts()["failed"] == 2
    assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("head*")}
    # different settings → redone
    models = stub_models()
    models.settings = {"stub": "other"}
    assert run_batch(collect_inputs(scan_folder), out, models, consent=True, on_event=quiet).counts()["done"] == 5


def test_cancel_stops_after_the_current_item(scan_folder, tmp_path):
    from engine.stylize.cancel import CancelToken

    cancel = CancelToken(tmp_path / "stop")
    events = []

    def on_event(event, **fields):
        events.append((event, fields))
        if event == "item" and fields.get("status") == "done":
            (tmp_path / "stop").touch()

    report = run_batch(collect_inputs(scan_folder), tmp_path / "out", stub_models(), consent=True, cancel=cancel, on_event=on_event)
    assert report.cancelled and report.counts()["done"] == 1 and report.counts()["cancelled"] == 5
    assert events[-1][0] == "cancelled" and not (tmp_path / "stop").exists()
    assert len(list((tmp_path / "out").glob("*.glb"))) == 1


def test_killed_run_resumes(scan_folder, tmp_path):
    inputs = copy_folder(scan_folder, tmp_path / "in")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}"}
    proc = subprocess.Popen([sys.executable, str(TESTS / "batch_stub_worker.py"), str(inputs), str(out), "1.5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "head0.json").exists():
            time.sleep(0.05)
        assert (out / "head0.json").exists(), "first item never finished"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished_before = {p.name for p in out.glob("*.glb")}
    assert "head0.glb" in finished_before and len(finished_before) < 5
    stamp = (out / "head0.glb").stat().st_mtime_ns
    report = run_batch(collect_inputs(inputs), out, stub_models(), consent=True, on_event=quiet)
    assert report.counts()["done"] + report.counts()["skipped"] == 5 and report.counts()["skipped"] == len(finished_before)
    assert (out / "head0.glb").stat().st_mtime_ns == stamp
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind
    assert len(list(out.glob("*.glb"))) == 5


def test_a_rerun_clears_what_a_run_killed_mid_write_left(scan_folder, tmp_path):
    """A SIGKILL inside an atomic write (the report is rewritten after every item) leaves its temporary dot-file;
    test_killed_run_resumes meets it only when the kill lands mid-write, this makes it happen every time."""
    from engine.io.atomic import atomic_path

    out = tmp_path / "out"
    out.mkdir()
    for name in ("report.json", "head0.glb", "head0.json"):
        atomic_path(out / name).__enter__().write_bytes(b"half")  # killed: the context never exits
    (out / ".notes").write_text("the artist's own dot-file")
    report = run_batch(collect_inputs(scan_folder), out, stub_models(), consent=True, on_event=quiet)
    assert report.counts()["done"] == 5
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".notes"]


def test_refuses_without_consent(scan_folder, tmp_path):
    with pytest.raises(ConsentRequired, match="consent"):
        run_batch(collect_inputs(scan_folder), tmp_path / "out", stub_models(), consent=False, on_event=quiet)
    assert not (tmp_path / "out").exists()
    proc = subprocess.run([sys.executable, "-m", "engine", "batch", "--in", str(scan_folder), "--out", str(tmp_path / "cli")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "--i-have-consent" in proc.stderr
    assert not (tmp_path / "cli").exists()


PACK = ROOT / "engine" / "pack" / "embedded-v1"


@pytest.mark.slow
@pytest.mark.skipif(not (PACK / "manifest.json").is_file(), reason="embedded pack not built (engine/pack/embedded-v1/manifest.json absent)")
def test_cli_end_to_end_on_the_pack(tmp_path):
    folder = tmp_path / "in"
    ids = sample_identities(2, torch.Generator().manual_seed(21))
    for i in range(2):
        export_scan(ids[i : i + 1], folder / f"s{i}", ScanExport(resolution=48, formats=(".ply",)))
    (folder / "bad.fbx").write_bytes(b"Kaydara FBX Binary")
    _portrait_png(folder / "portrait.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "engine", "batch", "--in", str(folder), "--out", str(out), "--style", "zombie",
           "--steps", "2", "--inversion-steps", "3", "--mesh-resolution", "64", "--device", "cpu", "--i-have-consent",
           "--cache", str(tmp_path / "cache")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert all("event" in e for e in events) and events[-1]["event"] == "done"
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["done"] == 3 and report["counts"]["failed"] == 1
    fbx = [r for r in report["items"] if r["input"].endswith(".fbx")][0]
    assert "Blender" in fbx["error"]
    mesh, extras = read_gltf(out / "s0.glb")
    # game-ready by default: level 0 textured from the field (no vertex colours), life size, two lower LODs
    assert mesh.num_faces > 500 and mesh.texture is not None and mesh.vertex_colors is None
    assert extras["game_asset"]["metres_per_unit"] == pytest.approx(0.625) and len(extras["game_asset"]["levels"]) == 3
    assert 0.15 < np.ptp(mesh.vertices[:, 1]) < 0.6  # metres: a bust, not a 1-unit box
    # Identity is scored on the four held-out views, none of which the inversion fitted.
    from engine.heads.invert import SCORE_VIEW_PITCHES_DEG, SCORE_VIEW_YAWS_DEG

    sidecar = json.loads((out / "s0.json").read_text())
    held_out = [f"yaw{y:+.0f}_pitch{p:+.0f}" for y, p in zip(SCORE_VIEW_YAWS_DEG, SCORE_VIEW_PITCHES_DEG)]
    assert sidecar["identity_scoring"]["views"] == held_out and not set(held_out) & set(sidecar["inversion"]["view_errors"])
    assert isinstance(sidecar["identity_similarity"], float)
    assert isinstance(sidecar["inversion"]["inversion_identity_similarity"], float)
    assert extras["head_stylizer"]["model_sha256"]["generator"]
    assert sidecar["identity_scoring"]["backend"] == "embedded"  # the pack's heads: the pack's encoder
    # The portrait's one view was fitted: scored by dlib's face recogniser only, against the stylized head
    # seen from the portrait's camera.
    portrait = json.loads((out / "portrait.json").read_text())
    assert portrait["identity_scoring"] == {"views": ["portrait"], "fitted": True, "backend": "dlib-face", "note": ""}
    assert 0.5 < portrait["identity_similarity"] <= 1.0


def _portrait_png(path: Path) -> Path:
    """A front view of a pack head (seed 77) as a 128² RGB portrait on white."""
    from PIL import Image

    from engine.generator.camera import cameras_at
    from engine.generator.inference import ViewSettings, camera_config_for, render_images, seed_latent
    from engine.generator.loading import load_generator
    from engine.io.images import to_uint8

    G = load_generator(PACK / "generator" / "generator.safetensors").generator
    settings = ViewSettings()
    cams = cameras_at(torch.zeros(1), settings.view_pitch, camera_config_for(G, settings.camera_pivot)).c
    Image.fromarray(to_uint8(render_images(G, seed_latent(G, 77, settings), cams)[0])).save(path)
    return path


@pytest.mark.slow
def test_cli_mesh_mode_stylizes_each_scan_as_itself(tmp_path):
    """``--mode mesh``: each scan's own field is fitted and stylized (head mode); a portrait is refused with a
    reason; a rerun skips everything; the glb sits where the fitted scan does."""
    folder = tmp_path / "in"
    ids = sample_identities(1, torch.Generator().manual_seed(21))
    export_scan(ids, folder / "s0", ScanExport(resolution=40, formats=(".ply",)))
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 150, 120)).save(folder / "portrait.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "engine", "batch", "--in", str(folder), "--out", str(out), "--style", "zombie",
           "--mode", "mesh", "--field-steps", "8", "--steps", "2", "--mesh-resolution", "48", "--device", "cpu",
           "--identity-backend", "embedded",  # a world scan: the pack's encoder knows these heads (dlib: mesh mode's default)
           "--i-have-consent", "--cache", str(tmp_path / "cache"), "--engine-units", "--texture-size", "512",
           "--max-fit-triangles", "250000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["done"] == 1 and report["counts"]["failed"] == 1
    portrait = [r for r in report["items"] if r["input"].endswith(".png")][0]
    assert "mesh mode stylizes meshes" in portrait["error"]
    sidecar = json.loads((out / "s0.json").read_text())
    assert sidecar["inversion"]["mode"] == "mesh" and sidecar["inversion"]["fit"]["steps"] == 8
    assert sidecar["inversion"]["fit"]["input"]["max_triangles"] == 250_000  # --max-fit-triangles reached the fit
    assert isinstance(sidecar["identity_similarity"], float) and sidecar["identity_scoring"]["backend"] == "embedded"
    assert sidecar["settings"]["mode"] == "mesh" and sidecar["settings"]["fit"]["steps"] == 8
    mesh, extras = read_gltf(out / "s0.glb")
    assert mesh.num_faces > 200 and extras["head_stylizer"]["consent"] is True
    assert mesh.texture is not None and mesh.texture.images[0].shape == (512, 512, 3)
    assert extras["game_asset"]["life_size"] is False
    scan = load_scan(folder / "s0.ply")  # the stylized head occupies the fitted scan's place in the generator's frame
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    slo, shi = scan.mesh.vertices.min(0), scan.mesh.vertices.max(0)
    assert np.abs((lo + hi) / 2 - (slo + shi) / 2).max() < 0.1
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert again.returncode == 0
    assert json.loads((out / "report.json").read_text())["counts"]["skipped"] == 1


def test_views_folders_from_blender(tmp_path):
    """A views folder (RGBA PNGs + cameras.json, as bridge/scan_render.py writes) becomes an inversion
    target with the recorded cameras; a folder Blender marked failed.json is a failed row naming the scan."""
    from PIL import Image

    from engine.app.batch import views_target
    from engine.generator.loading import load_generator
    from engine.heads.invert import scan_cameras
    from engine.heads.scan_views import ScanViewConfig, render_scan_views

    G = load_generator("tiny").generator
    cams, names = scan_cameras(G, (0.0, 90.0), (0.0, 0.0))
    views = render_scan_views(head_mesh(sample_identities(1, torch.Generator().manual_seed(2)), 24), cams, ScanViewConfig(resolution=32))
    folder = tmp_path / "views" / "carol"
    folder.mkdir(parents=True)
    entries = []
    for i, name in enumerate(names):
        rgb = ((views["image"][i] + 1) / 2).permute(1, 2, 0).numpy()
        alpha = views["mask"][i, 0].numpy()[..., None]
        Image.fromarray((np.concatenate((rgb, alpha), -1) * 255).round().astype(np.uint8)).save(folder / f"{name}.png")
        entries.append({"name": name, "file": f"{name}.png", "camera": cams[i].tolist()})
    (folder / "cameras.json").write_text(json.dumps({"source": "carol.fbx", "source_sha256": "ab" * 32, "views": entries}))
    target = views_target(folder, 32)
    torch.testing.assert_close(target.cameras, cams)
    torch.testing.assert_close(target.masks, views["mask"], atol=1 / 255, rtol=0)
    assert target.names == names

    broken = tmp_path / "views" / "dave"
    broken.mkdir()
    (broken / "failed.json").write_text(json.dumps({"source": "dave.fbx", "error": "RuntimeError: not an FBX file"}))
    models = stub_models()
    models.invert = lambda path, kind: Inverted(torch.zeros(1, 1, 1), None, {"kind": kind})
    models.build_head = lambda ws, cams: head_mesh(sample_identities(1, torch.Generator().manual_seed(2)), 16)
    report = run_batch(collect_inputs(views_dir=tmp_path / "views"), tmp_path / "out", models, consent=True, on_event=quiet)
    rows = {Path(i.input).name: i for i in report.items}
    assert rows["carol"].status == "done" and rows["carol"].output == "carol.glb"
    assert rows["dave"].status == "failed" and "dave.fbx" in rows["dave"].error and "not an FBX" in rows["dave"].error
    prov = json.loads((tmp_path / "out" / "carol.json").read_text())["provenance"]
    assert prov["source_sha256"] == "ab" * 32  # the hash Blender took of the original scan


def test_identity_is_scored_on_held_out_views_only(scan_folder, tmp_path):
    """The batch's identity score compares the source's *held-out* views with the stylized head rendered from
    exactly those cameras (never a fitted view, whose identity the inversion optimised); the sidecar names
    the views. An input without held-out views (a portrait) gets no score, and the sidecar says why."""
    cams = torch.arange(50, dtype=torch.float32).reshape(2, 25)
    calls = {}

    def invert(path: Path, kind: str) -> Inverted:
        if path.name == "head1.obj":  # stands in for a portrait: one view, fitted
            return Inverted(torch.ones(1, 1, 2), None, {"kind": kind}, score_note="a portrait has a single view")
        held_out = torch.stack([torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), -0.5)])
        return Inverted(torch.ones(1, 1, 2), held_out, {"kind": kind}, cams, ("yaw+25", "yaw-25"))

    def build_head(ws, score_cameras):
        calls.setdefault("cameras", []).append(score_cameras)
        mesh = head_mesh(sample_identities(1, torch.Generator().manual_seed(2)), 16)
        return HeadOutput(mesh, None if score_cameras is None else torch.full((score_cameras.shape[0], 3, 8, 8), 0.25))

    def similarity(a, b):
        calls.setdefault("pairs", []).append((a.clone(), b.clone()))
        return 0.5

    models = stub_models()
    models.invert, models.build_head, models.similarity = invert, build_head, similarity
    inputs = [scan_folder / "head0.ply", scan_folder / "head1.obj"]
    report = run_batch(inputs, tmp_path / "out", models, consent=True, on_event=quiet)
    rows = {Path(i.input).name: i for i in report.items}
    assert rows["head0.ply"].identity_similarity == 0.5 and rows["head1.obj"].identity_similarity is None
    assert calls["cameras"][0] is cams and calls["cameras"][1] is None  # rendered from the held-out cameras
    (source, stylized), = calls["pairs"]
    assert source.shape == stylized.shape == (2, 3, 8, 8) and float(stylized.mean()) == 0.25
    scored = json.loads((tmp_path / "out" / "head0.json").read_text())["identity_scoring"]
    assert scored == {"views": ["yaw+25", "yaw-25"], "fitted": False, "backend": "embedded", "note": ""}
    unscored = json.loads((tmp_path / "out" / "head1.json").read_text())
    assert unscored["identity_similarity"] is None and "single view" in unscored["identity_scoring"]["note"]


def test_a_fitted_portrait_is_scored_only_by_the_face_recogniser(scan_folder, tmp_path):
    """A portrait's one view was fitted with the pack's encoder in the loss: only ``face_similarity`` (dlib,
    never optimised) may score it; the encoder's ``similarity`` must not be called for it. No face → null."""
    cam = torch.zeros(1, 25)
    used = []

    def invert(path: Path, kind: str) -> Inverted:
        portrait = torch.full((1, 3, 8, 8), 0.5 if path.name == "head0.ply" else -0.5)
        return Inverted(torch.ones(1, 1, 2), portrait, {"kind": kind}, cam, ("portrait",), score_fitted=True)

    def build_head(ws, score_cameras):
        mesh = head_mesh(sample_identities(1, torch.Generator().manual_seed(2)), 16)
        return HeadOutput(mesh, torch.full((1, 3, 8, 8), 0.25))

    def encoder_similarity(a, b):
        used.append("encoder")
        return 0.99

    def face_similarity(a, b):
        used.append("face")
        return 0.7 if float(a.mean()) > 0 else float("nan")  # the second "portrait" has no face

    models = stub_models()
    models.invert, models.build_head = invert, build_head
    models.similarity, models.face_similarity = encoder_similarity, face_similarity
    report = run_batch([scan_folder / "head0.ply", scan_folder / "head1.obj"], tmp_path / "out", models, consent=True, on_event=quiet)
    rows = {Path(i.input).name: i for i in report.items}
    assert used == ["face", "face"]
    assert rows["head0.ply"].identity_similarity == 0.7 and rows["head0.ply"].row()["identity_similarity"] == 0.7
    assert rows["head1.obj"].row()["identity_similarity"] is None
    scoring = json.loads((tmp_path / "out" / "head0.json").read_text())["identity_scoring"]
    assert scoring == {"views": ["portrait"], "fitted": True, "backend": "dlib-face", "note": ""}
    faceless = json.loads((tmp_path / "out" / "head1.json").read_text())
    assert faceless["identity_similarity"] is None and "found no face" in faceless["identity_scoring"]["note"]


def test_held_out_views_are_never_fitted(tmp_path):
    """Scans are scored from cameras the inversion never uses; a views folder holds out its views marked
    "fit": false, else its second view (≥ 3 views), else nothing."""
    from PIL import Image

    from engine.app.batch import views_fit_and_held_out
    from engine.generator.loading import load_generator
    from engine.heads.invert import (
        DEFAULT_VIEW_PITCHES_DEG,
        DEFAULT_VIEW_YAWS_DEG,
        SCORE_VIEW_PITCHES_DEG,
        SCORE_VIEW_YAWS_DEG,
        scan_cameras,
        split_views,
    )

    G = load_generator("tiny").generator
    fitted, _ = scan_cameras(G, DEFAULT_VIEW_YAWS_DEG, DEFAULT_VIEW_PITCHES_DEG)
    scored, _ = scan_cameras(G, SCORE_VIEW_YAWS_DEG, SCORE_VIEW_PITCHES_DEG)
    assert torch.cdist(scored, fitted).min() > 0.1  # no scoring camera is (near) a fitted one

    def folder(name, entries):
        path = tmp_path / name
        path.mkdir()
        views = []
        for i, extra in enumerate(entries):
            Image.fromarray(np.full((8, 8, 4), 40 * i + 20, dtype=np.uint8)).save(path / f"v{i}.png")
            views.append({"name": f"v{i}", "file": f"v{i}.png", "camera": fitted[i % 6].tolist(), **extra})
        (path / "cameras.json").write_text(json.dumps({"source": name, "views": views}))
        return path

    fit, held = views_fit_and_held_out(folder("two", [{}, {}]), 8)
    assert fit.names == ("v0", "v1") and held is None
    fit, held = views_fit_and_held_out(folder("six", [{}] * 6), 8)
    assert fit.names == ("v0", "v2", "v3", "v4", "v5") and held.names == ("v1",)
    torch.testing.assert_close(held.cameras, fitted[1:2])
    fit, held = views_fit_and_held_out(folder("marked", [{}, {}, {}, {"fit": False}, {"fit": False}]), 8)
    assert fit.names == ("v0", "v1", "v2") and held.names == ("v3", "v4")
    with pytest.raises(Exception, match="nothing would be fitted"):
        split_views(fit, [0, 1, 2])


def test_output_names_stay_unique():
    from engine.app.batch import output_stems

    assert output_stems([Path("a.ply"), Path("a.obj"), Path("b.glb")]) == ["a_ply", "a_obj", "b"]


def test_model_hashes_come_from_the_pack_manifest_or_the_files(tmp_path):
    from engine.heads.provenance import model_hashes, sha256_file

    pack = tmp_path / "pack"
    (pack / "generator").mkdir(parents=True)
    (pack / "generator" / "generator.safetensors").write_bytes(b"weights")
    manifest = {"files": {"generator/generator.safetensors": {"sha256": "f" * 64, "bytes": 7},
                          "diffusion/unet/x.bin": {"sha256": "1" * 64, "bytes": 1}}}
    (pack / "manifest.json").write_text(json.dumps(manifest))
    own = tmp_path / "mine.safetensors"
    own.write_bytes(b"my weights")
    hashes = model_hashes({"generator": str(pack / "generator" / "generator.safetensors"), "stylized_generator": str(own),
                           "diffusion": None, "preset": "tiny"}, pack)
    assert hashes["generator"] == "f" * 64  # trusted from the (verified) manifest, not re-hashed
    assert hashes["stylized_generator"] == sha256_file(own)
    assert hashes["preset"] == "preset:tiny" and "diffusion" not in hashes


def test_held_out_scorer_follows_the_identity_backend_choice():
    from engine.app.batch import held_out_similarity
    from engine.errors import ConfigError

    def face(a, b):
        return 0.5

    class Encoder:
        def embed(self, x):
            return torch.ones(x.shape[0], 4)

    assert held_out_similarity("auto", True, face, Encoder())[1] == "dlib-face"  # real heads: dlib
    assert held_out_similarity("auto", False, face, Encoder())[1] == "embedded"  # the pack's heads: the pack's encoder
    assert held_out_similarity("auto", True, None, Encoder())[1] == "embedded"  # no dlib installed: the encoder
    assert held_out_similarity("embedded", True, face, Encoder())[1] == "embedded"
    assert held_out_similarity("dlib-face", False, face, Encoder())[0] is face
    assert held_out_similarity("embedded", False, face, None) == (None, "embedded")
    with pytest.raises(ConfigError, match="needs dlib"):
        held_out_similarity("dlib-face", False, None, Encoder())


def test_lpips_and_depth_model_reach_the_stylization_the_fingerprint_and_the_provenance(tmp_path):
    """``engine batch --lpips DIR --depth-model DIR`` as ``engine head`` has them (the paper recipe's two extra
    models): the shared stylization's config gets them, the resume fingerprint keys them (and leaves a batch
    started before them as it was), provenance hashes them, and a folder that is not there is named."""
    from engine.app.batch import batch_head_job, training_extras
    from engine.app.cli import parse_command_line
    from engine.app.pipeline import resolve_models, stylize_config_for
    from engine.errors import ConfigError

    lpips, depth = tmp_path / "lpips-alex", tmp_path / "depth-anything"
    lpips.mkdir(), depth.mkdir()

    def settings(*extra):
        _, module, args = parse_command_line(["batch", "--in", str(tmp_path), "--out", str(tmp_path / "out"),
                                              "--style", "zombie", "--preset", "paper", *extra])
        return module.settings_from_args(args)

    plain = settings()
    assert not {"lpips", "depth_model"} & set(plain.fingerprinted())
    assert training_extras(resolve_models(batch_head_job(plain))) == {}
    given = settings("--lpips", str(lpips), "--depth-model", str(depth))
    fingerprint = given.fingerprinted()
    assert (fingerprint["lpips"], fingerprint["depth_model"]) == (str(lpips), str(depth))
    job = batch_head_job(given)
    sources = resolve_models(job)
    config = stylize_config_for(job, sources, "a zombie head")
    assert (config.lpips_path, config.depth_model) == (str(lpips), str(depth))
    assert training_extras(sources) == {"lpips": str(lpips), "depth_model": str(depth)}
    with pytest.raises(ConfigError, match="nowhere"):
        resolve_models(batch_head_job(settings("--lpips", str(tmp_path / "nowhere"))))


def test_recipe_anchor_and_fit_size_options_reach_the_head_job_and_the_fingerprint(tmp_path):
    """``--preset``, ``--anchor-image/-geometry`` and ``--max-fit-triangles`` as ``engine head`` has them: they
    reach the stylization's head job and the resume fingerprint, and at their defaults leave the fingerprint of
    a batch started before them as it was (so such a batch resumes instead of starting over)."""
    from engine.app.batch import batch_head_job
    from engine.app.cli import parse_command_line
    from engine.errors import ConfigError

    def settings(*extra):
        _, module, args = parse_command_line(["batch", "--in", str(tmp_path), "--out", str(tmp_path / "out"),
                                              "--style", "zombie", *extra])
        return module.settings_from_args(args)

    default = settings()
    assert not {"recipe", "anchor_image", "anchor_geometry", "max_fit_triangles"} & set(default.fingerprinted())
    job = batch_head_job(default)
    assert (job.recipe, job.anchor_image, job.anchor_geometry) == ("ours", None, None)

    chosen = settings("--mode", "mesh", "--preset", "paper", "--anchor-image", "0.5", "--anchor-geometry", "2",
                      "--max-fit-triangles", "5000")
    job = batch_head_job(chosen)
    assert (job.recipe, job.anchor_image, job.anchor_geometry) == ("paper", 0.5, 2.0)
    assert job.head_input_config().max_triangles == 5000
    fingerprint = chosen.fingerprinted()
    assert (fingerprint["recipe"], fingerprint["anchor_image"], fingerprint["anchor_geometry"],
            fingerprint["max_fit_triangles"]) == ("paper", 0.5, 2.0, 5000)

    with pytest.raises(ConfigError, match="anchor-image"):
        settings("--anchor-image", "-1")
    with pytest.raises(ConfigError, match="max"):
        settings("--max-fit-triangles", "0")
    with pytest.raises(ConfigError, match="production never trains"):
        _, module, args = parse_command_line(["batch", "--in", str(tmp_path), "--out", str(tmp_path / "o"),
                                              "--style-id", "zombie@1", "--anchor-image", "1"])
        module.settings_from_args(args)
