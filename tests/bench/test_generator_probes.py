"""The generator v2 probes: the A/B script's arm overrides and the ceiling probe's per-head fits."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from scripts.pack import train_generator_v2 as v2

pytestmark = pytest.mark.usefixtures("single_thread")

_BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ab = _load("ab_generator_stage")
ceiling = _load("probe_generator_ceiling")


def test_arm_overrides_parse_to_stage_config_values():
    overrides = ab.parse_overrides(["batch=8", "image_loss=l2", "mapping_lr_scale=100", "ray_offset=[-0.1,0.1]"])
    assert overrides == {"batch": 8, "image_loss": "l2", "mapping_lr_scale": 100, "ray_offset": (-0.1, 0.1)}
    config = v2.StageConfig(name="x", render=True, steps=1, init="joint3", **overrides).validate()
    assert config.batch == 8 and config.ray_offset == (-0.1, 0.1)
    with pytest.raises(SystemExit, match="unknown StageConfig field 'batchsize'"):
        ab.parse_overrides(["batchsize=8"])


@pytest.fixture(scope="module")
def tiny_head():
    G = v2.finish_for_inference(v2.initial_generator(v2.StageConfig(name="t", render=True, steps=1, init="preset:tiny"), None))
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0))
    identity = v2.identity_from_latent(z)
    with torch.no_grad():
        ws = G.mapping(z, v2.conditioning_camera(G))
    config = ceiling.ProbeConfig(steps=3, views=4, batch=2)
    return G, ws, identity, config, ceiling.training_targets(G, identity, config)


@pytest.mark.parametrize("arm", ["planes", "all"])
def test_a_fit_moves_the_heads_tri_grid_and_only_its_arms_networks(tiny_head, arm):
    G, ws, identity, config, targets = tiny_head
    planes, head = ceiling.fit_head(G, ws, identity, ceiling.ARMS[arm], targets, config)
    with torch.no_grad():
        assert not torch.allclose(planes, G.synthesize_planes(ws))
    original = dict(G.named_parameters())
    moved = {name for name, p in head.named_parameters() if not torch.equal(p, original[name])}
    groups = {name.split(".")[0] for name in moved}
    assert groups == set(ceiling.ARMS[arm])  # the arm's networks all learn, nothing else does, and G is untouched
    assert all(not p.requires_grad for p in G.parameters())


def test_the_fit_lowers_the_fitted_views_error(tiny_head):
    """The per-head fit descends: its image loss on the training views falls (a sign error would raise it)."""
    G, ws, identity, config, targets = tiny_head
    from engine.generator.triplane import RenderOptions

    def error(head, planes) -> float:
        with torch.no_grad():
            n = targets["c"].shape[0]
            out = head.render(ws.expand(n, -1, -1), targets["c"], RenderOptions(background="white", deterministic_samples=True),
                              planes=planes.expand(n, *planes.shape[1:]))
        return float(((out["image_raw"] - targets["raw"]) ** 2).mean())

    with torch.no_grad():
        start = error(G, G.synthesize_planes(ws))
    planes, head = ceiling.fit_head(G, ws, identity, (), targets, ceiling.ProbeConfig(steps=12, views=4, batch=4))
    assert error(head, planes) < 0.9 * start
