"""W+ inversion: recovers a generator's own render better than its start, writes the latent format the
renderer reads, pivotal tuning leaves the base generator alone; plus the acceptance check on the embedded
pack (inverted procedural scans resemble their source more than an unrelated head does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.errors import ConfigError, InputError
from engine.generator.inference import load_w_plus
from engine.generator.loading import load_generator
from engine.generator.triplane import RenderOptions
from engine.heads.invert import (
    InversionConfig,
    InversionTarget,
    composite,
    encoder_embedder,
    feature_pyramid,
    invert,
    mean_w,
    save_inversion,
    scan_cameras,
)

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[3]
FAST = InversionConfig(steps=12, neural_resolution=16, start_candidates=0, views_per_step=2, learning_rate=0.08, feature_weight=0.2)


@pytest.fixture(scope="module")
def tiny():
    return load_generator("tiny", "cpu", init_seed=3).generator


@pytest.fixture(scope="module")
def own_render_target(tiny):
    """Renders of a known latent (far from the mean) from three cameras."""
    cams, names = scan_cameras(tiny, (0.0, 50.0, -50.0), (0.0, 0.0, 0.0))
    ws = mean_w(tiny) + 0.8 * torch.randn(1, tiny.num_ws, tiny.w_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = tiny.render(ws.expand(3, -1, -1), cams, RenderOptions(neural_resolution=16, background="none", deterministic_samples=True, run_superresolution=False))
    mask = out["image_mask"]
    return InversionTarget(out["image_raw"].clamp(-1, 1), mask, cams, names), ws


def test_inversion_improves_on_its_start(tiny, own_render_target):
    target, _ = own_render_target
    start = invert(tiny, target, FAST.replace(steps=0))
    result = invert(tiny, target, FAST)
    assert result.w_plus.shape == (1, tiny.num_ws, tiny.w_dim)
    assert set(result.view_errors) == set(target.names)
    assert np.mean(list(result.view_errors.values())) < 0.8 * np.mean(list(start.view_errors.values()))
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3])


def test_inversion_is_deterministic(tiny, own_render_target):
    target, _ = own_render_target
    a = invert(tiny, target, FAST.replace(steps=2))
    b = invert(tiny, target, FAST.replace(steps=2))
    torch.testing.assert_close(a.w_plus, b.w_plus)


def test_saved_latent_reads_back_with_the_renderers_loader(tiny, own_render_target, tmp_path):
    target, _ = own_render_target
    result = invert(tiny, target, FAST.replace(steps=1))
    path = save_inversion(result, tmp_path / "w.npz")
    torch.testing.assert_close(load_w_plus(path, tiny), result.w_plus)
    with np.load(path) as archive:
        assert list(archive["view_names"]) == list(target.names)
        np.testing.assert_allclose(archive["view_errors"], [result.view_errors[n] for n in target.names])


def test_pivotal_tuning_returns_weights_and_keeps_the_base(tiny, own_render_target):
    target, _ = own_render_target
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    result = invert(tiny, target, FAST.replace(steps=2, pti_steps=2))
    assert result.tuned_state and all(k.startswith("backbone.synthesis") for k in result.tuned_state)
    assert any(not torch.equal(v, before[k]) for k, v in result.tuned_state.items())
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())
    assert len(result.losses) == 4


def test_best_start_is_chosen(tiny, own_render_target):
    target, _ = own_render_target
    result = invert(tiny, target, FAST.replace(steps=0, start_candidates=3))
    assert result.start in {"mean", "sample 0", "sample 1", "sample 2"}


def test_identity_feature_loss_moves_w_plus(tiny, own_render_target):
    """With an encoder, the feature term must carry gradient to W+ (``embed`` would silently block it)."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 8))
    embed = encoder_embedder(encoder)
    unit = lambda x: torch.nn.functional.normalize(embed(x), dim=-1)  # noqa: E731
    target, _ = own_render_target
    only_features = FAST.replace(steps=2, pixel_weight=0.0, mask_weight=0.0, w_mean_weight=0.0, w_layer_weight=0.0, feature_weight=1.0)
    result = invert(tiny, target, only_features, unit)
    assert not torch.equal(result.w_plus, mean_w(tiny))
    assert all(not p.requires_grad for p in encoder.parameters())


def test_feature_pyramid_and_composite():
    x = torch.zeros(1, 3, 16, 16)
    x[..., 8:] = 1.0  # a vertical edge: x-gradient only
    levels = feature_pyramid(x)
    assert [t.shape[-1] for t in levels] == [16, 8, 4]
    assert float(levels[0][0, 1].abs().max()) > 0 and float(levels[0][0, 2].abs().max()) == 0
    assert float(composite(torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2), "white").min()) == 1.0


def test_bad_settings_and_targets(tiny):
    with pytest.raises(ConfigError):
        InversionConfig(views_per_step=0).validate()
    with pytest.raises(InputError, match="cameras"):
        InversionTarget(torch.zeros(2, 3, 8, 8), torch.zeros(2, 1, 8, 8), torch.zeros(3, 25)).validate()


PACK = ROOT / "engine" / "pack" / "embedded-v1"


@pytest.mark.slow
@pytest.mark.skipif(not (PACK / "generator" / "generator.safetensors").is_file() or not (PACK / "recognition" / "identity_encoder.safetensors").is_file(),
                    reason="embedded pack generator or identity encoder not built yet")
def test_pack_inversion_keeps_identity(tmp_path):
    """Procedural scans invert to heads the identity encoder matches to their source better than to others —
    judged on four held-out views the inversion never fitted (its loss uses this encoder, so a fitted view
    would only show the optimisation)."""
    from engine.app.batch import _renders
    from engine.evaluate.metrics import reidentify
    from engine.evaluate.recognition import load_identity_encoder
    from engine.heads.invert import SCORE_VIEW_PITCHES_DEG, SCORE_VIEW_YAWS_DEG, scan_target
    from engine.heads.scans import load_scan
    from engine.world import ScanExport, export_scan, sample_identities

    G = load_generator(PACK / "generator" / "generator.safetensors").generator
    encoder = load_identity_encoder(PACK / "recognition" / "identity_encoder.safetensors")
    ids = sample_identities(2, torch.Generator().manual_seed(1234))
    sources, recons = [], []
    for i in range(2):
        export_scan(ids[i : i + 1], tmp_path / f"s{i}", ScanExport(resolution=64, formats=(".ply",)))
        mesh = load_scan(tmp_path / f"s{i}.ply").mesh
        target = scan_target(G, mesh)
        held_out = scan_target(G, mesh, yaws_deg=SCORE_VIEW_YAWS_DEG, pitches_deg=SCORE_VIEW_PITCHES_DEG)
        result = invert(G, target, InversionConfig(), encoder_embedder(encoder))
        sources.append(encoder.embed(composite(held_out.images, held_out.masks, "white")))
        recons.append(encoder.embed(_renders(G, result.w_plus, held_out.cameras)))
    reid = reidentify(torch.stack(recons), torch.stack(sources))
    assert reid.top1 == 1.0 and reid.margin_mean > 0.2, reid  # measured: margin 0.72 (cosine 0.78 vs 0.06)
