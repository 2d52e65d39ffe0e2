"""One stylization step, wired correctly: the optimiser descends the distillation gradient, the mirror view is
rendered from the mirrored camera and gets the flipped gradient at the right weight, and each switch (mirror,
grid, rank) changes exactly the gradient it owns.

The tiny generator and the tiny random diffusion folder are used as they are; only randomness is pinned so
that runs with different switches can be compared number for number: the renderer runs without ray jitter,
the VAE returns its posterior mean and the diffusion noise is a fixed draw (:class:`SpyGuidance`). The spy
also records what the step handed to the diffusion model and the gradient that arrived at every latent.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

import engine.stylize.step as step_module
from engine.distill import DistillConfig, alpha_bar_for, distillation_gradient
from engine.generator.camera import mirror_camera, sample_cameras
from engine.generator.triplane import RenderOptions
from engine.guidance import Guidance
from engine.stylize.config import StylizeConfig
from engine.stylize.loop import _build_run
from engine.stylize.step import compute_step_gradients, sample_ws, step_generator

pytestmark = pytest.mark.usefixtures("single_thread")

STEP = 3


class SpyGuidance:
    """The real tiny :class:`Guidance`, deterministic and recorded.

    ``calls`` holds one dict per ``encode_images`` → ``score_step`` pair (the single-view stage first, then
    the grid stage): ``latents`` (as encoded), ``out`` (the guidance output), ``latent_grad`` (the gradient
    the surrogate loss pushed into those latents, filled in by backward).
    """

    def __init__(self, inner: Guidance):
        self.inner = inner
        self.calls: list[dict] = []

    def __getattr__(self, name):  # models, alphas_cumprod, decode_latents, …
        return getattr(self.inner, name)

    def encode_images(self, images, generator=None):
        latents = self.inner.encode_images(images, sample=False)
        call = {"latents": latents.detach().clone()}
        self.calls.append(call)
        if latents.requires_grad:
            latents.register_hook(lambda grad, call=call: call.__setitem__("latent_grad", grad.detach().clone()))
        return latents

    def score_step(self, latents, step_index, control=None, generator=None):
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1234)).to(latents)
        out = self.inner.score_step(latents, step_index, control, noise=noise)
        self.calls[-1]["out"] = out
        return out


@pytest.fixture(scope="module")
def guidance(tiny_diffusion):
    from engine.guidance import GuidanceConfig

    return Guidance.from_folder(tiny_diffusion.sd_folder, edge_controlnet=tiny_diffusion.edge,
                                depth_controlnet=tiny_diffusion.depth, config=GuidanceConfig(prompt="a zombie head"),
                                device="cpu")


@pytest.fixture(autouse=True)
def no_ray_jitter(monkeypatch):
    """The step's renders without stratified jitter, so two runs render the same pixels."""
    monkeypatch.setattr(step_module, "RenderOptions", functools.partial(RenderOptions, deterministic_samples=True))


