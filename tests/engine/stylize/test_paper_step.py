"""The paper recipe inside a training step: the grid's depth control from a depth network (a tiny random
transformers Depth Anything, run through the loop's own loading) on the frozen generator's super-resolved
renders; without one, the generator's depth rendered at a grid tile; random synthesis noise drawn from the
step's own stream, so a step is still reproducible (what resuming relies on)."""

from __future__ import annotations

import functools

import pytest
import torch

import engine.stylize.step as step_module
from engine.distill import DistillConfig, tile_2x2
from engine.generator.triplane import RenderOptions
from engine.guidance.control import depth_control
from engine.stylize.config import StylizeConfig
from engine.stylize.loop import _build_run, _grid_depth_source
from engine.stylize.step import compute_step_gradients
from tests.engine.guidance.test_depth_estimator import build_tiny_depth_model
from tests.engine.stylize.test_step import STEP, SpyGuidance, assert_same, guidance  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def no_ray_jitter(monkeypatch):
    monkeypatch.setattr(step_module, "RenderOptions", functools.partial(RenderOptions, deterministic_samples=True))


class ControlSpy(SpyGuidance):
    """Also records the control images each diffusion call was given."""

    def score_step(self, latents, step_index, control=None, generator=None):
        out = super().score_step(latents, step_index, control, generator)
        self.calls[-1]["control"] = {k: v.detach().clone() for k, v in (control or {}).items()}
        return out


def build(tiny_diffusion, guidance, tmp_path, **top):
    config = StylizeConfig(prompt="a zombie head", generator="tiny", diffusion=str(tiny_diffusion.sd_folder),
                           out_dir=str(tmp_path), steps=1, device="cpu", distill=DistillConfig(use_mirror=False), **top)
    spy = ControlSpy(guidance)
    return _build_run(config.validate(), torch.device("cpu"), None, spy), spy


def frozen_renders(run, monkeypatch) -> list[dict]:
    records = []
    inner = run.ctx.frozen.render

    def render(ws, c, options=None, **kwargs):
        out = inner(ws, c, options, **kwargs)
        records.append({"options": options, "cameras": c.detach().clone(), **{k: v.detach().clone() for k, v in out.items()}})
        return out

    monkeypatch.setattr(run.ctx.frozen, "render", render)
    return records


def grid_step(run, spy):
    spy.calls.clear()
    compute_step_gradients(run.ctx, STEP, run.memory, list(run.named_params.values()))
    (grid,) = [call for call in spy.calls if "depth" in call["control"]]
    return grid


