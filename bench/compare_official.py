"""Side by side with the official code: one stylization training iteration, ours vs the paper's ``train_LD.py``.

    python bench/compare_official.py --official /tmp/3d_head_stylization --panohead /tmp/PanoHead
    python bench/compare_official.py --official ... --panohead ... --device cuda      # full sizes, fp16

``--official`` is a checkout of three-bee/3d_head_stylization *with its Depth-Anything-V2 submodule*
(``git clone --recursive``), ``--panohead`` one of SizheAn/PanoHead (the official code imports PanoHead's
``camera_utils.py`` and ``legacy.py``, which it does not ship). Neither is part of this project: the bench
imports them from where they are, in worker processes of their own, and never copies them.

What runs
---------
The parent process builds **one set of randomly initialised models** (seeded) and writes it to a scratch
folder; every worker process loads that same set:

* the generator: the official checkout's ``training.triplane.TriPlaneGenerator`` built with PanoHead's
  ``init_kwargs`` (the published G_ema's; on CPU with channel_base/channel_max ÷ 4, ``reduced``), saved as a
  PanoHead-style network pickle for the official code and, with the same tensors, as our checkpoint (the
  parent checks that both synthesise the same tri-grid);
* a Stable-Diffusion-1.5-layout folder (UNet, VAE, CLIP text encoder, tokenizer, DDIM scheduler) and two
  ControlNets (edge, depth) from diffusers configs: SD 1.5's sizes on ``full``, channels ÷ 5 (UNet), ÷ 4
  (VAE, text encoder) on ``reduced``; the image stays 512² (64² latents) in both, so every stage works
  on the sizes the real models see;
* LPIPS-Alex (the ``lpips`` package, random AlexNet trunk, the package's linear heads), given to the
  official code as its ``lpips.LPIPS`` and to ours as an exported ``.pt2`` (``--lpips``), so both pay it;
* Depth-Anything-V2 for the official grid stage (ViT-B as the official code on ``full``, ViT-S on
  ``reduced``); ours uses the generator's own depth instead (no network).

Then ``--repeats`` runs of each side, interleaved (ours, official, ours, official, …), each a fresh
process doing ``--steps`` training iterations; the first ``--warmup`` are excluded (the official code
writes images and a checkpoint in its iteration 0). Ours is :func:`engine.stylize.loop.stylize` with every
stage on (single view + mirror, Canny ControlNet, rank re-weighting, 2×2 grid with the depth ControlNet,
Tweedie, LDIS, LPIPS); the official side is ``Coach.train()`` itself with its command line's defaults
(LD, mirror, grid before SR, low-rank, masking, Tweedie 0.1, LPIPS 0.05, LDIS).

Timing is attributed to stages by wrapping, in each worker only, the methods every stage goes through
(generator forward, UNet/ControlNet/text-encoder forward, VAE encode/decode, depth network, LPIPS,
``torch.autograd.backward``, the optimiser step); "other" is the rest of the iteration (Canny, SVD,
resizing, losses, camera sampling, numpy/PIL round trips). Memory: on CPU the process's peak resident
set during training (VmHWM, reset when training starts) and the resident set when it starts; on CUDA
``max_memory_allocated`` during training and the allocated memory when it starts.

How the official step is adapted (everything else runs as written)
------------------------------------------------------------------
* ``Coach.sample`` is called with the run's device (it defaults to ``'cuda'``, which ``score_distillation``
  never overrides).
* On CPU only: ``torch.float16`` inside ``train_LD`` means float32 (model loading, ``scale_model_input``,
  ``prepare_image``) and the VAE casts its input to its own dtype (the official ``img.half()`` stays in the
  graph): CPU half-precision convolutions are emulated and ~10× slower, and ours runs fp32 on CPU.
* ``lpips.LPIPS(net='alex')`` is built with a random AlexNet trunk (``pnet_rand=True``: torchvision's
  ImageNet weights are a download) and loads the shared LPIPS weights.
* On ``reduced`` sizes ``DepthAnythingV2(encoder='vitb', …)`` is built as ViT-S (the official small config).
* ``matplotlib`` (imported, unused, by the official renderer) and ``requests`` (imported by dnnlib for
  URLs) are replaced by empty in-memory modules when they are not installed; the bench prints what it stubbed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a plain script from anywhere

PROMPT = "a zombie head"
SEED = 0
GIB = 1024**3

# Files a checkout must have, with what they are for (checked before anything is imported).
OFFICIAL_FILES = {
    "train_LD.py": "the official stylization step (Coach)",
    "training/triplane.py": "the official TriPlaneGenerator",
    "training/networks_stylegan2.py": "StyleGAN2 layers",
    "torch_utils/misc.py": "torch_utils (shipped with the official code)",
    "dnnlib/util.py": "dnnlib (shipped with the official code)",
    "depth_anything_v2/depth_anything_v2/dpt.py": "the Depth-Anything-V2 submodule (clone with --recursive, "
    "or `git submodule update --init`)",
}
OFFICIAL_MARKERS = {"train_LD.py": ("class Coach", "def score_distillation", "def prepare_4x4_grid")}
PANOHEAD_FILES = {
    "camera_utils.py": "LookAtPoseSampler / FOV_to_intrinsics, imported by train_LD.py",
    "legacy.py": "load_network_pkl, imported by train_LD.py",
}
# Modules the official code imports at the top of train_LD.py and really uses.
OFFICIAL_DEPENDENCIES = {
    "cv2": "opencv-python (Canny, Depth-Anything's resize)",
    "torchvision": "torchvision (train_LD.py, Depth-Anything-V2, lpips)",
    "lpips": "lpips (the official LPIPS term)",
    "diffusers": "diffusers",
    "PIL": "pillow",
}
# Imported but not used on the training path; replaced by empty modules when missing.
STUBBABLE = ("matplotlib", "matplotlib.pyplot", "requests")

# train_LD.py's command-line defaults (its argparse block); Coach.train() receives these from the CLI.
OFFICIAL_CLI_DEFAULTS = dict(
    bs=1, enable_ldis=1, enable_grad_masking=1, use_SDS=0, grad_div_scale=1000.0, guidance_scale=7.5,
    controlnet_scale=1.0, it_enable_grid=0, backprop_grid_before_SR=1, base_weight=0.75, mirror_weight=0.25,
    tweedie_base_weight=0.1, tweedie_mirror_weight=0.0, tweedie_grid_weight=0.0, lpips_base_weight=0.05,
    lpips_mirror_weight=0.0, use_lowrank=1, lowrank_k=4, base_start_step_range=[35, 49],
    grid_start_step_range=[35, 49], freq_log_imgs=100, freq_log_ckpt=250,
)  # fmt: skip

# PanoHead's generator (the published easy-khair-180-gpc0.8-trans10-025000.pkl's init_kwargs, as recorded
# in tests/data/panohead_G_ema_manifest.json).
PANOHEAD_INIT_KWARGS = json.loads((REPO / "tests/data/panohead_G_ema_manifest.json").read_text())["init_kwargs"]

# Sizes. "full": PanoHead + SD 1.5. "reduced": same layers, fewer channels (2 CPU cores, 24 GiB).
SIZES = {
    "full": dict(
        channel_base=32768, channel_max=512, sr_channels=(256, 128),
        unet=(320, 640, 1280, 1280), vae=(128, 256, 512, 512), text=(768, 3072, 12, 12), depth_encoder="vitb",
    ),
    "reduced": dict(
        channel_base=8192, channel_max=128, depth_resolution=24, depth_resolution_importance=24, sr_channels=(64, 32),
        unet=(64, 128, 256, 256), vae=(32, 64, 128, 128), text=(192, 768, 12, 12), depth_encoder="vits",
    ),
}  # fmt: skip
DEPTH_CONFIGS = {  # Depth-Anything-V2's published configurations
    "vits": dict(encoder="vits", features=64, out_channels=[48, 96, 192, 384]),
    "vitb": dict(encoder="vitb", features=128, out_channels=[96, 192, 384, 768]),
}

STAGES = (
    "generator forward",
    "text encoder",
    "UNet + ControlNet",
    "VAE encode",
    "VAE decode",
    "depth network",
    "LPIPS",
    "backward",
    "optimizer",
    "other",
)


class BenchError(Exception):
    """A problem with what the user gave (paths, dependencies): one line, exit status 2."""


# ================================================================================================
# Checkouts and dependencies
# ================================================================================================
def check_checkouts(official: Path, panohead: Path) -> None:
    """Refuse, naming the path and the missing file, anything that is not the two checkouts."""
    for label, root, files in (("--official", official, OFFICIAL_FILES), ("--panohead", panohead, PANOHEAD_FILES)):
        if not root.is_dir():
            raise BenchError(f"{label} {root}: not a folder")
        for name, what in files.items():
            if not (root / name).is_file():
                raise BenchError(f"{label} {root}: {name} is missing ({what}); is this the right checkout?")
    for name, markers in OFFICIAL_MARKERS.items():
        text = (official / name).read_text(encoding="utf-8", errors="replace")
        missing = [m for m in markers if m not in text]
        if missing:
            raise BenchError(f"--official {official}: {name} lacks {missing}; not the official train_LD.py (@3f54843)")


def check_dependencies() -> None:
    import importlib.util

    missing = [f"{name} ({what})" for name, what in OFFICIAL_DEPENDENCIES.items() if importlib.util.find_spec(name) is None]
    if missing:
        raise BenchError("the official code needs modules this Python lacks: " + "; ".join(missing))
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - e.g. a CUDA torchvision wheel beside a CPU torch
        raise BenchError(f"torchvision is installed but does not import with this torch ({exc})") from None


def install_stubs() -> list[str]:
    """Empty in-memory modules for imports the official code never uses on this path; returns their names."""
    import importlib.machinery
    import importlib.util

    stubbed = []
    for name in STUBBABLE:
        parent = name.split(".")[0]
        if name in sys.modules or (parent == name and importlib.util.find_spec(name) is not None):
            continue
        if parent != name and parent not in stubbed:
            continue  # a real parent package: leave its submodules alone
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # libraries probing find_spec() keep working
        module.__doc__ = "stub installed by bench/compare_official.py (imported but unused by the official step)"
        sys.modules[name] = module
        if parent != name:
            setattr(sys.modules[parent], name.split(".", 1)[1], module)
        stubbed.append(name)
    return stubbed


def official_path(official: Path, panohead: Path) -> None:
    """The official checkout first (its ``training`` is the one train_LD.py imports), then PanoHead's files."""
    for root in (panohead, official):
        text = str(root.resolve())
        if text in sys.path:
            sys.path.remove(text)
        sys.path.insert(0, text)


