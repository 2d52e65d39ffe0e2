"""The model manager's models for the paper's recipe, against a loopback server (nothing leaves the machine):
LPIPS-Alex from its pinned URLs (sized, resumed, checked against the pinned SHA-256, then loaded by the engine),
Realistic Vision V5.1 and Depth Anything V2 as named Hub entries with their licences, each downloading a
folder the engine loads."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

from engine.app import models as models_module
from engine.app.cli import main as cli_main
from engine.app.models import MODEL_SPECS, PAPER_KEYS, DownloadError, UrlFile, download_model, read_manifest
from engine.errors import ConfigError
from tests.engine.app.fake_hub import FakeHub
from tests.engine.distill.test_lpips_alex import lpips_weights
from tests.engine.guidance.test_depth_estimator import build_tiny_depth_model

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def no_xet(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture()
def lpips_server(monkeypatch):
    """A server holding random LPIPS weights at the real URLs' paths, and the lpips-alex spec pinned to them."""
    alexnet, linear = lpips_weights()
    payload = {"alexnet-owt-7be5be79.pth": _saved(alexnet), "alex.pth": _saved(linear)}
    spec = MODEL_SPECS["lpips-alex"]
    from urllib.parse import urlsplit

    static = {urlsplit(f.url).path: payload[f.name] for f in spec.urls}
    pinned = tuple(dataclasses.replace(f, sha256=hashlib.sha256(payload[f.name]).hexdigest()) for f in spec.urls)
    monkeypatch.setitem(MODEL_SPECS, "lpips-alex", dataclasses.replace(spec, urls=pinned))
    with FakeHub({}, static=static) as hub:
        yield hub, payload


def test_lpips_alex_downloads_from_pinned_urls_and_the_engine_loads_it(lpips_server, tmp_path):
    from engine.distill import LpipsLoss

    hub, payload = lpips_server
    events = []
    folder = download_model("lpips-alex", tmp_path, endpoint=hub.endpoint, on_event=lambda e, **f: events.append((e, f)))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == payload
    entry = read_manifest(tmp_path)["lpips-alex"]
    assert entry["role"] == "lpips" and "BSD" in entry["licence"] and entry["revision"]
    assert [f["step"] for e, f in events if e == "progress"] == [1, 2] and events[-1][0] == "done"
    loss = LpipsLoss.from_local(folder)  # the engine reads the folder as downloaded
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert float(loss(x, -x)) > 0
    hub.requests.clear()  # a second download checks the files and fetches nothing
    download_model("lpips-alex", tmp_path, endpoint=hub.endpoint, on_event=lambda *a, **k: None)
    assert hub.requests == []


def test_lpips_alex_download_resumes_and_refuses_a_corrupt_file(lpips_server, tmp_path):
    hub, payload = lpips_server
    path = next(p for p in hub.static if p.endswith("alexnet-owt-7be5be79.pth"))
    hub.drop_after[path] = [2000] * 6  # cut off at 2 kB, also on the client's retries
    with pytest.raises(DownloadError, match="interrupted.*run the download again to resume"):
        download_model("lpips-alex", tmp_path, endpoint=hub.endpoint, on_event=lambda *a, **k: None)
    hub.drop_after.clear()
    hub.requests.clear()
    download_model("lpips-alex", tmp_path, endpoint=hub.endpoint, on_event=lambda *a, **k: None)
    ranges = [r for m, p, r in hub.requests if m == "GET" and p == path]
    assert ranges and ranges[0] and int(ranges[0][6:].rstrip("-")) > 0  # continued, not restarted
    bad = bytearray(payload["alex.pth"])
    bad[100] ^= 0xFF
    linear_path = next(p for p in hub.static if p.endswith("/alex.pth"))
    hub.static[linear_path] = bytes(bad)
    other = tmp_path / "other"
    with pytest.raises(DownloadError, match=r"alex.pth: SHA-256 .* does not match the pinned"):
        download_model("lpips-alex", other, endpoint=hub.endpoint, on_event=lambda *a, **k: None)
    assert not (other / "lpips-alex" / "alex.pth").exists() and "lpips-alex" not in read_manifest(other)
    with pytest.raises(ConfigError, match="pinned to fixed files"):
        download_model("lpips-alex", tmp_path, repo_id="someone/else", endpoint=hub.endpoint)


