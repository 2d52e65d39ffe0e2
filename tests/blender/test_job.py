"""The extension's pure-Python side (no Blender): panel settings → engine command line, and the engine
process runner (events, failure, cancel, kill) against a fake engine that speaks the JSON-line protocol."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bridge import engine_process
from bridge.engine_process import CancelPolicy, EngineProcess, parse_event_line
from bridge.job import PRESETS, ModelPaths, StylizeRequest, check_request, engine_argv, engine_environment, \
    strength_to_guidance_scale

FAKE_ROOT = Path(__file__).parent / "fake_engine"
PY = sys.executable


@pytest.fixture()
def fake_mesh(tmp_path) -> str:
    path = tmp_path / "src.npz"
    np.savez(path, vertices=np.zeros((3, 3), np.float32), faces=np.array([[0, 1, 2]], np.int32))
    return str(path)


def _request(tmp_path, **changes) -> StylizeRequest:
    base = dict(out_dir=str(tmp_path / "run"), python=PY, engine_root=str(FAKE_ROOT),
                cancel_file=str(tmp_path / "run" / "cancel"))
    base.update(changes)
    return StylizeRequest(**base)


def _start(request: StylizeRequest, mesh: str, policy: CancelPolicy | None = None, **env) -> EngineProcess:
    full_env = engine_environment(request.engine_root, dict(os.environ, FAKE_ENGINE_MESH=mesh, **env))
    return EngineProcess(engine_argv(request), cwd=request.engine_root, env=full_env,
                         cancel_file=request.cancel_file, policy=policy).start()


def _process_gone(pid: int) -> bool:
    """Exited *and* reaped: no zombie left in the process table."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return not Path(f"/proc/{pid}").exists()


# --------------------------------------------------------------------------------------------------
def test_strength_maps_linearly_to_guidance_scale_with_paper_value_in_the_middle():
    assert strength_to_guidance_scale(0.0) == pytest.approx(2.5)
    assert strength_to_guidance_scale(0.5) == pytest.approx(7.5)
    assert strength_to_guidance_scale(1.0) == pytest.approx(12.5)
    assert strength_to_guidance_scale(-3) == pytest.approx(2.5)
    assert strength_to_guidance_scale(7) == pytest.approx(12.5)


def test_engine_argv_for_a_preset_and_a_seed(tmp_path):
    r = _request(tmp_path, preset="PIXAR", seed=7, strength=0.5, mesh_resolution=96, cancel_file="")
    assert engine_argv(r) == [
        PY, "-m", "engine", "head", "--json", "--out", str(tmp_path / "run"), "--style-preset", "pixar",
        "--method", "ld", "--seed", "7", "--guidance-scale", "7.5", "--mesh-resolution", "96", "--device", "auto",
    ]


def test_engine_argv_custom_prompt_latent_switches_models_and_memory(tmp_path):
    latent = tmp_path / "me.npz"
    latent.write_bytes(b"x")
    r = _request(tmp_path, preset="CUSTOM", prompt="  a bronze bust ", method="sds", mirror=False, grid=False,
                 rank=False, steps=12, latent_file=str(latent), strength=1.0, device="cpu",
                 attention_slicing=True, vae_slicing=True, cache_dir=str(tmp_path / "cache"),
                 models=ModelPaths(generator="/m/g.safetensors", diffusion="/m/sd"))
    argv = engine_argv(r)
    assert argv[argv.index("--prompt") + 1] == "a bronze bust"
    assert "--style-preset" not in argv and "--seed" not in argv
    assert argv[argv.index("--latent") + 1] == str(latent)
    for flag in ("--no-mirror", "--no-grid", "--no-rank", "--attention-slicing", "--vae-slicing"):
        assert flag in argv
    assert argv[argv.index("--steps") + 1] == "12"
    assert argv[argv.index("--guidance-scale") + 1] == "12.5"
    assert argv[argv.index("--generator") + 1] == "/m/g.safetensors"
    assert argv[argv.index("--diffusion") + 1] == "/m/sd"
    assert "--depth-controlnet" not in argv  # empty = embedded pack: the flag is left out
    assert argv[argv.index("--cancel-file") + 1] == str(tmp_path / "run" / "cancel")


