"""Recognition networks: preprocessing, shapes, storage, augmentation, metrics, and the trained pack models."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from engine.errors import CheckpointError, ConfigError, InputError
from engine.evaluate.recognition import (
    AugmentConfig,
    BackboneConfig,
    IdentityEncoder,
    IdentityEncoderConfig,
    StyleClassifier,
    StyleClassifierConfig,
    augment,
    check_images,
    info_nce,
    load_identity_encoder,
    load_style_classifier,
    prepare_images,
    retrieval_top1,
    same_vs_different_cosine,
    save_recognition_model,
    supervised_contrastive,
)
from engine.evaluate.recognition.augment import random_affine, random_blur
from engine.evaluate.recognition.data import render_set
from engine.world import STYLES, render_heads, sample_identities

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL_ID = IdentityEncoderConfig(backbone=BackboneConfig(input_size=32, channels=(8, 16), feature_dim=16), embed_dim=8)
SMALL_STYLE = StyleClassifierConfig(backbone=BackboneConfig(input_size=32, channels=(8, 16), feature_dim=16))


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(2, 1, 8, 8), "(N, 3, H, W)"),
        (torch.zeros(2, 3, 8), "(N, 3, H, W)"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "floating"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_images_are_rejected_with_the_argument_name(bad, message):
    with pytest.raises(InputError, match="photos") as err:
        check_images(bad, "photos")
    assert message in str(err.value)


def test_prepare_images_resizes_any_size_and_keeps_constants():
    constant = torch.full((2, 3, 100, 60), 0.25)
    out = prepare_images(constant, 32)
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, torch.full_like(out, 0.25))
    single = prepare_images(torch.zeros(3, 16, 16), 32)  # a lone image gets a batch axis
    assert single.shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------- networks
def test_identity_encoder_gives_unit_embeddings_for_any_input_size():
    model = IdentityEncoder(SMALL_ID).eval()
    for size in (32, 64, 50):
        emb = model.embed(_images(3, size))
        assert emb.shape == (3, 8)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_style_classifier_probabilities_and_style_score():
    model = StyleClassifier(SMALL_STYLE).eval()
    images = _images(4, 40)
    probs = model.predict(images)
    assert probs.shape == (4, len(STYLES)) and model.styles == tuple(STYLES)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(model.style_score(images, "zombie"), probs[:, model.styles.index("zombie")])
    with pytest.raises(ConfigError, match="werewolf"):
        model.style_score(images, "werewolf")


def test_default_networks_fit_the_pack_size_budget():
    for model in (IdentityEncoder(), StyleClassifier()):
        fp16_bytes = 2 * sum(p.numel() for p in model.parameters())
        assert fp16_bytes < 2_000_000


@pytest.mark.parametrize(
    "make",
    [
        lambda: BackboneConfig(input_size=40, channels=(8, 8, 8, 8)).validate(),  # 40 not divisible by 16
        lambda: StyleClassifierConfig(styles=("photo",)).validate(),
        lambda: StyleClassifierConfig(styles=("a", "a")).validate(),
    ],
)
def test_invalid_configs_raise(make):
    with pytest.raises(ConfigError):
        make()


# ---------------------------------------------------------------------------------------------- storage
def test_save_load_round_trip_matches_within_fp16(tmp_path):
    torch.manual_seed(0)
    model = IdentityEncoder(SMALL_ID).eval()
    path = save_recognition_model(model, tmp_path / "enc", extra={"note": "x"})
    loaded = load_identity_encoder(path)
    images = _images(5, 32)
    # Reference: the same network with its weights rounded to fp16 (what the file stores).
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(p.half().float())
    torch.testing.assert_close(loaded.embed(images), model.embed(images), atol=1e-4, rtol=1e-4)
    assert loaded.extra == {"note": "x"} and not loaded.training
    meta = json.loads((tmp_path / "enc.json").read_text())
    assert meta["kind"] == "identity_encoder" and meta["config"]["embed_dim"] == 8


def test_loading_checks_hash_kind_and_presence(tmp_path):
    path = save_recognition_model(StyleClassifier(SMALL_STYLE), tmp_path / "cls")
    assert load_style_classifier(tmp_path / "cls.json").styles == tuple(STYLES)
    with pytest.raises(CheckpointError, match="expected a identity_encoder"):
        load_identity_encoder(path)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_style_classifier(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_style_classifier(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------------------- augmentation
def test_neutral_augmentation_is_the_identity_on_opaque_images():
    neutral = AugmentConfig(shift=0.0, scale=(1.0, 1.0), rotate_degrees=0.0, brightness=0.0, contrast=0.0,
                            saturation=0.0, channel_gain=0.0, blur_probability=0.0, noise=0.0)
    colour = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = augment(colour, torch.ones(3, 1, 16, 16), neutral, torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, colour * 2 - 1, atol=1e-5, rtol=0)


def test_augmentation_is_seeded_and_in_range():
    colour, alpha = torch.rand(4, 3, 16, 16) * 0.5, torch.rand(4, 1, 16, 16)
    a = augment(colour, alpha, AugmentConfig(), torch.Generator().manual_seed(3))
    b = augment(colour, alpha, AugmentConfig(), torch.Generator().manual_seed(3))
    c = augment(colour, alpha, AugmentConfig(), torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c) and a.min() >= -1 and a.max() <= 1


def test_blur_keeps_constants_and_smooths_an_impulse():
    config = AugmentConfig(blur_probability=1.0, blur_max_sigma=1.0)
    constant = torch.full((2, 3, 9, 9), 0.3)
    torch.testing.assert_close(random_blur(constant, config, torch.Generator().manual_seed(0)), constant)
    impulse = torch.zeros(1, 3, 9, 9)
    impulse[..., 4, 4] = 1.0
    out = random_blur(impulse, config, torch.Generator().manual_seed(0))
    assert float(out[..., 4, 4].max()) < 1.0 and math.isclose(float(out.sum()), 3.0, rel_tol=1e-5)


def test_flip_mirrors_the_image():
    config = AugmentConfig(shift=0.0, scale=(1.0, 1.0), rotate_degrees=0.0, flip_probability=1.0)
    image = torch.arange(16.0).view(1, 1, 4, 4).expand(1, 3, 4, 4).contiguous()
    torch.testing.assert_close(random_affine(image, config, torch.Generator()), image.flip(-1))


# ---------------------------------------------------------------------------------------------- metrics
def test_info_nce_hand_values():
    eye = torch.eye(4)
    # Perfect orthogonal pairs at temperature 0.1: logit 10 on the diagonal, 0 elsewhere.
    expected = -math.log(math.exp(10) / (math.exp(10) + 3))
    assert math.isclose(float(info_nce(eye, eye, 0.1)), expected, rel_tol=1e-3)
    assert float(info_nce(eye, eye.roll(1, 0), 0.1)) > 9.0  # every partner is the wrong one


def test_supervised_contrastive_hand_values():
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    emb = torch.stack([x, x, y, y])
    # Temperature 1: each anchor sees its twin at logit 1 and two strangers at 0 → loss log(e + 2) − 1.
    loss = supervised_contrastive(emb, torch.tensor([0, 0, 1, 1]), temperature=1.0)
    assert math.isclose(float(loss), math.log(math.e + 2) - 1, rel_tol=1e-5)
    # Three renders of one person: two positives per anchor, both at logit 1, one stranger at 0.
    emb3 = torch.stack([x, x, x, y, y, y])
    loss3 = supervised_contrastive(emb3, torch.tensor([0, 0, 0, 1, 1, 1]), temperature=1.0)
    assert math.isclose(float(loss3), math.log(2 * math.e + 3) - 1, rel_tol=1e-5)
    with pytest.raises(InputError, match="two rows"):
        supervised_contrastive(emb, torch.tensor([0, 1, 2, 2]))


def test_retrieval_and_same_different_cosine_hand_values():
    gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queries = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert math.isclose(retrieval_top1(gallery, queries, torch.tensor([0, 1, 1])), 2 / 3, rel_tol=1e-6)
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    same, different = same_vs_different_cosine(emb, torch.tensor([0, 0, 1]))
    assert math.isclose(same, 1.0, abs_tol=1e-6) and math.isclose(different, 0.0, abs_tol=1e-6)
    with pytest.raises(InputError):
        retrieval_top1(gallery, torch.zeros(2, 3), torch.tensor([0, 1]))


# ---------------------------------------------------------------------------------------------- data
def test_render_set_matches_render_heads_in_order():
    ids = sample_identities(4, torch.Generator().manual_seed(0))
    styles = torch.tensor([2, 0, 2, 5])
    yaw, pitch = torch.tensor([0.0, 0.5, -1.0, 3.0]), torch.zeros(4)
    data = render_set(ids, styles, yaw, pitch, resolution=16)
    from engine.generator.camera import CameraConfig, cameras_at

    cams = cameras_at(yaw[2:3], pitch[2:3], CameraConfig(pivot=(0.0, 0.0, 0.0))).c
    direct = render_heads(ids[2:3], cams, 16, "zombie", background="black")
    colour, alpha = data.float_pair(torch.tensor([2]))
    torch.testing.assert_close(colour, (direct["image"] + 1) / 2, atol=1 / 255, rtol=0)
    torch.testing.assert_close(alpha, direct["mask"], atol=1 / 255, rtol=0)
    assert data.style.tolist() == [2, 0, 2, 5] and len(data) == 4


# ---------------------------------------------------------------------------------------------- trained pack
def _pack_models():
    from engine.pack import pack_paths

    paths = pack_paths()
    if not (paths.identity_encoder.is_file() and paths.style_classifier.is_file()):
        pytest.skip(f"trained recognition models not in the pack ({paths.identity_encoder.parent}); run "
                    "scripts/pack/train_recognition.py")
    return load_identity_encoder(paths.identity_encoder), load_style_classifier(paths.style_classifier)


@pytest.fixture(scope="module")
def heldout_renders():
    """16 unseen people: photo front views (gallery) + every style at yaw ±40° (queries), 64²."""
    gen = torch.Generator().manual_seed(12345)
    m = 16
    people = sample_identities(m, gen)
    gallery = render_set(people, torch.zeros(m, dtype=torch.long), torch.zeros(m), torch.zeros(m))
    subject = torch.arange(m).repeat_interleave(len(STYLES))
    style = torch.arange(len(STYLES)).repeat(m)
    yaw = torch.where(subject % 2 == 0, 0.7, -0.7)
    queries = render_set(people[subject], style, yaw, torch.zeros(len(subject)), subject=subject)
    return gallery, queries


@pytest.mark.slow
def test_trained_identity_encoder_retrieves_unseen_people(heldout_renders):
    encoder, _ = _pack_models()
    gallery, queries = heldout_renders
    g = encoder.embed(gallery.on_background(torch.arange(len(gallery))))
    q = encoder.embed(queries.on_background(torch.arange(len(queries))))
    # Chance is 1/16 = 0.06; the seed-0 pack measured 0.906 here (threshold: see the constants below).
    assert retrieval_top1(g, q, queries.subject) >= IDENTITY_TOP1_THRESHOLD
    same, different = same_vs_different_cosine(torch.cat([g, q]), torch.cat([torch.arange(16), queries.subject]))
    assert same > different + 0.5  # measured 0.925 vs 0.082


@pytest.mark.slow
def test_trained_style_classifier_names_the_style(heldout_renders):
    _, classifier = _pack_models()
    _, queries = heldout_renders
    probs = classifier.predict(queries.on_background(torch.arange(len(queries))))
    accuracy = float((probs.argmax(1) == queries.style).float().mean())
    assert accuracy >= STYLE_ACCURACY_THRESHOLD


# Measured with the seed-0 pack (scripts/pack/train_recognition.py --seed 0) on the 16-person set above:
# identity top-1 0.906 (87/96 queries), style accuracy 1.0. Thresholds are the measurement minus a margin
# that still fails a clearly worse model.
IDENTITY_TOP1_THRESHOLD = 0.75
STYLE_ACCURACY_THRESHOLD = 0.95
