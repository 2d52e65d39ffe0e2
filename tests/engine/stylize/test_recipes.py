"""The paper preset: its effective config equals the official code's defaults field by field, through the real
command lines of ``engine stylize`` and ``engine head`` (and on the embedded pack); explicit options still win;
every config field is classified; the README's table is what the source gives."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from engine.app.cli import parse_command_line
from engine.app.pipeline import ModelSources, resolve_models, stylize_config_for, view_settings
from engine.distill import DistillConfig
from engine.errors import ConfigError
from engine.stylize.config import StylizeConfig
from engine.stylize.recipes import (NOT_OFFICIAL_SETTINGS, OFFICIAL_SETTINGS, PAPER_DEPTH_RESOLUTION, apply_recipe,
                                    depth_note, lpips_note)

ROOT = Path(__file__).resolve().parents[3]

# The official code's effective defaults, written out here from the facts (three-bee/3d_head_stylization
# train_LD.py's command-line defaults and infer_LD.py; /work/shared/reference), independently of the source list.
OFFICIAL = {
    "negative_prompt": "", "steps": 10_000, "lr": 1e-4, "betas": (0.9, 0.999), "batch_size": 1, "seed": 0,
    "truncation_psi": 0.75, "truncation_cutoff": 14, "conditioning_yaw": 0.0, "conditioning_pitch": 0.2,
    "camera_pivot": (0.0, 0.0, 0.0), "single_yaw_range": (-math.pi / 3, math.pi / 3),
    "single_pitch_range": (-math.pi / 6, math.pi / 6), "grid_yaw_range": (-math.pi, math.pi),
    "grid_pitch_range": (-math.pi / 6, math.pi / 6), "neural_resolution": None, "noise_mode": "random",
    "checkpoint_every": 250, "preview_every": 100,
    "distill.method": "ld", "distill.guidance_scale": 7.5, "distill.use_mirror": True,
    "distill.mirror_weights": (0.75, 0.25), "distill.use_grid": True, "distill.use_rank": True,
    "distill.rank_in_grid": False, "distill.rank_weights": (1.0, 0.75, 0.5, 0.25), "distill.grad_divisor": 1000.0,
    "distill.grad_clamp": 1.0, "distill.mask_gradients": True, "distill.tweedie_weight": 0.1,
    "distill.lpips_weight": 0.05, "distill.ldis_weight": 1.0, "distill.anchor_image_weight": 0.0,
    "distill.anchor_geometry_weight": 0.0, "distill.single_step_range": (35, 49), "distill.grid_step_range": (35, 49),
    "distill.ddim_steps": 50, "distill.controlnet_scale": 1.0, "distill.canny_thresholds": (50, 250),
    "distill.grid_render_upsample": 4, "distill.grid_size": 512, "distill.official_compat": True,
    "views.background": "white", "views.camera_pivot": (0.0, 0.0, 0.0), "views.view_pitch": math.radians(10.0),
    "views.noise_mode": "random",
}
# The official settings our own defaults deliberately differ on (the README table says why).
OURS_DIFFER = {"noise_mode", "distill.official_compat", "views.noise_mode"}


def value(config: StylizeConfig, key: str):
    if key.startswith("views."):
        return getattr(view_settings(config), key.split(".", 1)[1])
    if key.startswith("distill."):
        return getattr(config.distill, key.split(".", 1)[1])
    return getattr(config, key)


def mismatches(config: StylizeConfig) -> dict[str, tuple]:
    return {key: (value(config, key), want) for key, want in OFFICIAL.items() if value(config, key) != want}


def stylize_config(tmp_path: Path, *flags: str) -> StylizeConfig:
    """The config ``python -m engine stylize …`` runs, through the engine's own parser."""
    _, module, args = parse_command_line(["stylize", "--prompt", "a zombie head", "--generator", "tiny",
                                          "--diffusion", str(tmp_path), "--out", str(tmp_path / "run"), *flags])
    return module.build_config(args)