def test_engine_argv_in_head_mode_sends_the_exported_mesh_and_parses_as_the_engine_expects(tmp_path):
    import argparse

    from engine.app.cli import add_output_arguments
    from engine.app.commands.head import add_arguments, job_from_args

    r = _request(tmp_path, mesh_file=str(tmp_path / "run" / "Bust.glb"), source_object="Bust", field_steps=250,
                 seed=3, latent_file=str(tmp_path / "ignored.npz"))
    assert check_request(r) == []  # the mesh is exported after the check; a stale latent setting is ignored
    argv = engine_argv(r)
    assert argv[argv.index("--mesh") + 1] == str(tmp_path / "run" / "Bust.glb")
    assert "--seed" not in argv and "--latent" not in argv
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    add_output_arguments(parser)
    job = job_from_args(parser.parse_args(argv[4:]))
    assert (job.mesh, job.field_steps) == (str(tmp_path / "run" / "Bust.glb"), 250)
    default = engine_argv(_request(tmp_path, mesh_file=str(tmp_path / "b.glb"), source_object="B"))
    assert "--field-steps" not in default  # 0 = the engine's own default
    assert any("name of the selected mesh" in p for p in check_request(_request(tmp_path, mesh_file="x.glb")))
    assert any("Field fit steps" in p for p in check_request(_request(tmp_path, field_steps=-1)))


def test_keep_colours_and_shape_become_head_modes_anchor_weights_through_the_engines_parser(tmp_path):
    """Keep Colours / Keep Shape → ``--anchor-image`` / ``--anchor-geometry`` of ``engine head --mesh``, parsed by
    the engine's own parser into the job; at their defaults (the engine's) nothing is sent; negative is refused."""
    import argparse

    from bridge.job import HEAD_MODE_ANCHOR
    from engine.app.cli import add_output_arguments
    from engine.app.commands.head import add_arguments, job_from_args
    from engine.app.pipeline import HEAD_MODE_ANCHOR as ENGINE_HEAD_MODE_ANCHOR

    assert HEAD_MODE_ANCHOR == ENGINE_HEAD_MODE_ANCHOR  # the panel's defaults are the engine's
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    add_output_arguments(parser)
    mesh = dict(mesh_file=str(tmp_path / "Bust.glb"), source_object="Bust")
    argv = engine_argv(_request(tmp_path, **mesh, keep_colours=0.0, keep_shape=2.5))
    job = job_from_args(parser.parse_args(argv[4:]))
    assert (job.anchor_image, job.anchor_geometry) == (0.0, 2.5)
    argv = engine_argv(_request(tmp_path, **mesh, keep_shape=0.0))
    assert "--anchor-image" not in argv and argv[argv.index("--anchor-geometry") + 1] == "0"
    default = engine_argv(_request(tmp_path, **mesh))
    assert "--anchor-image" not in default and "--anchor-geometry" not in default
    assert "--anchor-image" not in engine_argv(_request(tmp_path, keep_colours=0.0))  # generated heads: no anchor
    assert check_request(_request(tmp_path, **mesh, keep_colours=-1.0)) == [
        "Keep Colours must be ≥ 0 (0 = no pull toward the source), got -1.0"]
    assert any("Keep Shape" in p for p in check_request(_request(tmp_path, **mesh, keep_shape=float("nan"))))


def test_engine_environment_puts_engine_root_on_pythonpath_and_drops_pythonhome(tmp_path):
    env = engine_environment(str(tmp_path), {"PYTHONHOME": "/blender/python", "PYTHONPATH": "/x", "A": "1"})
    assert env["PYTHONPATH"] == str(tmp_path.resolve()) and "PYTHONHOME" not in env and env["A"] == "1"


def test_check_request_accepts_a_good_request(tmp_path):
    assert check_request(_request(tmp_path)) == []