# ================================================================================================
# Building the shared models (parent process)
# ================================================================================================
REDUCED_SR_MODULE = "compare_official_sr"
REDUCED_SR_CLASS = "SuperresolutionHybrid8XDCReduced"


def install_reduced_superresolution(channels: tuple[int, int]) -> str:
    """PanoHead's 8XDC super-resolution layout (two StyleGAN2 synthesis blocks, 64² → 128² → 256² → 512²,
    dual-conditioned) with ``channels`` instead of its hard-coded (256, 128), built from the official
    checkout's ``SynthesisBlock``, registered as an importable in-memory module; returns its class name
    for ``rendering_kwargs['superresolution_module']``. Our side gets the same widths (``sr_channels``)."""
    import torch
    from training.networks_stylegan2 import SynthesisBlock

    class SuperresolutionHybrid8XDCReduced(torch.nn.Module):
        def __init__(self, channels_in, img_resolution, sr_num_fp16_res, sr_antialias, num_fp16_res=4,
                     conv_clamp=None, channel_base=None, channel_max=None, **block_kwargs):  # fmt: skip
            super().__init__()
            fp16 = sr_num_fp16_res > 0
            clamp = 256 if fp16 else None
            self.input_resolution, self.sr_antialias = 128, sr_antialias
            self.block0 = SynthesisBlock(channels_in, channels[0], w_dim=512, resolution=256, img_channels=3,
                                         is_last=False, use_fp16=fp16, conv_clamp=clamp, **block_kwargs)  # fmt: skip
            self.block1 = SynthesisBlock(channels[0], channels[1], w_dim=512, resolution=512, img_channels=3,
                                         is_last=True, use_fp16=fp16, conv_clamp=clamp, **block_kwargs)  # fmt: skip

        def forward(self, rgb, x, ws, **block_kwargs):
            ws = ws[:, -1:, :].repeat(1, 3, 1)
            if x.shape[-1] != self.input_resolution:
                size = (self.input_resolution, self.input_resolution)
                resize = functools.partial(torch.nn.functional.interpolate, size=size, mode="bilinear",
                                           align_corners=False, antialias=self.sr_antialias)  # fmt: skip
                x, rgb = resize(x), resize(rgb)
            x, rgb = self.block0(x, rgb, ws, **block_kwargs)
            x, rgb = self.block1(x, rgb, ws, **block_kwargs)
            return rgb

    def build(channels=32, **kwargs):  # the generator passes the feature count as ``channels``
        return SuperresolutionHybrid8XDCReduced(channels, **kwargs)

    SuperresolutionHybrid8XDCReduced.__module__ = REDUCED_SR_MODULE
    SuperresolutionHybrid8XDCReduced.__qualname__ = REDUCED_SR_CLASS
    module = types.ModuleType(REDUCED_SR_MODULE)
    setattr(module, REDUCED_SR_CLASS, SuperresolutionHybrid8XDCReduced)
    module.build = build
    sys.modules[REDUCED_SR_MODULE] = module
    return f"{REDUCED_SR_MODULE}.build"


