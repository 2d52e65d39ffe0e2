"""Blender's recipe selector (Recipe: Fast / Paper) and the paper models' preferences reach the engine: the
command line the panel builds parses with ``engine head``'s real parser into the stylization config the preset
promises (the official defaults, field by field); the bpy scenarios press the real buttons (against the fake
engine and a loopback hub)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bridge.job import RECIPES, ModelPaths, StylizeRequest, check_request, engine_argv
from engine.app.cli import parse_command_line
from engine.app.pipeline import resolve_models, stylize_config_for
from tests.blender.runner import HAVE_BPY, run_bpy
from tests.engine.stylize.test_recipes import OFFICIAL, OURS_DIFFER, mismatches

FAKE_ROOT = Path(__file__).parent / "fake_engine"
PY = sys.executable


def _request(tmp_path, **changes) -> StylizeRequest:
    base = dict(out_dir=str(tmp_path / "run"), python=PY, engine_root=str(FAKE_ROOT), preset="ZOMBIE")
    base.update(changes)
    return StylizeRequest(**base)


def stylize_config_of(argv: list[str]):
    """What ``python -m engine head`` with the panel's command line trains with (the engine's own parser)."""
    assert argv[1:4] == ["-m", "engine", "head"]
    _, module, args = parse_command_line(argv[3:])
    job = module.job_from_args(args).validate()
    return job, stylize_config_for(job, resolve_models(job), "a zombie head")


def test_the_recipe_selector_reaches_the_stylize_config_through_the_real_parser(tmp_path):
    sd = tmp_path / "sd"
    sd.mkdir()
    models = ModelPaths(generator="tiny", diffusion=str(sd))
    paper_job, paper = stylize_config_of(engine_argv(_request(tmp_path, recipe="PAPER", models=models)))
    assert paper_job.recipe == "paper" and mismatches(paper) == {}
    fast_job, fast = stylize_config_of(engine_argv(_request(tmp_path, recipe="FAST", models=models)))
    assert fast_job.recipe == "ours" and "--preset" not in engine_argv(_request(tmp_path, models=models))
    assert OURS_DIFFER <= set(mismatches(fast))
    # on the embedded pack too (no model paths): the panel's default setup
    _, pack_paper = stylize_config_of(engine_argv(_request(tmp_path, recipe="PAPER")))
    assert mismatches(pack_paper) == {}
    assert {engine for _key, _label, engine, _help in RECIPES} == {"ours", "paper"}


def test_lpips_and_depth_model_preferences_reach_the_engine_and_are_checked(tmp_path):
    lpips, depth, sd = tmp_path / "lpips-alex", tmp_path / "depth", tmp_path / "sd"
    for folder in (lpips, depth, sd):
        folder.mkdir()
    request = _request(tmp_path, recipe="PAPER",
                       models=ModelPaths(diffusion=str(sd), lpips=str(lpips), depth_model=str(depth)))
    assert check_request(request) == []
    job, config = stylize_config_of(engine_argv(request))
    assert (job.lpips, job.depth_model) == (str(lpips), str(depth))
    assert (config.lpips_path, config.depth_model) == (str(lpips), str(depth))
    missing = check_request(_request(tmp_path, models=ModelPaths(lpips=str(tmp_path / "nope"))))
    assert missing == [f"LPIPS folder does not exist: {tmp_path / 'nope'}"]
    not_folder = check_request(_request(tmp_path, models=ModelPaths(depth_model=__file__)))
    assert not_folder == [f"Depth model folder must be a folder: {__file__}"]
    assert check_request(_request(tmp_path, recipe="OFFICIAL")) == ["Unknown recipe: OFFICIAL"]


@pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)")
@pytest.mark.usefixtures("single_thread")
def test_in_blender_the_paper_recipe_and_its_models_reach_the_engine_command(tmp_path):
    """The panel's Recipe set to Paper and the LPIPS / depth model preferences: Stylize Head runs the (fake)
    engine with a command line that the real engine parses into the official defaults."""
    import numpy as np

    mesh = tmp_path / "head.npz"
    np.savez(mesh, vertices=np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), faces=np.array([[0, 1, 2]], np.int32))
    lpips, depth, sd = tmp_path / "lpips-alex", tmp_path / "depth", tmp_path / "sd"
    for folder in (lpips, depth, sd):
        folder.mkdir()
    r = run_bpy(f"""