def assert_same(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-4) -> None:
    """Equal up to ``rel`` of the larger tensor's largest entry (gradients here are ~1e-3 or far smaller, so
    assert_close's absolute default tolerance would pass almost anything)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(actual.abs().max()), float(expected.abs().max()))
    assert scale > 0, "both tensors are zero: nothing is compared"
    err = float((actual - expected).abs().max())
    assert err <= rel * scale, f"max difference {err:.3g} vs largest entry {scale:.3g}"


def make_run(tiny_diffusion, guidance, tmp_path, lr=1e-4, batch_size=1, **distill):
    config = StylizeConfig(prompt="a zombie head", generator="tiny", diffusion=str(tiny_diffusion.sd_folder),
                           out_dir=str(tmp_path), steps=1, lr=lr, device="cpu", batch_size=batch_size,
                           distill=DistillConfig(**distill))
    spy = SpyGuidance(guidance)
    run = _build_run(config.validate(), torch.device("cpu"), None, spy)
    return run, spy


def one_step(run, spy) -> dict[str, torch.Tensor]:
    """Gradients of step ``STEP`` (parameters' .grad by name); ``spy.calls`` is reset first."""
    spy.calls.clear()
    run.optimizer.zero_grad(set_to_none=True)
    report, _ = compute_step_gradients(run.ctx, STEP, run.memory, list(run.named_params.values()))
    assert report.finite
    return {n: p.grad.detach().clone() for n, p in run.named_params.items() if p.grad is not None}


def expected_gradient(run, call, mask=None, **changes) -> torch.Tensor:
    """The distillation gradient of a recorded guidance call, computed from its noise predictions."""
    d = dataclasses.replace(run.ctx.config.distill, **changes)
    out = call["out"]
    alpha = alpha_bar_for(run.ctx.guidance.alphas_cumprod, out.t, out.step_index, d.official_compat)
    return distillation_gradient(d, out.eps_text, out.eps_uncond, out.noise, alpha, mask=mask, stage=call.get("stage", "single"))


def single_cameras(run) -> torch.Tensor:
    """The cameras step ``STEP`` draws for its single-view stage (the step's first draws after the latents)."""
    cfg = run.ctx.config
    rng = step_generator(cfg.seed, STEP)
    sample_ws(run.ctx, cfg.batch_size, rng)
    return sample_cameras(cfg.batch_size, cfg.single_yaw_range, cfg.single_pitch_range, rng, run.ctx.camera).c


def spy_trainable_renders(run, monkeypatch) -> list[dict]:
    """Record every call of the trainable generator's render: cameras and outputs."""
    records: list[dict] = []
    inner = run.ctx.trainable.render

    def render(ws, c, options=None, **kwargs):
        out = inner(ws, c, options, **kwargs)
        records.append({"cameras": c.detach().clone(), "options": options,
                        "mask": out["image_mask"].detach().clone(), "planes": kwargs["planes"].shape[0]})
        return out

    monkeypatch.setattr(run.ctx.trainable, "render", render)
    return records


# --------------------------------------------------------------------------------------------------
# The optimiser descends the distillation gradient
# --------------------------------------------------------------------------------------------------
def test_one_optimizer_step_moves_the_rendered_latent_along_minus_the_gradient(tiny_diffusion, guidance, tmp_path):
    """After one Adam step on the step's gradients, the same render's latent has moved *against* the
    distillation gradient g (⟨Δlatent, g⟩ < 0): the convention that makes the step raise the prompt's
    likelihood. Only the distillation term acts here (no mirror, grid, Tweedie or LDIS)."""
    run, spy = make_run(tiny_diffusion, guidance, tmp_path, use_mirror=False, use_grid=False, tweedie_weight=0.0,
                        ldis_weight=0.0, mask_gradients=False)
    one_step(run, spy)
    (call,) = spy.calls
    g = expected_gradient(run, call)
    assert g.abs().sum() > 0
    assert_same(call["latent_grad"], g)  # the surrogate pushed exactly g into the latent
    before = call["latents"]
    run.optimizer.step()
    one_step(run, spy)  # same step number → same head, cameras and noise; only the weights changed
    moved = spy.calls[0]["latents"] - before
    assert moved.abs().max() > 0
    along = float((moved * g).sum()) / (float(moved.norm()) * float(g.norm()))
    assert along < 0, f"the latent moved along +g (cosine {along:.3f}): the step descends the wrong way"


# --------------------------------------------------------------------------------------------------
# Mirror wiring
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [1, 2])
def test_mirror_view_uses_the_mirrored_camera_and_gets_a_quarter_of_the_flipped_gradient(
    tiny_diffusion, guidance, tmp_path, monkeypatch, batch_size
):
    run, spy = make_run(tiny_diffusion, guidance, tmp_path, use_grid=False, batch_size=batch_size)
    renders = spy_trainable_renders(run, monkeypatch)
    one_step(run, spy)
    (render,) = renders
    (call,) = spy.calls
    b = run.ctx.config.batch_size
    cams = render["cameras"]
    # One render call, head by head (each head's two views read its one tri-grid): rows 2h, 2h + 1.
    assert cams.shape[0] == 2 * b and render["planes"] == b
    assert_same(cams[0::2], single_cameras(run))  # head h's first view: the drawn camera
    assert_same(cams[1::2], mirror_camera(cams[0::2]))  # its second: the mirror image
    assert not torch.allclose(cams[1::2], cams[0::2])

    # The diffusion model scored the base views only (all heads' base views first, then the mirrors); its
    # gradient g feeds both latents.
    assert call["out"].eps_text.shape[0] == b and call["latents"].shape[0] == 2 * b
    g = expected_gradient(run, call, mask=render["mask"][0::2])
    assert g.abs().sum() > 0 and not torch.allclose(g, torch.flip(g, dims=[-1]))  # a flip is visible
    grad = call["latent_grad"]
    assert_same(grad[:b], 0.75 * g)
    assert_same(grad[b:], 0.25 * torch.flip(g, dims=[-1]))


