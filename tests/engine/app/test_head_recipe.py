"""`engine head --preset paper` end to end on tiny random models: the recipe reaches the stylization, a run that
wants LPIPS and has no network says so in its first lines and in head.json (a warning under the paper recipe,
a note under ours), and the LPIPS folder and the depth model are used when given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.app.cli import parse_command_line
from engine.stylize.training_state import read_latest
from tests.engine.distill.test_lpips_alex import write_lpips_folder
from tests.engine.guidance.test_depth_estimator import build_tiny_depth_model

pytestmark = pytest.mark.usefixtures("single_thread")


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event, **fields):
        self.events.append((event, fields))


def run_cli_head(tmp_path: Path, models, *flags: str):
    """``engine head`` through the engine's own parser, on the tiny models, as cheap as the pipeline gets."""
    from engine.app.pipeline import run_head

    _, module, args = parse_command_line([
        "head", "--out", str(tmp_path / "out"), "--prompt", "a zombie head", "--generator", "tiny",
        "--diffusion", str(models.sd_folder), "--steps", "1", "--mesh-resolution", "32", "--iso-level", "1",
        "--no-evaluate", "--no-game-asset", "--device", "cpu", "--cache", str(tmp_path / "cache"), *flags])
    rec = Recorder()
    result = run_head(module.job_from_args(args), on_event=rec)
    return json.loads((tmp_path / "out" / "head.json").read_text()), rec.events, result


def test_paper_recipe_without_lpips_warns_first_and_records_it(tmp_path, tiny_diffusion):
    summary, events, result = run_cli_head(tmp_path, tiny_diffusion, "--preset", "paper")
    names = [e for e, _ in events]
    first_stylize = names.index("progress")
    warnings = [f["message"] for e, f in events[:first_stylize] if e == "warning"]
    assert any("LPIPS is off" in w for w in warnings) and any("no depth model" in w for w in warnings)
    assert names.index("warning") <= 2  # right after the model check, before the stylization
    assert summary["recipe"] == "paper"
    assert summary["lpips"] == {"weight": 0.05, "network": None, "used": False, "note": summary["lpips"]["note"]}
    assert "LPIPS is off" in summary["lpips"]["note"] and len(summary["recipe_notes"]) == 2
    assert summary["depth_control"].startswith("generator depth at up to 256")
    config = read_latest(Path(summary["generator"]).parents[2]).config  # the run's saved config is the paper's
    assert config.distill.official_compat and config.noise_mode == "random" and config.steps == 1
    started = next(f for e, f in events if e == "stage" and f.get("status") == "started")
    assert started["notes"] == summary["recipe_notes"] and started["noise"] == "random"


def test_ours_without_lpips_notes_it_quietly_and_given_models_are_used(tmp_path, tiny_diffusion):
    summary, events, _ = run_cli_head(tmp_path / "ours", tiny_diffusion)
    assert not any(e == "warning" for e, _ in events)  # ours promised no LPIPS: a note, not a warning …
    assert summary["recipe"] == "ours" and summary["lpips"]["used"] is False and summary["lpips"]["note"]
    assert summary["recipe_notes"] == [summary["lpips"]["note"]]  # … recorded in head.json
    lpips = write_lpips_folder(tmp_path / "lpips-alex")
    depth = build_tiny_depth_model(tmp_path / "depth")
    summary, events, _ = run_cli_head(tmp_path / "paper", tiny_diffusion, "--preset", "paper", "--lpips", str(lpips),
                                      "--depth-model", str(depth))
    assert summary["lpips"] == {"weight": 0.05, "network": str(lpips), "used": True, "note": None}
    assert summary["recipe_notes"] == [] and not any(e == "warning" for e, _ in events)
    assert summary["depth_control"] == str(depth)
    started = next(f for e, f in events if e == "stage" and f.get("status") == "started")
    assert started["lpips"] == str(lpips) and "depth network" in started["grid_depth"]
    progress = next(f for e, f in events if e == "progress")
    assert progress["losses"]["lpips"] > 0
