"""Train the embedded pack's diffusion prior (SD-1.5 layout) and its edge / depth ControlNets on CPU.

Command (the pack's version; one CPU thread, the other core is left to the generator's training)::

    python scripts/pack/train_diffusion.py --out engine/pack/embedded-v1 --seed 0 \\
        --baseline /tmp/prior_v1/diffusion --sheet docs/images/prior_v2_samples.png

``--baseline`` is optional: another diffusion folder (here the pack's previous prior, e.g. extracted with
``git archive e06626f engine/pack/embedded-v1/diffusion | tar -x --strip-components=3 -C /tmp/prior_v1``)
that is evaluated with exactly the same held-out measurements and recorded in the report under ``baseline``.

Stages (steps are the reproducible knobs; ``--*-minutes`` are only safety caps and the report says whether
a cap cut a stage short):

1. render the training set (``engine.world.dataset``: 6 styles × ``--identities`` heads × 4 views at 64²,
   plus one 2×2 grid per head and style) and a held-out set from other identities; cached in ``--cache``;
2. ``AutoencoderKL`` (×4 downsampling) on all images (random 32² crops first, then whole images; L1 + MSE +
   image-gradient + low-pass colour terms, random h-flips, a nearly deterministic posterior); then its latents
   are whitened (``diffusion_training.whiten_vae_latents``) and ``shift_factor`` / ``scaling_factor`` fitted
   to mean 0, std 1;
3. the UNet **and the CLIP text encoder, jointly**, on frozen posterior samples of the latents (of each image
   and of its mirror image), with prompts drawn from the style's prompts (the world's prompt half the time,
   else a preset prompt or a paraphrase: ``diffusion_training.training_prompts``) and 10% empty prompts
   (classifier-free guidance); an exponential moving average of the weights is kept and the better of
   live / averaged weights on a held-out ε-MSE is used;
4. the edge ControlNet (single views, Canny hints) and the depth ControlNet (single views and 2×2 grids, depth
   hints), each copied from the trained UNet and trained with UNet and text encoder frozen (30% empty prompts);
5. the folder ``OUT/diffusion/`` (fp16 weights) is written, then *loaded back through the production loader*
   and measured on the held-out renders: VAE PSNR (overall, per style) and head colours, ε-MSE with and
   without the prompt, the guidance strength ‖ε_text − ε_uncond‖ / ‖ε‖ per style (t uniform over the
   schedule, t ≥ 700, and the DDIM timesteps 1…281 that stylization queries), DDIM samples per style prompt
   (CFG 5; without control, with the depth and with the edge ControlNet) classified by the pack's style
   classifier, and a contact sheet (``--sheet``); then ``OUT/logs/diffusion.jsonl`` and
   ``OUT/reports/diffusion.json``.

Measured for the pack (2-core VM shared with the generator's training and other sessions' tests, ``--threads 1``
under ``nice -n 10``, seed 0, renders read from the cache; rendering them the first time takes about 3 minutes):
2859 s wall, of which training 2589 s — VAE 626 s (1000 steps on 32² crops + 200 on whole images), latents and
whitening 69 s, UNet + text encoder 1491 s (1800 steps; the averaged weights won), ControlNets 200 s and 204 s
(250 steps each) — and measuring 239 s (123 s this prior, 116 s the ``--baseline``). Contention made the wall
time vary by up to 2× between stages; the step counts are what reproduces a run.

Held-out, new vs the previous prior (``reports/diffusion.json``, ``heldout`` vs ``baseline``): VAE PSNR 20.9 vs
19.8 dB; guidance strength 0.058 vs 0.038 (t uniform), 0.039 vs 0.027 (t ≥ 700), 0.076 vs 0.048 (t = 1…281),
and on photo renders under the zombie prompt 0.138 vs 0.064 (t = 1…281); 94% vs 96% of the DDIM samples
classified as the prompted style (``score_diffusion_samples.py``); zombie samples green-grey instead of
blue-black. ε-MSE is not comparable across the two (different latent spaces); the decoded one-step x̂₀ is:
19.2 vs 18.6 dB at t = 281, 16.0 vs 15.6 dB at t = 701.

``--measure-only`` re-measures an existing ``OUT/diffusion`` (and ``--baseline``) and updates the report's
held-out sections without training (about 5 minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from diffusion_training import (  # noqa: E402
    ALL_TIMESTEPS,
    HIGH_NOISE_TIMESTEPS,
    PACK_SPEC,
    STYLIZATION_TIMESTEPS,
    LatentNorm,
    PromptBank,
    PromptTable,
    WeightAverage,
    alphas_cumprod,
    build_tokenizer_and_encoder,
    ddim_sample,
    decode,
    denoising_loss,
    draw_training_noise,
    embed_prompts,
    encode_posterior,
    guidance_strength,
    heldout_denoising_loss,
    heldout_x0_psnr,
    train_loop,
    vae_loss,
    whiten_vae_latents,
)

from engine.io.atomic import write_json, write_text, write_with  # noqa: E402
from engine.guidance.tiny import build_controlnet, build_unet, build_vae, write_diffusion_folder  # noqa: E402
from engine.world.dataset import WorldDataConfig, WorldSamples, render_world_samples, tile_grids  # noqa: E402
from engine.world.styles import STYLES  # noqa: E402

SAMPLES_PT = Path("/tmp/pack_prior_samples.pt")
SAMPLES_PNG = Path("/tmp/pack_prior_samples.png")
DDIM_STEPS, SAMPLE_GUIDANCE = 50, 5.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="pack root (writes diffusion/, logs/, reports/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--identities", type=int, default=160, help="training heads (each: 4 views × 6 styles)")
    p.add_argument("--heldout-identities", type=int, default=8)
    p.add_argument("--vae-crop-steps", type=int, default=1000, help="first VAE steps, on random crops (cheap)")
    p.add_argument("--vae-crop", type=int, default=32, help="crop size of those steps")
    p.add_argument("--vae-steps", type=int, default=200, help="then VAE steps on whole 64² images")
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-edge-weight", type=float, default=1.0, help="weight of the image-gradient L1 term")
    p.add_argument("--vae-colour-weight", type=float, default=1.0, help="weight of the 4×4-averaged colour L1 term")
    p.add_argument("--vae-logvar-init", type=float, default=-8.0, help="initial posterior log-variance")
    p.add_argument("--whiten-floor", type=float, default=0.005, help="eigenvalue floor of the latent whitening")
    p.add_argument("--unet-steps", type=int, default=1800)
    p.add_argument("--unet-lr", type=float, default=6e-4)
    p.add_argument("--prompt-dropout", type=float, default=0.1, help="empty-prompt rate while training the UNet")
    p.add_argument("--ema", type=float, default=0.995, help="decay of the UNet / text encoder weight average")
    p.add_argument("--controlnet-steps", type=int, default=250)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vae-minutes", type=float, default=25.0, help="safety cap only")
    p.add_argument("--unet-minutes", type=float, default=50.0, help="safety cap only")
    p.add_argument("--controlnet-minutes", type=float, default=12.0, help="safety cap only")
    p.add_argument("--cache", type=Path, default=Path("/tmp/pack_diffusion_cache"))
    p.add_argument("--samples-per-style", type=int, default=4)
    p.add_argument("--baseline", type=Path, help="another diffusion folder to measure the same way (report: baseline)")
    p.add_argument("--sheet", type=Path, help="also write the samples' contact sheet (PNG) here")
    p.add_argument("--measure-only", action="store_true",
                   help="train nothing: re-measure OUT/diffusion (and --baseline) and update the report's held-out parts")
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


class Latents:
    """Posterior mean / std of every training image and of its mirror image, and the latent normalisation."""

    def __init__(self, vae, images: torch.Tensor) -> None:
        self.mean, self.std = encode_posterior(vae, images)
        self.mean_flip, self.std_flip = encode_posterior(vae, images.flip(-1))
        self.norm = LatentNorm.fit(torch.cat([self.mean, self.mean_flip]))

    def sample(self, rows: torch.Tensor, flip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        f = flip.view(-1, 1, 1, 1)
        mean = torch.where(f, self.mean_flip[rows], self.mean[rows])
        std = torch.where(f, self.std_flip[rows], self.std[rows])
        return self.norm(mean + std * torch.randn(mean.shape, generator=generator))


# ----------------------------------------------------------------------------------------------------------
# Stages.


def train_vae(vae, images: torch.Tensor, args, log) -> dict:
    """``--vae-crop-steps`` on random ``--vae-crop``² crops (a quarter of the cost per image at 32², and the
    convolutions learn the same local detail), then ``--vae-steps`` on whole images (the attention and the
    group norms see whole-image statistics again); one cosine learning-rate schedule over both."""
    gen = torch.Generator().manual_seed(args.seed + 11)
    size, crop = images.shape[-1], args.vae_crop
    with torch.no_grad():  # a nearly deterministic posterior from the start: noise would drown weak channels
        vae.quant_conv.bias[vae.config.latent_channels :] = args.vae_logvar_init

    def step(i: int):
        rows = torch.randint(images.shape[0], (args.vae_batch,), generator=gen)
        batch = images[rows]
        if i < args.vae_crop_steps:  # one crop position per batch, on the latent grid (multiples of 4)
            oy, ox = (torch.randint(0, (size - crop) // 4 + 1, (2,), generator=gen) * 4).tolist()
            batch = batch[..., oy : oy + crop, ox : ox + crop]
        flip = torch.rand(batch.shape[0], generator=gen) < 0.5
        batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
        return vae_loss(vae, batch, gen, edge_weight=args.vae_edge_weight, colour_weight=args.vae_colour_weight)

    vae.train()
    summary = train_loop(vae.parameters(), step, args.vae_crop_steps + args.vae_steps, args.vae_lr, warmup=30,
                         max_seconds=60 * args.vae_minutes, log=log)  # fmt: skip
    vae.eval().requires_grad_(False)
    summary.update({"crop_steps": args.vae_crop_steps, "crop": crop, "whole_image_steps": args.vae_steps})
    return summary


def train_unet_and_text(unet, encoder, latents: Latents, bank: PromptBank, style_index, alpha_bar, held, args, log) -> dict:
    """UNet and text encoder together; returns the summary (with the EMA choice) and leaves both frozen."""
    gen = torch.Generator().manual_seed(args.seed + 23)

    def step(_: int):
        rows = torch.randint(latents.mean.shape[0], (args.batch,), generator=gen)
        flip = torch.rand(args.batch, generator=gen) < 0.5
        x0 = latents.sample(rows, flip, gen)
        t, noise, drop = draw_training_noise(x0, gen, args.prompt_dropout)
        text = bank.embed(encoder)[bank.draw(style_index[rows], drop, gen)]
        return denoising_loss(unet, x0, text, t, noise, alpha_bar), {}

    unet.train()
    encoder.train()
    params = [*unet.parameters(), *encoder.parameters()]
    average = WeightAverage(params, args.ema)
    summary = train_loop(params, step, args.unet_steps, args.unet_lr, warmup=100,
                         max_seconds=60 * args.unet_minutes, log=log, after_step=average.update)  # fmt: skip
    unet.eval().requires_grad_(False)
    encoder.eval().requires_grad_(False)

    # Live or averaged weights: whichever denoises the held-out renders (exact prompts) better.
    held_latents, held_index = held

    def heldout_loss() -> float:
        with torch.no_grad():
            table = bank.table(encoder)
        return heldout_denoising_loss(unet, held_latents, table.lookup(held_index), args.seed + 1000, alpha_bar)

    live = heldout_loss()
    average.swap()
    averaged = heldout_loss()
    if averaged > live:
        average.swap()
    summary.update({"heldout_loss_live": live, "heldout_loss_ema": averaged, "ema_decay": args.ema,
                    "weights": "ema" if averaged <= live else "live"})  # fmt: skip
    return summary


def train_controlnet(net, unet, latents: Latents, hints, rows_allowed, bank_text, bank, style_index, alpha_bar, args, log, salt) -> dict:
    gen = torch.Generator().manual_seed(args.seed + salt)

    def step(_: int):
        rows = rows_allowed[torch.randint(rows_allowed.shape[0], (args.batch,), generator=gen)]
        flip = torch.rand(args.batch, generator=gen) < 0.5
        x0 = latents.sample(rows, flip, gen)
        t, noise, drop = draw_training_noise(x0, gen, 0.3)
        hint = hints[rows].float()
        hint = torch.where(flip.view(-1, 1, 1, 1), hint.flip(-1), hint).expand(-1, 3, -1, -1)
        text = bank_text[bank.draw(style_index[rows], drop, gen)]
        loss = denoising_loss(unet, x0, text, t, noise, alpha_bar, net, hint)
        return loss, {}

    net.train()
    summary = train_loop(net.parameters(), step, args.controlnet_steps, 6e-4, warmup=30,
                         max_seconds=60 * args.controlnet_minutes, log=log)  # fmt: skip
    net.eval().requires_grad_(False)
    return summary


STYLE_NAMES = tuple(STYLES)


# ----------------------------------------------------------------------------------------------------------
# Evaluation of a written folder, through the production loader.


def load_folder(folder: Path):
    from engine.guidance import load_diffusion_models

    return load_diffusion_models(folder, edge_controlnet=folder / "controlnet_edge",
                                 depth_controlnet=folder / "controlnet_depth", dtype="fp32")  # fmt: skip


def _head_rgb(images: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Mean RGB in [0, 1] over the head pixels (mask-weighted) of a batch."""
    weight = mask.float()
    return [round(v, 4) for v in (((images + 1) / 2 * weight).sum((0, 2, 3)) / weight.sum().clamp_min(1e-6)).tolist()]