import json, os
use_fake_engine({str(mesh)!r})
p = prefs()
p.output_dir = {str(tmp_path / 'out')!r}
p.diffusion_dir = {str(sd)!r}
p.lpips_dir = {str(lpips)!r}
p.depth_model_dir = {str(depth)!r}
settings = bpy.context.scene.head_stylizer
items = [i.identifier for i in settings.bl_rna.properties["recipe"].enum_items]
default = settings.recipe
settings.recipe = "PAPER"; settings.steps = 2
bpy.ops.headstylizer.stylize_head()
result(items=items, default=default, argv=json.load(open(os.environ["FAKE_ENGINE_ARGV_LOG"])))
""", env={"FAKE_ENGINE_ARGV_LOG": str(tmp_path / "argv.json")})
    assert r["items"] == ["FAST", "PAPER"] and r["default"] == "FAST"
    argv = r["argv"]
    assert argv[argv.index("--preset") + 1] == "paper"
    assert argv[argv.index("--lpips") + 1] == str(lpips) and argv[argv.index("--depth-model") + 1] == str(depth)
    job, config = stylize_config_of([PY, "-m", "engine", *argv])
    assert job.recipe == "paper" and config.steps == 2  # the panel's explicit iterations win …
    assert mismatches(config) == {"steps": (2, OFFICIAL["steps"])}  # … and everything else is the paper's
    assert (config.lpips_path, config.depth_model) == (str(lpips), str(depth))


@pytest.mark.skipif(not HAVE_BPY, reason="bpy module not installed (requirements-dev.txt)")
@pytest.mark.usefixtures("single_thread")
def test_in_blender_the_model_manager_fills_the_paper_models_preferences(tmp_path):
    """Realistic Vision and Depth Anything from the loopback hub fill the diffusion and depth model preferences;
    every role a model can have maps to a preference (LPIPS-Alex's fills the LPIPS folder)."""
    from engine.app.models import MODEL_SPECS
    from tests.engine.app.fake_hub import FakeHub

    sd = {"model_index.json": b"{}", "scheduler/scheduler_config.json": b"{}", "tokenizer/vocab.json": b"{}",
          "text_encoder/config.json": b"{}", "text_encoder/model.safetensors": b"t" * 3000, "unet/config.json": b"{}",
          "unet/diffusion_pytorch_model.safetensors": b"u" * 5000, "vae/config.json": b"{}",
          "vae/diffusion_pytorch_model.safetensors": b"v" * 2000}
    depth = {"config.json": b"{}", "model.safetensors": b"d" * 4000, "preprocessor_config.json": b"{}"}
    repos = {MODEL_SPECS["realistic-vision-v5.1"].repo_id: sd, MODEL_SPECS["depth-anything-v2-base"].repo_id: depth}
    with FakeHub(repos) as hub:
        r = run_bpy(f"""
import sys
from bl_ext.hs_tests.head_stylizer.operators.models import MODEL_KEYS, ROLE_PREFERENCE, model_status
p = prefs()
p.python_path = sys.executable
p.models_dir = {str(tmp_path / 'models')!r}
assert bpy.ops.headstylizer.download_model(key="realistic-vision-v5.1") == {{"FINISHED"}}
assert bpy.ops.headstylizer.download_model(key="depth-anything-v2-base") == {{"FINISHED"}}
result(diffusion=p.diffusion_dir, depth=p.depth_model_dir, keys=[k for k, _l, _p in MODEL_KEYS],
       roles=ROLE_PREFERENCE, status=model_status(p, "realistic-vision-v5.1"),
       prefs=sorted(name for name in ROLE_PREFERENCE.values() if hasattr(p, name)))
""", env={"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1"}, timeout=300)
    models = tmp_path / "models"
    assert (r["diffusion"], r["depth"]) == (str(models / "realistic-vision-v5.1"), str(models / "depth-anything-v2-base"))
    assert r["status"].endswith("(CreativeML OpenRAIL-M)")
    assert set(r["keys"]) == set(MODEL_SPECS)  # every model the engine can download has a button
    assert {s.role for s in MODEL_SPECS.values()} == set(r["roles"]) and r["roles"]["lpips"] == "lpips_dir"
    assert sorted(r["prefs"]) == sorted(set(r["roles"].values()))  # and each role's preference exists
