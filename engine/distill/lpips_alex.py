"""LPIPS-Alex, the perceptual distance the official stylization code adds (weight 0.05), in plain torch.

LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR 2018)
compares two images through the five ReLU outputs of ImageNet AlexNet's convolutional trunk: each layer's
features are scaled to unit length over channels, their squared difference is weighted per channel by a
learned non-negative 1×1 layer, averaged over the image, and the five layers are summed. Inputs are in
[−1, 1] and are first shifted and scaled to ImageNet's mean and standard deviation (expressed in [−1, 1]).

The ``lpips`` package downloads its backbone when first used; the engine never downloads while it runs, so
the weights come from a local folder that the model manager fills on request
(``python -m engine models download lpips-alex``): torchvision's ImageNet AlexNet (:data:`ALEXNET_FILE`, only
its ``features.*`` tensors are read) and LPIPS v0.1's linear layers (:data:`LINEAR_FILE`). Both are plain
state dicts read with ``torch.load(weights_only=True)`` (no code is unpickled); every missing or misshapen
tensor is reported with the file's name.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import CheckpointError

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LINEAR_FILE = "alex.pth"

# ImageNet's mean and standard deviation, mapped from [0, 1] to the [−1, 1] range LPIPS takes.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_SHIFT = tuple(2.0 * m - 1.0 for m in _IMAGENET_MEAN)
_SCALE = tuple(2.0 * s for s in _IMAGENET_STD)

# AlexNet's convolutional trunk in torchvision's layout (index in ``features`` → (in, out, kernel, stride,
# padding); a ReLU follows each convolution, a 3×3 stride-2 max-pool the first two ReLUs), and the indices of
# the ReLUs whose outputs LPIPS compares.
_CONVS = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1), 8: (384, 256, 3, 1, 1),
          10: (256, 256, 3, 1, 1)}
_TAPS = (1, 4, 7, 9, 11)
CHANNELS = (64, 192, 384, 256, 256)
_EPS = 1e-10


def _trunk() -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(12):
        if index in _CONVS:
            cin, cout, k, s, p = _CONVS[index]
            layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
        elif index - 1 in _CONVS:
            layers.append(nn.ReLU(inplace=False))
        else:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
    return nn.Sequential(*layers)


class LpipsAlex(nn.Module):
    """``network(image, reference) -> (N,)`` LPIPS-Alex distances of two (N, 3, H, W) batches in [−1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _trunk()
        self.linear = nn.ParameterList([nn.Parameter(torch.zeros(c)) for c in CHANNELS])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def _taps(self, x: Tensor) -> list[Tensor]:
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPS:
                out.append(x)
            if index == _TAPS[-1]:
                break
        return out

    def forward(self, image: Tensor, reference: Tensor) -> Tensor:
        x = torch.cat([image, reference]).float()
        x = (x - self.shift) / self.scale
        n = image.shape[0]
        total = x.new_zeros(n)
        for feats, weight in zip(self._taps(x), self.linear):
            unit = feats / (feats.square().sum(dim=1, keepdim=True).sqrt() + _EPS)
            diff = (unit[:n] - unit[n:]).square()
            total = total + (diff * weight.view(1, -1, 1, 1)).sum(dim=1).mean(dim=(1, 2))
        return total


def _state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: LPIPS weights missing (download them with "
                              "`python -m engine models download lpips-alex --out MODELS`)")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise CheckpointError(f"{path}: not a PyTorch state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return state


def _take(state: dict[str, Tensor], key: str, shape: tuple[int, ...], path: Path) -> Tensor:
    if key not in state:
        raise CheckpointError(f"{path}: has no tensor {key!r} (is it {path.name} of LPIPS-Alex?)")
    value = state[key]
    if tuple(value.shape) != shape:
        raise CheckpointError(f"{path}: {key!r} has shape {tuple(value.shape)}, LPIPS-Alex needs {shape}")
    if not torch.isfinite(value).all():
        raise CheckpointError(f"{path}: {key!r} holds NaN or infinite values")
    return value.float()


def load_lpips_alex(folder: str | os.PathLike) -> LpipsAlex:
    """LPIPS-Alex from a folder holding :data:`ALEXNET_FILE` and :data:`LINEAR_FILE`, frozen, on the CPU."""
    folder = Path(folder)
    network = LpipsAlex()
    backbone_path, linear_path = folder / ALEXNET_FILE, folder / LINEAR_FILE
    backbone, linear = _state_dict(backbone_path), _state_dict(linear_path)
    with torch.no_grad():
        for index, (cin, cout, k, _s, _p) in _CONVS.items():
            conv = network.features[index]
            conv.weight.copy_(_take(backbone, f"features.{index}.weight", (cout, cin, k, k), backbone_path))
            conv.bias.copy_(_take(backbone, f"features.{index}.bias", (cout,), backbone_path))
        for i, channels in enumerate(CHANNELS):
            weight = _take(linear, f"lin{i}.model.1.weight", (1, channels, 1, 1), linear_path)
            if (weight < 0).any():
                raise CheckpointError(f"{linear_path}: lin{i} has negative weights (LPIPS' are non-negative)")
            network.linear[i].copy_(weight.view(-1))
    network.eval().requires_grad_(False)
    return network