def evaluate_folder(folder: Path, held: WorldSamples, alpha_bar, args, samples_path: Path, classifier: Path) -> tuple[dict, dict]:
    """Held-out metrics of a diffusion folder as shipped (fp16 weights, production loader); (metrics, samples)."""
    models = load_folder(folder)
    vae, unet = models.vae, models.unet
    norm = LatentNorm(shift=float(vae.config.shift_factor or 0.0), scale=float(vae.config.scaling_factor))
    with torch.no_grad():
        mean, _ = encode_posterior(vae, held.images)
        recon = vae.decode(mean).sample.clamp(-1, 1)
    latents = norm(mean)
    table = PromptTable(embed_prompts(models.tokenizer, models.text_encoder, [STYLES[s].prompt for s in held.styles] + [""]))
    text = table.lookup(held.style_index)
    empty = table.lookup(held.style_index, torch.ones_like(held.style_index, dtype=torch.bool))
    seed = args.seed + 1000
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed + 999)
        fresh = build_unet(PACK_SPEC).eval()
    squared = (recon - held.images).pow(2).flatten(1).mean(1)
    metrics: dict = {
        "heldout_samples": len(held),
        "vae_l1": float((recon - held.images).abs().mean()),
        "vae_psnr_db": float(10 * torch.log10(4.0 / squared.mean())),
        "unet_loss": heldout_denoising_loss(unet, latents, text, seed, alpha_bar),
        "unet_loss_empty_prompt": heldout_denoising_loss(unet, latents, empty, seed, alpha_bar),
        "fresh_unet_loss": heldout_denoising_loss(fresh, latents, text, seed, alpha_bar),
        "unet_loss_t_below_300": heldout_denoising_loss(unet, latents, text, seed, alpha_bar, t_max=300),
    }
    for kind, net in models.controlnets.items():
        metrics[f"controlnet_{kind}_loss"] = heldout_denoising_loss(unet, latents, text, seed, alpha_bar, net, held.hint(kind))
    x0_rows = torch.arange(0, len(held), 2)  # every other held-out image (singles and grids)
    for label, prompts in (("", text), ("_empty_prompt", empty)):
        for t_name, ts in (("t_281", (281,)), ("t_701", (701,))):
            metrics[f"x0_psnr_db_{t_name}{label}"] = heldout_x0_psnr(
                unet, vae, norm, held.images[x0_rows], latents[x0_rows], prompts[x0_rows], ts, seed + 2, alpha_bar)

    # Guidance strength on single views: the first view of (up to) 8 heads per style.
    singles = torch.arange(len(held) * 4 // 5)  # with_grids: the single views come first, then the grids
    first_views = singles[singles % 4 == 0]  # render_world_samples orders style, identity, view
    chosen = torch.cat([first_views[held.style_index[first_views] == s][:8] for s in range(len(held.styles))])
    uncond = table.embeddings[table.empty_row : table.empty_row + 1]
    ranges = {"all_t": ALL_TIMESTEPS, "t_ge_700": HIGH_NOISE_TIMESTEPS, "stylization_t": STYLIZATION_TIMESTEPS}
    ratios = {name: guidance_strength(unet, latents[chosen], text[chosen], uncond, ts, seed + 1, alpha_bar)
              for name, ts in ranges.items()}  # fmt: skip
    # The stylization situation: renders of the *photo* style under each style's prompt (zombie, statue, …).
    photo = first_views[held.style_index[first_views] == held.styles.index("photo")][:8]
    cross = {name: {r: round(float(guidance_strength(unet, latents[photo], table.embeddings[s : s + 1].expand(photo.numel(), -1, -1),
                                                      uncond, ts, seed + 1, alpha_bar).mean()), 5)
                    for r, ts in ranges.items()}
             for s, name in enumerate(held.styles)}  # fmt: skip
    samples = sample_sheet(models, norm, held, table, args, samples_path)
    per_style: dict = {}
    for s, name in enumerate(held.styles):
        mine = held.style_index[chosen] == s
        rows = (held.style_index == s) & (torch.arange(len(held)) < singles.numel())
        depth_rows = [i for i, (st, c) in enumerate(zip(samples["styles"], samples["controls"])) if st == name and c == "depth"]
        depth_held = samples["rows"][[i - samples["rows"].numel() for i in depth_rows]]  # "depth" is the 2nd block
        per_style[name] = {
            **{f"guidance_{r}": round(float(v[mine].mean()), 5) for r, v in ratios.items()},
            "vae_psnr_db": round(float(10 * torch.log10(4.0 / squared[rows].mean())), 3),
            "head_rgb_world": _head_rgb(held.images[rows], held.mask[rows]),
            "head_rgb_vae": _head_rgb(recon[rows], held.mask[rows]),
            "head_rgb_depth_samples": _head_rgb(samples["images"][depth_rows], held.mask[depth_held]),
        }
    metrics["per_style_note"] = ("head_rgb_*: mean RGB in [0, 1] inside the held-out renders' head masks, of the "
                                 "renders, their VAE reconstructions and the depth-controlled DDIM samples (which "
                                 "follow the mask only as far as the depth ControlNet makes them)")
    metrics["guidance_strength"] = {
        **{f"mean_{r}": round(float(v.mean()), 5) for r, v in ratios.items()},
        "per_t_all": [round(float(x), 5) for x in ratios["all_t"].mean(0)],
        "timesteps": {r: list(ts) for r, ts in ranges.items()},
        "samples": int(chosen.numel()),
        "photo_renders_under_each_prompt": cross,
        "photo_renders_note": "the same ratio on held-out *photo* renders (first view of 8 heads) with each style's "
                              "prompt: the direction stylization follows from a photo-like head towards a style",
        "definition": "‖ε_text − ε_uncond‖ / ‖ε‖ per held-out single view (exact style prompt vs empty prompt, "
                      "ε the seeded noise, norms over the whole latent), averaged over the listed timesteps: "
                      "all_t = uniform over 0…999, t_ge_700 = the noisy end, stylization_t = the DDIM timesteps "
                      "of step indices 35…49 that LD/SDS query (t = 1…281)",
    }  # fmt: skip
    metrics["per_style"] = per_style
    metrics["unet_loss_note"] = ("eps-MSE on held-out renders (other identities), fixed seeded noise, t uniform in 0..999; "
                                 "in the model's own latent space, so not comparable across VAEs (x0_psnr_db_* is, in pixels)")
    classified = classify_samples(samples_path, classifier)
    if classified is not None:
        metrics["prior_samples_classified_as_prompted_style"] = classified
    return metrics, samples


def sample_sheet(models, norm: LatentNorm, held: WorldSamples, table: PromptTable, args, path: Path) -> dict:
    """DDIM samples per style: without control, with the depth and with the edge ControlNet of held-out views."""
    vae, unet = models.vae, models.unet
    k = args.samples_per_style
    singles = torch.arange(len(held) * 4 // 5)
    rows_per_style = []
    for s in range(len(held.styles)):
        mine = singles[held.style_index[singles] == s]
        rows_per_style.append(mine[torch.arange(k) * 4 % mine.numel()])  # first view of k different heads
    rows = torch.cat(rows_per_style)
    text = table.lookup(held.style_index[rows])
    uncond = table.embeddings[table.empty_row : table.empty_row + 1]
    images, styles, controls = [], [], []
    for kind in ("none", "depth", "edge"):
        gen = torch.Generator().manual_seed(args.seed + 77)
        net = models.controlnets.get(kind)
        hint = None if net is None else held.hint(kind)[rows]
        lat = ddim_sample(unet, text, uncond, gen, steps=DDIM_STEPS, controlnet=net, hint=hint, guidance_scale=SAMPLE_GUIDANCE)
        images.append(decode(vae, lat, norm))
        styles += [held.styles[i] for i in held.style_index[rows].tolist()]
        controls += [kind] * rows.numel()
    images = torch.cat(images)
    reference = held.images[rows]
    data = {"images": images, "styles": styles, "controls": controls, "reference": reference,
            "reference_styles": [held.styles[i] for i in held.style_index[rows].tolist()]}  # fmt: skip
    write_with(path, lambda tmp: torch.save(data, tmp))
    return {**data, "rows": rows}


def save_sheet(samples: dict, style_names, k: int, path: Path, scale: int = 2) -> None:
    """One row per style: its name | k samples without control | k depth-controlled | k held-out renders."""
    from PIL import Image, ImageDraw

    images, reference, controls = samples["images"], samples["reference"], samples["controls"]
    none = images[[i for i, c in enumerate(controls) if c == "none"]]
    depth = images[[i for i, c in enumerate(controls) if c == "depth"]]
    n = len(style_names)
    size = images.shape[-1]
    rows = [torch.cat([*none[s * k:(s + 1) * k], *depth[s * k:(s + 1) * k], *reference[s * k:(s + 1) * k]], -1)
            for s in range(n)]  # fmt: skip
    grid = torch.cat(rows, -2)
    array = ((grid.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).round().byte().numpy()
    body = Image.fromarray(array).resize((array.shape[1] * scale, array.shape[0] * scale), Image.NEAREST)
    label_w, header_h = 56, 16
    sheet = Image.new("RGB", (body.width + label_w, body.height + header_h), (255, 255, 255))
    sheet.paste(body, (label_w, header_h))
    draw = ImageDraw.Draw(sheet)
    tile = size * scale
    for j, title in enumerate((f"prior samples (DDIM {DDIM_STEPS}, CFG {SAMPLE_GUIDANCE:g})", "+ depth ControlNet",
                               "held-out world renders")):  # fmt: skip
        draw.text((label_w + j * k * tile + 4, 2), title, fill=(0, 0, 0))
    for s, name in enumerate(style_names):
        draw.text((4, header_h + s * tile + tile // 2 - 6), name, fill=(0, 0, 0))
    small = sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)  # ~1/3 the bytes
    write_with(path, lambda tmp: small.save(tmp, format="PNG", optimize=True))


def classify_samples(samples_path: Path, classifier_path: Path) -> dict | None:
    """Accuracy of the pack's style classifier on the samples, if that classifier has been trained yet."""
    if not classifier_path.is_file():
        return None
    from score_diffusion_samples import style_accuracy

    return style_accuracy(samples_path, classifier_path)


# ----------------------------------------------------------------------------------------------------------


def measure(folder: Path, held: WorldSamples, alpha_bar, args, mark) -> tuple[dict, dict, dict | None]:
    """Evaluate ``folder`` (and ``--baseline``), write the sample sheets; (metrics, samples, baseline metrics)."""
    t = time.perf_counter()
    classifier = args.out / "recognition" / "style_classifier.safetensors"
    metrics, samples = evaluate_folder(folder, held, alpha_bar, args, SAMPLES_PT, classifier)
    save_sheet(samples, held.styles, args.samples_per_style, SAMPLES_PNG)
    if args.sheet is not None:
        save_sheet(samples, held.styles, args.samples_per_style, args.sheet)
    t = mark("evaluate", t)
    baseline = None
    if args.baseline is not None:
        baseline, base_samples = evaluate_folder(args.baseline, held, alpha_bar, args,
                                                 SAMPLES_PT.with_name("pack_prior_samples_baseline.pt"), classifier)  # fmt: skip
        save_sheet(base_samples, held.styles, args.samples_per_style, SAMPLES_PNG.with_name("pack_prior_samples_baseline.png"))
        baseline = {"folder": str(args.baseline), **baseline}
        mark("evaluate_baseline", t)
    return metrics, samples, baseline


def measure_only(args, alpha_bar, mark) -> int:
    """``--measure-only``: re-measure the trained ``OUT/diffusion`` (and ``--baseline``) and update the
    report's held-out sections, keeping its training facts (steps, seconds, data)."""
    report_path = args.out / "reports" / "diffusion.json"
    report = json.loads(report_path.read_text())
    held = with_grids(cached_samples(WorldDataConfig(identities=args.heldout_identities), args.seed + 1, args.cache)[0])
    metrics, samples, baseline = measure(args.out / "diffusion", held, alpha_bar, args, mark)
    command = "python scripts/pack/train_diffusion.py " + " ".join(sys.argv[1:])
    report.update({"heldout": metrics, "baseline": baseline, "measured_by": command})
    report["sampling"]["sheet"] = None if args.sheet is None else str(args.sheet)
    write_json(report_path, report)
    print(json.dumps({"event": "done", "measured": str(args.out / "diffusion")}), flush=True)
    return 0


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

    if args.measure_only:
        return measure_only(args, alpha_bar, mark)

    t = time.perf_counter()
    train_config = WorldDataConfig(identities=args.identities)
    held_config = WorldDataConfig(identities=args.heldout_identities)
    (train, train_hit), (held, held_hit) = (cached_samples(c, s, args.cache) for c, s in
                                            ((train_config, args.seed), (held_config, args.seed + 1)))  # fmt: skip
    train, held = with_grids(train), with_grids(held)
    t = mark("render", t)

    styles = STYLE_NAMES
    tokenizer, encoder = build_tokenizer_and_encoder(PACK_SPEC, args.seed + 5, trainable=True)
    bank = PromptBank.build(tokenizer, encoder, styles)
    torch.manual_seed(args.seed)
    vae, unet = build_vae(PACK_SPEC), build_unet(PACK_SPEC)

    vae_summary = train_vae(vae, train.images, args, log("vae"))
    t = mark("vae", t)
    whitening = whiten_vae_latents(vae, encode_posterior(vae, train.images)[0], args.whiten_floor)
    latents = Latents(vae, train.images)
    vae.register_to_config(scaling_factor=latents.norm.scale, shift_factor=latents.norm.shift)
    t = mark("latents", t)
    with torch.no_grad():
        held_latents = latents.norm(encode_posterior(vae, held.images)[0])
    unet_summary = train_unet_and_text(unet, encoder, latents, bank, train.style_index, alpha_bar,
                                       (held_latents, held.style_index), args, log("unet"))  # fmt: skip
    t = mark("unet", t)

    with torch.no_grad():
        bank_text = bank.embed(encoder)
    n_single = len(train) * 4 // 5  # with_grids appends one grid per 4 single views
    all_rows = torch.arange(len(train))
    controlnets, cn_summaries = {}, {}
    for salt, (kind, rows) in enumerate((("edge", all_rows[:n_single]), ("depth", all_rows)), start=31):
        torch.manual_seed(args.seed + salt)
        net = build_controlnet(unet, PACK_SPEC, randomize_outputs=False)
        hints = train.edge if kind == "edge" else train.depth_hint
        cn_summaries[kind] = train_controlnet(net, unet, latents, hints, rows, bank_text, bank, train.style_index,
                                              alpha_bar, args, log(f"controlnet_{kind}"), salt)  # fmt: skip
        controlnets[kind] = net
        t = mark(f"controlnet_{kind}", t)

    folder = write_diffusion_folder(args.out / "diffusion", unet, encoder, PACK_SPEC, vae=vae,
                                    controlnets=controlnets, weights_dtype=torch.float16)  # fmt: skip
    metrics, samples, baseline = measure(folder.sd_folder, held, alpha_bar, args, mark)

    log.write(args.out / "logs" / "diffusion.jsonl")
    wall = round(time.perf_counter() - started, 1)
    prompts = [p for p in bank.prompts if p]
    report = {
        "model": "diffusion",
        "script": "scripts/pack/train_diffusion.py",
        "command": "python scripts/pack/train_diffusion.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seed": args.seed,
        "threads": args.threads,
        "wall_seconds": wall,
        "training_seconds": round(sum(v for k, v in timings.items() if k in ("vae", "latents", "unet", "controlnet_edge", "controlnet_depth")), 1),
        "stage_seconds": timings,
        "steps": {"vae": vae_summary, "unet": unet_summary, **{f"controlnet_{k}": v for k, v in cn_summaries.items()}},
        "batch": {"vae": args.vae_batch, "unet": args.batch, "controlnet": args.batch},
        "optimisation": {"vae_lr": args.vae_lr, "vae_logvar_init": args.vae_logvar_init,
                         "vae_loss": f"L1 + MSE + {args.vae_edge_weight} × image-gradient L1 + "
                                     f"{args.vae_colour_weight} × 4×4-averaged colour L1 + 1e-6 KL",
                         "unet_lr": args.unet_lr, "unet_trains": "UNet + CLIP text encoder jointly",
                         "controlnet_lr": 6e-4, "augmentation": "random horizontal flips (latents of mirrored images)"},
        "data": {
            "source": "engine.world procedural heads, 64² renders, styles " + ", ".join(styles),
            "train_identities": args.identities, "heldout_identities": args.heldout_identities,
            "views_per_identity": train_config.views_per_identity,
            "train_samples": len(train), "heldout_samples": len(held),
            "grids_per_set": "one 2×2 grid per identity and style (included in the sample counts)",
            "prompt_dropout": {"unet": args.prompt_dropout, "controlnet": 0.3},
            "prompts": {name: [p for p, o in zip(bank.prompts, bank.owner.tolist()) if o == s] for s, name in enumerate(styles)},
            "exact_prompt_probability": 0.5,
            "renders_from_cache": train_hit and held_hit,
        },
        "architecture": {**asdict(PACK_SPEC), "text_encoder": "CLIPTextModel trained jointly with the UNet",
                          "vae_latent_whitening": whitening,
                          "vae_scaling_factor": latents.norm.scale,
                          "vae_shift_factor": latents.norm.shift, "weights_dtype": "float16"},  # fmt: skip
        "parameters": {
            "unet": sum(p.numel() for p in unet.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
            "text_encoder": sum(p.numel() for p in encoder.parameters()),
            **{f"controlnet_{k}": sum(p.numel() for p in n.parameters()) for k, n in controlnets.items()},
        },
        "folder_bytes": folder_bytes(folder.sd_folder),
        "heldout_note": "measured on the written folder (fp16 weights) loaded with engine.guidance.load_diffusion_models",
        "heldout": metrics,
        "baseline": baseline,
        "sampling": {"samples": int(samples["images"].shape[0]), "ddim_steps": DDIM_STEPS,
                     "guidance_scale": SAMPLE_GUIDANCE, "file": str(SAMPLES_PT),
                     "sheet": None if args.sheet is None else str(args.sheet)},  # fmt: skip
        "training_prompt_count": len(prompts),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    write_json(args.out / "reports" / "diffusion.json", report)
    print(json.dumps({"event": "done", "wall_seconds": wall, "folder_bytes": report["folder_bytes"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