def head_config(tmp_path: Path, *flags: str, real: bool = True) -> StylizeConfig:
    """The stylization config ``python -m engine head …`` trains with, through the engine's own parser."""
    models = ["--generator", "tiny", "--diffusion", str(tmp_path)] if real else []
    _, module, args = parse_command_line(["head", "--out", str(tmp_path / "out"), "--prompt", "a zombie head",
                                          *models, *flags])
    job = module.job_from_args(args).validate()
    return stylize_config_for(job, resolve_models(job), job.prompt)


# --------------------------------------------------------------------------------------------------
def test_the_source_list_holds_the_official_values():
    listed = {s.key: s.official for s in OFFICIAL_SETTINGS}
    assert listed == {k: v for k, v in OFFICIAL.items() if k != "views.noise_mode"}
    assert len(listed) == len(OFFICIAL_SETTINGS)  # no key listed twice


def test_every_config_field_is_an_official_setting_or_classified_as_not_one():
    keys = {f.name for f in dataclasses.fields(StylizeConfig) if f.name != "distill"}
    keys |= {f"distill.{f.name}" for f in dataclasses.fields(DistillConfig)}
    official = {s.key for s in OFFICIAL_SETTINGS}
    assert not official & NOT_OFFICIAL_SETTINGS
    assert keys - official - NOT_OFFICIAL_SETTINGS == set(), "classify new config fields in engine/stylize/recipes.py"
    assert NOT_OFFICIAL_SETTINGS - keys == set()


@pytest.mark.parametrize("command", ["stylize", "head on real models", "head on the embedded pack"])
def test_paper_preset_effective_config_equals_the_official_defaults_field_by_field(tmp_path, command):
    build = {"stylize": lambda *f: stylize_config(tmp_path, *f),
             "head on real models": lambda *f: head_config(tmp_path, *f),
             "head on the embedded pack": lambda *f: head_config(tmp_path, *f, real=False)}[command]
    paper = build("--preset", "paper")
    assert mismatches(paper) == {}
    assert paper.depth_resolution == PAPER_DEPTH_RESOLUTION and paper.depth_model is None
    # ours stays ours: the default differs from the official code exactly where the README says it does
    ours = build()
    assert set(mismatches(ours)) - {"steps", "lr", "checkpoint_every", "preview_every", "neural_resolution"} == OURS_DIFFER
    assert ours.depth_resolution is None and ours.lpips_path is None


def test_paper_preset_keeps_explicit_choices_and_models(tmp_path):
    lpips, depth = tmp_path / "lpips", tmp_path / "depth"
    lpips.mkdir()
    depth.mkdir()
    head = head_config(tmp_path, "--preset", "paper", "--steps", "50", "--lr", "0.01", "--no-mirror", "--method", "sds",
                       "--guidance-scale", "5", "--anchor-image", "0.5", "--lpips", str(lpips), "--depth-model", str(depth))
    assert (head.steps, head.lr, head.distill.use_mirror, head.distill.method, head.distill.guidance_scale) == \
        (50, 0.01, False, "sds", 5.0)
    assert (head.distill.anchor_image_weight, head.distill.anchor_geometry_weight) == (0.5, 0.0)
    assert head.lpips_path == str(lpips) and head.depth_model == str(depth)
    assert head.distill.official_compat and head.noise_mode == "random"  # the rest is still the paper's
    stylize = stylize_config(tmp_path, "--preset", "paper", "--steps", "7", "--seed", "3", "--depth-model", str(depth))
    assert (stylize.steps, stylize.seed, stylize.depth_model) == (7, 3, str(depth.resolve()))
    assert stylize.distill.official_compat and stylize.distill.lpips_weight == 0.05


def test_head_mode_keeps_its_anchor_under_ours_and_drops_it_under_the_paper(tmp_path):
    """The paper has no source anchor; head mode's default anchor is ours."""
    mesh = tmp_path / "head.ply"
    mesh.write_text("ply")  # the config is built without reading the mesh
    ours = head_config(tmp_path, "--mesh", str(mesh))
    paper = head_config(tmp_path, "--mesh", str(mesh), "--preset", "paper")
    assert ours.distill.anchor_image_weight > 0 and paper.distill.anchor_image_weight == 0.0


