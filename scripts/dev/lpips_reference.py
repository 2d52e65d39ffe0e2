"""Check engine/distill/lpips_alex.py against the ``lpips`` package itself, and print reference numbers.

The ``lpips`` package needs torchvision only to build AlexNet's trunk (and to download ImageNet weights, which
this machine cannot do). So this script gives it a stand-in ``torchvision.models.alexnet`` with torchvision's
``features`` layout (the same 12 layers), fills both networks with the *same* seeded random trunk, and compares
distances on seeded random images, twice: with seeded random non-negative linear layers (the numbers
tests/engine/distill/test_lpips_alex.py keeps as its reference) and with the package's own trained v0.1
linear layers (``weights/v0.1/alex.pth`` from the wheel).

    pip download lpips==0.1.4 --no-deps -d /tmp/lp && unzip -q /tmp/lp/lpips-0.1.4-py3-none-any.whl -d /tmp/lp/pkg
    python scripts/dev/lpips_reference.py /tmp/lp/pkg
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from engine.distill.lpips_alex import CHANNELS, LpipsAlex  # noqa: E402


def _torchvision_alexnet(pretrained: bool = False, **_ignored) -> nn.Module:
    """torchvision's AlexNet ``features`` (conv 64/11/4/2, ReLU, pool, conv 192/5/1/2, ReLU, pool, conv 384, ReLU,
    conv 256, ReLU, conv 256, ReLU, pool); random weights: nothing is downloaded."""
    if pretrained:
        raise RuntimeError("the stand-in torchvision has no ImageNet weights")
    model = nn.Module()
    model.features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
    return model


def seeded_trunk_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A reproducible random AlexNet trunk in torchvision's key names (the test rebuilds the same one)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for index, (cin, cout, k) in {0: (3, 64, 11), 3: (64, 192, 5), 6: (192, 384, 3), 8: (384, 256, 3),
                                  10: (256, 256, 3)}.items():
        state[f"features.{index}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
        state[f"features.{index}.bias"] = torch.randn(cout, generator=g) * 0.05
    return state


def seeded_linear_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) * 0.2 for i, c in enumerate(CHANNELS)}


def seeded_images(seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(3, 3, 64, 64, generator=g)).clamp(-1, 1)
    return a, b


def ours(trunk: dict, linear: dict) -> LpipsAlex:
    network = LpipsAlex()
    with torch.no_grad():
        for key, value in trunk.items():
            _, index, name = key.split(".")
            getattr(network.features[int(index)], name).copy_(value)
        for i in range(len(CHANNELS)):
            network.linear[i].copy_(linear[f"lin{i}.model.1.weight"].view(-1))
    return network.eval()


def theirs(package: Path, trunk: dict, linear: dict) -> nn.Module:
    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.alexnet = _torchvision_alexnet
    sys.modules.update({"torchvision": tv, "torchvision.models": tv.models})
    sys.path.insert(0, str(package))
    import lpips

    network = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    with torch.no_grad():
        slices = [network.net.slice1, network.net.slice2, network.net.slice3, network.net.slice4, network.net.slice5]
        for key, value in trunk.items():
            _, index, name = key.split(".")
            layer = next(s._modules[index] for s in slices if index in s._modules)
            getattr(layer, name).copy_(value)
        for i, lin in enumerate(network.lins):
            lin.model[1].weight.copy_(linear[f"lin{i}.model.1.weight"])
    return network.eval()


def main(package: str) -> int:
    package_path = Path(package)
    trunk, linear = seeded_trunk_state(), seeded_linear_state()
    a, b = seeded_images()
    reference = theirs(package_path, trunk, linear)(a, b).flatten()
    mine = ours(trunk, linear)(a, b)
    print("seeded linear layers  lpips:", [f"{v:.8f}" for v in reference.tolist()])
    print("seeded linear layers  ours: ", [f"{v:.8f}" for v in mine.tolist()])
    trained = torch.load(package_path / "lpips" / "weights" / "v0.1" / "alex.pth", map_location="cpu", weights_only=True)
    reference_t = theirs(package_path, trunk, trained)(a, b).flatten()
    mine_t = ours(trunk, trained)(a, b)
    print("v0.1 linear layers    lpips:", [f"{v:.8f}" for v in reference_t.tolist()])
    print("v0.1 linear layers    ours: ", [f"{v:.8f}" for v in mine_t.tolist()])
    worst = max((reference - mine).abs().max().item(), (reference_t - mine_t).abs().max().item())
    print(f"largest difference {worst:.3e}")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/lp/pkg"))
