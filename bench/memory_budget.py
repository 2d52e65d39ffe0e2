"""GPU memory of one full-size stylization step, computed on the ``meta`` device (no GPU, no memory needed).

    python bench/memory_budget.py                 # fp16, attention + VAE slicing (the 12 GB configuration)
    python bench/memory_budget.py --markdown      # the README table
    python bench/memory_budget.py --no-slicing    # fused attention, no slicing

The real-size models are built with random weights on the ``meta`` device, where tensors have shapes and
dtypes but no storage: PanoHead's generator (the ``panohead`` preset, fp32: it trains) and Stable Diffusion
1.5's UNet, VAE, CLIP text encoder and two ControlNets (fp16; the same configs as
``bench/compare_official.py --size full``). Then

* **parameters** are counted exactly; the optimiser adds a gradient and Adam's two moments (fp32) per
  trainable parameter (synthesis + super-resolution weights, biases frozen, as the training loop);
* **activations** come from replaying the step's passes on ``meta`` tensors in the order
  :func:`engine.stylize.step.compute_step_gradients` runs them (trainable tri-grid; frozen tri-grid;
  single view: frozen render, base + mirror render with super-resolution, VAE encode with gradients, UNet +
  edge ControlNet at CFG batch 2, VAE decode, backward; 2×2 grid: four frozen and four trainable raw renders,
  VAE encode, UNet + depth ControlNet, backward; the synthesis backward) while a dispatch-level tracker keeps
  the bytes of every live tensor storage — activations saved for backward, transients, gradients — and
  records the peak. Attention runs as ``scaled_dot_product_attention`` (no N² matrix, as fused attention on a
  GPU) or, with ``--attention-slicing``, as diffusers' sliced processor (N² per slice, counted).

What is not modelled, and so is stated beside the result: the CUDA context and the caching allocator's
fragmentation (``--reserve-gib``, an assumption), Adam's temporary buffers (counted as one extra copy of the
trainable weights), and the super-resolution blocks' fp16 (on CUDA they run in fp16; here they are counted
in fp32, an over-estimate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere

from compare_official import diffusion_modules  # noqa: E402  (bench/ is on sys.path as the script's folder)

from engine.distill import tile_2x2  # noqa: E402
from engine.guidance import Guidance, GuidanceConfig, MemoryOptions  # noqa: E402
from engine.guidance.models import DiffusionModels, apply_memory_options  # noqa: E402
from engine.guidance.tiny import build_scheduler  # noqa: E402
from engine.generator.camera import cameras_at  # noqa: E402
from engine.generator.config import get_preset  # noqa: E402
from engine.generator.inference import camera_config_for  # noqa: E402
from engine.generator.triplane import RenderOptions, TriPlaneGenerator  # noqa: E402
from engine.stylize.loop import TRAINABLE_GROUPS  # noqa: E402

GIB = 1024**3
CLIP_VOCABULARY = 49408  # SD 1.5's tokenizer (openai/clip-vit-large-patch14)
META = torch.device("meta")


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensor storages alive at any moment among those made by ops under this mode, and the peak.

    A storage is counted once however many views point at it and is released when the last tensor using it
    dies (autograd keeps the tensors it saved for backward alive, so they stay counted until backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}
        self.current = 0
        self.peak = 0
        self.phase = ""
        self.peak_phase = ""
        self.phase_peaks: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [storage.nbytes(), 0]
            self.current += entry[0]
            if self.current > self.peak:
                self.peak, self.peak_phase = self.current, self.phase
            if self.current > self.phase_peaks.get(self.phase, 0):
                self.phase_peaks[self.phase] = self.current
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[key]

    @contextlib.contextmanager
    def during(self, phase: str):
        previous, self.phase = self.phase, phase
        self.phase_peaks.setdefault(phase, self.current)
        try:
            yield
        finally:
            self.phase = previous


def _count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build(args: argparse.Namespace) -> dict:
    with torch.device(META):
        frozen = TriPlaneGenerator(get_preset("panohead")).eval().requires_grad_(False)
        trainable = TriPlaneGenerator(get_preset("panohead")).eval().requires_grad_(False)
        diffusion = diffusion_modules("full", vocab_size=CLIP_VOCABULARY)
    trainable.set_trainable(TRAINABLE_GROUPS, train_biases=False)
    dtype = torch.float16
    for name in ("unet", "vae", "text_encoder"):
        diffusion[name].to(dtype).requires_grad_(False).eval()
    for net in diffusion["controlnets"].values():
        net.to(dtype).requires_grad_(False).eval()
    models = DiffusionModels(
        unet=diffusion["unet"], vae=diffusion["vae"], text_encoder=diffusion["text_encoder"], tokenizer=None,
        scheduler=build_scheduler(), controlnets=diffusion["controlnets"], dtype=dtype, device=META,
        vae_scaling_factor=0.18215,
    )  # fmt: skip
    # The engine's own memory options and encode/decode path (what `--attention-slicing --vae-slicing` do).
    apply_memory_options(models, MemoryOptions(attention_slicing=args.attention_slicing, vae_slicing=args.vae_slicing))
    guidance = Guidance(models, GuidanceConfig(prompt="a zombie head"))
    return {"frozen": frozen, "trainable": trainable, "dtype": dtype, "guidance": guidance, **diffusion}


def parameter_bytes(m: dict) -> dict:
    generator = _count(m["frozen"])
    trainable = _count(m["trainable"], trainable_only=True)
    half = torch.finfo(m["dtype"]).bits // 8
    rows = {
        "generator, frozen copy (fp32)": generator * 4,
        "generator, trainable copy (fp32)": generator * 4,
        "UNet (fp16)": _count(m["unet"]) * half,
        "edge + depth ControlNets (fp16)": sum(_count(n) for n in m["controlnets"].values()) * half,
        "VAE (fp16)": _count(m["vae"]) * half,
        "CLIP text encoder (fp16)": _count(m["text_encoder"]) * half,
        "gradients (fp32, trainable weights)": trainable * 4,
        "Adam moments (2 × fp32)": trainable * 8,
        "Adam step temporaries (≈ 1 × fp32)": trainable * 4,
    }
    counts = {
        "generator": generator,
        "trainable": trainable,
        "unet": _count(m["unet"]),
        "controlnet": _count(m["controlnets"]["edge"]),
        "vae": _count(m["vae"]),
        "text_encoder": _count(m["text_encoder"]),
    }
    return {"rows": rows, "counts": counts}


def replay_step(m: dict) -> dict:
    """The step's passes on meta tensors (see the module docstring); returns the tracker's numbers."""
    frozen, trainable, dtype = m["frozen"], m["trainable"], m["dtype"]
    guidance, unet = m["guidance"], m["unet"]
    native, latent, tile = 512, 64, 256
    camera = camera_config_for(frozen, (0.0, 0.0, 0.0))
    cams = lambda n, yaw: cameras_at(torch.linspace(-yaw, yaw, n), torch.zeros(n), camera).c.to(META)  # noqa: E731
    text = torch.zeros(2, 77, unet.config.cross_attention_dim, device=META, dtype=dtype)  # cached prompt embeddings
    t = torch.tensor([281, 281], device=META)
    tracker = LiveBytes()

    def score(latents: torch.Tensor, kind: str, control: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = latents.detach().to(dtype).repeat(2, 1, 1, 1)  # CFG batch [uncond, text]
            down, mid = m["controlnets"][kind](x, t, encoder_hidden_states=text,
                                               controlnet_cond=control.to(dtype).repeat(2, 1, 1, 1), return_dict=False)  # fmt: skip
            eps = unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                       mid_block_additional_residual=mid, return_dict=False)[0]  # fmt: skip
            return eps.float().chunk(2)[1]

    with tracker:
        ws = torch.randn(1, frozen.num_ws, frozen.config.w_dim, device=META)
        with tracker.during("tri-grids"):
            planes = trainable.synthesize_planes(ws)  # its graph lives until the step's last backward
            with torch.no_grad():
                frozen_planes = frozen.synthesize_planes(ws)
            leaf = planes.detach().requires_grad_(True)
        with tracker.during("single view"):
            options = RenderOptions(background="none")
            with torch.no_grad():
                source = frozen.render(ws, cams(1, 0.5), options, planes=frozen_planes)
                edge = source["image"].expand(-1, 3, -1, -1)  # stands for the Canny image (same size)
            out = trainable.render(ws.repeat(2, 1, 1), cams(2, 0.5), options, planes=leaf.repeat(2, 1, 1, 1, 1))
            latents = guidance.encode_images(out["image"])
            eps = score(latents[:1], "edge", edge)
            x0 = guidance.decode_latents(eps)
            loss = (latents.float() * torch.cat([eps, eps.flip(-1)])).sum() + ((out["image"][:1] - x0) ** 2).mean()
        with tracker.during("single view backward"):
            loss.backward()
            del loss, out, latents, eps, x0, source, edge
        with tracker.during("2×2 grid"):
            options = RenderOptions(background="none", run_superresolution=False)
            with torch.no_grad():
                frozen_views = frozen.render(ws.repeat(4, 1, 1), cams(4, 3.0), options, planes=frozen_planes.repeat(4, 1, 1, 1, 1))
                control = tile_2x2(torch.nn.functional.interpolate(frozen_views["image_depth"], size=(tile, tile))).expand(-1, 3, -1, -1)
            out = trainable.render(ws.repeat(4, 1, 1), cams(4, 3.0), options, planes=leaf.repeat(4, 1, 1, 1, 1))
            grid = tile_2x2(torch.nn.functional.interpolate(out["image_raw"], size=(tile, tile), mode="bilinear", align_corners=True))
            latents = guidance.encode_images(grid)
            eps = score(latents, "depth", control)
            loss = (latents.float() * eps).sum()
        with tracker.during("2×2 grid backward"):
            loss.backward()
            del loss, out, grid, latents, eps, control, frozen_views
        with tracker.during("synthesis backward"):
            planes.backward(leaf.grad)
    assert native == 8 * latent
    return {"peak": tracker.peak, "peak_phase": tracker.peak_phase, "phase_peaks": tracker.phase_peaks}


def attention_matrix_bytes(m: dict) -> int:
    """The UNet's largest unsliced attention matrix (batch 2 × heads × N² at the 64² level, fp16): what
    unfused, unsliced attention would hold at once. Reported to show what slicing or fused attention avoids."""
    heads = m["unet"].config.attention_head_dim  # SD 1.5's config names the head count attention_head_dim
    tokens = 64 * 64
    return 2 * int(heads) * tokens * tokens * (torch.finfo(m["dtype"]).bits // 8)


def budget(args: argparse.Namespace) -> dict:
    m = build(args)
    params = parameter_bytes(m)
    step = replay_step(m)
    resident = sum(params["rows"].values())
    total = resident + step["peak"] + int(args.reserve_gib * GIB)
    return {
        "settings": {
            "precision": "fp16 diffusion models, fp32 generator",
            "attention_slicing": args.attention_slicing,
            "vae_slicing": args.vae_slicing,
            "reserve_gib": args.reserve_gib,
            "budget_gib": args.budget_gib,
        },
        "parameters": params["counts"],
        "resident_bytes": params["rows"],
        "activation_peak_bytes": step["peak"],
        "activation_peak_phase": step["peak_phase"],
        "activation_phase_peaks": step["phase_peaks"],
        "unsliced_attention_matrix_bytes": attention_matrix_bytes(m),
        "total_bytes": total,
        "fits": total <= args.budget_gib * GIB,
    }


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"| item (full size: PanoHead + SD 1.5, {s['precision']}; attention slicing {'on' if s['attention_slicing'] else 'off'}, "
        f"VAE slicing {'on' if s['vae_slicing'] else 'off'}) | GiB |",
        "|---|---|",
    ]
    for name, value in report["resident_bytes"].items():
        lines.append(f"| {name} | {value / GIB:.2f} |")
    lines.append(f"| activations, peak of the replayed step (at: {report['activation_peak_phase']}) | "
                 f"{report['activation_peak_bytes'] / GIB:.2f} |")  # fmt: skip
    lines.append(f"| CUDA context + allocator slack (assumed) | {s['reserve_gib']:.2f} |")
    verdict = "fits" if report["fits"] else "does NOT fit"
    lines.append(f"| **total** | **{report['total_bytes'] / GIB:.2f}** ({verdict} {s['budget_gib']:g} GiB) |")
    phases = ", ".join(f"{k} {v / GIB:.2f}" for k, v in report["activation_phase_peaks"].items())
    counts = report["parameters"]
    lines.append("")
    lines.append(
        f"Parameters: generator {counts['generator'] / 1e6:.1f} M ({counts['trainable'] / 1e6:.1f} M trainable), "
        f"UNet {counts['unet'] / 1e6:.1f} M, ControlNet {counts['controlnet'] / 1e6:.1f} M ×2, VAE {counts['vae'] / 1e6:.1f} M, "
        f"text encoder {counts['text_encoder'] / 1e6:.1f} M. Live tensor bytes at each phase's peak (GiB): {phases}. "
        f"Unsliced, unfused attention would add {report['unsliced_attention_matrix_bytes'] / GIB:.2f} GiB per attention call."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-slicing", action="store_true", help="fused attention, no VAE slicing")
    parser.add_argument("--budget-gib", type=float, default=12.0, help="the card to fit (default 12 GiB)")
    parser.add_argument("--reserve-gib", type=float, default=0.75,
                        help="assumed CUDA context + allocator slack outside the tensors (default 0.75)")  # fmt: skip
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    args.attention_slicing = args.vae_slicing = not args.no_slicing
    report = budget(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        print(markdown(report))
    else:
        print(json.dumps(report, indent=2))
    return 0 if report["fits"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