# --------------------------------------------------------------------------------------------------
# Each switch changes exactly its own gradient
# --------------------------------------------------------------------------------------------------
# Gradient masking is off in these runs, so a stage's expected gradient follows from its noise predictions alone.
UNMASKED = {"mask_gradients": False}


@pytest.fixture(scope="module")
def full_step(tiny_diffusion, guidance, tmp_path_factory):
    """Step ``STEP`` with every switch on (the defaults, unmasked): parameter gradients and the spy's calls."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(step_module, "RenderOptions", functools.partial(RenderOptions, deterministic_samples=True))
        run, spy = make_run(tiny_diffusion, guidance, tmp_path_factory.mktemp("full"), **UNMASKED)
        grads = one_step(run, spy)
    single, grid = spy.calls  # single view, then grid
    b = run.ctx.config.batch_size
    g = expected_gradient(run, single)
    assert_same(single["latent_grad"], torch.cat([0.75 * g, 0.25 * torch.flip(g, dims=[-1])]))
    assert_same(grid["latent_grad"], expected_gradient(run, {**grid, "stage": "grid"}))
    assert single["latents"].shape[0] == 2 * b
    return run, grads, single, grid


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names) -> bool:
    """Whether any of ``names`` differs by more than 1e-3 of its largest entry."""
    return any(float((a[n] - b[n]).abs().max()) > 1e-3 * max(float(a[n].abs().max()), float(b[n].abs().max()), 1e-30)
               for n in names)


def test_mirror_switch_changes_only_the_single_view_weights(full_step, tiny_diffusion, guidance, tmp_path):
    full_run, full_grads, full_single, full_grid = full_step
    run, spy = make_run(tiny_diffusion, guidance, tmp_path, use_mirror=False, **UNMASKED)
    grads = one_step(run, spy)
    single, grid = spy.calls
    b = run.ctx.config.batch_size
    assert single["latents"].shape[0] == b  # no mirror render
    assert_same(single["latents"], full_single["latents"][:b])
    g = expected_gradient(run, single)
    assert_same(g, expected_gradient(full_run, full_single))  # the same score …
    assert_same(single["latent_grad"], g)  # … at full weight, and no mirrored latent
    assert_same(grid["latent_grad"], full_grid["latent_grad"])  # the grid stage is untouched
    assert _changed(grads, full_grads, grads.keys() & full_grads.keys())


def test_grid_switch_removes_only_the_grid_stage(full_step, tiny_diffusion, guidance, tmp_path):
    _, full_grads, full_single, _ = full_step
    run, spy = make_run(tiny_diffusion, guidance, tmp_path, use_grid=False, **UNMASKED)
    grads = one_step(run, spy)
    (single,) = spy.calls  # no grid call
    assert_same(single["latents"], full_single["latents"])
    assert_same(single["latent_grad"], full_single["latent_grad"])  # single view untouched
    # The grid gradient reaches the synthesis weights only (it stops before super-resolution) …
    sr = {n for n in full_grads if n.startswith("superresolution.")}
    assert sr and not _changed(grads, full_grads, sr)
    assert _changed(grads, full_grads, full_grads.keys() - sr)
    # … and what it adds is exactly the grid stage's own gradient: the full step minus the step without the
    # grid equals a step in which only the grid stage acts (single view and LDIS multiplied by 0).
    with pytest.MonkeyPatch.context() as mp:
        single_view_loss = step_module.single_view_loss
        mp.setattr(step_module, "single_view_loss", lambda *a, **k: 0.0 * single_view_loss(*a, **k))
        mp.setattr(step_module, "ldis_term", lambda *a, **k: None)
        grid_run, grid_spy = make_run(tiny_diffusion, guidance, tmp_path / "grid-only", **UNMASKED)
        grid_only = one_step(grid_run, grid_spy)
    for name, full in full_grads.items():
        assert_same(full, grads.get(name, torch.zeros_like(full)) + grid_only.get(name, torch.zeros_like(full)), rel=1e-3)


def test_rank_switch_changes_only_the_single_view_score(full_step, tiny_diffusion, guidance, tmp_path):
    full_run, full_grads, full_single, full_grid = full_step
    run, spy = make_run(tiny_diffusion, guidance, tmp_path, use_rank=False, **UNMASKED)
    grads = one_step(run, spy)
    single, grid = spy.calls
    b = run.ctx.config.batch_size
    assert_same(single["out"].eps_text, full_single["out"].eps_text)  # same noise predictions
    plain, ranked = expected_gradient(run, single), expected_gradient(full_run, full_single)
    assert not torch.allclose(plain, ranked, rtol=1e-3, atol=1e-7)  # re-weighting changes the score
    assert_same(single["latent_grad"][:b], 0.75 * plain)  # the single view takes the plain score
    assert_same(full_single["latent_grad"][:b], 0.75 * ranked)
    assert_same(grid["latent_grad"], full_grid["latent_grad"])  # rank is off in the grid stage
    assert _changed(grads, full_grads, grads.keys() & full_grads.keys())


# --------------------------------------------------------------------------------------------------
# Source anchor (head mode's regulariser)
# --------------------------------------------------------------------------------------------------
def test_the_anchor_is_silent_on_the_source_and_pulls_a_changed_head_back(tiny_diffusion, guidance, tmp_path):
    """The anchor compares the trainable render with the frozen (source) render of the *same* cameras: zero
    while the two generators agree; once the head has moved away, Adam steps on the anchor alone (the
    distillation gradient divided away) bring its terms down. Rendering the source from other cameras, a
    flipped sign or anchoring the trainable render to itself would each fail this."""
    anchor = dict(use_mirror=False, use_grid=False, tweedie_weight=0.0, ldis_weight=0.0,
                  anchor_image_weight=1.0, anchor_geometry_weight=1.0)
    run, spy = make_run(tiny_diffusion, guidance, tmp_path, lr=2e-3, **anchor)
    params = list(run.named_params.values())
    report, _ = compute_step_gradients(run.ctx, STEP, run.memory, params)
    assert report.losses["anchor_image"] == 0.0 and report.losses["anchor_geometry"] == 0.0

    off, _ = make_run(tiny_diffusion, guidance, tmp_path, grad_divisor=1e12,
                      **{**anchor, "anchor_image_weight": 0.0, "anchor_geometry_weight": 0.0})
    on, _ = make_run(tiny_diffusion, guidance, tmp_path, lr=3e-4, grad_divisor=1e12, **anchor)
    with torch.no_grad():  # move the trainable head away from its source
        for name, p in on.ctx.trainable.named_parameters():
            if name in on.named_params:
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    losses = []
    for _ in range(6):
        on.optimizer.zero_grad(set_to_none=True)
        report, _ = compute_step_gradients(on.ctx, STEP, on.memory, list(on.named_params.values()))
        losses.append(report.losses["anchor_image"] + report.losses["anchor_geometry"])
        on.optimizer.step()
    assert losses[0] > 0 and losses[-1] < 0.7 * losses[0], losses
    off.optimizer.zero_grad(set_to_none=True)
    report, _ = compute_step_gradients(off.ctx, STEP, off.memory, list(off.named_params.values()))
    assert not any(k.startswith("anchor") for k in report.losses)  # off: no term, no extra render
