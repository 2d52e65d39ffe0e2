"""Train the embedded pack's diffusion prior (SD-1.5 layout) and its edge / depth ControlNets on CPU.

Command (the pack's version; one CPU thread, the other core is left to the generator's training)::

    python scripts/pack/train_diffusion.py --out engine/pack/embedded-v1 --seed 0

Stages (steps are the reproducible knobs; ``--*-minutes`` only cap a stage on a slow machine and the report
says whether a cap cut one short):

1. render the training set (``engine.world.dataset``: 6 styles × ``--identities`` heads × 4 views at 64²,
   plus one 2×2 grid per head and style) and a held-out set from other identities; cached in ``--cache``;
2. ``AutoencoderKL`` (×4 downsampling) on all images; its ``scaling_factor`` is set to 1/std of the latents;
3. the UNet on frozen posterior samples of the latents, with 10% empty prompts (classifier-free guidance);
4. the edge ControlNet (single views, Canny hints) and the depth ControlNet (single views and 2×2 grids, depth
   hints), each copied from the trained UNet and trained with the UNet frozen (30% empty prompts);
5. held-out metrics, DDIM samples per style prompt (→ ``/tmp/pack_prior_samples.{pt,png}``), and the folder
   ``OUT/diffusion/`` (fp16 weights) + ``OUT/logs/diffusion.jsonl`` + ``OUT/reports/diffusion.json``.

Measured for the pack (2-core VM shared with the generator and recognition trainings, ``--threads 1``,
seed 0): 1875 s wall (VAE 334 s, all 450 steps; UNet 915 s, 1466 of 1500 steps before the 15-minute cap;
ControlNets 271 s each, ~360 of 400 steps), with the renders read from the cache; rendering them the first
time took about 5 minutes more. Held-out ε-MSE 0.064 (a fresh UNet: 1.14); 96% of the prior's DDIM samples
are classified as the prompted style by the pack's style classifier (``score_diffusion_samples.py``).
When a cap cuts a stage, its learning rate still anneals (progress = max(step, time) fraction), but the step
count then depends on the machine's speed; ``reports/diffusion.json`` records the steps each stage ran.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from diffusion_training import (  # noqa: E402
    PACK_SPEC,
    LatentNorm,
    PromptTable,
    alphas_cumprod,
    build_tokenizer_and_encoder,
    ddim_sample,
    decode,
    denoising_loss,
    draw_training_noise,
    embed_prompts,
    encode_posterior,
    heldout_denoising_loss,
    sample_latents,
    train_loop,
    vae_loss,
)

from engine.io.atomic import write_json, write_text, write_with  # noqa: E402
from engine.guidance.tiny import build_controlnet, build_unet, build_vae, write_diffusion_folder  # noqa: E402
from engine.world.dataset import WorldDataConfig, WorldSamples, render_world_samples, tile_grids  # noqa: E402
from engine.world.styles import STYLES  # noqa: E402

SAMPLES_PT = Path("/tmp/pack_prior_samples.pt")
SAMPLES_PNG = Path("/tmp/pack_prior_samples.png")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="pack root (writes diffusion/, logs/, reports/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--identities", type=int, default=160, help="training heads (each: 4 views × 6 styles)")
    p.add_argument("--heldout-identities", type=int, default=8)
    p.add_argument("--vae-steps", type=int, default=450)
    p.add_argument("--unet-steps", type=int, default=1500)
    p.add_argument("--controlnet-steps", type=int, default=400)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vae-minutes", type=float, default=7.0)
    p.add_argument("--unet-minutes", type=float, default=15.0)
    p.add_argument("--controlnet-minutes", type=float, default=4.5)
    p.add_argument("--cache", type=Path, default=Path("/tmp/pack_diffusion_cache"))
    p.add_argument("--samples-per-style", type=int, default=4)
    return p.parse_args(argv)


class JsonlLog:
    """Appends one JSON object per line to the training log (rewritten atomically at the end)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, stage: str):
        def record(step: int, values: dict) -> None:
            entry = {"stage": stage, "step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
            self.lines.append(json.dumps(entry))
            print(self.lines[-1], flush=True)

        return record

    def write(self, path: Path) -> None:
        write_text(path, "\n".join(self.lines) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Data.


def cached_samples(config: WorldDataConfig, seed: int, cache: Path) -> tuple[WorldSamples, bool]:
    """The rendered set for (config, seed), from ``cache`` when an earlier run rendered it; (samples, cache hit)."""
    key = hashlib.sha256(json.dumps([asdict(config), seed], sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = cache / f"world_{key}.pt"
    if path.is_file():
        return WorldSamples.load(path), True
    samples = render_world_samples(config, seed)
    samples.save(path)
    return samples, False


def with_grids(samples: WorldSamples) -> WorldSamples:
    return WorldSamples.concatenate([samples, tile_grids(samples)])


# ----------------------------------------------------------------------------------------------------------
# Stages.


def train_vae(vae, images: torch.Tensor, args, log) -> dict:
    gen = torch.Generator().manual_seed(args.seed + 11)

    def step(_: int):
        rows = torch.randint(images.shape[0], (args.vae_batch,), generator=gen)
        batch = images[rows]
        flip = torch.rand(batch.shape[0], generator=gen) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return vae_loss(vae, batch, gen)

    vae.train()
    summary = train_loop(vae.parameters(), step, args.vae_steps, 1e-3, warmup=20,
                         max_seconds=60 * args.vae_minutes, log=log)  # fmt: skip
    vae.eval().requires_grad_(False)
    return summary


def train_unet(unet, latents, prompts: PromptTable, style_index, alpha_bar, args, log) -> dict:
    mean, std, scale = latents
    gen = torch.Generator().manual_seed(args.seed + 23)

    def step(_: int):
        rows = torch.randint(mean.shape[0], (args.batch,), generator=gen)
        x0 = sample_latents(mean[rows], std[rows], scale, gen)
        t, noise, drop = draw_training_noise(x0, gen, 0.1)
        return denoising_loss(unet, x0, prompts.lookup(style_index[rows], drop), t, noise, alpha_bar), {}

    unet.train()
    summary = train_loop(unet.parameters(), step, args.unet_steps, 4e-4, warmup=100,
                         max_seconds=60 * args.unet_minutes, log=log)  # fmt: skip
    unet.eval().requires_grad_(False)
    return summary


def train_controlnet(net, unet, latents, hints, rows_allowed, prompts, style_index, alpha_bar, args, log, salt) -> dict:
    mean, std, scale = latents
    gen = torch.Generator().manual_seed(args.seed + salt)

    def step(_: int):
        rows = rows_allowed[torch.randint(rows_allowed.shape[0], (args.batch,), generator=gen)]
        x0 = sample_latents(mean[rows], std[rows], scale, gen)
        t, noise, drop = draw_training_noise(x0, gen, 0.3)
        hint = hints[rows].float().expand(-1, 3, -1, -1)
        loss = denoising_loss(unet, x0, prompts.lookup(style_index[rows], drop), t, noise, alpha_bar, net, hint)
        return loss, {}

    net.train()
    summary = train_loop(net.parameters(), step, args.controlnet_steps, 6e-4, warmup=30,
                         max_seconds=60 * args.controlnet_minutes, log=log)  # fmt: skip
    net.eval().requires_grad_(False)
    return summary


# ----------------------------------------------------------------------------------------------------------
# Evaluation.


def evaluate(models, held: WorldSamples, prompts: PromptTable, alpha_bar, args) -> dict:
    vae, unet, controlnets, scale = models["vae"], models["unet"], models["controlnets"], models["scale"]
    with torch.no_grad():
        mean, _ = encode_posterior(vae, held.images)
        recon = vae.decode(mean).sample.clamp(-1, 1)
    latents = scale(mean)
    text = prompts.lookup(held.style_index)
    empty = prompts.lookup(held.style_index, torch.ones_like(held.style_index, dtype=torch.bool))
    seed = args.seed + 1000
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 999)
        fresh = build_unet(PACK_SPEC).eval()
    metrics = {
        "heldout_samples": len(held),
        "vae_l1": float((recon - held.images).abs().mean()),
        "vae_psnr_db": float(10 * torch.log10(4.0 / (recon - held.images).pow(2).mean())),
        "unet_loss": heldout_denoising_loss(unet, latents, text, seed, alpha_bar),
        "unet_loss_empty_prompt": heldout_denoising_loss(unet, latents, empty, seed, alpha_bar),
        "fresh_unet_loss": heldout_denoising_loss(fresh, latents, text, seed, alpha_bar),
        "unet_loss_t_below_300": heldout_denoising_loss(unet, latents, text, seed, alpha_bar, t_max=300),
    }
    for kind, net in controlnets.items():
        hint = held.hint(kind)
        metrics[f"controlnet_{kind}_loss"] = heldout_denoising_loss(unet, latents, text, seed, alpha_bar, net, hint)
    metrics["unet_loss_note"] = "eps-MSE on held-out renders (other identities), fixed seeded noise, t uniform in 0..999"
    return metrics


def sample_sheet(models, held: WorldSamples, prompts: PromptTable, args) -> dict:
    """DDIM samples per style: without control, with the depth and with the edge ControlNet of held-out views."""
    vae, unet, scale = models["vae"], models["unet"], models["scale"]
    k = args.samples_per_style
    singles = torch.arange(len(held) * 4 // 5)  # with_grids: the single views come first, then the grids
    rows_per_style = []
    for s in range(len(held.styles)):
        mine = singles[held.style_index[singles] == s]
        rows_per_style.append(mine[torch.arange(k) * 4 % mine.numel()])  # first view of k different heads
    rows = torch.cat(rows_per_style)
    text = prompts.lookup(held.style_index[rows])
    uncond = prompts.embeddings[prompts.empty_row : prompts.empty_row + 1]
    images, styles, controls = [], [], []
    for kind in ("none", "depth", "edge"):
        gen = torch.Generator().manual_seed(args.seed + 77)
        net = models["controlnets"].get(kind)
        hint = None if net is None else held.hint(kind)[rows]
        lat = ddim_sample(unet, text, uncond, gen, controlnet=net, hint=hint, guidance_scale=5.0)
        images.append(decode(vae, lat, scale))
        styles += [held.styles[i] for i in held.style_index[rows].tolist()]
        controls += [kind] * rows.numel()
    images = torch.cat(images)
    reference = held.images[rows]
    write_with(SAMPLES_PT, lambda tmp: torch.save(
        {"images": images, "styles": styles, "controls": controls, "reference": reference,
         "reference_styles": [held.styles[i] for i in held.style_index[rows].tolist()]}, tmp))  # fmt: skip
    _save_sheet(images, reference, len(held.styles), k)
    return {"samples": images.shape[0], "ddim_steps": 50, "guidance_scale": 5.0, "file": str(SAMPLES_PT)}


def _save_sheet(images: torch.Tensor, reference: torch.Tensor, n_styles: int, k: int) -> None:
    """One row per style: k uncontrolled | k depth-controlled | k edge-controlled | k held-out renders."""
    from PIL import Image

    blocks = images.view(3, n_styles, k, *images.shape[1:])
    ref = reference.view(n_styles, k, *reference.shape[1:])
    rows = [torch.cat([*blocks[0, s], *blocks[1, s], *blocks[2, s], *ref[s]], dim=-1) for s in range(n_styles)]
    sheet = torch.cat(rows, dim=-2)
    array = ((sheet.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).round().byte().numpy()
    big = Image.fromarray(array).resize((array.shape[1] * 2, array.shape[0] * 2), Image.NEAREST)
    write_with(SAMPLES_PNG, lambda tmp: big.save(tmp))


def classify_samples(classifier_path: Path) -> dict | None:
    """Accuracy of the pack's style classifier on the samples, if that classifier has been trained yet."""
    if not classifier_path.is_file():
        return None
    from score_diffusion_samples import style_accuracy

    return style_accuracy(SAMPLES_PT, classifier_path)


# ----------------------------------------------------------------------------------------------------------


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    log = JsonlLog()
    alpha_bar = alphas_cumprod()

    def mark(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        print(json.dumps({"event": "stage", "stage": name, "seconds": timings[name]}), flush=True)
        return time.perf_counter()

    t = time.perf_counter()
    train_config = WorldDataConfig(identities=args.identities)
    held_config = WorldDataConfig(identities=args.heldout_identities)
    (train, train_hit), (held, held_hit) = (cached_samples(c, s, args.cache) for c, s in
                                            ((train_config, args.seed), (held_config, args.seed + 1)))  # fmt: skip
    train, held = with_grids(train), with_grids(held)
    t = mark("render", t)

    styles = tuple(STYLES)
    tokenizer, encoder = build_tokenizer_and_encoder(PACK_SPEC, args.seed + 5)
    prompts = PromptTable(embed_prompts(tokenizer, encoder, [STYLES[s].prompt for s in styles] + [""]))
    torch.manual_seed(args.seed)
    vae, unet = build_vae(PACK_SPEC), build_unet(PACK_SPEC)

    vae_summary = train_vae(vae, train.images, args, log("vae"))
    t = mark("vae", t)
    mean, std = encode_posterior(vae, train.images)
    scale = LatentNorm.fit(mean)
    vae.register_to_config(scaling_factor=scale.scale, shift_factor=scale.shift)
    unet_summary = train_unet(unet, (mean, std, scale), prompts, train.style_index, alpha_bar, args, log("unet"))
    t = mark("unet", t)

    n_single = len(train) * 4 // 5  # with_grids appends one grid per 4 single views
    all_rows = torch.arange(len(train))
    controlnets, cn_summaries = {}, {}
    for salt, (kind, rows) in enumerate((("edge", all_rows[:n_single]), ("depth", all_rows)), start=31):
        torch.manual_seed(args.seed + salt)
        net = build_controlnet(unet, PACK_SPEC, randomize_outputs=False)
        hints = train.edge if kind == "edge" else train.depth_hint
        cn_summaries[kind] = train_controlnet(net, unet, (mean, std, scale), hints, rows, prompts, train.style_index,
                                              alpha_bar, args, log(f"controlnet_{kind}"), salt)  # fmt: skip
        controlnets[kind] = net
        t = mark(f"controlnet_{kind}", t)

    models = {"vae": vae, "unet": unet, "controlnets": controlnets, "scale": scale}
    metrics = evaluate(models, held, prompts, alpha_bar, args)
    sampling = sample_sheet(models, held, prompts, args)
    classified = classify_samples(args.out / "recognition" / "style_classifier.safetensors")
    if classified is not None:
        metrics["prior_samples_classified_as_prompted_style"] = classified
    t = mark("evaluate", t)

    folder = write_diffusion_folder(args.out / "diffusion", unet, encoder, PACK_SPEC, vae=vae,
                                    controlnets=controlnets, weights_dtype=torch.float16)  # fmt: skip
    log.write(args.out / "logs" / "diffusion.jsonl")
    wall = round(time.perf_counter() - started, 1)
    report = {
        "model": "diffusion",
        "script": "scripts/pack/train_diffusion.py",
        "command": "python scripts/pack/train_diffusion.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "threads": args.threads,
        "wall_seconds": wall,
        "stage_seconds": timings,
        "steps": {"vae": vae_summary, "unet": unet_summary, **{f"controlnet_{k}": v for k, v in cn_summaries.items()}},
        "batch": {"vae": args.vae_batch, "unet": args.batch, "controlnet": args.batch},
        "data": {
            "source": "engine.world procedural heads, 64² renders, styles " + ", ".join(styles),
            "train_identities": args.identities, "heldout_identities": args.heldout_identities,
            "views_per_identity": train_config.views_per_identity,
            "train_samples": len(train), "heldout_samples": len(held),
            "grids_per_set": "one 2×2 grid per identity and style (included in the sample counts)",
            "prompt_dropout": {"unet": 0.1, "controlnet": 0.3},
            "renders_from_cache": train_hit and held_hit,
        },
        "architecture": {**asdict(PACK_SPEC), "text_encoder": "fixed random CLIPTextModel (not trained)",
                          "vae_scaling_factor": scale.scale,
                          "vae_shift_factor": scale.shift, "weights_dtype": "float16"},  # fmt: skip
        "parameters": {
            "unet": sum(p.numel() for p in unet.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
            "text_encoder": sum(p.numel() for p in encoder.parameters()),
            **{f"controlnet_{k}": sum(p.numel() for p in n.parameters()) for k, n in controlnets.items()},
        },
        "folder_bytes": folder_bytes(folder.sd_folder),
        "heldout": metrics,
        "sampling": sampling,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    write_json(args.out / "reports" / "diffusion.json", report)
    print(json.dumps({"event": "done", "wall_seconds": wall, "folder_bytes": report["folder_bytes"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