def generator_init_kwargs(size: str) -> dict:
    kwargs = copy.deepcopy(PANOHEAD_INIT_KWARGS)
    kwargs["channel_base"] = SIZES[size]["channel_base"]
    kwargs["channel_max"] = SIZES[size]["channel_max"]
    for key in ("depth_resolution", "depth_resolution_importance"):
        if key in SIZES[size]:
            kwargs["rendering_kwargs"][key] = SIZES[size][key]
    return kwargs


def build_generators(folder: Path, size: str) -> dict:
    """The official TriPlaneGenerator (random, seeded) as a PanoHead-style pickle and the same tensors as ours."""
    import torch
    from torch_utils import persistence  # noqa: F401 - the official package, on sys.path
    from training.triplane import TriPlaneGenerator as OfficialGenerator

    from engine.generator.checkpoint import save_checkpoint
    from engine.generator.safe_pickle import panohead_config_from_init_kwargs
    from engine.generator.triplane import TriPlaneGenerator
    from engine.io.checkpoint import load_state_into

    kwargs = generator_init_kwargs(size)
    sr_channels = tuple(SIZES[size]["sr_channels"])
    if sr_channels != (256, 128):
        kwargs["rendering_kwargs"]["superresolution_module"] = install_reduced_superresolution(sr_channels)
    torch.manual_seed(SEED)
    official = OfficialGenerator(**kwargs).eval().requires_grad_(False)
    official.neural_rendering_resolution = 64
    with open(folder / "G.pkl", "wb") as handle:  # what legacy.load_network_pkl expects: G, D, G_ema
        pickle.dump({"G": official, "D": torch.nn.Module(), "G_ema": official}, handle)

    described = copy.deepcopy(kwargs)  # our config reader knows PanoHead's SR classes; the widths are set after
    described["rendering_kwargs"]["superresolution_module"] = PANOHEAD_INIT_KWARGS["rendering_kwargs"]["superresolution_module"]
    config = panohead_config_from_init_kwargs(described, name=f"panohead-{size}", source="PanoHead init_kwargs")
    config = dataclasses.replace(config, sr_channels=sr_channels).validate()
    ours = TriPlaneGenerator(config).eval().requires_grad_(False)
    load_state_into(ours, official.state_dict(), "official random generator")
    save_checkpoint(folder / "generator.safetensors", {k: v.detach() for k, v in ours.state_dict().items()}, config)

    # Same weights, same network: the tri-grids must agree.
    z = torch.randn(1, 512, generator=torch.Generator().manual_seed(1))
    c = torch.zeros(1, 25)
    with torch.no_grad():
        ws = official.mapping(z, c, truncation_psi=0.75, truncation_cutoff=14)
        ws_ours = ours.mapping(z, c, truncation_psi=0.75, truncation_cutoff=14)
        theirs = official.backbone.synthesis(ws, noise_mode="const", forward_full=True)
        mine = ours.synthesize_planes(ws, noise_mode="const")
        rgb = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        features = torch.randn(1, 32, 64, 64, generator=torch.Generator().manual_seed(3))
        sr_theirs = official.superresolution(rgb, features, ws, noise_mode="const")
        sr_mine = ours.superresolution(rgb, features, ws, noise_mode="const")
    sr_diff = float((sr_theirs - sr_mine).abs().max() / sr_theirs.abs().max())
    ws_diff = float((ws - ws_ours).abs().max())
    planes_diff = float((theirs.reshape(mine.shape) - mine).abs().max() / theirs.abs().max())
    if ws_diff > 1e-4 or planes_diff > 1e-3 or sr_diff > 1e-3:
        raise BenchError(f"the generators differ after the weight copy (ws {ws_diff:.2e}, tri-grid {planes_diff:.2e}, "
                         f"super-resolution {sr_diff:.2e})")  # fmt: skip
    return {
        "parameters": sum(p.numel() for p in official.parameters()),
        "init_kwargs": {
            **{k: kwargs[k] for k in ("channel_base", "channel_max", "num_fp16_res", "sr_num_fp16_res")},
            **{k: kwargs["rendering_kwargs"][k] for k in ("depth_resolution", "depth_resolution_importance")},
        },
        "sr_channels": list(sr_channels),
        "same_weights_check": {"ws_max_abs_diff": ws_diff, "triplane_max_rel_diff": planes_diff,
                               "superresolution_max_rel_diff": sr_diff},  # fmt: skip
    }


