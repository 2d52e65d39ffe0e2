"""`generate` and `render` look at a head from the official inference cameras by default (pivot (0, 0, 0), pitch
10°, as the stylization code's infer_LD.py and PanoHead's sampling scripts), and from PanoHead's visualiser
pivot (0, 0, 0.2) only when asked; the paper recipe's random noise is one seeded draw per head."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.app.cli import main as cli_main
from engine.generator.camera import CameraConfig, cameras_at
from engine.generator.inference import ViewSettings, map_latents, render_images, seed_latent
from engine.generator.loading import load_generator, save_generator
from engine.io.images import to_uint8

pytestmark = pytest.mark.usefixtures("single_thread")

OFFICIAL_PIVOT = (0.0, 0.0, 0.0)
VISUALISER_PIVOT = (0.0, 0.0, 0.2)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def expected_front(G, seed: int, pivot, pitch_degrees: float, background: str, psi: float, cutoff: int | None = 14):
    """The front view rendered directly from PanoHead's camera for ``pivot`` (cameras_at matches its sampler)."""
    camera = replace(CameraConfig.from_rendering(G.config.rendering), pivot=pivot)
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed))
    ws = map_latents(G, z, psi, cutoff, 0.0, 0.2, pivot)
    c = cameras_at(0.0, math.radians(pitch_degrees), camera).c
    return to_uint8(render_images(G, ws, c, background)[0])


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "tiny.safetensors"
    save_generator(load_generator("tiny").generator, path)
    return path


def test_generate_uses_the_official_inference_cameras_unless_asked_for_the_visualiser_pivot(generator_file, tmp_path):
    G = load_generator(str(generator_file)).generator
    common = ["generate", "--checkpoint", str(generator_file), "--seed", "3", "--no-mesh", "--device", "cpu"]
    assert cli_main([*common, "--out", str(tmp_path / "a")]) == 0
    official = expected_front(G, 3, OFFICIAL_PIVOT, 10.0, "model", 0.7)
    np.testing.assert_array_equal(_png(tmp_path / "a" / "front.png"), official)
    assert cli_main([*common, "--visualiser-pivot", "--pitch", "0", "--out", str(tmp_path / "b")]) == 0
    visualiser = expected_front(G, 3, VISUALISER_PIVOT, 0.0, "model", 0.7)
    np.testing.assert_array_equal(_png(tmp_path / "b" / "front.png"), visualiser)
    assert np.abs(official.astype(int) - visualiser.astype(int)).max() > 0  # the two cameras see different pixels


def test_render_uses_the_official_inference_cameras_unless_asked_for_the_visualiser_pivot(generator_file, tmp_path):
    G = load_generator(str(generator_file)).generator
    common = ["render", "--generator", str(generator_file), "--seeds", "2", "--frames", "0", "--device", "cpu"]
    assert cli_main([*common, "--out", str(tmp_path / "a")]) == 0
    np.testing.assert_array_equal(_png(tmp_path / "a" / "seed0002" / "front.png"),
                                  expected_front(G, 2, OFFICIAL_PIVOT, 10.0, "white", 0.75))
    assert cli_main([*common, "--visualiser-pivot", "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(_png(tmp_path / "b" / "seed0002" / "front.png"),
                                  expected_front(G, 2, VISUALISER_PIVOT, 10.0, "white", 0.75))


def test_random_view_noise_is_one_seeded_draw_per_head():
    """The paper's random noise: the same pictures on every call (seeded), other than constant noise, and one
    draw shared by all views of the head (rendering views one at a time gives the same pixels)."""
    G = load_generator("tiny").generator
    with torch.no_grad():  # a fresh generator's noise strengths are 0: give the noise a visible weight
        for module in G.modules():
            if hasattr(module, "noise_strength"):
                module.noise_strength.fill_(0.5)
    ws = seed_latent(G, 1, ViewSettings())
    c = cameras_at(torch.tensor([0.0, 0.8]), 0.1, CameraConfig(pivot=OFFICIAL_PIVOT)).c
    const = render_images(G, ws, c)
    first = render_images(G, ws, c, noise_mode="random", noise_seed=5)
    again = render_images(G, ws, c, noise_mode="random", noise_seed=5)
    other = render_images(G, ws, c, noise_mode="random", noise_seed=6)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert (first - const).abs().max() > 1e-3 and (first - other).abs().max() > 1e-3
    one_by_one = torch.cat([render_images(G, ws, c[i:i + 1], noise_mode="random", noise_seed=5) for i in range(2)])
    torch.testing.assert_close(one_by_one, first, rtol=0, atol=1e-4)  # batch-size rounding only
    before = torch.get_rng_state()
    render_images(G, ws, c[:1], noise_mode="random", noise_seed=5)
    assert torch.equal(before, torch.get_rng_state())  # the global random state is left as it was
