"""The official grid depth control: a transformers depth-estimation folder (a tiny random Depth Anything built
here with save_pretrained — nothing is downloaded) run on renders in [−1, 1] exactly as the official code runs
Depth Anything V2: [0, 1], resized to cover the network's input size in multiples of its patch, ImageNet
normalisation, predicted depth resized back (corners aligned), min–max over the whole image."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.errors import CheckpointError, ConfigError, InputError
from engine.guidance.depth_estimator import DepthEstimator, DepthPreprocessing

pytestmark = pytest.mark.usefixtures("single_thread")

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def build_tiny_depth_model(folder: Path, input_size: int = 28, seed: int = 0) -> Path:
    """A random Depth Anything (DINOv2 backbone, 14-pixel patches) small enough for a test, saved the way the
    Hub's Depth Anything V2 folders are: config.json, model.safetensors, preprocessor_config.json."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                            patch_size=14, image_size=input_size, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False, initializer_range=0.5)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 8, 8, 8],
                                 fusion_hidden_size=8, head_hidden_size=8, patch_size=14,
                                 depth_estimation_type="relative", initializer_range=0.5)
    torch.manual_seed(seed)
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": input_size, "width": input_size},
        "keep_aspect_ratio": True, "ensure_multiple_of": 14, "do_normalize": True, "image_mean": list(MEAN),
        "image_std": list(STD), "do_rescale": True, "rescale_factor": 1 / 255, "resample": 3, "do_pad": False}))
    return folder


@pytest.fixture(scope="module")
def depth_folder(tmp_path_factory) -> Path:
    return build_tiny_depth_model(tmp_path_factory.mktemp("depth") / "tiny-depth-anything")


def renders(n: int = 2, size: int = 40, seed: int = 1) -> torch.Tensor:
    """Head-like renders in [−1, 1]: a bright disc on black (as the grid's renders without background)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.5).float()
    return (disc * (0.2 + 0.8 * torch.rand(n, 3, size, size, generator=g)) * 2 - 1).clamp(-1, 1)


class KnownDepth(torch.nn.Module):
    """A stand-in network whose output is a known function of its input: depth = 3 + mean over channels."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.seen = None

    def forward(self, pixel_values):
        self.seen = pixel_values
        return type("Out", (), {"predicted_depth": 3.0 + pixel_values.mean(dim=1) + self.anchor})()


def test_the_official_preprocessing_and_normalisation_step_by_step():
    images = renders()
    net = KnownDepth()
    out = DepthEstimator(net, DepthPreprocessing(height=28, width=28, multiple=14))(images)
    # what the network saw: [0, 1], bicubic to 28², ImageNet mean/std
    x = F.interpolate(images * 0.5 + 0.5, size=(28, 28), mode="bicubic", align_corners=False)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(net.seen, x)
    # what came back: resized bilinearly with corners aligned, then min–max over the whole image, per image
    depth = F.interpolate((3.0 + x.mean(dim=1))[:, None], size=(40, 40), mode="bilinear", align_corners=True)
    low, high = depth.amin(dim=(1, 2, 3), keepdim=True), depth.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (depth - low) / (high - low + 1e-6))
    assert out.shape == (2, 1, 40, 40)
    for image in out:  # the background takes part: each image spans [0, 1] on its own
        assert float(image.min()) == 0.0 and float(image.max()) == pytest.approx(1.0, abs=1e-5)


def test_input_size_covers_the_target_in_multiples_of_the_patch():
    p = DepthPreprocessing()  # the official 518, multiple 14
    assert p.input_size(512, 512) == (518, 518)
    assert p.input_size(64, 64) == (518, 518)
    assert p.input_size(256, 512) == (518, 1036)  # the shorter side covers 518, the aspect ratio is kept
    assert DepthPreprocessing(height=30, width=30, multiple=14).input_size(30, 30) == (42, 42)  # never below 30


def test_a_saved_transformers_depth_model_runs_through_the_official_pipeline(depth_folder):
    from transformers import AutoModelForDepthEstimation

    estimator = DepthEstimator.from_folder(depth_folder)
    assert estimator.preprocessing == DepthPreprocessing(height=28, width=28, multiple=14, mean=MEAN, std=STD)
    images = renders()
    out = estimator(images)
    model = AutoModelForDepthEstimation.from_pretrained(depth_folder).eval()
    x = F.interpolate(images * 0.5 + 0.5, size=(28, 28), mode="bicubic", align_corners=False)
    with torch.no_grad():
        raw = model(pixel_values=(x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)).predicted_depth
    depth = F.interpolate(raw[:, None], size=(40, 40), mode="bilinear", align_corners=True)
    low, high = depth.amin(dim=(1, 2, 3), keepdim=True), depth.amax(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(out, (depth - low) / (high - low + 1e-6))
    assert float(out.std()) > 0.05  # a real, varied map, not a constant
    assert not any(p.requires_grad for p in estimator.model.parameters())


def test_bad_depth_folders_are_refused_naming_the_folder(tmp_path, depth_folder):
    with pytest.raises(ConfigError, match="does not exist"):
        DepthEstimator.from_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty: not a transformers model folder \(no config.json\)"):
        DepthEstimator.from_folder(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((depth_folder / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="broken: cannot load a depth-estimation model"):
        DepthEstimator.from_folder(broken)
    pickled = tmp_path / "pickled"  # weights only as a pickle: refused, no code is unpickled
    pickled.mkdir()
    (pickled / "config.json").write_text((depth_folder / "config.json").read_text())
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickled: cannot load"):
        DepthEstimator.from_folder(pickled)
    bad_json = tmp_path / "badjson"
    bad_json.mkdir()
    (bad_json / "preprocessor_config.json").write_text("{size: 3")
    with pytest.raises(ConfigError, match=r"badjson/preprocessor_config.json: not a readable JSON"):
        DepthPreprocessing.from_folder(bad_json)
    with pytest.raises(InputError, match=r"\(B, 3, H, W\)"):
        DepthEstimator(KnownDepth())(torch.zeros(1, 1, 8, 8))
