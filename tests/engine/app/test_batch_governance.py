"""Batch governance: the consent register (--consent-csv), model licences and the commercial-use flag in
provenance and glTF asset.copyright (Khronos validator: 0 errors), --purge-intermediates, and report.html
opened in a real headless browser (Debian's chromium): rows, thumbnails, sorting, filtering, a screenshot."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.app.batch import BatchModels, HeadOutput, Inverted, collect_inputs, run_batch
from engine.app.batch_purge import purge_item
from engine.app.consent import read_consent_csv
from engine.errors import InputError
from engine.heads.gltf import glb_bytes, textured_lod_glb_bytes, with_asset_copyright
from engine.heads.licences import chain_commercial_use, commercial_use, model_licence, model_licences
from engine.heads.scans import load_scan
from engine.world import ScanExport, export_scan, head_mesh, sample_identities

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[3]
PACK = ROOT / "engine" / "pack" / "embedded-v1"
VALIDATOR = ROOT / "tools" / "gltf-validator"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def quiet(*args, **kwargs) -> None:
    return None


def _portrait(colour: np.ndarray, invert: bool) -> torch.Tensor:
    """A (1, 3, 48, 48) stand-in render in [-1, 1]: a head-like disc in the scan's colour on white."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    disc = ((xx / 0.6) ** 2 + ((yy + 0.1) / 0.8) ** 2 < 1).float()
    c = torch.tensor(colour, dtype=torch.float32) / 127.5 - 1
    if invert:
        c = -c
    shade = 1 - 0.35 * (xx + 1) / 2
    return (disc * c[:, None, None] * shade + (1 - disc))[None]


def stub_models(licences=None) -> BatchModels:
    """Instant stand-ins: the stylized head is the normalised scan with inverted colours; views folders get a
    procedural head. Score images are discs in the head's colour, so thumbnails show something."""
    cache: dict = {}

    def invert(path: Path, kind: str) -> Inverted:
        mesh = head_mesh(sample_identities(1, torch.Generator().manual_seed(3)), 24) if kind == "views" else load_scan(path).mesh
        cache["mesh"] = mesh
        colour = mesh.vertex_colors.mean(axis=0)
        w = torch.from_numpy(colour[None, None].astype(np.float32))
        return Inverted(w, _portrait(colour, False), {"kind": kind})

    def build_head(ws, score_cameras=None) -> HeadOutput:
        mesh = cache["mesh"]
        mesh.vertex_colors = (255 - mesh.vertex_colors).astype(np.uint8)
        return HeadOutput(mesh, _portrait(ws[0, 0].numpy(), True))

    return BatchModels(invert=invert, build_head=build_head,
                       similarity=lambda a, b: float(1.0 - (a - b).abs().mean() / 2),
                       model_sha256={"generator": "0" * 64}, prompt="a zombie head", method="ld",
                       settings={"stub": True}, licences=licences or [])


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    ids = sample_identities(5, torch.Generator().manual_seed(11))
    for i in range(5):
        export_scan(ids[i : i + 1], folder / f"head{i}", ScanExport(resolution=24, formats=(".ply",)))
    (folder / "broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nend_header\n\x00")
    return folder


def glb_json(path: Path) -> dict:
    data = path.read_bytes()
    length = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[20 : 20 + length])


# --------------------------------------------------------------------------------------------------
# Consent register
# --------------------------------------------------------------------------------------------------
def _csv(path: Path, rows: list[tuple[str, str]], extra_header: str = "") -> Path:
    path.write_text("source,consent_id" + extra_header + "\n" + "".join(f"{s},{c}\n" for s, c in rows))
    return path