def test_a_depth_model_makes_the_grid_control_from_the_frozen_super_resolved_renders(tiny_diffusion, guidance, tmp_path,
                                                                                      monkeypatch):
    folder = build_tiny_depth_model(tmp_path / "depth")
    run, spy = build(tiny_diffusion, guidance, tmp_path / "run", depth_model=str(folder))
    estimator = run.ctx.depth_estimator
    assert estimator is not None and "depth network" in _grid_depth_source(run.ctx)
    seen = []

    def recording(images):
        out = type(estimator).__call__(estimator, images)
        seen.append((images.detach().clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(run.ctx, "depth_estimator", recording)
    renders = frozen_renders(run, monkeypatch)
    grid = grid_step(run, spy)
    ((images, depth),) = seen
    sr = [r for r in renders if r["options"].run_superresolution and r["cameras"].shape[0] == 4]
    assert len(sr) == 1 and images.shape == (4, 3, 64, 64)  # the four grid views, super-resolved (64² for tiny)
    assert sr[0]["options"].neural_resolution == run.ctx.config.neural_resolution  # from the training renders' rays
    assert_same(images, sr[0]["image"])  # the network saw the frozen generator's SR renders …
    assert_same(grid["control"]["depth"], tile_2x2(depth.expand(-1, 3, -1, -1)))  # … and the ControlNet its output
    assert float(depth.amin()) == 0.0 and float(depth.amax()) > 0.99  # min–max over the whole image


def test_without_a_depth_model_the_paper_renders_the_generators_depth_at_a_grid_tile(tiny_diffusion, guidance, tmp_path,
                                                                                      monkeypatch):
    run, spy = build(tiny_diffusion, guidance, tmp_path / "paper", depth_resolution=256, neural_resolution=8)
    assert run.ctx.depth_estimator is None and run.ctx.sizes.tile == 16
    assert _grid_depth_source(run.ctx) == "generator depth at 16²"  # 256 capped at the tiny model's 16² tiles
    renders = frozen_renders(run, monkeypatch)
    grid = grid_step(run, spy)
    (depth_render,) = [r for r in renders if r["cameras"].shape[0] == 4]
    assert depth_render["options"].neural_resolution == 16 and depth_render["image_depth"].shape[-1] == 16
    assert_same(grid["control"]["depth"], tile_2x2(depth_control(depth_render["image_depth"], depth_render["image_mask"])))
    ours, ours_spy = build(tiny_diffusion, guidance, tmp_path / "ours", neural_resolution=8)
    ours_renders = frozen_renders(ours, monkeypatch)
    grid_step(ours, ours_spy)
    (ours_render,) = [r for r in ours_renders if r["cameras"].shape[0] == 4]
    assert ours_render["image_depth"].shape[-1] == 8  # ours: the training renders' own resolution
    assert _grid_depth_source(ours.ctx) == "generator depth at 8²"
    finer, _ = build(tiny_diffusion, guidance, tmp_path / "finer", depth_resolution=256)  # 32² training renders
    assert _grid_depth_source(finer.ctx) == "generator depth at 32²"  # never below the training renders'
    assert _grid_depth_source(build(tiny_diffusion, guidance, tmp_path / "own")[0].ctx) == "generator depth at 32²"


def _noisy(run):
    """Give every synthesis layer a visible noise weight (a fresh generator's are 0), frozen and trainable alike."""
    with torch.no_grad():
        for G in (run.ctx.frozen, run.ctx.trainable):
            for module in G.modules():
                if hasattr(module, "noise_strength"):
                    module.noise_strength.fill_(0.3)
    return run


def _gradients(run):
    run.optimizer.zero_grad(set_to_none=True)
    compute_step_gradients(run.ctx, STEP, run.memory, list(run.named_params.values()))
    return {n: p.grad.detach().clone() for n, p in run.named_params.items() if p.grad is not None}


def test_random_noise_is_drawn_from_the_steps_stream_so_a_step_is_reproducible(tiny_diffusion, guidance, tmp_path,
                                                                                monkeypatch):
    torch.manual_seed(123)
    run_a = _noisy(build(tiny_diffusion, guidance, tmp_path / "a", noise_mode="random")[0])
    modes = []
    for G in (run_a.ctx.frozen, run_a.ctx.trainable):
        inner = G.synthesize_planes
        monkeypatch.setattr(G, "synthesize_planes",
                            lambda ws, noise_mode="const", inner=inner: modes.append(noise_mode) or inner(ws, noise_mode))
    random_a = _gradients(run_a)
    assert modes == ["random", "random"]  # the frozen and the trainable generator both synthesise with fresh noise
    torch.manual_seed(999)  # another global state: the step's noise must not come from it
    run_b = _noisy(build(tiny_diffusion, guidance, tmp_path / "b", noise_mode="random")[0])
    before = torch.get_rng_state()
    random_b = _gradients(run_b)
    assert torch.equal(before, torch.get_rng_state())  # the global random state is not consumed
    const = _gradients(_noisy(build(tiny_diffusion, guidance, tmp_path / "c")[0]))
    for name in random_a:
        assert torch.equal(random_a[name], random_b[name]), name  # the same step twice: the same gradients
    assert any(float((random_a[n] - const[n]).abs().max()) > 1e-3 * float(const[n].abs().max()) for n in const)
