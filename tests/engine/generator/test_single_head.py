"""Single-head fields (head mode): a generator that renders one fitted tri-grid for every latent, saved,
loaded and trained through the generator's own code."""

from __future__ import annotations

import pytest
import torch

from engine.errors import CheckpointError
from engine.generator.camera import cameras_at
from engine.generator.inference import camera_config_for
from engine.generator.loading import load_generator, save_generator
from engine.generator.triplane import RenderOptions

pytestmark = pytest.mark.usefixtures("single_thread")


def single_head(seed: int = 1):
    G = load_generator("tiny", init_seed=0).generator
    ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed)), torch.zeros(1, 25))
    planes = G.synthesize_planes(ws) + 0.5  # not what any latent synthesizes
    return G, planes, ws


def render(G, z):
    cams = cameras_at(torch.tensor([0.0, 0.7]), 0.2, camera_config_for(G, (0.0, 0.0, 0.0))).c
    ws = G.mapping(z, cams[:1].expand(z.shape[0], -1))
    return G.render(ws, cams[:1].expand(z.shape[0], -1), RenderOptions(deterministic_samples=True))["image"]


def test_every_latent_renders_the_fitted_tri_grid():
    G, planes, ws = single_head()
    assert not G.is_single_head and "head_planes" not in G.state_dict()
    z = torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(5))
    generated = render(G, z)
    G.make_single_head(planes, ws)
    assert G.is_single_head and {"head_planes", "head_ws"} <= set(G.state_dict())
    head = render(G, z)
    torch.testing.assert_close(head[0], head[1])
    torch.testing.assert_close(head[0], head[2])
    assert not torch.allclose(head[0], generated[0], atol=1e-3)
    torch.testing.assert_close(G.synthesize_planes(G.mapping(z, torch.zeros(3, 25)))[2], planes[0])


def test_shapes_are_checked():
    G, planes, ws = single_head()
    with pytest.raises(ValueError, match="planes must have shape"):
        G.make_single_head(planes[:, :, :, :-1], ws)
    with pytest.raises(ValueError, match="ws must have shape"):
        G.make_single_head(planes, ws[:, :-1])


def test_a_single_head_may_have_finer_planes_than_the_generator_and_they_save_and_reload(tmp_path):
    G, planes, ws = single_head()
    finer = torch.nn.functional.interpolate(planes[0], scale_factor=2, mode="bilinear")[None]
    with pytest.raises(ValueError, match="power of two"):
        G.make_single_head(finer[..., :-8, :-8], ws)  # 56² is not a power of two
    G.make_single_head(finer, ws)
    assert G.head_planes.shape[-1] == 2 * G.config.rendering.triplane_size
    loaded = load_generator(save_generator(G, tmp_path / "finer.safetensors")).generator
    torch.testing.assert_close(loaded.head_planes, finer)
    z = torch.randn(1, G.z_dim)
    torch.testing.assert_close(render(loaded, z), render(G, z))


def test_save_load_round_trip_and_a_half_written_field_is_refused(tmp_path):
    G, planes, ws = single_head()
    G.make_single_head(planes, ws)
    path = save_generator(G, tmp_path / "head.safetensors")
    loaded = load_generator(path).generator
    assert loaded.is_single_head
    torch.testing.assert_close(loaded.head_planes, G.head_planes)
    z = torch.randn(1, G.z_dim)
    torch.testing.assert_close(render(loaded, z), render(G, z))
    # a checkpoint with planes but no ws names the file
    from engine.generator.checkpoint import load_checkpoint, save_checkpoint

    config, state, extra = load_checkpoint(path)
    del state["head_ws"]
    broken = save_checkpoint(tmp_path / "broken.safetensors", state, config, extra)
    with pytest.raises(CheckpointError, match="broken.safetensors.*head_planes and head_ws"):
        load_generator(broken)


def test_planes_layer_group_trains_only_on_a_single_head():
    G, planes, ws = single_head()
    assert "head_planes" not in G.set_trainable(("planes", "decoder"))
    G.make_single_head(planes, ws)
    names = G.set_trainable(("planes", "decoder"))
    assert "head_planes" in names and all(n == "head_planes" or n.startswith("decoder.") for n in names)