def test_consent_ids_go_into_provenance_and_an_item_without_one_is_not_made(scans, tmp_path):
    register = _csv(tmp_path / "consent.csv", [(f"head{i}.ply", f"C-{i:03d}") for i in range(4)] + [("broken.ply", "C-900")])
    out = tmp_path / "out"
    report = run_batch(collect_inputs(scans), out, stub_models(), consent=True, on_event=quiet,
                       consent_records=read_consent_csv(register))
    by_name = {Path(i.input).name: i for i in report.items}
    assert by_name["head4.ply"].status == "failed" and "no consent record for head4.ply in consent.csv" in by_name["head4.ply"].error
    assert not (out / "head4.glb").exists() and not (out / "head4.json").exists()
    record = json.loads((out / "head2.json").read_text())["provenance"]["consent_record"]
    assert record["id"] == "C-002" and record["source"].startswith("consent.csv (sha256 ")
    # a changed consent id redoes that item only; rows added for other people redo nothing
    _csv(register, [(f"head{i}.ply", f"C-{i:03d}" if i != 1 else "C-101") for i in range(4)] + [("newcomer.ply", "C-777")])
    again = run_batch(collect_inputs(scans), out, stub_models(), consent=True, on_event=quiet,
                      consent_records=read_consent_csv(register))
    statuses = {Path(i.input).name: i.status for i in again.items}
    assert statuses == {"head0.ply": "skipped", "head1.ply": "done", "head2.ply": "skipped", "head3.ply": "skipped",
                        "head4.ply": "failed", "broken.ply": "failed"}
    assert json.loads((out / "head1.json").read_text())["provenance"]["consent_record"]["id"] == "C-101"


def test_global_flag_is_the_record_without_a_register(scans, tmp_path):
    run_batch(collect_inputs(scans), tmp_path / "out", stub_models(), consent=True, on_event=quiet)
    record = json.loads((tmp_path / "out" / "head0.json").read_text())["provenance"]["consent_record"]
    assert record == {"id": None, "source": "--i-have-consent"}


@pytest.mark.parametrize("text, message", [
    ("name,consent_id\na.ply,C1\n", "no column 'source'"),
    ("source,consent_id\na.ply,\n", "line 2: empty 'consent_id' for 'a.ply'"),
    ("source,consent_id\na.ply,C1\nb.ply,C2\na.ply,C3\n", "line 4: 'a.ply' is listed twice \\(first on line 2\\)"),
    ("source,consent_id\n", "has no rows"),
    ("source,consent_id\n,C1\n", "line 2: empty 'source'"),
])
def test_malformed_consent_csv_is_refused_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "register.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=f"register.csv: .*{message}"):
        read_consent_csv(path)
    path.write_bytes(b"source,consent_id\n\xff\xfe,C1\n")
    with pytest.raises(InputError, match="register.csv: consent CSV is not UTF-8"):
        read_consent_csv(path)


