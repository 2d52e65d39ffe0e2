"""Install Engine's plain-Python side: commands, an offline install from a wheel folder, cancel, remove."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from bridge import engine_install as ei


def _options(tmp_path: Path, **changes) -> ei.InstallOptions:
    req = tmp_path / "requirements.txt"
    if not req.exists():
        req.write_text("# pinned\nhs-probe==1.0  # a tiny package\n")
    fields = dict(env_dir=str(tmp_path / "env"), base_python=sys.executable, requirements=str(req))
    fields.update(changes)
    return ei.InstallOptions(**fields)


def _probe_wheel(folder: Path, version: str = "1.0") -> Path:
    """A minimal pure-Python wheel ``hs_probe`` (what pip needs: the module, METADATA, WHEEL, RECORD)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"hs_probe-{version}"
    path = folder / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("hs_probe.py", f"VERSION = {version!r}\n")
        wheel.writestr(f"{name}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: hs-probe\nVersion: {version}\n")
        wheel.writestr(f"{name}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{name}.dist-info/RECORD", "")
    return path


def test_commands_offline_online_and_repair(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    offline = dict(ei.install_commands(_options(tmp_path, wheel_dir=str(wheels))))
    assert offline["environment"][1:] == ["-m", "venv", str(tmp_path / "env")]
    pip = offline["packages"]
    assert pip[pip.index("--find-links") + 1] == str(wheels.resolve()) and "--no-index" in pip
    assert pip[-2:] == ["-r", str((tmp_path / "requirements.txt").resolve())]
    cpu = dict(ei.install_commands(_options(tmp_path)))["packages"]
    assert cpu[cpu.index("--index-url") + 1] == ei.PYPI
    assert cpu[cpu.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    cuda = dict(ei.install_commands(_options(tmp_path, torch_variant="cuda", index_url="https://mirror/simple")))["packages"]
    assert cuda[cuda.index("--index-url") + 1] == "https://mirror/simple" and "whl/cu" in cuda[cuda.index("--extra-index-url") + 1]
    apple = dict(ei.install_commands(_options(tmp_path, torch_variant="apple")))["packages"]
    assert "--extra-index-url" not in apple
    assert "--clear" in dict(ei.install_commands(_options(tmp_path, repair=True)))["environment"]


def test_bad_options_are_refused_before_anything_is_made(tmp_path):
    with pytest.raises(ei.InstallError, match="torch variant"):
        _options(tmp_path, torch_variant="rocm").validate()
    with pytest.raises(ei.InstallError, match="wheel folder does not exist"):
        _options(tmp_path, wheel_dir=str(tmp_path / "nope")).validate()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep")
    with pytest.raises(ei.InstallError, match="not made by Install Engine"):
        _options(tmp_path, env_dir=str(foreign)).validate()
    with pytest.raises(ei.InstallError, match="not made by Install Engine"):
        ei.remove_environment(foreign)
    assert (foreign / "thesis.tex").read_text() == "keep"


def test_requirement_names_read_the_pins():
    names = ei.requirement_names(Path(__file__).resolve().parents[2] / "requirements.txt")
    assert {"torch", "diffusers", "xatlas", "fast-simplification", "huggingface-hub"} <= set(names)


def test_offline_install_makes_the_environment_and_the_check_names_what_is_missing(tmp_path):
    """A real venv + pip install from a wheel folder: the package lands in the new environment, progress
    advances, the log records pip; without torch the check fails with a clear message and the folder is marked
    ours (so Repair and Remove work on it)."""
    wheels = tmp_path / "wheels"
    _probe_wheel(wheels)
    install = ei.EngineInstall(_options(tmp_path, wheel_dir=str(wheels))).start()
    seen = set()
    while not install.state.done:
        seen.add(round(install.state.fraction, 2))
        time.sleep(0.05)
    state = install.state
    python = ei.environment_python(tmp_path / "env")
    assert python.is_file()
    done = subprocess.run([str(python), "-c", "import hs_probe; print(hs_probe.VERSION)"], capture_output=True, text=True)
    assert done.stdout.strip() == "1.0"
    assert not state.ok and "torch" in state.message  # the engine's check: no torch in a probe-only environment
    assert max(seen) >= 0.05 and json.loads((tmp_path / "env" / ei.MARKER).read_text())["status"] == "installing"
    assert not ei.is_installed(tmp_path / "env")
    log = (tmp_path / ei.LOG_NAME).read_text()
    assert "--no-index" in log and "hs-probe" in log.lower().replace("_", "-")
    ei.remove_environment(tmp_path / "env")
    assert not (tmp_path / "env").exists()


def test_a_failing_pip_step_says_which_step_and_where_the_log_is(tmp_path):
    wheels = tmp_path / "wheels"
    _probe_wheel(wheels, "0.9")  # the pin asks for 1.0
    state = ei.EngineInstall(_options(tmp_path, wheel_dir=str(wheels))).start().wait(300)
    assert state.done and not state.ok
    assert "packages step failed" in state.message and ei.LOG_NAME in state.message


def test_cancel_stops_the_install(tmp_path):
    wheels = tmp_path / "wheels"
    _probe_wheel(wheels)
    install = ei.EngineInstall(_options(tmp_path, wheel_dir=str(wheels))).start()
    time.sleep(0.3)  # inside "python -m venv" (it takes seconds)
    install.cancel()
    state = install.wait(120)
    assert state.done and not state.ok and state.cancelled and "cancelled" in state.message


def test_check_reports_torch_and_device_of_this_interpreter():
    info = ei.check_environment(sys.executable)
    import torch

    assert info["torch"] == torch.__version__ and info["device"] in ("cpu", "cuda", "mps")
    assert ei.describe(info).startswith(f"torch {torch.__version__}")
    assert ei.describe({"torch": "2.13.0", "device": "cuda", "gpu": "NVIDIA H200", "gpu_memory_gb": 139.8}) == \
        "torch 2.13.0, CUDA: NVIDIA H200 (139.8 GB)"


@pytest.mark.skipif(not __import__("tests.blender.runner", fromlist=["HAVE_BPY"]).HAVE_BPY, reason="bpy module not installed")
def test_model_manager_in_blender_downloads_from_the_loopback_hub_and_fills_the_preference(tmp_path):
    from tests.blender.runner import run_bpy
    from tests.engine.app.fake_hub import FakeHub

    repo = "lllyasviel/sd-controlnet-canny"
    files = {"config.json": b'{"_class_name": "ControlNetModel"}', "diffusion_pytorch_model.safetensors": b"w" * 40_000}
    sd = {"model_index.json": b"{}", "scheduler/scheduler_config.json": b"{}", "tokenizer/vocab.json": b"{}",
          "text_encoder/config.json": b"{}", "text_encoder/model.safetensors": b"t" * 3000, "unet/config.json": b"{}",
          "unet/diffusion_pytorch_model.safetensors": b"u" * 5000, "unet/diffusion_pytorch_model.bin": b"b" * 5000,
          "vae/config.json": b"{}", "vae/diffusion_pytorch_model.safetensors": b"v" * 2000}
    repos = {repo: files, "lllyasviel/sd-controlnet-depth": files, "stable-diffusion-v1-5/stable-diffusion-v1-5": sd}
    with FakeHub(repos) as hub:
        r = run_bpy(f"""
import sys
from bl_ext.hs_tests.head_stylizer.operators.models import model_status
p = prefs()
p.python_path = sys.executable
p.models_dir = {str(tmp_path / 'models')!r}
before = model_status(p, "controlnet-canny")
assert bpy.ops.headstylizer.download_model(key="controlnet-canny") == {{"FINISHED"}}
one = dict(edge=p.edge_controlnet_dir, diffusion=p.diffusion_dir)
assert bpy.ops.headstylizer.download_model(key="all") == {{"FINISHED"}}  # the checklist's button
result(before=before, after=model_status(p, "controlnet-canny"), one=one, edge=p.edge_controlnet_dir,
       depth=p.depth_controlnet_dir, diffusion=p.diffusion_dir)
""", env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1"}, timeout=300)
    assert r["before"] == "not downloaded"
    assert r["after"].startswith(f"{repo}@{hub.commits[repo][:10]}")
    models = tmp_path / "models"
    assert r["one"] == {"edge": str(models / "controlnet-canny"), "diffusion": ""}
    assert (r["edge"], r["depth"], r["diffusion"]) == (str(models / "controlnet-canny"), str(models / "controlnet-depth"),
                                                       str(models / "sd15"))
    assert not (models / "sd15" / "unet" / "diffusion_pytorch_model.bin").exists()
    assert (tmp_path / "models" / "controlnet-canny" / "diffusion_pytorch_model.safetensors").read_bytes() == files[
        "diffusion_pytorch_model.safetensors"]
