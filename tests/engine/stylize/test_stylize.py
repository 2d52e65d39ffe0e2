"""Tests of the stylization loop on the ``tiny`` generator preset and a tiny random diffusion folder."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from engine.app.cli import main as cli_main
from engine.distill import DistillConfig
from engine.errors import CheckpointError, ConfigError
from engine.generator.checkpoint import load_checkpoint
from engine.generator.loading import load_generator
from engine.stylize.cancel import CancelToken
from engine.stylize.config import StylizeConfig
from engine.stylize.loop import stylize
from engine.stylize.step import derived_generator, step_generator
from engine.stylize.training_state import read_latest

PROMPT = "a zombie head"
FROZEN_GROUPS = ("backbone.mapping.", "decoder.", "torgb.", "bcg_synthesis.", "t_mapping.")
TRAINABLE_PREFIXES = ("backbone.synthesis.", "superresolution.")


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny(tiny_diffusion):
    return tiny_diffusion


def make_config(tiny, out: Path, **changes) -> StylizeConfig:
    distill = changes.pop("distill", DistillConfig())
    base = StylizeConfig(
        prompt=PROMPT,
        generator="tiny",
        diffusion=str(tiny.sd_folder),
        out_dir=str(out),
        steps=1,
        checkpoint_every=0,
        preview_every=0,
        device="cpu",
        distill=distill,
    )
    return base.replace(**changes)


class Recorder:
    """on_event callback that keeps every event (and checks it is JSON-serialisable, as emit needs)."""

    def __init__(self, hook=None):
        self.events: list[tuple[str, dict]] = []
        self.hook = hook

    def __call__(self, event: str, **fields) -> None:
        json.dumps(fields)
        self.events.append((event, fields))
        if self.hook:
            self.hook(event, fields)

    def of(self, name: str) -> list[dict]:
        return [f for e, f in self.events if e == name]


def generator_state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[1]


@pytest.fixture(scope="module")
def straight_run(tiny, tmp_path_factory):
    """Four uninterrupted steps, a checkpoint after every step, only the newest two kept."""
    out = tmp_path_factory.mktemp("straight")
    recorder = Recorder()
    config = make_config(tiny, out, steps=4, checkpoint_every=1, keep_checkpoints=2, preview_every=2)
    result = stylize(config, on_event=recorder)
    return config, result, recorder


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
def test_config_defaults_match_the_official_training_command():
    cfg = StylizeConfig(prompt=PROMPT, diffusion="x")
    assert (cfg.lr, cfg.betas, cfg.batch_size, cfg.seed, cfg.steps) == (1e-4, (0.9, 0.999), 1, 0, 10_000)
    assert (cfg.truncation_psi, cfg.truncation_cutoff, cfg.checkpoint_every) == (0.75, 14, 250)
    assert (cfg.conditioning_yaw, cfg.conditioning_pitch) == (0.0, 0.2)
    assert cfg.single_yaw_range == pytest.approx((-math.pi / 3, math.pi / 3))
    assert cfg.grid_yaw_range == pytest.approx((-math.pi, math.pi))
    assert cfg.single_pitch_range == cfg.grid_pitch_range == pytest.approx((-math.pi / 6, math.pi / 6))
    assert cfg.distill == DistillConfig()


def test_config_json_round_trip_and_errors():
    cfg = StylizeConfig(prompt=PROMPT, diffusion="d", steps=7, distill=DistillConfig(method="sds", use_grid=False))
    again = StylizeConfig.from_json(cfg.to_json())
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown stylize config keys"):
        StylizeConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError, match="prompt"):
        StylizeConfig(prompt=" ", diffusion="d").validate()
    with pytest.raises(ConfigError, match="single_yaw_range"):
        StylizeConfig(prompt=PROMPT, diffusion="d", single_yaw_range=(1.0, 0.0)).validate()
    with pytest.raises(ConfigError, match="distill.method"):
        StylizeConfig.from_dict({**cfg.to_dict(), "distill": {"method": "nope"}})
    # Runtime fields may differ on resume, training fields may not.
    assert cfg.training_differences(cfg.replace(steps=99, device="cuda", out_dir="elsewhere")) == []
    assert cfg.training_differences(cfg.replace(lr=1e-3, distill=cfg.distill.replace(use_rank=False))) == [
        "lr",
        "distill.use_rank",
    ]


def test_derived_generators_are_independent_and_reproducible():
    a = torch.rand(4, generator=step_generator(0, 1))
    assert torch.equal(a, torch.rand(4, generator=step_generator(0, 1)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(0, 2)))
    assert not torch.equal(a, torch.rand(4, generator=step_generator(1, 1)))
    assert not torch.equal(a, torch.rand(4, generator=derived_generator(0, 1, 1)))


# --------------------------------------------------------------------------------------------------
# Cancel token
# --------------------------------------------------------------------------------------------------
def test_cancel_token_file_request_and_signal(tmp_path):
    flag = tmp_path / "stop"
    token = CancelToken(flag)
    assert not token.cancelled
    flag.touch()
    assert token.cancelled and "cancel file" in token.reason
    token.acknowledge()
    assert not flag.exists()

    token = CancelToken()
    token.request("test")
    assert token.cancelled and token.reason == "test"

    token = CancelToken()
    before = signal.getsignal(signal.SIGTERM)
    with token.signal_handlers():
        os.kill(os.getpid(), signal.SIGTERM)
        assert token.cancelled and "SIGTERM" in token.reason
    assert signal.getsignal(signal.SIGTERM) is before


# --------------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------------
def test_one_step_changes_only_synthesis_and_superresolution_weights(tiny, tmp_path):
    result = stylize(make_config(tiny, tmp_path), on_event=Recorder())
    base = load_generator("tiny").generator.state_dict()
    tuned = generator_state(result.generator_path)
    assert base.keys() == tuned.keys()
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    trainable_weights = {
        name
        for name, p in load_generator("tiny").generator.named_parameters()
        if name.startswith(TRAINABLE_PREFIXES) and not name.endswith("bias")
    }
    # Nothing outside the trainable weights moved: mapping, decoder, ToRGB, background, biases, buffers.
    assert changed <= trainable_weights, sorted(changed - trainable_weights)
    assert not any(name.startswith(FROZEN_GROUPS) or name.endswith("bias") for name in changed)
    # Adam's first step moves every weight that received any gradient by about lr; nearly all do.
    assert len(changed) >= 0.9 * len(trainable_weights), sorted(trainable_weights - changed)
    steps = [(tuned[n] - base[n]).abs().max().item() for n in changed]
    assert max(steps) == pytest.approx(1e-4, rel=0.05)


@pytest.mark.parametrize(
    "distill, expect_grid",
    [
        (DistillConfig(method="sds"), True),
        (DistillConfig(method="sds", sds_variant="textbook", use_rank=False), True),
        (DistillConfig(use_mirror=False), True),
        (DistillConfig(use_grid=False), False),
        (DistillConfig(use_rank=False, tweedie_weight=0.0, ldis_weight=0.0), True),
    ],
    ids=["sds", "sds-textbook-norank", "no-mirror", "no-grid", "no-rank-no-regularisers"],
)
def test_switches_run_one_step(tiny, tmp_path, distill, expect_grid):
    recorder = Recorder()
    result = stylize(make_config(tiny, tmp_path, distill=distill), on_event=recorder)
    (started,) = recorder.of("started")
    assert started["stages"]["grid"] is expect_grid and started["stages"]["mirror"] is distill.use_mirror
    (progress,) = recorder.of("progress")
    assert ("grid" in progress["stages"]) is expect_grid
    assert math.isfinite(progress["loss"]) and result.step == 1
    if distill.tweedie_weight == 0 and distill.ldis_weight == 0:
        assert progress["losses"] == {} and progress["loss"] == 0.0
    base = load_generator("tiny").generator.state_dict()
    tuned = generator_state(result.generator_path)
    assert any(not torch.equal(base[n], tuned[n]) for n in base)


def test_official_compat_changes_only_the_alpha_bar_weight(tiny, tmp_path):
    runs = {}
    for compat in (False, True):
        recorder = Recorder()
        cfg = make_config(tiny, tmp_path / str(compat), distill=DistillConfig(official_compat=compat))
        stylize(cfg, on_event=recorder)
        runs[compat] = recorder.of("progress")[0]["stages"]
    alphas = build_schedule_alphas()
    for stage in ("single", "grid"):
        plain, compat = runs[False][stage], runs[True][stage]
        # Same seed → same DDIM step index and timestep; t = 981 − 20k for SD's 50-step leading schedule.
        assert plain["step_index"] == compat["step_index"] and plain["t"] == compat["t"] == 981 - 20 * plain["step_index"]
        assert plain["alpha_bar"] == pytest.approx(float(alphas[plain["t"]]), rel=1e-6)
        assert compat["alpha_bar"] == pytest.approx(float(alphas[compat["step_index"]]), rel=1e-6)
        assert compat["alpha_bar"] != pytest.approx(plain["alpha_bar"], rel=1e-3)


def build_schedule_alphas() -> torch.Tensor:
    """SD 1.5's scaled-linear ᾱ, computed by hand (β from 0.00085 to 0.012, linear in √β)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def test_missing_controlnets_disable_or_uncondition_their_stage(tiny, tmp_path, capsys):
    bare = tmp_path / "sd_without_controlnets"
    bare.mkdir()
    for entry in tiny.sd_folder.iterdir():
        if not entry.name.startswith("controlnet_"):
            (bare / entry.name).symlink_to(entry)
    recorder = Recorder()
    cfg = make_config(tiny, tmp_path / "out", diffusion=str(bare), edge_controlnet=str(tiny.edge))
    stylize(cfg, on_event=recorder)
    assert recorder.of("started")[0]["stages"] == {"single": "edge", "mirror": True, "grid": False, "rank": True}
    assert "grid stage is disabled" in capsys.readouterr().err

    recorder = Recorder()
    cfg = make_config(tiny, tmp_path / "out2", diffusion=str(bare), depth_controlnet=str(tiny.depth))
    stylize(cfg, on_event=recorder)
    assert recorder.of("started")[0]["stages"]["single"] == "unconditioned"
    assert "grid" in recorder.of("progress")[0]["stages"]
    assert "without Canny conditioning" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Checkpoints, resume, cancel
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_straight_run_events_checkpoints_and_previews(straight_run):
    config, result, recorder = straight_run
    names = [e for e, _ in recorder.events]
    assert names[0] == "started" and names[-1] == "done"
    progress = recorder.of("progress")
    assert [p["step"] for p in progress] == [1, 2, 3, 4] and all(p["total"] == 4 for p in progress)
    assert all(set(p) >= {"step", "total", "loss", "preview"} for p in progress)
    assert [p["preview"] is not None for p in progress] == [False, True, False, True]
    assert all(Path(p["preview"]).is_file() for p in progress if p["preview"])
    assert [c["step"] for c in recorder.of("checkpoint")] == [1, 2, 3, 4]
    out = Path(config.out_dir)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000003", "step_000004"]
    latest = read_latest(out)
    assert latest.step == 4 and latest.config == config and latest.folder == result.checkpoint
    G = load_generator(result.generator_path).generator
    assert G.config.name == "tiny"
    extra = load_checkpoint(result.generator_path)[2]
    assert extra["prompt"] == PROMPT and extra["step"] == 4 and extra["method"] == "ld"
    assert StylizeConfig.from_dict(extra["stylize"]) == config


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(straight_run, tiny, tmp_path):
    config, result, _ = straight_run
    first = make_config(tiny, tmp_path, steps=2, checkpoint_every=1, keep_checkpoints=2, preview_every=2)
    stylize(first, on_event=Recorder())
    recorder = Recorder()
    resumed = stylize(first.replace(steps=4), on_event=recorder, resume=True)
    assert recorder.of("started")[0]["resumed"] and recorder.of("started")[0]["step"] == 2
    assert [p["step"] for p in recorder.of("progress")] == [3, 4]
    expected, actual = generator_state(result.generator_path), generator_state(resumed.generator_path)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name

    # Resuming a finished run does nothing and points at the last checkpoint.
    again = stylize(first.replace(steps=4), on_event=Recorder(), resume=True)
    assert again.step == 4 and again.checkpoint == resumed.checkpoint