def test_cli_takes_the_register_instead_of_the_global_flag(tmp_path):
    register = _csv(tmp_path / "c.csv", [("a.ply", "C1")])
    base = [sys.executable, "-m", "engine", "batch", "--in", str(tmp_path), "--out", str(tmp_path / "o")]
    bad = subprocess.run(base + ["--consent-csv", str(tmp_path / "missing.csv")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "missing.csv: consent CSV not found" in bad.stderr
    mesh = subprocess.run(base + ["--consent-csv", str(register), "--style-id", "zombie@1", "--mode", "mesh"],
                          capture_output=True, text=True, cwd=ROOT)
    assert mesh.returncode == 2 and "mesh mode trains" in mesh.stderr


# --------------------------------------------------------------------------------------------------
# Licences, the commercial-use flag, asset.copyright
# --------------------------------------------------------------------------------------------------
def test_licences_come_from_pack_manifest_model_cards_models_json_and_panohead(tmp_path):
    pack = model_licence("generator", str(PACK / "generator" / "generator.safetensors"), PACK)
    assert (pack.licence, pack.commercial_use) == ("GPL-3.0-or-later", "allowed") and "manifest.json" in pack.source
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "README.md").write_text("---\nlicense: creativeml-openrail-m\ntags:\n- stable-diffusion\n---\n# SD\nlicense: mit\n")
    card = model_licence("diffusion", str(sd))
    assert (card.licence, card.commercial_use, card.source) == ("creativeml-openrail-m", "allowed", "sd/README.md front matter")
    nc = tmp_path / "nc-model"
    nc.mkdir()
    (nc / "README.md").write_text("---\nlicense: other\nlicense_name: acme-noncommercial-1.0\n---\n")
    assert model_licence("edge_controlnet", str(nc)).commercial_use == "restricted"
    models = tmp_path / "models"
    (models / "controlnet-depth").mkdir(parents=True)
    (models / "models.json").write_text(json.dumps({"controlnet-depth": {
        "licence": "OpenRAIL", "attribution": "ControlNet (depth) by Lvmin Zhang and Maneesh Agrawala", "folder": "controlnet-depth"}}))
    manager = model_licence("depth_controlnet", str(models / "controlnet-depth"))
    assert manager.licence == "OpenRAIL" and manager.attribution.startswith("ControlNet (depth)")
    pkl = tmp_path / "easy-khair-180-gpc0.8-trans10-025000.pkl"
    pkl.write_bytes(b"\x80\x04.")
    panohead = model_licence("generator", str(pkl))
    assert panohead.commercial_use == "restricted" and "PanoHead" in panohead.attribution
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(b"x")
    assert model_licence("generator", str(bare)).licence == "unknown"
    assert [commercial_use(x) for x in ("cc-by-nc-4.0", "CC-BY-NC-SA-4.0", "MIT", "apache-2.0", "", "weird")] == \
        ["restricted", "restricted", "allowed", "allowed", "unknown", "unknown"]


def test_restricted_chain_is_flagged_in_glb_copyright_sidecar_and_page(scans, tmp_path):
    nc = tmp_path / "nc-diffusion"
    nc.mkdir()
    (nc / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n")
    licences = model_licences({"generator": str(PACK / "generator" / "generator.safetensors"), "diffusion": str(nc)}, PACK)
    out = tmp_path / "out"
    run_batch(collect_inputs(scans), out, stub_models(licences), consent=True, on_event=quiet)
    asset = glb_json(out / "head0.glb")["asset"]
    assert "NOT FOR COMMERCIAL USE: diffusion" in asset["copyright"]
    assert "Head Stylizer embedded model pack" in asset["copyright"] and "(cc-by-nc-4.0)" in asset["copyright"]
    prov = json.loads((out / "head0.json").read_text())["provenance"]
    assert prov["commercial_use"] == {"status": "restricted", "restricted_by": ["diffusion"], "unknown": []}
    assert prov["attribution"] == asset["copyright"] and asset["extras"]["head_stylizer"]["licences"] == licences
    assert "restricted" in (out / "report.html").read_text()
    allowed = chain_commercial_use(model_licences({"generator": str(PACK / "generator" / "generator.safetensors")}, PACK))
    assert allowed["status"] == "allowed"


@pytest.mark.skipif(shutil.which("node") is None or not (VALIDATOR / "node_modules" / "gltf-validator").is_dir(),
                    reason="glTF validator not installed (scripts/setup.sh runs npm ci in tools/gltf-validator)")
def test_copyright_glbs_pass_the_khronos_validator(tmp_path):
    from PIL import Image
    import io

    mesh = head_mesh(sample_identities(1, torch.Generator().manual_seed(0)), 24)
    notice = "Made with head-stylizer 0.1.0. Models: PanoHead … (CC-BY-4.0). NOT FOR COMMERCIAL USE: generator."
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 50)).save(png, format="PNG")
    uv = np.clip(mesh.vertices[:, :2] + 0.5, 0, 1).astype(np.float32)
    files = {"plain.glb": glb_bytes(mesh, {"head_stylizer": {"x": 1}}),
             "lods.glb": textured_lod_glb_bytes([(mesh, uv, png.getvalue())] * 2, [0.5, 0.2], {"a": 1})}
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(with_asset_copyright(data, notice))
        assert glb_json(path)["asset"]["copyright"] == notice
        proc = subprocess.run(["node", str(VALIDATOR / "validate.js"), str(path)], capture_output=True, text=True, timeout=120)
        report = json.loads(proc.stdout[proc.stdout.index("{"):])
        assert report["issues"]["numErrors"] == 0, (name, report["issues"])
        assert with_asset_copyright(data, notice)[20 + struct.unpack_from("<I", path.read_bytes(), 12)[0]:] == \
            data[20 + struct.unpack_from("<I", data, 12)[0]:]  # the BIN chunk is untouched


