"""Benchmark stylization training: seconds per iteration and memory per phase (render, guidance, backward).

Runs the real training loop (:func:`engine.stylize.loop.stylize`, all stages on: single view + mirror, 2×2 grid,
rank re-weighting, Tweedie, LDIS) for ``--steps`` iterations and reports

* s/iteration (mean over the steps after ``--warmup``), from the loop's own progress events;
* per phase, the time per iteration and the peak memory: on CUDA ``torch.cuda.max_memory_allocated``
  within the phase (weights included; the resident weights are printed separately), on CPU the resident
  set size at the end of the phase and the process's peak RSS.

``--full`` uses the full architecture sizes with random weights built from config dicts in memory (no
download, nothing written): the PanoHead generator preset and Stable Diffusion 1.5's UNet (320/640/1280/1280,
cross-attention 768, 2 layers per block, head dim 8, 64² latents), VAE (128/256/512/512) and a 12-layer,
768-wide CLIP text encoder, plus two full ControlNets (edge, depth) sharing that UNet. This is meant for a
GPU; on a CPU one step takes minutes. Without ``--full`` it uses the ``small`` generator preset and the
tiny test diffusion folder, which runs anywhere in seconds.

    python bench/bench_stylize.py                   # reduced sizes (CPU friendly)
    python bench/bench_stylize.py --full --steps 5  # full sizes (GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere

from engine.distill import DistillConfig  # noqa: E402
from engine.generator.loading import resolve_device  # noqa: E402
from engine.stylize.config import StylizeConfig  # noqa: E402
from engine.stylize.loop import stylize  # noqa: E402

PHASES = ("render", "guidance", "backward")
GIB = 1024**3


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the lifetime peak
        return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PhaseMeter:
    """Accumulates time and peak memory of the loop's phases (passed to ``stylize(phases=…)``)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak: dict[str, int] = defaultdict(int)
        self.enabled = True

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        self._sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] += time.perf_counter() - start
        used = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else _rss_bytes()
        self.peak[name] = max(self.peak[name], used)


class StepClock:
    """on_event callback: timestamps of the progress events, i.e. the end of every iteration."""

    def __init__(self, meter: PhaseMeter, warmup: int):
        self.meter, self.warmup = meter, warmup
        self.started_at: float | None = None
        self.step_ends: list[float] = []
        self.events: list[tuple[str, dict]] = []

    def __call__(self, event: str, **fields) -> None:
        self.meter._sync()
        now = time.perf_counter()
        self.events.append((event, fields))
        if event == "started":
            self.started_at = now
            self.meter.enabled = self.warmup == 0
        elif event == "progress":
            self.step_ends.append(now)
            self.meter.enabled = fields["step"] >= self.warmup  # measure phases after the warm-up steps
        elif event in ("done", "cancelled"):
            self.finished_at = now


