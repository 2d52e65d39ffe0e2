"""The official grid depth control: a monocular depth network run on the super-resolved render.

The official training code conditions its 2×2 grid on Depth Anything V2 (ViT-B) depth of the frozen
generator's 512² super-resolved renders: each render, mapped from [−1, 1] to [0, 1], is resized so that it
covers 518² (a multiple of the ViT's 14-pixel patches, bicubic), normalised with ImageNet's mean and standard
deviation, and the predicted relative inverse depth ("near is bright", what the depth ControlNet was trained
on) is resized back bilinearly (corners aligned) and min–max normalised over the **whole** image, background
included. :class:`DepthEstimator` does exactly that, batched and in torch on the render's device, for any
``transformers`` depth-estimation folder (``AutoModelForDepthEstimation``: Depth Anything V1/V2, DPT, …)
loaded offline from safetensors. The preprocessing numbers come from the folder's ``preprocessor_config.json``
when it has one (the Hub's Depth Anything V2 folders hold the official numbers), else the official code's.

Our own default (:func:`engine.guidance.control.depth_control`) uses the generator's depth instead, which
needs no network; ``engine.stylize.recipes`` says when each is used.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import CheckpointError, ConfigError, InputError

# The official code's preprocessing (Depth Anything V2's ``infer_image``).
OFFICIAL_INPUT_SIZE = 518
OFFICIAL_MULTIPLE = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISE_EPS = 1e-6  # the official min–max normalisation's denominator guard


@dataclass(frozen=True)
class DepthPreprocessing:
    """How images are prepared for the network: the size they must cover, its multiple, mean and std."""

    height: int = OFFICIAL_INPUT_SIZE
    width: int = OFFICIAL_INPUT_SIZE
    multiple: int = OFFICIAL_MULTIPLE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The network's input size for an image of ``height``×``width``: scaled with its aspect ratio until it
        covers height×width, each side rounded to the nearest multiple, never below the target
        (Depth Anything's ``lower_bound`` resize)."""
        scale = max(self.height / height, self.width / width)

        def side(x: float, least: int) -> int:
            rounded = int(round(x / self.multiple) * self.multiple)
            return rounded if rounded >= least else int(math.ceil(x / self.multiple) * self.multiple)

        return side(scale * height, self.height), side(scale * width, self.width)

    @classmethod
    def from_folder(cls, folder: Path) -> "DepthPreprocessing":
        """From ``folder/preprocessor_config.json`` (a transformers image processor), else the official numbers."""
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: not a readable JSON image-processor config ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: must be a JSON object")
        size = data.get("size", {})
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if not isinstance(size, dict):
            raise ConfigError(f"{path}: 'size' must be a number or {{height, width}}, got {size!r}")
        try:
            out = cls(
                height=int(size.get("height", size.get("shortest_edge", OFFICIAL_INPUT_SIZE))),
                width=int(size.get("width", size.get("shortest_edge", OFFICIAL_INPUT_SIZE))),
                multiple=int(data.get("ensure_multiple_of") or 1),
                mean=tuple(float(v) for v in data.get("image_mean", IMAGENET_MEAN)) if data.get("do_normalize", True) else (0.0, 0.0, 0.0),
                std=tuple(float(v) for v in data.get("image_std", IMAGENET_STD)) if data.get("do_normalize", True) else (1.0, 1.0, 1.0),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable size, mean or std ({exc})") from None
        if min(out.height, out.width, out.multiple) < 1 or len(out.mean) != 3 or len(out.std) != 3 or min(out.std) <= 0:
            raise ConfigError(f"{path}: size and multiple must be ≥ 1, mean and std three numbers with std > 0")
        return out


class DepthEstimator:
    """``estimator(images) -> (B, 1, H, W)`` depth control in [0, 1] for renders ``images`` (B, 3, H, W) in [−1, 1]."""

    def __init__(self, model: torch.nn.Module, preprocessing: DepthPreprocessing = DepthPreprocessing(), name: str = "depth model"):
        self.model = model.eval().requires_grad_(False)
        self.preprocessing = preprocessing
        self.name = name

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, device: torch.device | str = "cpu") -> "DepthEstimator":
        """Load a ``transformers`` depth-estimation folder offline (safetensors only: no pickled code runs)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ConfigError(f"{folder}: depth model folder does not exist")
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{folder}: not a transformers model folder (no config.json)")
        from transformers import AutoModelForDepthEstimation

        try:
            model = AutoModelForDepthEstimation.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        except Exception as exc:  # transformers and safetensors raise many unrelated types for a bad folder
            raise CheckpointError(f"{folder}: cannot load a depth-estimation model from it "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        return cls(model.to(device), DepthPreprocessing.from_folder(folder), name=str(folder))

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"depth estimator input must be (B, 3, H, W), got {tuple(images.shape)}")
        p = self.preprocessing
        height, width = images.shape[-2:]
        device = next(self.model.parameters()).device
        x = (images.to(device=device, dtype=torch.float32) * 0.5 + 0.5).clamp(0.0, 1.0)
        size = p.input_size(height, width)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        mean = x.new_tensor(p.mean).view(1, 3, 1, 1)
        std = x.new_tensor(p.std).view(1, 3, 1, 1)
        depth = self.model(pixel_values=(x - mean) / std).predicted_depth
        if depth.dim() == 3:
            depth = depth[:, None]
        depth = F.interpolate(depth.float(), size=(height, width), mode="bilinear", align_corners=True)
        low = depth.amin(dim=(1, 2, 3), keepdim=True)
        high = depth.amax(dim=(1, 2, 3), keepdim=True)
        return ((depth - low) / (high - low + NORMALISE_EPS)).to(images.device)