# --------------------------------------------------------------------------------------------------
# --purge-intermediates
# --------------------------------------------------------------------------------------------------
def _views_folder(folder: Path, name: str) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    views = []
    for i in range(3):
        Image.new("RGBA", (16, 16), (120, 90, 80, 255)).save(folder / f"view{i}.png")
        views.append({"name": f"v{i}", "file": f"view{i}.png", "camera": [0.0] * 25})
    (folder / "cameras.json").write_text(json.dumps({"source": f"{name}.fbx", "source_sha256": "ab" * 32, "views": views}))
    return folder


def test_purge_deletes_a_finished_items_renders_and_resume_still_skips_it(tmp_path):
    views = tmp_path / "views"
    _views_folder(views / "alice", "alice")
    _views_folder(views / "bob", "bob")
    out = tmp_path / "out"
    report = run_batch(collect_inputs(views_dir=views), out, stub_models(), consent=True, on_event=quiet,
                       purge_intermediates=True)
    assert report.counts()["done"] == 2
    for name in ("alice", "bob"):
        assert sorted(p.name for p in (views / name).iterdir()) == ["cameras.json"]
        manifest = json.loads((views / name / "cameras.json").read_text())
        assert manifest["purged"]["files"] == ["view0.png", "view1.png", "view2.png"]
        assert (out / f"{name}.glb").is_file()
    again = run_batch(collect_inputs(views_dir=views), out, stub_models(), consent=True, on_event=quiet,
                      purge_intermediates=True)
    assert again.counts()["skipped"] == 2
    # without the flag nothing is deleted
    _views_folder(tmp_path / "keep" / "carol", "carol")
    run_batch(collect_inputs(views_dir=tmp_path / "keep"), tmp_path / "out2", stub_models(), consent=True, on_event=quiet)
    assert len(list((tmp_path / "keep" / "carol").glob("*.png"))) == 3
    # a consent register may name the scan Blender rendered (cameras.json "source")
    register = _csv(tmp_path / "c.csv", [("carol.fbx", "C-55")])
    run_batch(collect_inputs(views_dir=tmp_path / "keep"), tmp_path / "out3", stub_models(), consent=True,
              on_event=quiet, consent_records=read_consent_csv(register))
    assert json.loads((tmp_path / "out3" / "carol.json").read_text())["provenance"]["consent_record"]["id"] == "C-55"


def test_mesh_mode_purge_removes_only_the_items_cache_folders(tmp_path):
    cache = tmp_path / "cache"
    field = cache / "fields" / "k1" / "head.safetensors"
    run = cache / "stylized" / "k2" / "checkpoints" / "step_000002" / "generator.safetensors"
    shared = cache / "stylized" / "k3" / "checkpoints" / "step_000002" / "generator.safetensors"
    for path in (field, run, shared):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"w")
    user = tmp_path / "mine" / "head.safetensors"
    user.parent.mkdir()
    user.write_bytes(b"w")
    removed = purge_item(tmp_path / "scan.ply", "scan", {"mode": "mesh", "field": str(field), "stylized_generator": str(run)})
    assert sorted(removed) == sorted([str(cache / "fields" / "k1"), str(cache / "stylized" / "k2")])
    assert not field.exists() and not run.exists() and shared.exists()
    assert purge_item(tmp_path / "scan.ply", "scan", {"mode": "mesh", "field": str(user), "stylized_generator": str(user)}) == []
    assert user.exists()
    assert purge_item(tmp_path / "scan.ply", "scan", {"mode": "generator", "stylized_generator": str(shared)}) == []