@pytest.mark.parametrize("change, fragment", [
    (dict(python=""), "No engine Python interpreter"),
    (dict(python="/nonexistent/python3"), "not found or not executable: /nonexistent/python3"),
    (dict(engine_root="/nonexistent"), "no 'engine' package"),
    (dict(models=ModelPaths(diffusion="/nonexistent/sd")), "Diffusion model folder does not exist: /nonexistent/sd"),
    (dict(models=ModelPaths(edge_controlnet=__file__)), "Edge ControlNet folder must be a folder"),
    (dict(models=ModelPaths(generator=str(Path(__file__).parent))), "Generator checkpoint must be a file"),
    (dict(preset="CUSTOM", prompt="  "), "Custom style needs a prompt"),
    (dict(latent_file="/nonexistent/w.npz"), "Latent file does not exist"),
    (dict(mesh_resolution=8), "Mesh resolution must be 16…1024"),
])
def test_check_request_names_the_problem(tmp_path, change, fragment):
    problems = check_request(_request(tmp_path, **change))
    assert len(problems) == 1 and fragment in problems[0], problems


def test_parse_event_line_keeps_protocol_objects_and_wraps_other_text():
    assert parse_event_line('{"event": "progress", "step": 2}\n') == {"event": "progress", "step": 2}
    assert parse_event_line("Loading pipeline…") == {"event": "log", "message": "Loading pipeline…"}
    assert parse_event_line('{"no_event": 1}')["event"] == "log"
    assert parse_event_line("{broken")["event"] == "log"


# --------------------------------------------------------------------------------------------------
def test_engine_process_streams_events_and_finishes(tmp_path, fake_mesh):
    request = _request(tmp_path, steps=4, seed=3)
    events = []
    proc = _start(request, fake_mesh)
    assert proc.wait(on_event=events.append) == 0
    kinds = [e["event"] for e in events]
    assert kinds[0] == "stage" and kinds[-1] == "done"
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4] and progress[-1]["fraction"] == 1.0
    summary = json.loads(Path(events[-1]["result"]).read_text())
    assert summary["mesh_npz"] == "head.npz" and (tmp_path / "run" / "head.npz").is_file()
    assert "loading models" in proc.stderr_tail  # stderr is kept apart from the protocol
    assert proc not in engine_process.live_processes()


def test_engine_process_failure_reports_the_engine_error_line(tmp_path, fake_mesh):
    proc = _start(_request(tmp_path), fake_mesh, FAKE_ENGINE_FAIL="diffusion folder has no unet/")
    assert proc.wait() == 2
    assert proc.error_message() == "diffusion folder has no unet/"


def test_cancel_file_stops_the_engine_cleanly_and_leaves_no_zombie(tmp_path, fake_mesh):
    request = _request(tmp_path, steps=200)
    proc = _start(request, fake_mesh, FAKE_ENGINE_STEP_SECONDS="0.05")
    events: list[dict] = []
    deadline = time.monotonic() + 20
    while not any(e["event"] == "progress" for e in events) and time.monotonic() < deadline:
        events += proc.drain()
        time.sleep(0.02)
    proc.cancel()
    assert Path(request.cancel_file).exists()
    code = proc.wait(on_event=events.append)
    assert code == 0 and events[-1]["event"] == "cancelled"
    assert events[-1]["step"] < 200
    assert _process_gone(proc.pid)
    assert not Path(request.cancel_file).exists()  # the engine consumed it


def test_cancel_escalates_to_terminate_when_the_engine_ignores_the_cancel_file(tmp_path, fake_mesh):
    policy = CancelPolicy(grace_seconds=0.3, terminate_seconds=1.0)
    proc = _start(_request(tmp_path, steps=10_000), fake_mesh, policy,
                  FAKE_ENGINE_STEP_SECONDS="0.05", FAKE_ENGINE_IGNORE_CANCEL="1")
    time.sleep(0.3)
    t0 = time.monotonic()
    proc.cancel()
    code = proc.wait()
    assert code == -signal.SIGTERM
    assert 0.25 < time.monotonic() - t0 < 5.0
    assert _process_gone(proc.pid)


def test_kill_all_stops_every_running_engine(tmp_path, fake_mesh):
    procs = [_start(_request(tmp_path / str(i), steps=10_000), fake_mesh, FAKE_ENGINE_STEP_SECONDS="0.05")
             for i in range(2)]
    assert set(procs) <= set(engine_process.live_processes())
    assert engine_process.kill_all() >= 2
    assert all(p.returncode is not None and _process_gone(p.pid) for p in procs)
    assert not engine_process.live_processes()