@pytest.mark.slow
def test_cancel_file_stops_after_the_step_with_a_valid_checkpoint(straight_run, tiny, tmp_path):
    flag = tmp_path / "cancel"

    def create_flag_at_step_two(event, fields):
        if event == "progress" and fields["step"] == 2:
            flag.touch()

    recorder = Recorder(create_flag_at_step_two)
    cfg = make_config(tiny, tmp_path / "out", steps=4, checkpoint_every=0)
    result = stylize(cfg, CancelToken(flag), on_event=recorder)
    assert result.cancelled and result.step == 2
    assert [e for e, _ in recorder.events][-2:] == ["checkpoint", "cancelled"]
    assert recorder.of("cancelled")[0]["step"] == 2 and "cancel file" in recorder.of("cancelled")[0]["reason"]
    assert not flag.exists()  # consumed, so the resumed run below is not stopped at once
    assert read_latest(cfg.out_dir).step == 2
    load_generator(result.generator_path)

    # The cancelled run continues to the same parameters as the straight run.
    resumed = stylize(cfg, CancelToken(flag), on_event=Recorder(), resume=True)
    expected = generator_state(straight_run[1].generator_path)
    actual = generator_state(resumed.generator_path)
    assert all(torch.equal(expected[n], actual[n]) for n in expected)