def diffusion_modules(size: str, vocab_size: int | None = None) -> dict:
    """Random SD-1.5-layout UNet, VAE, CLIP text encoder and two ControlNets at ``size`` (on the current
    default device: ``with torch.device("meta")`` builds them without memory, for counting). The text
    encoder's vocabulary is the tiny test tokenizer's unless ``vocab_size`` is given (CLIP's: 49408)."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.guidance.tiny import BOS_TOKEN, EOS_TOKEN, TinyDiffusionSpec, tiny_clip_vocabulary

    s = SIZES[size]
    width, intermediate, layers, heads = s["text"]
    spec = TinyDiffusionSpec(image_size=512, unet_channels=s["unet"], vae_channels=s["vae"], text_width=width)
    vocab, _ = tiny_clip_vocabulary(spec.vocabulary_words)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(  # SD 1.5's layout: 3 cross-attention levels + 1 plain, 2 layers per block
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=s["unet"],
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=width, attention_head_dim=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=s["vae"], layers_per_block=2,
        latent_channels=4, sample_size=512, scaling_factor=0.18215,
    )  # fmt: skip
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size or len(vocab), hidden_size=width, intermediate_size=intermediate, projection_dim=width,
            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
            bos_token_id=vocab[BOS_TOKEN], eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[EOS_TOKEN],
        )
    )  # fmt: skip
    controlnets = {}
    for kind in ("edge", "depth"):
        net = ControlNetModel.from_unet(unet)
        if next(net.parameters()).device.type != "meta":
            for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:  # non-zero residuals, as trained
                conv.reset_parameters()
        controlnets[kind] = net
    return {"unet": unet, "vae": vae, "text_encoder": text, "controlnets": controlnets, "spec": spec}


def build_diffusion(folder: Path, size: str) -> dict:
    """An SD-1.5-layout folder (+ controlnet_edge, controlnet_depth) of random models at ``size``."""
    import torch

    from engine.guidance.tiny import write_diffusion_folder

    m = diffusion_modules(size)
    weights = torch.float16 if size == "full" else torch.float32
    write_diffusion_folder(folder / "sd", m["unet"], m["text_encoder"], m["spec"], vae=m["vae"],
                           controlnets=m["controlnets"], weights_dtype=weights)  # fmt: skip
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    return {
        "unet": count(m["unet"]), "vae": count(m["vae"]), "text_encoder": count(m["text_encoder"]),
        "controlnet": count(m["controlnets"]["edge"]), "weights_dtype": str(weights).replace("torch.", ""),
    }  # fmt: skip


def build_depth_network(folder: Path, size: str) -> dict:
    import torch
    from depth_anything_v2.depth_anything_v2.dpt import DepthAnythingV2

    config = DEPTH_CONFIGS[SIZES[size]["depth_encoder"]]
    torch.manual_seed(SEED)
    net = DepthAnythingV2(**config)
    torch.save(net.state_dict(), folder / "depth.pth")
    (folder / "depth.json").write_text(json.dumps(config))
    return {"encoder": config["encoder"], "parameters": sum(p.numel() for p in net.parameters())}


def build_lpips(folder: Path) -> dict:
    import torch
    import lpips

    torch.manual_seed(SEED)
    net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval().requires_grad_(False)
    torch.save(net.state_dict(), folder / "lpips_state.pt")
    example = (torch.rand(1, 3, 512, 512) * 2 - 1, torch.rand(1, 3, 512, 512) * 2 - 1)
    program = torch.export.export(net, example)
    torch.export.save(program, str(folder / "lpips.pt2"))
    return {"parameters": sum(p.numel() for p in net.parameters())}


def build_models(args: argparse.Namespace, folder: Path) -> dict:
    official_path(args.official, args.panohead)
    stubbed = install_stubs()
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    info = {
        "size": args.size,
        "generator": build_generators(folder, args.size),
        "diffusion": build_diffusion(folder, args.size),
        "depth_network": build_depth_network(folder, args.size),
        "lpips": build_lpips(folder),
        "stubbed_in_parent": stubbed,
    }
    info["build_seconds"] = time.perf_counter() - started
    (folder / "models.json").write_text(json.dumps(info, indent=2))
    return info


# ================================================================================================
# Stage timing (worker processes)
# ================================================================================================
class StageClock:
    """Exclusive wall time per stage: entering a stage pauses the one it was called from."""

    def __init__(self, device):
        self.device = device
        self.totals: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self.stack: list[str] = []
        self.last = time.perf_counter()
        self.boundaries: list[tuple[float, dict[str, float]]] = []

    def _now(self) -> float:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def enter(self, stage: str) -> None:
        now = self._now()
        if self.stack:
            self.totals[self.stack[-1]] += now - self.last
        self.stack.append(stage)
        self.last = now

    def exit(self) -> None:
        now = self._now()
        self.totals[self.stack.pop()] += now - self.last
        self.last = now

    @contextlib.contextmanager
    def stage(self, name: str):
        self.enter(name)
        try:
            yield
        finally:
            self.exit()

    def boundary(self) -> None:
        """End of an iteration (and start of the next)."""
        self.boundaries.append((self._now(), dict(self.totals)))

    def iterations(self) -> list[dict]:
        rows = []
        for (t0, a), (t1, b) in zip(self.boundaries, self.boundaries[1:]):
            stages = {k: b[k] - a[k] for k in STAGES if k != "other"}
            stages["other"] = (t1 - t0) - sum(stages.values())
            rows.append({"seconds": t1 - t0, "stages": stages})
        return rows


def wrap_method(owner: type, name: str, clock: StageClock, stage: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        with clock.stage(stage):
            return original(*args, **kwargs)

    setattr(owner, name, timed)


def instrument_common(clock: StageClock) -> None:
    """Stages both sides share: diffusers/transformers models, autograd's backward, optimiser steps."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    wrap_method(UNet2DConditionModel, "forward", clock, "UNet + ControlNet")
    wrap_method(ControlNetModel, "forward", clock, "UNet + ControlNet")
    wrap_method(AutoencoderKL, "encode", clock, "VAE encode")
    from diffusers.models.autoencoders.vae import Encoder

    wrap_method(Encoder, "forward", clock, "VAE encode")  # ours encodes image by image through vae.encoder on CPU
    wrap_method(AutoencoderKL, "decode", clock, "VAE decode")
    wrap_method(CLIPTextModel, "forward", clock, "text encoder")
    original_backward = torch.autograd.backward

    @functools.wraps(original_backward)
    def backward(*args, **kwargs):
        with clock.stage("backward"):
            return original_backward(*args, **kwargs)

    torch.autograd.backward = backward
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(lambda *a: clock.enter("optimizer"))
    register_optimizer_step_post_hook(lambda *a: clock.exit())


