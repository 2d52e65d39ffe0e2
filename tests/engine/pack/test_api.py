"""Pack manifests and verification, and the demo's code path on a pack made of tiny random models."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from engine.app.demo import DemoConfig, run_demo
from engine.errors import CheckpointError, ConfigError
from engine.generator.config import get_preset
from engine.generator.loading import save_generator
from engine.generator.triplane import TriPlaneGenerator
from engine.pack import (
    build_manifest,
    load_manifest,
    pack_paths,
    pack_root,
    require_pack,
    sha256_file,
    verify_pack,
    write_manifest,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def fake_pack(tmp_path_factory, tiny_diffusion) -> Path:
    """A pack with the real layout but tiny random models: exercises every path without the trained pack."""
    root = tmp_path_factory.mktemp("pack") / "embedded-v1"
    paths = pack_paths(root)
    import torch

    torch.manual_seed(0)
    save_generator(TriPlaneGenerator(get_preset("tiny")), paths.generator)
    shutil.copytree(tiny_diffusion.sd_folder, paths.diffusion)
    (paths.reports).mkdir(parents=True)
    (paths.reports / "generator.json").write_text(json.dumps({"psnr": 1.5}))
    write_manifest(root)
    return root


def test_manifest_lists_every_file_with_its_hash(fake_pack):
    manifest = load_manifest(fake_pack)
    files = manifest["files"]
    assert "generator/generator.safetensors" in files and "diffusion/unet/config.json" in files
    assert "manifest.json" not in files
    for name, entry in files.items():
        path = fake_pack / name
        assert entry["bytes"] == path.stat().st_size and entry["sha256"] == sha256_file(path)
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
    assert manifest["reports"] == {"generator": {"psnr": 1.5}}
    assert manifest["total_bytes"] == sum(e["bytes"] for e in files.values())
    assert verify_pack(fake_pack) == []
    assert require_pack(fake_pack).root == fake_pack


def test_damaged_pack_is_reported_by_file(tmp_path, fake_pack):
    root = tmp_path / "copy"
    shutil.copytree(fake_pack, root)
    weights = root / "diffusion" / "unet" / "config.json"
    weights.write_text(weights.read_text().replace("{", "{ ", 1))
    (root / "stray.bin").write_bytes(b"x")
    (root / "diffusion" / "vae" / "config.json").unlink()
    problems = verify_pack(root)
    assert any("unet/config.json" in p and "size" in p for p in problems)
    assert any("vae/config.json" in p and "missing" in p for p in problems)
    assert any("stray.bin" in p and "not listed" in p for p in problems)
    assert verify_pack(root, strict=False) == [p for p in problems if "not listed" not in p]
    with pytest.raises(CheckpointError, match="damaged"):
        require_pack(root)


def test_same_size_edit_is_caught_by_the_hash(tmp_path, fake_pack):
    root = tmp_path / "copy"
    shutil.copytree(fake_pack, root)
    target = root / "generator" / "generator.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    assert verify_pack(root) == [f"{target}: SHA-256 differs from the manifest (file changed or damaged)"]


def test_manifest_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="manifest.json: pack manifest not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 99, "name": "x", "version": "1", "files": {}}))
    with pytest.raises(CheckpointError, match="schema 99"):
        load_manifest(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        build_manifest(tmp_path / "absent")
    monkeypatch.setenv("HEAD_STYLIZER_PACK", str(tmp_path))
    assert pack_root() == tmp_path


def test_demo_code_path_on_a_tiny_pack(tmp_path, fake_pack):
    config = DemoConfig(out_dir=str(tmp_path / "demo"), steps=2, subjects=2, mesh_resolution=32, iso_level=1.0,
                        turntable_frames=3, evaluate=False, pack=str(fake_pack), device="cpu")
    events = []
    result = run_demo(config, on_event=lambda e, **f: events.append(e))
    out = tmp_path / "demo"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics)) and metrics["seeds"] == [0, 1]
    page = (out / "report.html").read_text()
    referenced = re.findall(r"(?:src|href)='([^']+)'", page)
    assert referenced and all((out / ref).is_file() for ref in referenced)
    assert "turntable.gif" in referenced and "meshes/seed_0_after.ply" in referenced
    assert metrics["meshes"]["after"]["faces"] > 100 and events[-1] == "done"


def test_demo_refuses_styles_the_pack_does_not_know():
    with pytest.raises(ConfigError, match="embedded pack was trained on"):
        DemoConfig(style="werewolf").validate()