def test_resume_refusals(straight_run, tiny, tmp_path):
    config = straight_run[0]
    with pytest.raises(ConfigError, match="prompt"):
        stylize(config.replace(prompt="a statue"), on_event=Recorder(), resume=True)
    with pytest.raises(ConfigError, match="already holds a stylization run"):
        stylize(config, on_event=Recorder())
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        stylize(make_config(tiny, tmp_path), on_event=Recorder(), resume=True)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_prints_json_lines_and_resumes(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["stylize", "--prompt", PROMPT, "--generator", "tiny", "--diffusion", str(tiny.sd_folder)]
    args += ["--out", str(out), "--steps", "1", "--device", "cpu", "--no-grid", "--method", "sds", "--seed", "3"]
    assert cli_main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["started", "progress", "checkpoint", "done"]
    progress = records[1]
    assert progress["step"] == 1 and progress["total"] == 1 and isinstance(progress["loss"], float)
    saved = read_latest(out).config
    assert saved.seed == 3 and saved.distill.method == "sds" and not saved.distill.use_grid
    assert Path(saved.diffusion).is_absolute()

    assert cli_main(["stylize", "--out", str(out), "--resume", "--steps", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert records[0]["event"] == "started" and records[0]["resumed"] and records[-1]["step"] == 2


def test_cli_bad_paths_are_one_line_errors(tiny, tmp_path, capsys):
    common = ["--prompt", PROMPT, "--out", str(tmp_path / "o"), "--device", "cpu"]
    missing = tmp_path / "nope.safetensors"
    assert cli_main(["stylize", "--generator", str(missing), "--diffusion", str(tiny.sd_folder), *common]) == 2
    assert str(missing) in capsys.readouterr().err
    assert cli_main(["stylize", "--generator", "tiny", "--diffusion", str(tmp_path / "no_sd"), *common]) == 2
    assert "no_sd" in capsys.readouterr().err
    bad_cn = tmp_path / "no_controlnet"
    args = ["stylize", "--generator", "tiny", "--diffusion", str(tiny.sd_folder), "--edge-controlnet", str(bad_cn)]
    assert cli_main([*args, *common]) == 2
    assert str(bad_cn) in capsys.readouterr().err
    assert cli_main(["stylize", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "latest" in capsys.readouterr().err
    assert cli_main(["stylize", "--out", str(tmp_path / "o2"), "--generator", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "--prompt" in err and "--diffusion" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------
# Stage internals
# --------------------------------------------------------------------------------------------------
def test_grid_stage_gradient_stops_before_super_resolution(tiny, tmp_path):
    from engine.generator.camera import sample_cameras
    from engine.stylize.loop import _build_run
    from engine.stylize.step import NullPhases, StepReport, grid_loss, sample_ws

    ctx = _build_run(make_config(tiny, tmp_path), torch.device("cpu"), None).ctx
    assert (ctx.sizes.native, ctx.sizes.latent, ctx.sizes.tile, ctx.sizes.latent_tile) == (32, 8, 16, 4)
    rng = torch.Generator().manual_seed(0)
    ws = sample_ws(ctx, 2, rng)
    planes = ctx.trainable.synthesize_planes(ws)
    leaf = planes.detach().requires_grad_(True)
    with torch.no_grad():
        frozen_planes = ctx.frozen.synthesize_planes(ws)
    cams = sample_cameras(8, (-math.pi, math.pi), (-0.5, 0.5), rng, ctx.camera).c
    report = StepReport()
    loss = grid_loss(ctx, ws, leaf, frozen_planes, cams, 40, rng, NullPhases(), report)
    assert loss.item() == 0.0  # a pure surrogate
    loss.backward()
    assert all(p.grad is None for p in ctx.trainable.superresolution.parameters())
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    assert report.stages["grid"]["step_index"] == 40


def test_training_state_errors(tmp_path):
    from engine.stylize.training_state import prune_checkpoints, read_training_state

    (tmp_path / "latest").write_text("checkpoints/step_000001\n")
    with pytest.raises(CheckpointError, match="state.json"):
        read_latest(tmp_path)
    folder = tmp_path / "checkpoints" / "step_000001"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        read_training_state(folder)
    for step in (2, 3, 4):
        (tmp_path / "checkpoints" / f"step_{step:06d}").mkdir()
    deleted = prune_checkpoints(tmp_path, keep=2)
    # step 1 is what 'latest' names, so it survives even though it is the oldest.
    assert sorted(p.name for p in deleted) == ["step_000002"]


def test_neural_resolution_override_reaches_every_training_render(tiny, tmp_path, monkeypatch):
    """Both stages (and the frozen edge/depth renders) ray-march at the configured resolution."""
    from engine.generator.triplane import TriPlaneGenerator

    seen = []
    original = TriPlaneGenerator.render

    def spy(self, ws, c, options=None, planes=None):
        out = original(self, ws, c, options, planes=planes)
        seen.append((options.neural_resolution, out["image_raw"].shape[-1]))
        return out

    monkeypatch.setattr(TriPlaneGenerator, "render", spy)
    stylize(make_config(tiny, tmp_path, neural_resolution=16), on_event=Recorder())
    assert len(seen) >= 4 and all(res == 16 and size == 16 for res, size in seen), seen
    with pytest.raises(ConfigError, match="neural_resolution"):
        make_config(tiny, tmp_path, neural_resolution=4).validate()


def test_a_single_head_field_stylizes_its_own_tri_grid_and_decoder(tiny, tmp_path):
    """Head mode: the tri-grid, decoder and super-resolution train; the unused mapping/synthesis do not."""
    from engine.generator.loading import save_generator

    G = load_generator("tiny").generator
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(3)), torch.zeros(1, 25))
    G.make_single_head(G.synthesize_planes(ws), ws)
    field = save_generator(G, tmp_path / "head.safetensors")
    result = stylize(make_config(tiny, tmp_path / "run", generator=str(field)), on_event=Recorder())
    base, tuned = generator_state(field), generator_state(result.generator_path)
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    assert "head_planes" in changed and any(n.startswith("decoder.") for n in changed)
    assert any(n.startswith("superresolution.") for n in changed)
    assert not any(n.startswith(("backbone.", "torgb.", "head_ws")) for n in changed), sorted(changed)


def test_the_trainable_copy_starts_from_superresolution_start_and_the_frozen_keeps_its_own(tiny, tmp_path):
    """Head mode's stylization starts from the fit's super-resolution (before its polish): the trainable
    copy gets the file's weights, the frozen copy — the source's renders — keeps the generator's."""
    import safetensors.torch

    from engine.errors import CheckpointError
    from engine.stylize.loop import _build_run

    G = load_generator("tiny").generator
    own = {name: value.clone() for name, value in G.superresolution.state_dict().items()}
    start = {name: value + 0.25 * torch.randn(value.shape, generator=torch.Generator().manual_seed(len(name)))
             if value.is_floating_point() else value for name, value in own.items()}
    path = tmp_path / "start.safetensors"
    safetensors.torch.save_file({n: v.contiguous() for n, v in start.items()}, str(path))
    ctx = _build_run(make_config(tiny, tmp_path / "run", superresolution_start=str(path)), torch.device("cpu"), None).ctx
    trained, frozen = ctx.trainable.superresolution.state_dict(), ctx.frozen.superresolution.state_dict()
    assert all(torch.equal(trained[n], start[n]) for n in start)
    assert all(torch.equal(frozen[n], own[n]) for n in own)
    assert any(not torch.equal(start[n], own[n]) for n in own)  # the check above can tell them apart
    # without it both start alike
    plain = _build_run(make_config(tiny, tmp_path / "plain"), torch.device("cpu"), None).ctx
    assert all(torch.equal(plain.trainable.superresolution.state_dict()[n], own[n]) for n in own)
    # a file for another architecture is refused by name, before any training
    safetensors.torch.save_file({"weight": torch.zeros(3)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match="wrong.safetensors"):
        _build_run(make_config(tiny, tmp_path / "bad", superresolution_start=str(tmp_path / "wrong.safetensors")),
                   torch.device("cpu"), None)