# --------------------------------------------------------------------------------------------------
# report.html in a real browser
# --------------------------------------------------------------------------------------------------
def _dom(page: Path, fragment: str = "") -> str:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           page.as_uri() + fragment], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _rows(dom: str) -> list[dict]:
    """(source, status, identity, hidden) of every body row, in page order."""
    out = []
    for tr in re.findall(r"<tr data-status=.*?</tr>", dom, flags=re.S):
        cell = lambda col: re.search(rf'data-col="{col}" data-v="([^"]*)"', tr).group(1)  # noqa: E731
        out.append({"source": cell("source"), "status": cell("status"), "identity": cell("identity"),
                    "consent": cell("consent"), "hidden": bool(re.match(r"<tr[^>]* hidden", tr)),
                    "images": re.findall(r'<img src="(data:image/jpeg;base64,[^"]+)"', tr)})
    return out


@pytest.fixture(scope="module")
def report_page(scans, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("page")
    folder = tmp / "in"
    shutil.copytree(scans, folder)
    hostile = "<img src=x onerror=alert(1)>.ply"
    shutil.copy(folder / "head0.ply", folder / hostile)
    register = _csv(tmp / "consent.csv", [(f"head{i}.ply", f"C-{i:03d}") for i in range(5)] + [(hostile, "C-666")])
    out = tmp / "out"
    nc = tmp / "nc"
    nc.mkdir()
    (nc / "README.md").write_text("---\nlicense: cc-by-nc-4.0\n---\n")
    licences = model_licences({"generator": str(PACK / "generator" / "generator.safetensors"), "diffusion": str(nc)}, PACK)
    run_batch(collect_inputs(folder), out, stub_models(licences), consent=True, on_event=quiet,
              consent_records=read_consent_csv(register))
    return out / "report.html", folder


def test_report_is_self_contained_and_names_sources_only(report_page):
    page, folder = report_page
    text = page.read_text()
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    for attr, value in re.findall(r"""(src|href)=['"]([^'"]*)['"]""", text):  # no external asset
        assert value.startswith("data:image/") if attr == "src" else (":" not in value and value.endswith(".glb"))
    assert "http://" not in text and "https://" not in text
    assert str(folder) not in text  # names only, never the source's path
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;.ply" in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_sorts_and_filters_in_headless_chromium(report_page, tmp_path):
    page, _folder = report_page
    dom = _dom(page)
    assert 'data-ready="1"' in dom  # the inline script ran
    rows = _rows(dom)
    assert len(rows) == 7 and [r["source"] for r in rows][:2] == ["&lt;img src=x onerror=alert(1)&gt;.ply", "broken.ply"]
    done = [r for r in rows if r["status"] == "done"]
    assert len(done) == 6 and all(len(r["images"]) == 2 for r in done)  # before and after thumbnails
    assert {r["consent"] for r in done} == {"C-000", "C-001", "C-002", "C-003", "C-004", "C-666"}
    assert len(re.findall(r"<img src=", dom)) == 12 and '<img src="x"' not in dom  # the hostile name stayed text
    assert "7 of 7 items shown" in dom and "restricted" in dom
    # sort by identity, highest first (the failed row, without a score, last)
    ranked = _rows(_dom(page, "#sort=identity&dir=desc"))
    scores = [float(r["identity"]) for r in ranked if r["identity"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 6 and ranked[-1]["status"] == "failed"
    assert [float(r["identity"]) for r in _rows(_dom(page, "#sort=identity&dir=asc")) if r["identity"]] == sorted(scores)
    # filters: by status, by text (a consent id)
    failed = _rows(_dom(page, "#status=failed"))
    assert [(r["source"], r["hidden"]) for r in failed if not r["hidden"]] == [("broken.ply", False)]
    found = _rows(_dom(page, "#q=C-003"))
    assert [r["source"] for r in found if not r["hidden"]] == ["head3.ply"]
    # what a person sees
    shot = tmp_path / "report.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1200,1600", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.stat().st_size > 20_000
    from PIL import Image

    picture = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert picture.shape[:2] == (1600, 1200) and picture.std() > 10  # not a blank page