def test_the_real_lpips_pins_are_the_published_files():
    """The pins are the published files' SHA-256 (torchvision names its file by the hash's first 8 digits)."""
    (alexnet, linear) = MODEL_SPECS["lpips-alex"].urls
    assert alexnet.url == "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
    assert alexnet.sha256.startswith("7be5be79") and len(alexnet.sha256) == 64
    assert linear.url.startswith("https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/") and \
        linear.url.endswith("/lpips/weights/v0.1/alex.pth")
    assert linear.sha256 == "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_realistic_vision_is_a_named_diffusion_entry_that_downloads_a_folder_the_engine_loads(tiny_diffusion, tmp_path):
    from engine.guidance import Guidance, GuidanceConfig

    spec = MODEL_SPECS["realistic-vision-v5.1"]
    assert (spec.repo_id, spec.role, spec.licence) == ("SG161222/Realistic_Vision_V5.1_noVAE", "diffusion",
                                                       "CreativeML OpenRAIL-M")
    files = {k: v for k, v in _folder_bytes(tiny_diffusion.sd_folder).items() if not k.startswith("controlnet_")}
    files["unet/diffusion_pytorch_model.bin"] = b"x" * 3000  # duplicate pickles the engine never reads
    with FakeHub({spec.repo_id: files}) as hub:
        folder = download_model("realistic-vision-v5.1", tmp_path, endpoint=hub.endpoint, on_event=lambda *a, **k: None)
    assert not (folder / "unet" / "diffusion_pytorch_model.bin").exists()
    Guidance.from_folder(folder, config=GuidanceConfig(prompt="a zombie head"), device="cpu")  # a complete SD folder
    assert read_manifest(tmp_path)["realistic-vision-v5.1"]["licence"] == "CreativeML OpenRAIL-M"


def test_depth_anything_is_a_named_entry_that_downloads_a_folder_the_depth_pipeline_loads(tmp_path):
    from engine.guidance.depth_estimator import DepthEstimator

    spec = MODEL_SPECS["depth-anything-v2-base"]
    assert spec.role == "depth_model" and "NC" in spec.licence
    files = _folder_bytes(build_tiny_depth_model(tmp_path / "source"))
    with FakeHub({spec.repo_id: {**files, "README.md": b"# card"}}) as hub:
        folder = download_model("depth-anything-v2-base", tmp_path / "models", endpoint=hub.endpoint,
                                on_event=lambda *a, **k: None)
    assert sorted(_folder_bytes(folder)) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert DepthEstimator.from_folder(folder)(torch.zeros(1, 3, 28, 28)).shape == (1, 1, 28, 28)


def test_models_list_names_every_model_with_its_licence_and_paper_set(tmp_path, capsys):
    assert cli_main(["models", "list", "--out", str(tmp_path), "--json"]) == 0
    rows = {r["key"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(PAPER_KEYS) <= set(rows) and rows["realistic-vision-v5.1"]["licence"] == "CreativeML OpenRAIL-M"
    assert rows["lpips-alex"]["role"] == "lpips" and rows["depth-anything-v2-base"]["role"] == "depth_model"
    assert all(r["state"] == "not downloaded" for r in rows.values())


def test_download_groups_fetch_the_models_they_name(monkeypatch, tmp_path):
    fetched = []
    monkeypatch.setattr(models_module, "download_model", lambda key, *a, **k: fetched.append(key))
    from engine.app.commands import models as command

    monkeypatch.setattr(command, "download_model", lambda key, *a, **k: fetched.append(key))
    assert cli_main(["models", "download", "paper", "--out", str(tmp_path)]) == 0
    assert fetched == list(PAPER_KEYS)
    fetched.clear()
    assert cli_main(["models", "download", "all", "--out", str(tmp_path)]) == 0
    assert fetched == ["sd15", "controlnet-canny", "controlnet-depth"]  # unchanged: what every real run needs
    assert isinstance(MODEL_SPECS["lpips-alex"].urls[0], UrlFile)