# ================================================================================================
# Memory (worker processes)
# ================================================================================================
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class MemoryMeter:
    """Resident memory when training starts and the peak during training (CPU), or the CUDA allocator's."""

    def __init__(self, device):
        self.device = device
        self.at_start = self.peak = None
        self.kind = "CUDA max_memory_allocated" if device.type == "cuda" else "peak resident set (VmHWM)"

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.at_start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        self.at_start = (_status_kib("VmRSS") or 0) * 1024
        try:  # reset the high-water mark so the peak is the training's, not the model loading's
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "peak resident set of the whole process (ru_maxrss; VmHWM could not be reset)"

    def stop(self) -> None:
        import resource

        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.kind.startswith("peak resident set (VmHWM)"):
            self.peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ================================================================================================
# Workers
# ================================================================================================
def _device(name: str):
    import torch

    from engine.generator.loading import resolve_device

    device = resolve_device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def _profile_context(args: argparse.Namespace, side: str):
    if not args.profile:
        return contextlib.nullcontext(None)
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device_resolved == "cuda" else [])
    return profile(activities=activities, record_shapes=False)


class _ProfileGate:
    """Starts the profiler after the warm-up iterations (so it sees the measured ones only)."""

    def __init__(self, args, side: str, warmup: int):
        self.args, self.side, self.warmup, self.seen = args, side, warmup, 0
        self.context = None
        self.profiler = None

    def boundary(self) -> None:
        self.seen += 1
        if self.args.profile and self.profiler is None and self.seen == self.warmup + 1:
            self.context = _profile_context(self.args, self.side)
            self.profiler = self.context.__enter__()

    def finish(self) -> str | None:
        if self.profiler is None:
            return None
        self.context.__exit__(None, None, None)
        sort = "self_cuda_time_total" if self.args.device_resolved == "cuda" else "self_cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=sort, row_limit=30)
        out = Path(self.args.profile) / f"{self.side}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        return str(out)