def test_python_check_detects_an_interpreter_without_torch(tmp_path):
    ok, message = engine_process.python_can_run_engine("/nonexistent/python3", timeout=10)
    assert not ok and "/nonexistent/python3" in message


def test_every_panel_setting_is_an_option_of_the_real_engine_head_command(tmp_path):
    """The command the panel builds parses with ``python -m engine head``'s own parser, value for value."""
    import argparse

    from engine.app.cli import add_output_arguments
    from engine.app.commands.head import add_arguments, job_from_args

    latent = tmp_path / "w.npz"
    latent.write_bytes(b"x")
    r = _request(tmp_path, preset="STATUE", method="sds", mirror=False, grid=False, rank=False, steps=9,
                 latent_file=str(latent), strength=0.25, mesh_resolution=200, device="cpu",
                 attention_slicing=True, vae_slicing=True, cache_dir=str(tmp_path / "cache"),
                 models=ModelPaths(generator="/m/g.safetensors", diffusion="/m/sd", depth_controlnet="/m/d",
                                   edge_controlnet="/m/e"))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    add_output_arguments(parser)
    argv = engine_argv(r)
    assert argv[1:4] == ["-m", "engine", "head"]
    job = job_from_args(parser.parse_args(argv[4:]))
    assert (job.style_preset, job.method, job.mirror, job.grid, job.rank, job.steps) == \
        ("statue", "sds", False, False, False, 9)
    assert job.latent == str(latent) and job.guidance_scale == pytest.approx(5.0)
    assert (job.mesh_resolution, job.device, job.attention_slicing, job.vae_slicing) == (200, "cpu", True, True)
    assert (job.generator, job.diffusion, job.depth_controlnet, job.edge_controlnet) == \
        ("/m/g.safetensors", "/m/sd", "/m/d", "/m/e")
    assert job.cache_dir == str(tmp_path / "cache") and job.out_dir == str(tmp_path / "run")
    custom = parser.parse_args(engine_argv(_request(tmp_path, preset="CUSTOM", prompt="a bronze bust", seed=5))[4:])
    assert (custom.prompt, custom.style_preset, custom.seed) == ("a bronze bust", None, 5)
    for _key, _label, engine_name in PRESETS:
        if engine_name:  # every panel preset is a preset the engine knows
            assert parser.parse_args(["--out", "x", "--style-preset", engine_name]).style_preset == engine_name


def test_an_approved_style_goes_to_the_engine_alone_and_parses_into_a_production_job(tmp_path):
    """Production from the Stylize panel: the approved style replaces the style, recipe and training options
    (sending them would let the panel's sliders claim to change a style that is never retrained), and the
    engine's own parser and job validation accept the command; head mode refuses it before anything runs."""
    import argparse

    from engine.app.cli import add_output_arguments
    from engine.app.commands.head import add_arguments, job_from_args

    r = _request(tmp_path, style_id="zombie@2", preset="STATUE", recipe="PAPER", method="sds", mirror=False,
                 steps=9, strength=1.0, seed=4)
    assert check_request(r) == [] and r.style_name == "zombie"
    argv = engine_argv(r)
    for flag in ("--style-preset", "--prompt", "--preset", "--method", "--no-mirror", "--steps", "--guidance-scale"):
        assert flag not in argv, flag
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    add_output_arguments(parser)
    job = job_from_args(parser.parse_args(argv[4:])).validate()
    assert (job.style_id, job.prompt, job.style_preset, job.seed) == ("zombie@2", "", None, 4)
    assert engine_argv(_request(tmp_path, style_id=""))[7:9] == ["--style-preset", "zombie"]  # none chosen
    head_mode = _request(tmp_path, style_id="zombie@2", mesh_file="b.glb", source_object="B")
    assert any("approved style" in p.lower() for p in check_request(head_mode))
    assert any("NAME@N" in p for p in check_request(_request(tmp_path, style_id="zombie")))
