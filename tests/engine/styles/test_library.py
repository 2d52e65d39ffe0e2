"""Approved styles: approve a finished run as name@N, list/show/retire, and every refusal production makes
(tampered, unapproved or missing file, hand-edited record, retired, unknown id). The end-to-end roll-out —
approve → production batch → tamper → refusal — is the slow test at the bottom."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.app.cli import main as cli_main
from engine.errors import ConfigError
from engine.stylize.cancel import CancelToken
from engine.stylize.config import StylizeConfig
from engine.stylize.loop import stylize
from engine.styles import library as lib
from engine.styles.library import Approval, StyleError, StyleRetired, StyleTampered

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[3]
PACK = ROOT / "engine" / "pack" / "embedded-v1"


def quiet(*args, **kwargs) -> None:
    return None


@pytest.fixture(scope="module")
def tiny_run(tiny_diffusion, tmp_path_factory) -> Path:
    """A finished one-step stylization run of the tiny generator (seconds)."""
    out = tmp_path_factory.mktemp("run")
    config = StylizeConfig(prompt="a zombie head", generator="tiny", diffusion=str(tiny_diffusion.sd_folder),
                           out_dir=str(out), steps=1, checkpoint_every=0, preview_every=0, device="cpu")
    stylize(config, on_event=quiet)
    return out


def approve(run: Path, library: Path, name: str = "zombie", **kw) -> dict:
    return lib.approve_style(Approval(str(run), name, kw.pop("approver", "A. Lead"), library=str(library), **kw))


def test_approve_freezes_the_run_as_versioned_styles(tiny_run, tmp_path):
    library = tmp_path / "styles"
    first = approve(tiny_run, library, note="QC ticket 12")
    second = approve(tiny_run, library)
    assert (first["id"], second["id"]) == ("zombie@1", "zombie@2")
    folder = library / "zombie" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["generator.json", "generator.safetensors", "style.json"]
    record = json.loads((folder / "style.json").read_text())
    checkpoint = tiny_run / "checkpoints" / "step_000001"
    assert record["files"]["generator.safetensors"]["sha256"] == lib._sha256(checkpoint / "generator.safetensors")
    assert (folder / "generator.safetensors").read_bytes() == (checkpoint / "generator.safetensors").read_bytes()
    assert record["status"] == "approved" and record["approved_by"] == "A. Lead" and record["note"] == "QC ticket 12"
    assert record["prompt"] == "a zombie head" and record["method"] == "ld" and record["settings"]["steps"] == 1
    assert record["source_run"]["step"] == 1 and record["approved_at"].endswith("Z")
    # the models it was made with: hashes and licences (the tiny test folders have no model card: unknown)
    assert record["models"]["generator"]["sha256"] == "preset:tiny"
    assert len(record["models"]["diffusion"]["sha256"]) == 64 and record["models"]["diffusion"]["licence"] == "unknown"
    assert record["models"]["edge_controlnet"]["path"].endswith("controlnet_edge")  # the loop's default ControlNet
    # nothing was measured: said, not invented
    assert record["scores"]["missing"] == ["identity", "diversity", "style", "fairness"]
    listed = lib.list_styles(library)
    assert [(s["id"], s["status"]) for s in listed] == [("zombie@1", "approved"), ("zombie@2", "approved")]
    assert lib.verify_style("zombie@2", library).generator == library / "zombie" / "2" / "generator.safetensors"


def test_scores_come_from_the_runs_evaluation_and_missing_ones_are_named(tiny_run, tmp_path):
    generator = tiny_run / "checkpoints" / "step_000001" / "generator.safetensors"
    metrics = tmp_path / "metrics.json"  # the shape engine demo writes
    metrics.write_text(json.dumps({"stylized_generator": str(generator), "scores": {
        "identity_similarity_mean": 0.81, "reid_top1": 0.9, "reid_chance": 0.25, "diversity_ratio": 0.93,
        "style_score_after_mean": 0.7, "identity_similarity": [0.8, 0.82]}}))
    record = approve(tiny_run, tmp_path / "lib", scores=str(metrics))
    scores = record["scores"]
    assert scores["identity"] == {"identity_similarity_mean": 0.81, "reid_top1": 0.9, "reid_chance": 0.25}
    assert scores["diversity"] == 0.93 and scores["style"] == 0.7 and scores["missing"] == ["fairness"]
    assert scores["source"] == {"file": "metrics.json", "sha256": lib._sha256(metrics)}
    # scores measured on another generator are refused
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the run's generator")
    metrics.write_text(json.dumps({"stylized_generator": str(other), "scores": {"diversity_ratio": 1.0}}))
    with pytest.raises(StyleError, match="different generator"):
        approve(tiny_run, tmp_path / "lib", scores=str(metrics))


def test_production_refuses_tampered_unapproved_missing_and_edited(tiny_run, tmp_path):
    library = tmp_path / "styles"
    approve(tiny_run, library)
    folder = library / "zombie" / "1"
    weights = folder / "generator.safetensors"
    original = weights.read_bytes()
    data = bytearray(original)
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(StyleTampered, match=r"generator\.safetensors: modified since style zombie@1 was approved"):
        lib.verify_style("zombie@1", library)
    weights.write_bytes(original)
    lib.verify_style("zombie@1", library)
    (folder / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(StyleTampered, match=r"extra\.safetensors: not part of the approved style zombie@1"):
        lib.verify_style("zombie@1", library)
    (folder / "extra.safetensors").unlink()
    (folder / "generator.json").unlink()
    with pytest.raises(StyleTampered, match=r"generator\.json: missing"):
        lib.verify_style("zombie@1", library)
    approve(tiny_run, library)  # zombie@2, intact
    record_path = library / "zombie" / "2" / "style.json"
    record = json.loads(record_path.read_text())
    record["status"] = "approved"
    record["prompt"] = "a friendlier zombie head"  # an edit by hand
    record_path.write_text(json.dumps(record))
    with pytest.raises(StyleTampered, match=r"style\.json: modified after approval"):
        lib.verify_style("zombie@2", library)


def test_retired_unknown_and_malformed_ids_are_refused(tiny_run, tmp_path):
    library = tmp_path / "styles"
    approve(tiny_run, library)
    retired = lib.retire_style("zombie@1", "B. Boss", "too gory for the client", library)
    assert retired["status"] == "retired" and retired["retired_by"] == "B. Boss"
    with pytest.raises(StyleRetired, match="zombie@1 was retired .* by B. Boss \\(too gory for the client\\)"):
        lib.verify_style("zombie@1", library)
    assert lib.list_styles(library)[0]["status"] == "retired"
    with pytest.raises(StyleError, match="already retired"):
        lib.retire_style("zombie@1", "B. Boss", "", library)
    with pytest.raises(StyleError, match=r"zombie@7 is not in the library .*approved there: zombie@1"):
        lib.verify_style("zombie@7", library)
    for bad in ("zombie", "zombie@0", "Zombie@1", "../x@1", "zombie@1/../../etc"):
        with pytest.raises(StyleError, match="not of the form name@version"):
            lib.verify_style(bad, library)
    with pytest.raises(StyleError, match="style name"):
        approve(tiny_run, library, name="Zombie Deluxe")
    with pytest.raises(StyleError, match="approver"):
        approve(tiny_run, library, approver="  ")


def test_an_unfinished_run_is_not_approved(tiny_diffusion, tmp_path):
    out = tmp_path / "run"
    config = StylizeConfig(prompt="a zombie head", generator="tiny", diffusion=str(tiny_diffusion.sd_folder),
                           out_dir=str(out), steps=3, checkpoint_every=0, preview_every=0, device="cpu")
    cancel = CancelToken()
    cancel.request()  # stops before the first step, with a checkpoint at step 0
    stylize(config, cancel, on_event=quiet)
    with pytest.raises(StyleError, match="stopped at step 0 of 3"):
        approve(out, tmp_path / "lib")
    with pytest.raises(StyleError, match="not a stylization run"):
        approve(tmp_path, tmp_path / "lib")


def test_cli_approve_list_show_retire(tiny_run, tmp_path, capsys, monkeypatch):
    library = tmp_path / "styles"
    monkeypatch.setenv(lib.LIBRARY_ENV, str(library))
    assert cli_main(["style", "approve", str(tiny_run), "--name", "statue", "--approver", "A. Lead"]) == 0
    assert "approved statue@1" in capsys.readouterr().out
    assert cli_main(["style", "list", "--json"]) == 0
    assert [s["id"] for s in json.loads(capsys.readouterr().out)] == ["statue@1"]
    assert cli_main(["style", "show", "statue@1"]) == 0
    assert "statue@1: usable in production" in capsys.readouterr().out
    assert cli_main(["style", "retire", "statue@1", "--by", "B. Boss", "--reason", "client said no"]) == 0
    capsys.readouterr()
    assert cli_main(["style", "show", "statue@1"]) == 0
    assert "refused in production: style statue@1 was retired" in capsys.readouterr().out
    assert cli_main(["style", "show", "statue@9"]) == 2
    assert "statue@9 is not in the library" in capsys.readouterr().err


def test_library_location_flag_env_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv(lib.LIBRARY_ENV, raising=False)
    monkeypatch.setenv(lib.DATA_ENV, str(tmp_path / "data"))
    assert lib.library_root() == tmp_path / "data" / "styles"
    monkeypatch.setenv(lib.LIBRARY_ENV, str(tmp_path / "env"))
    assert lib.library_root() == tmp_path / "env"
    assert lib.library_root(tmp_path / "flag") == tmp_path / "flag"
    monkeypatch.delenv(lib.DATA_ENV)
    monkeypatch.delenv(lib.LIBRARY_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert lib.library_root() == tmp_path / "xdg" / "head-stylizer" / "styles"


def test_batch_settings_refuse_training_options_with_a_style():
    from engine.app.batch import BatchSettings

    assert BatchSettings(style_id="zombie@1").validate().fingerprinted()["style_id"] == "zombie@1"
    assert "style_id" not in BatchSettings(prompt="x").fingerprinted()  # old fingerprints unchanged
    with pytest.raises(ConfigError, match="mesh mode trains"):
        BatchSettings(style_id="zombie@1", mode="mesh").validate()
    with pytest.raises(ConfigError, match="never trains"):
        BatchSettings(style_id="zombie@1", steps=10).validate()
    with pytest.raises(ConfigError, match="name@version"):
        BatchSettings(style_id="zombie").validate()


# --------------------------------------------------------------------------------------------------
# The staged roll-out, end to end on the embedded pack
# --------------------------------------------------------------------------------------------------
def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(not (PACK / "manifest.json").is_file(), reason="embedded pack not built")
def test_approve_then_production_batch_then_tamper_is_refused(tmp_path):
    from engine.heads.gltf import read_gltf
    from engine.world import ScanExport, export_scan, sample_identities

    library = tmp_path / "styles"
    # proof of concept: one head, the style trained (1 step) and cached
    head = _run("head", "--style-preset", "zombie", "--steps", "1", "--no-evaluate", "--no-game-asset",
                "--mesh-resolution", "32", "--device", "cpu", "--cache", str(tmp_path / "poc-cache"), "--out", str(tmp_path / "poc"))
    assert head.returncode == 0, head.stderr[-2000:]
    # quality check passed: approve the cached run
    approved = _run("style", "--style-library", str(library), "approve", str(tmp_path / "poc-cache"), "--name", "zombie",
                    "--approver", "A. Lead")
    assert approved.returncode == 0 and "approved zombie@1" in approved.stdout, approved.stderr
    # production: a folder of scans on the approved style
    scans = tmp_path / "scans"
    ids = sample_identities(2, torch.Generator().manual_seed(5))
    for i in range(2):
        export_scan(ids[i : i + 1], scans / f"p{i}", ScanExport(resolution=24, formats=(".ply",)))
    out = tmp_path / "out"
    batch = ["batch", "--in", str(scans), "--out", str(out), "--style-id", "zombie@1", "--style-library", str(library),
             "--inversion-steps", "2", "--mesh-resolution", "32", "--vertex-colours", "--framing", "heuristic",
             "--device", "cpu", "--i-have-consent", "--cache", str(tmp_path / "prod-cache")]
    proc = _run(*batch)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["done"] == 2
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert any(e.get("status") == "approved" for e in events)
    assert not any(e.get("stage") == "stylize" and e["event"] == "progress" for e in events)  # never trained
    assert not (tmp_path / "prod-cache" / "stylized").exists()
    sidecar = json.loads((out / "p0.json").read_text())
    prov = sidecar["provenance"]
    assert prov["style_id"] == "zombie@1" and prov["prompt"] == "a zombie head"
    style_sha = json.loads((library / "zombie" / "1" / "style.json").read_text())["files"]["generator.safetensors"]["sha256"]
    assert prov["model_sha256"]["stylized_generator"] == style_sha
    mesh, _extras = read_gltf(out / "p0.glb")
    assert mesh.num_faces > 50
    # engine head on the approved style: one generated head, never trained
    head_out = tmp_path / "head"
    one = _run("head", "--style-id", "zombie@1", "--style-library", str(library), "--seed", "3", "--no-evaluate",
               "--no-game-asset", "--mesh-resolution", "32", "--device", "cpu", "--out", str(head_out),
               "--cache", str(tmp_path / "head-cache"))
    assert one.returncode == 0, one.stderr[-2000:]
    summary = json.loads((head_out / "head.json").read_text())
    assert summary["generator"] == str(library / "zombie" / "1" / "generator.safetensors")
    assert summary["prompt"] == "a zombie head" and not (tmp_path / "head-cache" / "stylized").exists()
    assert "zombie@1" in (out / "report.html").read_text()
    # tamper with the approved weights: production refuses, naming the file, and writes nothing
    weights = library / "zombie" / "1" / "generator.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10
    weights.write_bytes(bytes(data))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    refused = _run(*batch)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error:") and f"{weights}: modified since style zombie@1 was approved" in refused.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "logs"} == \
        {k: v for k, v in before.items() if k != "logs"}
    # a retired style is refused too, with who and why
    weights.write_bytes(bytes(data[:-5]) + bytes([data[-5] ^ 0x10]) + bytes(data[-4:]))
    assert _run("style", "--style-library", str(library), "retire", "zombie@1", "--by", "B. Boss",
                "--reason", "client withdrew").returncode == 0
    retired = _run(*batch)
    assert retired.returncode == 2 and "retired" in retired.stderr and "client withdrew" in retired.stderr


def test_production_refuses_a_base_generator_other_than_the_approved_ones(tiny_run, tmp_path):
    from engine.styles.production import production_style

    library = tmp_path / "styles"
    approve(tiny_run, library)
    assert production_style("zombie@1", library, "tiny", None).style_id == "zombie@1"
    with pytest.raises(StyleError, match="approved on the base generator tiny .* this run's generator is small"):
        production_style("zombie@1", library, "small", None)


def test_engine_head_refuses_a_tampered_style_before_anything_runs(tiny_run, tiny_diffusion, tmp_path):
    from engine.app.pipeline import HeadJob, run_head

    library = tmp_path / "styles"
    approve(tiny_run, library)
    (library / "zombie" / "1" / "generator.json").write_text("{}")
    job = HeadJob(out_dir=str(tmp_path / "out"), style_id="zombie@1", style_library=str(library), generator="tiny",
                  diffusion=str(tiny_diffusion.sd_folder), evaluate=False, game_asset=False, device="cpu")
    with pytest.raises(StyleTampered, match=r"generator\.json: modified since style zombie@1 was approved"):
        run_head(job, on_event=quiet)
    assert not (tmp_path / "out" / "head.json").exists()
    with pytest.raises(ConfigError, match="--style-id with --mesh"):
        HeadJob(style_id="zombie@1", mesh="x.ply").validate()