def worker_ours(args: argparse.Namespace, models: Path, device, clock: StageClock, memory: MemoryMeter) -> dict:
    from engine.distill.regularizers import LpipsLoss
    from engine.generator.triplane import TriPlaneGenerator
    from engine.stylize.config import StylizeConfig
    from engine.stylize.loop import stylize

    instrument_common(clock)
    for name in ("render", "synthesize_planes", "mapping"):
        wrap_method(TriPlaneGenerator, name, clock, "generator forward")
    wrap_method(LpipsLoss, "__call__", clock, "LPIPS")
    gate = _ProfileGate(args, "ours", args.warmup)

    def on_event(event: str, **fields) -> None:
        if event == "started":
            memory.start()
            clock.boundary()
            gate.boundary()
        elif event == "progress":
            clock.boundary()
            gate.boundary()
            if fields["step"] == args.steps:
                memory.stop()

    with tempfile.TemporaryDirectory() as scratch:
        config = StylizeConfig(
            prompt=PROMPT,
            generator=str(models / "generator.safetensors"),
            diffusion=str(models / "sd"),
            lpips_path=str(models / "lpips.pt2"),
            out_dir=str(Path(scratch) / "out"),
            steps=args.steps,
            checkpoint_every=0,
            preview_every=0,
            device=str(device),
            precision="fp16" if device.type == "cuda" else "fp32",
            attention_slicing=args.attention_slicing,
            vae_slicing=args.vae_slicing,
            seed=SEED,
        )
        started = [None]

        def events(event: str, **fields) -> None:
            if event == "started":
                started[0] = fields
            on_event(event, **fields)

        stylize(config, on_event=events)
    return {
        "profile": gate.finish(),
        "stages_on": started[0]["stages"] if started[0] else None,
        "trainable_parameters": started[0]["trainable_parameters"] if started[0] else None,
        "precision": config.precision,
    }


def _torch_with_float16_as(dtype):
    """A stand-in for the ``torch`` module whose ``float16`` is ``dtype`` (everything else is torch's)."""
    import torch

    proxy = types.ModuleType("torch")
    proxy.__dict__.update(torch.__dict__)
    proxy.float16 = dtype
    proxy.half = dtype
    return proxy


def worker_official(args: argparse.Namespace, models: Path, device, clock: StageClock, memory: MemoryMeter) -> dict:
    import torch

    official_path(args.official, args.panohead)
    stubbed = install_stubs()
    import lpips
    import train_LD
    from depth_anything_v2.depth_anything_v2.dpt import DepthAnythingV2
    from training.triplane import TriPlaneGenerator as OfficialGenerator

    adaptations = ["Coach.sample gets the run's device (its default is 'cuda')"]
    sr_channels = json.loads((models / "models.json").read_text())["generator"]["sr_channels"]
    if tuple(sr_channels) != (256, 128):
        install_reduced_superresolution(tuple(sr_channels))
        adaptations.append(f"PanoHead's 8XDC super-resolution with {tuple(sr_channels)} channels instead of (256, 128)")
    instrument_common(clock)
    wrap_method(OfficialGenerator, "synthesis", clock, "generator forward")
    wrap_method(OfficialGenerator, "mapping", clock, "generator forward")
    import training.networks_stylegan2 as stylegan2

    wrap_method(stylegan2.MappingNetwork, "forward", clock, "generator forward")  # get_batch calls backbone.mapping
    wrap_method(DepthAnythingV2, "forward", clock, "depth network")
    wrap_method(lpips.LPIPS, "forward", clock, "LPIPS")

    # LPIPS with the shared weights (a random AlexNet trunk: torchvision's ImageNet weights are a download).
    lpips_state = torch.load(models / "lpips_state.pt", map_location="cpu")

    def make_lpips(*_, **kwargs):
        net = lpips.LPIPS(net=kwargs.get("net", "alex"), pnet_rand=True, verbose=False)
        net.load_state_dict(lpips_state)
        return net

    train_LD.lpips = types.SimpleNamespace(LPIPS=make_lpips)
    adaptations.append("lpips.LPIPS(net='alex') has a random AlexNet trunk + the shared LPIPS weights")

    depth_config = json.loads((models / "depth.json").read_text())
    if depth_config["encoder"] != "vitb":
        train_LD.DepthAnythingV2 = lambda **_: DepthAnythingV2(**depth_config)
        adaptations.append(f"DepthAnythingV2(encoder='vitb') built as {depth_config['encoder']} (reduced size)")

    if device.type == "cpu":
        train_LD.torch = _torch_with_float16_as(torch.float32)
        from diffusers import AutoencoderKL

        encode = AutoencoderKL.encode

        @functools.wraps(encode)
        def encode_in_own_dtype(self, x, *a, **k):
            return encode(self, x.to(self.dtype), *a, **k)

        AutoencoderKL.encode = encode_in_own_dtype
        adaptations.append("CPU: torch.float16 in train_LD means float32; the VAE casts the official img.half() back")

    class BenchCoach(train_LD.Coach):
        def sample(self, *a, **kwargs):  # score_distillation never passes a device; the default is 'cuda'
            kwargs.setdefault("device", self.device)
            return train_LD.Coach.sample(*a, **kwargs)

    gate = _ProfileGate(args, "official", args.warmup)

    def iterations(iterable):
        memory.start()
        for item in iterable:
            clock.boundary()
            gate.boundary()
            yield item
        clock.boundary()
        gate.boundary()
        memory.stop()

    train_LD.tqdm = iterations
    sd = models / "sd"
    with tempfile.TemporaryDirectory() as scratch:
        coach = BenchCoach(
            diff_ckpt_path=str(sd),
            G_ckpt_path=str(models / "G.pkl"),
            controlnet_edge_path=str(sd / "controlnet_edge"),
            controlnet_depth_path=str(sd / "controlnet_depth"),
            depth_path=str(models / "depth.pth"),
            save_path=scratch,
            lr=1e-4,
            seed=SEED,
            device=str(device),
        )
        coach.train(prompt=PROMPT, total_it=args.steps, **OFFICIAL_CLI_DEFAULTS)
    return {"profile": gate.finish(), "stubbed": stubbed, "adaptations": adaptations}


def available_memory_bytes() -> int | None:
    kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                kib = int(line.split()[1])
    return None if kib is None else kib * 1024