# ------------------------------------------------------------------------------------------------
# Full-size random diffusion models, in memory
# ------------------------------------------------------------------------------------------------
def build_full_guidance(device: torch.device, precision: str, prompt: str, memory=None):
    """SD-1.5-sized UNet, VAE, CLIP text encoder and two ControlNets with random weights."""
    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from engine.guidance import Guidance, GuidanceConfig
    from engine.guidance.models import DiffusionModels, MemoryOptions, apply_memory_options, resolve_dtype
    from engine.guidance.tiny import BOS_TOKEN, EOS_TOKEN, write_tiny_tokenizer

    dtype = resolve_dtype(precision, device)
    with torch.device(device):  # initialise directly on the target device (fast on a GPU)
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
            scaling_factor=0.18215,
        )
        controlnets = {kind: ControlNetModel.from_unet(unet) for kind in ("edge", "depth")}
    with tempfile.TemporaryDirectory() as folder:
        vocab = write_tiny_tokenizer(Path(folder))
        tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    with torch.device(device):
        text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # diffusers warns about any .to(dtype) of a model it did not load
    try:
        for module in (unet, vae, text_encoder, *controlnets.values()):
            module.to(dtype=dtype).requires_grad_(False).eval()
    finally:
        diffusers_logging.set_verbosity(verbosity)
    models = DiffusionModels(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        controlnets=controlnets,
        dtype=dtype,
        device=device,
        vae_scaling_factor=0.18215,
    )
    apply_memory_options(models, memory or MemoryOptions())  # what load_diffusion_models applies
    return Guidance(models, GuidanceConfig(prompt=prompt, precision=precision))


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def run_benchmark(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    warmup = min(args.warmup, args.steps - 1)  # at least one measured iteration
    prompt = "a zombie head"
    distill = DistillConfig(use_grid=not args.no_grid)
    with tempfile.TemporaryDirectory() as scratch:
        setup_start = time.perf_counter()
        if args.full:
            generator = "panohead"
            from engine.guidance import MemoryOptions

            memory = MemoryOptions(attention_slicing=args.attention_slicing, vae_slicing=args.vae_slicing)
            guidance = build_full_guidance(device, args.precision, prompt, memory)
            diffusion = "(in-memory SD-1.5-sized random models)"
        else:
            from engine.guidance import build_tiny_diffusion_folder

            generator = "small"
            diffusion = str(build_tiny_diffusion_folder(Path(scratch) / "sd").sd_folder)
            guidance = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        models_seconds = time.perf_counter() - setup_start
        resident = torch.cuda.memory_allocated(device) if device.type == "cuda" else _rss_bytes()

        config = StylizeConfig(
            prompt=prompt,
            generator=generator,
            diffusion=diffusion,
            out_dir=str(Path(scratch) / "out"),
            steps=args.steps,
            batch_size=args.batch_size,
            checkpoint_every=0,
            preview_every=0,
            device=str(device),
            precision=args.precision,
            attention_slicing=args.attention_slicing,
            vae_slicing=args.vae_slicing,
            distill=distill,
        )
        meter = PhaseMeter(device)
        clock = StepClock(meter, warmup)
        result = stylize(config, on_event=clock, phases=meter, guidance=guidance)

    ends = clock.step_ends
    starts = [clock.started_at, *ends[:-1]]
    durations = [e - s for s, e in zip(starts, ends)]
    measured = durations[warmup:]
    started = next(f for e, f in clock.events if e == "started")
    report = {
        "mode": "full" if args.full else "reduced",
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "generator": generator,
        "diffusion": diffusion,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "attention_slicing": args.attention_slicing,
        "vae_slicing": args.vae_slicing,
        "grid": started["stages"]["grid"],
        "trainable_parameters": started["trainable_parameters"],
        "steps": result.step,
        "warmup_steps": warmup,
        "seconds_per_iteration": sum(measured) / len(measured),
        "first_iteration_seconds": durations[0],
        "model_setup_seconds": models_seconds,
        "final_checkpoint_seconds": clock.finished_at - ends[-1],
        "phase_seconds_per_iteration": {k: meter.seconds[k] / len(measured) for k in PHASES},
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "RSS at phase end",
        "resident_before_training_gib": resident / GIB,
        "phase_peak_gib": {k: meter.peak[k] / GIB for k in PHASES},
        "process_peak_rss_gib": _peak_rss_bytes() / GIB,
    }
    return report


def print_report(report: dict) -> None:
    print(f"stylize benchmark — {report['mode']} sizes on {report['device']}")
    print(f"  generator {report['generator']}, diffusion {report['diffusion']}, precision {report['precision']}, "
          f"batch {report['batch_size']}, grid {'on' if report['grid'] else 'off'}, "
          f"{report['trainable_parameters'] / 1e6:.2f} M trainable parameters")
    print(f"  model setup {report['model_setup_seconds']:.1f} s; first iteration {report['first_iteration_seconds']:.2f} s")
    print(f"  {report['seconds_per_iteration']:.3f} s/iteration over {report['steps'] - report['warmup_steps']} "
          f"iteration(s) after {report['warmup_steps']} warm-up")
    print(f"  memory ({report['memory_kind']}); resident before training {report['resident_before_training_gib']:.2f} GiB")
    print(f"  {'phase':<10}{'s/iter':>10}{'peak GiB':>12}")
    for name in PHASES:
        print(f"  {name:<10}{report['phase_seconds_per_iteration'][name]:>10.3f}{report['phase_peak_gib'][name]:>12.2f}")
    print(f"  process peak RSS {report['process_peak_rss_gib']:.2f} GiB; final checkpoint write {report['final_checkpoint_seconds']:.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full PanoHead + SD-1.5 sizes (random weights; meant for a GPU)")
    parser.add_argument("--steps", type=int, default=3, help="training iterations (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="iterations excluded from the averages (default 1)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "fp16", "bf16", "fp32"))
    parser.add_argument("--no-grid", action="store_true", help="single-view stage only")
    parser.add_argument("--attention-slicing", action="store_true", help="diffusers attention slicing (lower peak memory)")
    parser.add_argument("--vae-slicing", action="store_true",
                        help="VAE one image at a time, encoder activations recomputed in the backward (lower peak memory)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be ≥ 1 and --warmup ≥ 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_benchmark(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
