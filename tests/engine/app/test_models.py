"""The model manager against a loopback hub: a download, a resumed interrupted download, a corrupt file
rejected, the recorded commit pinned, and the command line's JSON progress."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.app.models import MANIFEST, DownloadError, download_model, read_manifest
from tests.engine.app.fake_hub import FakeHub

ROOT = Path(__file__).resolve().parents[3]
REPO = "lllyasviel/sd-controlnet-canny"


def files() -> dict[str, bytes]:
    rng = __import__("random").Random(0)
    return {
        "config.json": b'{"_class_name": "ControlNetModel"}',
        "diffusion_pytorch_model.safetensors": bytes(rng.getrandbits(8) for _ in range(300_000)),
        "diffusion_pytorch_model.bin": b"x" * 5000,  # the duplicate .bin the engine does not need
        "README.md": b"# tiny",
    }


@pytest.fixture(autouse=True)
def no_xet(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def test_download_fetches_only_what_the_engine_reads_verifies_and_pins(tmp_path):
    events = []
    with FakeHub({REPO: files()}) as hub:
        folder = download_model("controlnet-canny", tmp_path, endpoint=hub.endpoint,
                                on_event=lambda e, **f: events.append((e, f)))
        commit = hub.commits[REPO]
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == \
            ["config.json", "diffusion_pytorch_model.safetensors"]
        assert (folder / "diffusion_pytorch_model.safetensors").read_bytes() == files()["diffusion_pytorch_model.safetensors"]
        entry = read_manifest(tmp_path)["controlnet-canny"]
        assert entry["revision"] == commit and entry["role"] == "edge_controlnet" and entry["licence"]
        progress = [f for e, f in events if e == "progress"]
        assert [p["step"] for p in progress] == [1, 2] and progress[-1]["fraction"] == pytest.approx(1.0)
        # a second download uses the recorded commit and fetches nothing again
        hub.requests.clear()
        download_model("controlnet-canny", tmp_path, endpoint=hub.endpoint, on_event=lambda *a, **k: None)
        assert not any("/revision/" in path for _, path, _ in hub.requests)
        assert not any("/resolve/" in path and method == "GET" for method, path, _ in hub.requests)


def test_an_interrupted_download_resumes_with_a_byte_range(tmp_path):
    with FakeHub({REPO: files()}) as hub:
        # the connection drops at 100 kB, and again on the client's own immediate retry: the first run fails
        hub.drop_after["diffusion_pytorch_model.safetensors"] = [100_000, 50_000, 50_000, 50_000, 50_000, 50_000]
        with pytest.raises(DownloadError, match="interrupted.*run the download again to resume"):
            download_model("controlnet-canny", tmp_path, endpoint=hub.endpoint, on_event=lambda *a, **k: None)
        assert not (tmp_path / "controlnet-canny" / "diffusion_pytorch_model.safetensors").exists()
        hub.drop_after.clear()
        hub.requests.clear()
        download_model("controlnet-canny", tmp_path, endpoint=hub.endpoint, on_event=lambda *a, **k: None)
        gets = [r for m, p, r in hub.requests if m == "GET" and p.endswith(".safetensors")]
        assert gets and gets[0] and gets[0].startswith("bytes=") and int(gets[0][6:].rstrip("-")) > 0, gets
        assert (tmp_path / "controlnet-canny" / "diffusion_pytorch_model.safetensors").read_bytes() == \
            files()["diffusion_pytorch_model.safetensors"]


def test_a_corrupt_file_is_rejected_removed_and_named(tmp_path):
    with FakeHub({REPO: files()}) as hub:
        bad = bytearray(files()["diffusion_pytorch_model.safetensors"])
        bad[1234] ^= 0xFF
        hub.corrupt["diffusion_pytorch_model.safetensors"] = bytes(bad)
        with pytest.raises(DownloadError, match=r"diffusion_pytorch_model\.safetensors: SHA-256 .* does not match"):
            download_model("controlnet-canny", tmp_path, endpoint=hub.endpoint, on_event=lambda *a, **k: None)
        assert not (tmp_path / "controlnet-canny" / "diffusion_pytorch_model.safetensors").exists()
        assert "controlnet-canny" not in read_manifest(tmp_path)


def test_unreachable_hub_and_unknown_model_are_clear_errors(tmp_path):
    with pytest.raises(DownloadError, match="cannot"):
        download_model("controlnet-depth", tmp_path, endpoint="http://127.0.0.1:9", on_event=lambda *a, **k: None)
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown model"):
        download_model("sdxl", tmp_path)


def test_command_line_download_prints_json_progress_and_list_shows_it(tmp_path):
    with FakeHub({REPO: files()}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1"}
        done = subprocess.run([sys.executable, "-m", "engine", "models", "download", "controlnet-canny", "--out",
                               str(tmp_path / "models"), "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        events = [json.loads(line)["event"] for line in done.stdout.splitlines()]
        assert events == ["stage", "progress", "progress", "done"]
        listed = subprocess.run([sys.executable, "-m", "engine", "models", "list", "--out", str(tmp_path / "models"),
                                 "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        rows = {r["key"]: r for r in map(json.loads, listed.stdout.splitlines())}
        assert rows["controlnet-canny"]["state"].startswith(f"{REPO}@{hub.commits[REPO][:12]}")
        assert rows["sd15"]["state"] == "not downloaded"
    assert (tmp_path / "models" / MANIFEST).is_file()