def start_memory_watchdog(limit_bytes: int, side: str) -> None:
    """Abort this worker (exit 3) if its resident set passes ``limit_bytes``: the machine is shared, and a
    side that does not fit must fail alone instead of pushing everyone else's processes into swap or OOM."""
    import threading

    def watch() -> None:
        while True:
            rss = (_status_kib("VmRSS") or 0) * 1024
            if rss > limit_bytes:
                sys.stderr.write(f"compare_official: the {side} worker passed the memory limit "
                                 f"({rss / GIB:.1f} > {limit_bytes / GIB:.1f} GiB, --memory-limit-gib); stopped\n")
                sys.stderr.flush()
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True, name="memory-watchdog").start()


def run_worker(args: argparse.Namespace) -> int:
    import torch

    if args.memory_limit_gib:
        start_memory_watchdog(int(args.memory_limit_gib * GIB), args.worker)

    if args.keep_freed_memory:
        from engine.app.allocator import keep_freed_memory

        keep_freed_memory()  # the engine command line's allocator setting, applied to both sides alike
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = _device(args.device)
    args.device_resolved = device.type
    clock, memory = StageClock(device), MemoryMeter(device)
    worker = worker_ours if args.worker == "ours" else worker_official
    info = worker(args, Path(args.models), device, clock, memory)
    rows = clock.iterations()
    result = {
        "side": args.worker,
        "device": str(device),
        "iterations": rows,
        "measured": rows[args.warmup :],
        "memory_kind": memory.kind,
        "memory_at_start_bytes": memory.at_start,
        "memory_peak_bytes": memory.peak,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **info,
    }
    Path(args.result).write_text(json.dumps(result, indent=2))
    return 0


