"""The one-head pipeline (``engine head``): caching, outputs, cancel, errors — on tiny random models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.app.pipeline import HeadJob, resolve_models, resolve_prompt, run_head, stylize_cache_key, stylize_config_for
from engine.errors import CheckpointError, ConfigError
from engine.mesh import read_npz
from engine.stylize.cancel import CancelToken

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_job(tmp_path: Path, models, **changes) -> HeadJob:
    settings = dict(
        out_dir=str(tmp_path / "out"),
        prompt="a zombie head",
        generator="tiny",
        diffusion=str(models.sd_folder),
        steps=2,
        mesh_resolution=32,
        iso_level=1.0,  # the random tiny generator's density never reaches PanoHead's 10
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
    )
    settings.update(changes)
    return HeadJob(**settings)


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event, **fields):
        self.events.append((event, fields))

    def names(self):
        return [e for e, _ in self.events]


def test_run_head_writes_every_output_and_reuses_the_stylized_generator(tmp_path, tiny_diffusion):
    job = tiny_job(tmp_path, tiny_diffusion, turntable_frames=2)
    rec = Recorder()
    result = run_head(job, on_event=rec)
    out = Path(job.out_dir)
    summary = json.loads((out / "head.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    mesh = read_npz(out / summary["mesh_npz"])
    assert summary["faces"] == mesh.num_faces > 100 and summary["vertices"] == mesh.num_vertices
    assert mesh.vertex_colors is not None and mesh.vertex_colors.shape == (mesh.num_vertices, 3)
    for side in ("before", "after"):
        assert set(summary[side]) == {"front", "yaw+45", "yaw-45", "yaw+90", "yaw-90", "back"}
        assert all((out / p).is_file() for p in summary[side].values())
    assert (out / summary["latent_npz"]).is_file() and summary["stylize_reused"] is False
    assert summary["turntable"] == ["views/turntable/frame_000.png", "views/turntable/frame_001.png"]
    assert all((out / p).is_file() for p in summary["turntable"])
    progress = [f for e, f in rec.events if e == "progress"]
    assert [p["step"] for p in progress] == [1, 2] and progress[-1]["fraction"] == 1.0
    assert all(p["stage"] == "stylize" for p in progress)
    assert rec.names()[-1] == "done" and "done" not in rec.names()[:-1]

    # Another head with the same style reuses the cached stylized generator: no training events.
    again = Recorder()
    second = run_head(tiny_job(tmp_path, tiny_diffusion, seed=5, out_dir=str(tmp_path / "out2")), on_event=again)
    assert second.summary["stylize_reused"] is True and "progress" not in again.names()
    assert second.summary["generator"] == summary["generator"]
    # ... and the saved latent of the first head renders the same head again.
    third = run_head(tiny_job(tmp_path, tiny_diffusion, latent=str(out / "latent.npz"), out_dir=str(tmp_path / "o3")), on_event=Recorder())
    a = read_npz(out / "head.npz").vertices
    b = read_npz(tmp_path / "o3" / "head.npz").vertices
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert third.summary["seed"] is None


def test_cache_key_follows_training_settings_only(tmp_path, tiny_diffusion):
    job = tiny_job(tmp_path, tiny_diffusion)
    sources = resolve_models(job)
    key = lambda j: stylize_cache_key(stylize_config_for(j, sources, "p"), sources)  # noqa: E731
    base = key(job)
    assert key(tiny_job(tmp_path, tiny_diffusion, seed=9, mesh_resolution=64, out_dir="elsewhere")) == base
    for change in ({"method": "sds"}, {"mirror": False}, {"grid": False}, {"rank": False}, {"steps": 3},
                   {"guidance_scale": 3.0}, {"train_seed": 1}, {"lr": 0.5}):
        assert key(tiny_job(tmp_path, tiny_diffusion, **change)) != base, change


def test_cancel_before_the_first_step_writes_no_head(tmp_path, tiny_diffusion):
    job = tiny_job(tmp_path, tiny_diffusion, steps=50)
    cancel = CancelToken()
    cancel.request("test")
    rec = Recorder()
    result = run_head(job, cancel, on_event=rec)
    assert result.cancelled and rec.names()[-1] == "cancelled"
    assert not (Path(job.out_dir) / "head.json").exists()


def test_prompt_and_presets(tmp_path, tiny_diffusion):
    sources = resolve_models(tiny_job(tmp_path, tiny_diffusion))
    assert resolve_prompt(tiny_job(tmp_path, tiny_diffusion, prompt="custom"), sources) == ("custom", None)
    prompt, warning = resolve_prompt(tiny_job(tmp_path, tiny_diffusion, prompt="", style_preset="werewolf"), sources)
    assert "werewolf" in prompt and warning is None  # real (non-pack) models take the full prompt


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prompt": "", "style_preset": None}, "give a style"),
        ({"style_preset": "vaporwave"}, "unknown style preset"),
        ({"method": "xyz"}, "method must be"),
        ({"steps": 0}, "steps must be"),
        ({"mesh_resolution": 4}, "mesh resolution"),
    ],
)
def test_bad_jobs_are_config_errors(tmp_path, tiny_diffusion, changes, message):
    with pytest.raises(ConfigError, match=message):
        run_head(tiny_job(tmp_path, tiny_diffusion, **changes), on_event=Recorder())


def test_missing_model_paths_name_the_path(tmp_path, tiny_diffusion):
    with pytest.raises(ConfigError, match="nowhere.*does not exist"):
        run_head(tiny_job(tmp_path, tiny_diffusion, diffusion=str(tmp_path / "nowhere")), on_event=Recorder())
    with pytest.raises(CheckpointError, match="pack manifest not found"):
        run_head(tiny_job(tmp_path, tiny_diffusion, diffusion=None, pack=str(tmp_path / "nopack")), on_event=Recorder())


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "head", "--out", str(tmp_path / "o"), "--style-preset", "zombie",
         "--pack", str(tmp_path / "missing-pack")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
