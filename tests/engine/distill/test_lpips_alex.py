"""LPIPS-Alex in plain torch, from a local weights folder (random weights in torchvision's and LPIPS' file
layouts here): the formula, the loading, clear errors naming the file, and the term reaching a training step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine.distill import DistillConfig, LpipsLoss
from engine.distill.lpips_alex import ALEXNET_FILE, CHANNELS, LINEAR_FILE, load_lpips_alex
from engine.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[3]

# torchvision's AlexNet trunk: features.<i> → (out, in, kernel, stride, padding)
CONVS = {0: (64, 3, 11, 4, 2), 3: (192, 64, 5, 1, 2), 6: (384, 192, 3, 1, 1), 8: (256, 384, 3, 1, 1), 10: (256, 256, 3, 1, 1)}


def lpips_weights(seed: int = 0) -> tuple[dict, dict]:
    """(an AlexNet state dict with its classifier, as torchvision saves it; LPIPS v0.1's linear layers)."""
    g = torch.Generator().manual_seed(seed)
    alexnet = {}
    for i, (cout, cin, k, _, _) in CONVS.items():
        alexnet[f"features.{i}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
        alexnet[f"features.{i}.bias"] = 0.1 * torch.randn(cout, generator=g)
    alexnet["classifier.1.weight"] = torch.randn(8, 9216, generator=g)  # read by nobody
    linear = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(CHANNELS)}
    return alexnet, linear


def write_lpips_folder(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    alexnet, linear = lpips_weights(seed)
    torch.save(alexnet, folder / ALEXNET_FILE)
    torch.save(linear, folder / LINEAR_FILE)
    return folder


def reference_lpips(x: torch.Tensor, y: torch.Tensor, alexnet: dict, linear: dict) -> torch.Tensor:
    """LPIPS-Alex written out from the paper: ImageNet-normalised inputs, the five ReLU outputs of AlexNet's
    trunk, unit-normalised over channels, squared difference weighted per channel, spatial mean, summed."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    shift, scale = (2 * mean - 1).view(1, 3, 1, 1), (2 * std).view(1, 3, 1, 1)

    def relus(image):
        h = (image - shift) / scale
        out = []
        for i, (_, _, _, stride, pad) in CONVS.items():
            if i in (3, 6):
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(F.conv2d(h, alexnet[f"features.{i}.weight"], alexnet[f"features.{i}.bias"], stride=stride, padding=pad))
            out.append(h)
        return out

    total = 0.0
    for k, (a, b) in enumerate(zip(relus(x), relus(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + ((a - b) ** 2 * linear[f"lin{k}.model.1.weight"]).sum(1).mean(dim=(1, 2))
    return total


def images(n: int = 2, size: int = 64, seed: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_lpips_alex_is_the_papers_formula_on_the_folders_weights(tmp_path):
    folder = write_lpips_folder(tmp_path / "lpips-alex")
    net = load_lpips_alex(folder)
    x, y = images(seed=3), images(seed=4)
    alexnet, linear = lpips_weights()
    got = net(x, y)
    torch.testing.assert_close(got, reference_lpips(x, y, alexnet, linear), rtol=1e-4, atol=1e-6)
    assert got.shape == (2,) and bool((got > 0).all())
    torch.testing.assert_close(net(x, x), torch.zeros(2))
    torch.testing.assert_close(net(x, y), net(y, x), rtol=1e-5, atol=1e-7)  # symmetric
    assert not any(p.requires_grad for p in net.parameters())


def test_the_loss_from_a_folder_pulls_only_the_image(tmp_path):
    loss = LpipsLoss.from_local(write_lpips_folder(tmp_path / "lpips-alex"))
    image = images(seed=5).requires_grad_(True)
    reference = images(seed=6).requires_grad_(True)
    value = loss(image, reference, weight=0.05)
    value.backward()
    assert value.item() > 0 and image.grad.abs().sum() > 0 and reference.grad is None
    assert LpipsLoss.from_local(None) is None and LpipsLoss.from_local(tmp_path / "nothing-here") is None


def test_bad_lpips_folders_are_refused_naming_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=rf"empty/{ALEXNET_FILE}: LPIPS weights missing .*models download lpips-alex"):
        load_lpips_alex((tmp_path / "empty").mkdir() or tmp_path / "empty")
    folder = write_lpips_folder(tmp_path / "short")
    alexnet, _ = lpips_weights()
    alexnet["features.3.weight"] = alexnet["features.3.weight"][:, :10]
    torch.save(alexnet, folder / ALEXNET_FILE)
    with pytest.raises(CheckpointError, match=r"short/alexnet-owt-7be5be79.pth: 'features.3.weight' has shape \(192, 10, 5, 5\)"):
        load_lpips_alex(folder)
    folder = write_lpips_folder(tmp_path / "negative")
    _, linear = lpips_weights()
    linear["lin2.model.1.weight"] = -linear["lin2.model.1.weight"]
    torch.save(linear, folder / LINEAR_FILE)
    with pytest.raises(CheckpointError, match="negative/alex.pth: lin2 has negative weights"):
        load_lpips_alex(folder)
    folder = write_lpips_folder(tmp_path / "code")
    torch.save({"lin0.model.1.weight": Path("x")}, folder / LINEAR_FILE)  # an object, not a tensor: not unpickled
    with pytest.raises(CheckpointError, match="code/alex.pth: not a"):
        load_lpips_alex(folder)
    (folder / LINEAR_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="code/alex.pth: not a PyTorch state dict"):
        LpipsLoss.from_local(folder)


def test_a_training_step_adds_the_lpips_term_from_the_folder(tiny_diffusion, tmp_path):
    from engine.stylize.config import StylizeConfig
    from engine.stylize.loop import _build_run
    from engine.stylize.step import compute_step_gradients

    folder = write_lpips_folder(tmp_path / "lpips-alex")
    config = StylizeConfig(prompt="a zombie head", generator="tiny", diffusion=str(tiny_diffusion.sd_folder),
                           out_dir=str(tmp_path / "run"), steps=1, device="cpu", lpips_path=str(folder),
                           distill=DistillConfig(use_mirror=False, use_grid=False)).validate()
    run = _build_run(config, torch.device("cpu"), None)
    report, _ = compute_step_gradients(run.ctx, 1, run.memory, list(run.named_params.values()))
    assert report.losses["lpips"] > 0
    off = _build_run(config.replace(lpips_path=None), torch.device("cpu"), None)
    report, _ = compute_step_gradients(off.ctx, 1, off.memory, list(off.named_params.values()))
    assert "lpips" not in report.losses


def test_matches_numbers_from_the_lpips_package_itself():
    """Reference numbers printed by the ``lpips`` package (0.1.4) on the same seeded random AlexNet trunk, linear
    layers and images (scripts/dev/lpips_reference.py, which also matches it with the package's trained v0.1
    layers to 4e-9): catches a wrong tap, ImageNet shift/scale, unit-normalisation or spatial average."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lpips_reference", REPO / "scripts" / "dev" / "lpips_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    a, b = reference.seeded_images()
    network = reference.ours(reference.seeded_trunk_state(), reference.seeded_linear_state())
    with torch.no_grad():
        got = network(a, b)
    assert got.tolist() == pytest.approx([0.03727072, 0.03781677, 0.03762114], abs=2e-7)