# ================================================================================================
# Parent: interleaved runs, the table
# ================================================================================================
def machine_load() -> dict:
    """Load average and the busiest other processes, to say what else was running."""
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    busy = []
    with contextlib.suppress(Exception):
        out = subprocess.run(["ps", "-eo", "pid,pcpu,rss,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=10)
        for line in out.stdout.splitlines()[1:8]:
            pid, cpu, rss, comm = line.split(None, 3)
            if int(pid) != os.getpid() and float(cpu) >= 5.0:
                busy.append({"pid": int(pid), "cpu_percent": float(cpu), "rss_mib": int(rss) // 1024, "command": comm})
    return {"loadavg": [float(x) for x in load], "busy": busy, "time": time.strftime("%H:%M:%S")}


def run_side(args: argparse.Namespace, side: str, models: Path, scratch: Path, run: int) -> dict:
    result_file = scratch / f"{side}-{run}.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", side, "--models", str(models),
        "--result", str(result_file), "--official", str(args.official), "--panohead", str(args.panohead),
        "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--threads", str(args.threads), "--memory-limit-gib", str(args.memory_limit_gib),
    ]  # fmt: skip
    if args.profile:
        command += ["--profile", str(Path(args.profile) / f"run{run}")]
    if args.keep_freed_memory:
        command.append("--keep-freed-memory")
    if args.attention_slicing:
        command.append("--attention-slicing")
    if args.vae_slicing:
        command.append("--vae-slicing")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    before = machine_load()
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = machine_load()
    if proc.returncode != 0 or not result_file.exists():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BenchError(f"the {side} worker failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(result_file.read_text())
    result.update(run=run, wall_seconds=wall, load_before=before, load_after=after)
    per_iteration = ", ".join(f"{row['seconds']:.1f}" for row in result["measured"])
    print(f"  run {run} {side:<8} {per_iteration} s/iteration (process {wall:.0f} s; load {before['loadavg'][:1]}→{after['loadavg'][:1]})", flush=True)
    return result


def summarise(results: list[dict]) -> dict:
    summary = {}
    for side in ("ours", "official"):
        runs = [r for r in results if r["side"] == side]
        if not runs:
            continue
        seconds = [row["seconds"] for r in runs for row in r["measured"]]
        stages = {k: statistics.median(row["stages"][k] for r in runs for row in r["measured"]) for k in STAGES}
        summary[side] = {
            "iterations": len(seconds),
            "min": min(seconds),
            "median": statistics.median(seconds),
            "stages_median": stages,
            "memory_peak_bytes": max(r["memory_peak_bytes"] for r in runs),
            "memory_at_start_bytes": max(r["memory_at_start_bytes"] for r in runs),
            "memory_kind": runs[0]["memory_kind"],
        }
    if "ours" in summary and "official" in summary:
        summary["ratio_median"] = summary["official"]["median"] / summary["ours"]["median"]
        summary["ratio_min"] = summary["official"]["min"] / summary["ours"]["min"]
    return summary


def print_table(summary: dict, info: dict) -> None:
    sides = [s for s in ("ours", "official") if s in summary]
    print(f"\nside by side — {info['size']} sizes on {info['device']} ({info['precision']}), torch {info['torch']}, "
          f"{info['threads']} threads; median over the measured iterations of all runs")  # fmt: skip
    header = f"| {'stage (s/iteration)':<22} | " + " | ".join(f"{s:>9}" for s in sides) + " |"
    print(header)
    print("|" + "-" * 24 + "|" + "|".join("-" * 11 for _ in sides) + "|")
    for stage in STAGES:
        values = [summary[s]["stages_median"][stage] for s in sides]
        print(f"| {stage:<22} | " + " | ".join(f"{v:>9.2f}" for v in values) + " |")
    print(f"| {'iteration, median':<22} | " + " | ".join(f"{summary[s]['median']:>9.2f}" for s in sides) + " |")
    print(f"| {'iteration, min':<22} | " + " | ".join(f"{summary[s]['min']:>9.2f}" for s in sides) + " |")
    unit = "GiB"
    print(f"| {'memory at start (' + unit + ')':<22} | "
          + " | ".join(f"{summary[s]['memory_at_start_bytes'] / GIB:>9.2f}" for s in sides) + " |")  # fmt: skip
    print(f"| {'peak in training (' + unit + ')':<22} | "
          + " | ".join(f"{summary[s]['memory_peak_bytes'] / GIB:>9.2f}" for s in sides) + " |")  # fmt: skip
    print(f"memory: {summary[sides[0]]['memory_kind']}")
    if "ratio_median" in summary:
        print(f"official / ours: {summary['ratio_median']:.2f}× (medians), {summary['ratio_min']:.2f}× (minima)")


def run_parent(args: argparse.Namespace) -> int:
    import torch

    check_checkouts(args.official, args.panohead)
    check_dependencies()
    device = _device(args.device)
    args.device = device.type
    if args.size == "auto":
        args.size = "full" if device.type == "cuda" else "reduced"
    torch.set_num_threads(args.threads)
    keep = args.models is not None
    scratch = Path(tempfile.mkdtemp(prefix="compare_official."))
    models = Path(args.models) if keep else scratch / "models"
    try:
        if keep and (models / "models.json").is_file() and json.loads((models / "models.json").read_text())["size"] == args.size:
            info = json.loads((models / "models.json").read_text())
            print(f"models: reusing {models}")
        else:
            print(f"models: building {args.size}-size random models in {models} …", flush=True)
            info = build_models(args, models)
        g, d = info["generator"], info["diffusion"]
        print(f"  generator {g['parameters'] / 1e6:.1f} M parameters {g['init_kwargs']}; same weights in both "
              f"(tri-grid rel. diff {g['same_weights_check']['triplane_max_rel_diff']:.1e})")  # fmt: skip
        print(f"  UNet {d['unet'] / 1e6:.1f} M, VAE {d['vae'] / 1e6:.1f} M, text encoder {d['text_encoder'] / 1e6:.1f} M, "
              f"ControlNet {d['controlnet'] / 1e6:.1f} M ×2; depth network {info['depth_network']['encoder']} "
              f"{info['depth_network']['parameters'] / 1e6:.1f} M (official only); LPIPS-Alex")  # fmt: skip
        if info.get("stubbed_in_parent"):
            print(f"  stubbed (imported, unused): {', '.join(info['stubbed_in_parent'])}")
        order = [s for s in ("ours", "official") if args.only in (None, s)]
        results = []
        print(f"runs: {args.repeats} × {order}, interleaved, {args.steps} iterations each ({args.warmup} warm-up)", flush=True)
        for run in range(args.repeats):
            for side in order if run % 2 == 0 or args.no_alternate else order[::-1]:
                results.append(run_side(args, side, models, scratch, run))
        summary = summarise(results)
        first = results[0]
        table_info = {
            "size": args.size, "device": first["device"], "torch": first["torch"], "threads": first["threads"],
            "precision": "fp16" if device.type == "cuda" else "fp32",
        }  # fmt: skip
        print_table(summary, table_info)
        official_runs = [r for r in results if r["side"] == "official"]
        if official_runs:
            print("official code adapted: " + "; ".join(official_runs[0]["adaptations"]))
            if official_runs[0]["stubbed"]:
                print("stubbed in the official worker (imported, unused): " + ", ".join(official_runs[0]["stubbed"]))
        others = sorted({p["command"] for r in results for key in ("load_before", "load_after") for p in r[key]["busy"]})
        print("other busy processes seen during the runs: " + (", ".join(others) if others else "none"))
        if args.json:
            report = {"models": info, "summary": summary, "runs": results, "table": table_info, "python": platform.python_version()}
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of three-bee/3d_head_stylization (with its submodule)")
    parser.add_argument("--panohead", type=Path, required=True, help="checkout of SizheAn/PanoHead")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--size", default="auto", choices=("auto", "reduced", "full"), help="auto: full on CUDA, reduced on CPU")
    parser.add_argument("--steps", type=int, default=3, help="training iterations per run (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="iterations excluded from the numbers (default 1)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, interleaved (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--only", choices=("ours", "official"), help="run one side only")
    parser.add_argument("--no-alternate", action="store_true", help="always ours first (default: the order alternates)")
    parser.add_argument("--models", help="keep (or reuse) the built models in this folder")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="both sides: the engine CLI's glibc tuning (engine/app/allocator.py); faster, higher RSS")
    parser.add_argument("--attention-slicing", action="store_true", help="ours: diffusers attention slicing")
    parser.add_argument("--vae-slicing", action="store_true", help="ours: VAE slicing")
    parser.add_argument("--profile", help="write torch.profiler tables of the measured iterations to this folder")
    parser.add_argument("--json", type=Path, help="also write everything to this JSON file")
    parser.add_argument("--memory-limit-gib", type=float, default=None,
                        help="stop a worker whose resident set passes this (default: 90%% of the memory available "
                             "when the bench starts; 0 = no limit)")
    parser.add_argument("--worker", choices=("ours", "official"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or not 0 <= args.warmup < args.steps or args.repeats < 1 or args.threads < 1:
        parser.error("need --steps ≥ 1, 0 ≤ --warmup < --steps, --repeats ≥ 1, --threads ≥ 1")
    if args.memory_limit_gib is None:
        available = available_memory_bytes()
        args.memory_limit_gib = round(0.9 * available / GIB, 1) if available else 0
    try:
        return run_worker(args) if args.worker else run_parent(args)
    except BenchError as exc:
        print(f"compare_official: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