def test_notes_say_what_the_recipe_wants_and_will_not_get(tmp_path):
    paper = apply_recipe(StylizeConfig(prompt="p", diffusion="d"), "paper")
    assert "LPIPS is off" in lpips_note(paper) and "lpips-alex" in lpips_note(paper)
    assert "no depth model" in depth_note(paper)
    assert lpips_note(dataclasses.replace(paper, lpips_path="x")) is None
    assert lpips_note(paper.replace(distill=paper.distill.replace(lpips_weight=0.0))) is None
    assert depth_note(dataclasses.replace(paper, depth_model="x")) is None
    assert depth_note(StylizeConfig(prompt="p", diffusion="d")) is None  # ours: its own depth is its choice
    with pytest.raises(ConfigError, match="unknown recipe"):
        apply_recipe(paper, "official")


def test_readme_table_is_generated_from_the_source(tmp_path):
    from engine.app.recipe_table import BEGIN, END, main, recipe_table, replace_block

    readme = ROOT / "README.md"
    assert main(["--check", str(readme)]) == 0, "README's recipe table is stale: python -m engine.app.recipe_table --write README.md"
    table = recipe_table()
    for setting in OFFICIAL_SETTINGS:
        assert f"| {setting.label} |" in table
    # the check can fail: a README whose table lost a row, or has no block, is refused
    stale = tmp_path / "README.md"
    stale.write_text(readme.read_text().replace("| ᾱ indexing |", "| alpha indexing |"))
    assert main(["--check", str(stale)]) == 1
    assert main(["--write", str(stale)]) == 0 and main(["--check", str(stale)]) == 0
    with pytest.raises(ConfigError, match="no recipe-table block"):
        replace_block("no markers here", table)
    assert replace_block(f"a\n{BEGIN}\nold\n{END}\nb", "new\n") == f"a\n{BEGIN}\nnew\n{END}\nb"


def test_ours_cache_keys_are_unchanged_by_the_recipe_fields(tmp_path):
    """Stylized generators cached before the recipe fields existed are still found: an ``ours`` run's key is
    the one the engine computed before (the constant was computed with the previous commit's code)."""
    from engine.app.pipeline import HeadJob, stylize_cache_key

    sources = ModelSources("tiny-generator-path", "diffusion-path", None, None, None)
    job = HeadJob(out_dir=str(tmp_path), prompt="a zombie head")
    ours = stylize_config_for(job, sources, job.prompt)
    assert stylize_cache_key(ours, sources) == OURS_KEY
    paper = stylize_config_for(dataclasses.replace(job, recipe="paper"), sources, job.prompt)
    assert stylize_cache_key(paper, sources) != OURS_KEY


OURS_KEY = "f0d6236d6133daba"  # engine at a10fc8d (before the recipes), same job and sources


def test_engine_stylize_with_the_paper_preset_warns_first_when_lpips_is_missing(tmp_path, tiny_diffusion, capsys):
    """The first lines of ``engine stylize --preset paper`` without --lpips: warnings, then ``started`` with the
    same notes; ours only notes it in ``started``."""
    from engine.app.cli import main as cli_main

    common = ["stylize", "--prompt", "a zombie head", "--generator", "tiny", "--diffusion", str(tiny_diffusion.sd_folder),
              "--steps", "1", "--device", "cpu", "--json"]
    assert cli_main([*common, "--preset", "paper", "--out", str(tmp_path / "paper")]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = [e["event"] for e in events]
    assert names[:3] == ["warning", "warning", "started"]
    assert "LPIPS is off" in events[0]["message"] and "no depth model" in events[1]["message"]
    assert events[2]["notes"] == [events[0]["message"], events[1]["message"]] and events[2]["lpips"] is None
    assert cli_main([*common, "--out", str(tmp_path / "ours")]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["event"] == "started" and len(events[0]["notes"]) == 1 and "LPIPS is off" in events[0]["notes"][0]
