"""Train the embedded pack's 3D-aware head generator to reproduce the procedural world's ``photo`` heads.

The generator is our PanoHead-structured :class:`engine.generator.triplane.TriPlaneGenerator` (preset
``pack``: mapping → StyleGAN2 synthesis → tri-grid → volume rendering → super-resolution). It is fitted by
direct supervision, not adversarially: latent ``z`` names a world identity through the fixed bijection of
:mod:`engine.world.latent`, so for every (z, camera) the world renders the exact target image, coverage
mask and ray depth, and the world's signed distance field says which 3-D points are inside the head.

Two phases, each step drawing fresh identities, each seen from one random camera (yaw over 360° with extra
weight on the front, pitch ±0.35, pivot at the origin where the world's heads sit, the generator's own orbit
radius and field of view):

1. *Shape* (``shape_steps``, no volume rendering, so cheap per head): the world renders each head once at
   32² to find visible surface points; the generator's tri-grid is queried directly there. A binary
   cross-entropy puts the raw density's iso level (:class:`engine.mesh.MeshConfig`'s default 10) on the
   world's surface (its signed distance field says inside/outside at uniform and near-surface points), and an
   L1 loss gives the surface points their rendered colour through the raw ToRGB head.
2. *Render* (``steps``): ``ws = G.mapping(z, c_cond)`` with the fixed conditioning camera downstream code
   uses (yaw 0, pitch 0.2, pivot at the origin: :class:`engine.generator.inference.ViewSettings`), then
   ``G.render(ws, c)``; L1 on the super-resolved image and on the raw neural render (against the world
   render, area-downsampled), L1 on the accumulated opacity against the world's coverage, plus the shape
   phase's 3-D losses (ray depth is monitored, not trained: see ``compute_losses``). The background is
   rotated per step: ``white`` (composited over white, target on white), ``model`` (PanoHead's background
   network, taught to paint white) and ``none`` (black features, target on black, what stylization
   renders), so every background option of :class:`RenderOptions` gives a clean head.

Most rendering steps use a low neural resolution (a :class:`RenderOptions` override, 4× fewer rays); the last
``full_fraction`` of the steps render at the preset's native 64². After training, ``w_avg`` (used by
truncation) is set to the mean ``w`` of many latents and the unused camera-offset network (``t_mapping``) is
zeroed, so ``G(z, c)`` and ``G.render(G.mapping(z, c), c)`` agree.

Reproduce the pack's file (1 thread, CPU): a from-scratch run, then a continuation with fresh data::

    python scripts/pack/train_generator.py --out engine/pack/embedded-v1 --seed 0
    cp engine/pack/embedded-v1/generator/generator.* /tmp/   # --init reads the first stage's weights
    python scripts/pack/train_generator.py --out engine/pack/embedded-v1 --seed 1 --shape-steps 300 \
        --steps 250 --init /tmp/generator.safetensors

Measured on one thread of a shared 2-core machine: stage 1 (260 shape + 340 rendering steps) 976 s, stage 2
(300 + 250 steps) 1079 s (total 2055 s, 34 minutes); ``reports/generator.json`` holds both stages' facts and the held-out
metrics (``previous_stage`` is the first run's report).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.errors import ConfigError, EngineError  # noqa: E402
from engine.generator.camera import CameraConfig, cameras_at, named_views, split_camera_vector  # noqa: E402
from engine.generator.config import get_preset  # noqa: E402
from engine.generator.inference import ViewSettings  # noqa: E402
from engine.generator.loading import load_generator, save_generator  # noqa: E402
from engine.generator.renderer import pixel_rays  # noqa: E402
from engine.generator.triplane import RenderOptions, TriPlaneGenerator  # noqa: E402
from engine.world import HeadGeometry, get_style, render_heads, to_physical  # noqa: E402
from engine.world.latent import identity_from_latent  # noqa: E402
from engine.world.sdf import geometry_distance  # noqa: E402
from scripts.pack.common import JsonlLog, run_facts, write_report  # noqa: E402

STYLE = "photo"
# Per-step background rotation: (generator background option, world background colour).
BACKGROUND_CYCLE = (("white", "white"), ("model", "white"), ("white", "white"), ("none", "black"))
EVAL_SEED_OFFSET = 1_000_003  # held-out latents come from a different stream than training latents


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (recorded in the report)."""

    preset: str = "pack"
    seed: int = 0
    shape_steps: int = 260  # cheap first phase: 3-D supervision only (density probes + surface colours)
    steps: int = 340  # rendering steps after the shape phase
    minutes: float = 40.0  # wall-clock safety cap; the step count is what makes runs reproducible
    threads: int = 1
    batch: int = 4
    shape_batch: int = 8
    shape_resolution: int = 32  # world render size that supplies surface points in the shape phase
    low_resolution: int = 32  # neural rendering resolution for the first (1 − full_fraction) of the steps
    full_fraction: float = 0.1  # of the rendering steps
    lr: float = 2e-3
    lr_final_fraction: float = 0.1  # the learning rate decays linearly to this fraction over the last 30 %
    betas: tuple[float, float] = (0.9, 0.99)
    yaw_front_fraction: float = 0.5  # share of cameras with yaw ~ N(0, yaw_front_sigma); the rest uniform 360°
    yaw_front_sigma: float = 0.7
    pitch_limit: float = 0.35
    weight_image: float = 1.0
    weight_raw: float = 1.0
    weight_mask: float = 1.0
    weight_density: float = 1.0
    weight_colour: float = 1.0
    density_points: int = 1024  # per head: half uniform in the head box, half jittered around the surface
    shape_density_points: int = 2048
    colour_points: int = 512  # surface hits per head whose colour is supervised directly
    surface_jitter: float = 0.02  # world units (≈ 1.2 cm of a real head)
    iso_level: float = 10.0  # raw-density level that marks the surface (MeshConfig's default)
    iso_softness: float = 2.0
    # Raw density is kept above this floor at the probe points: image and mask L1 keep pushing empty space
    # emptier, and Adam turns those vanishing gradients into full steps.
    density_floor: float = -20.0
    weight_floor: float = 0.1
    log_every: int = 10

    def validate(self) -> "TrainConfig":
        if self.steps < 1 or self.shape_steps < 0 or min(self.batch, self.shape_batch, self.threads) < 1:
            raise ConfigError("steps, batch, shape_batch and threads must be ≥ 1 (shape_steps ≥ 0)")
        if not 0.0 <= self.full_fraction <= 1.0:
            raise ConfigError(f"full_fraction must be in [0, 1], got {self.full_fraction}")
        return self

    @property
    def total_steps(self) -> int:
        return self.shape_steps + self.steps


# ------------------------------------------------------------------------------------------------ cameras
def camera_config(G: TriPlaneGenerator) -> CameraConfig:
    """The generator's orbit (radius, field of view) looking at the origin, where the world's heads sit."""
    return replace(CameraConfig.from_rendering(G.config.rendering), pivot=(0.0, 0.0, 0.0))


def conditioning_camera(G: TriPlaneGenerator) -> Tensor:
    """(1, 25) camera the mapping is conditioned on: the one inference and stylization pass by default."""
    view = ViewSettings()
    config = replace(camera_config(G), pivot=tuple(view.camera_pivot))
    return cameras_at(view.conditioning_yaw, view.conditioning_pitch, config).c


def sample_training_cameras(n: int, rng: torch.Generator, config: TrainConfig, cameras: CameraConfig) -> Tensor:
    """(n, 25) cameras: yaw over the full circle with extra weight near the front, pitch ±pitch_limit."""
    u = torch.rand(3, n, generator=rng)
    front = torch.randn(n, generator=rng) * config.yaw_front_sigma
    around = (u[0] * 2 - 1) * math.pi
    yaw = torch.where(u[1] < config.yaw_front_fraction, front, around)
    yaw = torch.remainder(yaw + math.pi, 2 * math.pi) - math.pi
    pitch = (u[2] * 2 - 1) * config.pitch_limit
    return cameras_at(yaw, pitch, cameras).c


# ------------------------------------------------------------------------------------------------ batches
@dataclass
class Batch:
    """One step's supervision: latents, cameras and the world's answers at the output resolution.

    In the shape phase (``neural_resolution == 0``) nothing is rendered by the generator: only the density
    probes and the surface colours supervise it.
    """

    z: Tensor  # (B, z_dim)
    c: Tensor  # (B, 25) render cameras
    image: Tensor  # (B, 3, T, T) world render in [-1, 1]
    mask: Tensor  # (B, 1, T, T)
    depth: Tensor  # (B, 1, T, T) ray distance
    points: Tensor  # (B, P, 3) density probe points
    inside: Tensor  # (B, P) 1 inside the world head, 0 outside
    surface: Tensor  # (B, K, 3) surface points seen by the world render
    surface_colour: Tensor  # (B, K, 3) their rendered colour in [0, 1]
    background: str  # generator background option
    neural_resolution: int  # 0 in the shape phase


def photo_geometry(identity: Tensor) -> HeadGeometry:
    """The world head of ``identity`` as the photo style shapes it (the field the renders trace)."""
    return HeadGeometry.from_physical(get_style(STYLE).reshape(to_physical(identity)))


def surface_hits(c: Tensor, depth: Tensor, mask: Tensor, count: int, rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` fully covered pixels per head of a world render: their surface points (B, K, 3) and their
    flat pixel indices (B, K). Heads with no covered pixel fall back to any pixel."""
    batch, res = depth.shape[0], depth.shape[-1]
    cam2world, intrinsics = split_camera_vector(c)
    origins, directions = pixel_rays(cam2world, intrinsics, res)  # (B, R², 3)
    covered = (mask.reshape(batch, -1) > 0.99).float() + 1e-6
    pick = torch.multinomial(covered, count, replacement=True, generator=rng)
    t = depth.reshape(batch, -1).gather(1, pick).unsqueeze(-1)
    index3 = pick.unsqueeze(-1).expand(-1, -1, 3)
    return origins.gather(1, index3) + t * directions.gather(1, index3), pick


def density_probes(identity: Tensor, hits: Tensor, count: int, jitter: float, rng: torch.Generator,
                   half_box: float = 0.5) -> tuple[Tensor, Tensor]:
    """Points where the world says inside/outside: half uniform in the tri-grid's box (side ``2·half_box``,
    all the space rays sample), half near the visible surface.

    Near-surface points are surface hits moved by Gaussian noise, which is where the iso surface has to be
    placed precisely.
    """
    batch = identity.shape[0]
    lo, hi = torch.full((3,), -half_box), torch.full((3,), half_box)
    n_uniform = count // 2
    uniform = lo + (hi - lo) * torch.rand(batch, n_uniform, 3, generator=rng)
    pick = torch.randint(0, hits.shape[1], (batch, count - n_uniform), generator=rng)
    near = hits.gather(1, pick.unsqueeze(-1).expand(-1, -1, 3))
    near = near + torch.randn(near.shape, generator=rng) * jitter
    points = torch.cat((uniform, near), dim=1)
    inside = (geometry_distance(points, photo_geometry(identity)) < 0).float()
    return points, inside


def make_batch(step: int, G: TriPlaneGenerator, config: TrainConfig, rng: torch.Generator) -> Batch:
    """Fresh latents and cameras for ``step`` and the world's renders of them (all drawn from ``rng``)."""
    shape_phase = step < config.shape_steps
    native = G.config.rendering.neural_rendering_resolution
    full_from = config.shape_steps + round(config.steps * (1.0 - config.full_fraction))
    if shape_phase:
        neural, target_res, batch_size = 0, config.shape_resolution, config.shape_batch
    else:
        neural = native if step >= full_from else config.low_resolution
        target_res = G.img_resolution * neural // native  # the SR output is pooled to this size at low resolution
        batch_size = config.batch
    background, world_background = BACKGROUND_CYCLE[step % len(BACKGROUND_CYCLE)]
    z = torch.randn(batch_size, G.z_dim, generator=rng)
    identity = identity_from_latent(z)
    c = sample_training_cameras(batch_size, rng, config, camera_config(G))
    world = render_heads(identity, c, target_res, style=STYLE, background=world_background)
    hits, pixels = surface_hits(c, world["depth"], world["mask"], config.colour_points, rng)
    colour = (world["image"].flatten(2).transpose(1, 2).gather(1, pixels.unsqueeze(-1).expand(-1, -1, 3)) + 1) / 2
    count = config.shape_density_points if shape_phase else config.density_points
    points, inside = density_probes(identity, hits, count, config.surface_jitter, rng,
                                    half_box=G.config.rendering.box_warp / 2)
    return Batch(z, c, world["image"], world["mask"], world["depth"], points, inside, hits, colour, background, neural)


# ------------------------------------------------------------------------------------------------ losses
def pooled(x: Tensor, size: int) -> Tensor:
    """Area-average ``x`` down to size² (what a pixel of a coarser render integrates)."""
    return x if x.shape[-1] == size else F.adaptive_avg_pool2d(x, size)


def compute_losses(G: TriPlaneGenerator, batch: Batch, c_cond: Tensor, config: TrainConfig,
                   render_rng: torch.Generator | None = None) -> dict[str, Tensor]:
    """All loss terms of one batch (``total`` is their weighted sum)."""
    ws = G.mapping(batch.z, c_cond.expand(batch.z.shape[0], -1))
    losses: dict[str, Tensor] = {}
    if batch.neural_resolution:
        options = RenderOptions(neural_resolution=batch.neural_resolution, background=batch.background,
                                return_planes=True, generator=render_rng)
        out = G.render(ws, batch.c, options)
        planes = out["planes"]
        r = batch.neural_resolution
        target_size = batch.image.shape[-1]
        mask_r = pooled(batch.mask, r)
        full = (mask_r > 0.999).float()
        losses = {
            "image": (pooled(out["image"], target_size) - batch.image).abs().mean(),
            "raw": (out["image_raw"] - pooled(batch.image, r)).abs().mean(),
            "mask": (out["image_mask"] - mask_r).abs().mean(),
        }
        # Ray depth is watched, not trained: the renderer's depth is Σw·t / Σw, and on rays whose samples are
        # all nearly empty 1 − exp(−σδ) rounds to exactly 0 in float32, so its backward is 0/0 = NaN however
        # the loss masks those pixels (two earlier runs lost half their steps to it). The density
        # cross-entropy already pins the surface in 3-D, which is what the depth term was for.
        with torch.no_grad():
            error = (out["image_depth"] - pooled(batch.depth, r)).abs() * full
            depth_error = error.sum() / full.sum().clamp_min(1.0)
    else:
        planes = G.synthesize_planes(ws)
    sigma = G.query_points(planes, batch.points)["sigma"][..., 0]
    logits = (sigma - config.iso_level) / config.iso_softness
    losses["density"] = F.binary_cross_entropy_with_logits(logits, batch.inside)
    losses["floor"] = F.relu(config.density_floor - sigma).mean()
    losses["colour"] = (G.point_colors(planes, ws, batch.surface) - batch.surface_colour).abs().mean()
    weights = {"image": config.weight_image, "raw": config.weight_raw, "mask": config.weight_mask,
               "density": config.weight_density, "colour": config.weight_colour,
               "floor": config.weight_floor}
    losses["total"] = sum(weights[k] * v for k, v in losses.items())
    if batch.neural_resolution:
        losses["depth_error"] = depth_error
    return losses


def learning_rate(step: int, config: TrainConfig) -> float:
    """Constant, then a linear decay to ``lr_final_fraction`` over the last 30 % of all steps."""
    decay_from = 0.7 * config.total_steps
    if step < decay_from:
        return config.lr
    progress = (step - decay_from) / max(1.0, config.total_steps - decay_from)
    return config.lr * (1.0 - (1.0 - config.lr_final_fraction) * progress)


def make_optimizer(G: TriPlaneGenerator, config: TrainConfig) -> torch.optim.Optimizer:
    G.requires_grad_(True)
    G.t_mapping.requires_grad_(False)  # inference renders without the camera offset; it stays zero
    params = [p for p in G.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=config.lr, betas=config.betas)


def training_step(G: TriPlaneGenerator, optimizer: torch.optim.Optimizer, batch: Batch, c_cond: Tensor,
                  config: TrainConfig, step: int, render_rng: torch.Generator | None = None) -> dict[str, float]:
    """One Adam step. A step whose loss or gradients are not finite is skipped (``skipped`` = 1 in the
    result) rather than letting one bad batch write NaN into every weight."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, config)
    optimizer.zero_grad(set_to_none=True)
    losses = compute_losses(G, batch, c_cond, config, render_rng)
    losses["total"].backward()
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    finite = bool(torch.isfinite(losses["total"])) and all(bool(torch.isfinite(g).all()) for g in grads)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    result = {k: float(v.detach()) for k, v in losses.items()}
    result["skipped"] = 0.0 if finite else 1.0
    return result


# ------------------------------------------------------------------------------------------------ finishing
def zero_camera_offset(G: TriPlaneGenerator) -> None:
    """Make ``t_mapping`` output exactly zero: the world needs no per-head camera offset, and inference
    (``G.render(G.mapping(...))``) never applies one, so ``G.forward`` must not either."""
    final = getattr(G.t_mapping, f"fc{G.t_mapping.num_layers - 1}")
    with torch.no_grad():
        final.weight.zero_()
        if final.bias is not None:
            final.bias.zero_()


@torch.no_grad()
def set_w_average(G: TriPlaneGenerator, c_cond: Tensor, count: int = 4096, seed: int = 0) -> None:
    """``w_avg`` (the truncation centre) = mean mapping output at the conditioning camera."""
    z = torch.randn(count, G.z_dim, generator=torch.Generator().manual_seed(seed))
    ws = G.mapping(z, c_cond.expand(count, -1))
    G.backbone.mapping.w_avg.copy_(ws[:, 0].mean(dim=0))


# ------------------------------------------------------------------------------------------------ evaluation
def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
    mse = ((a.clamp(-1, 1) - b) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


@torch.no_grad()
def evaluate(G: TriPlaneGenerator, heads: int = 6, seed: int = 0) -> dict:
    """Held-out metrics: ``heads`` latents never seen in training × front, ±45°, ±90° and back (pitch 0).

    PSNR of the super-resolved image against the world render (white background), IoU of the coverage masks
    (> 0.5) at the neural resolution and mean absolute ray-depth error where both cover the pixel. A
    ``shuffled`` PSNR pairs each render with another head's target: the gap to the matched PSNR shows that
    the generator follows the latent rather than drawing one average head.
    """
    G.eval()
    c_cond = conditioning_camera(G)
    views = named_views(0.0, camera_config(G))
    z = torch.randn(heads, G.z_dim, generator=torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET))
    identity = identity_from_latent(z)
    ws = G.mapping(z, c_cond.expand(heads, -1))
    native = G.config.rendering.neural_rendering_resolution
    per_view: dict[str, dict[str, float]] = {}
    images, targets = [], []
    for v, name in enumerate(views.names):
        c = views.c[v : v + 1].expand(heads, -1)
        out = G.render(ws, c, RenderOptions(background="white", deterministic_samples=True))
        world = render_heads(identity, c, G.img_resolution, style=STYLE, background="white")
        world_raw = render_heads(identity, c, native, style=STYLE, background="white")
        gm, wm = out["image_mask"] > 0.5, world_raw["mask"] > 0.5
        iou = ((gm & wm).flatten(1).sum(1) / (gm | wm).flatten(1).sum(1).clamp_min(1)).mean()
        both = (gm & wm).float()
        depth_err = ((out["image_depth"] - world_raw["depth"]).abs() * both).sum() / both.sum().clamp_min(1)
        shuffled = psnr(out["image"], world["image"].roll(1, dims=0)).mean()
        per_view[name] = {
            "psnr": float(psnr(out["image"], world["image"]).mean()),
            "psnr_raw": float(psnr(out["image_raw"], world_raw["image"]).mean()),
            "psnr_shuffled": float(shuffled),
            "mask_iou": float(iou),
            "depth_abs_error": float(depth_err),
        }
        images.append(out["image"])
        targets.append(world["image"])
    keys = next(iter(per_view.values())).keys()
    mean = {k: sum(m[k] for m in per_view.values()) / len(per_view) for k in keys}
    return {"heads": heads, "views": list(views.names), "pitch": 0.0, "mean": mean, "per_view": per_view,
            "_images": torch.stack(images, 1), "_targets": torch.stack(targets, 1)}


def contact_sheet(images: Tensor, targets: Tensor, path: str | Path) -> None:
    """PNG with, per held-out head, a row of world targets above a row of generator renders."""
    from PIL import Image

    heads, views = images.shape[:2]
    rows = torch.stack((targets, images), dim=1).reshape(heads * 2, views, *images.shape[2:])
    grid = rows.permute(0, 3, 1, 4, 2).reshape(rows.shape[0] * images.shape[-2], views * images.shape[-1], 3)
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


def mesh_check(G: TriPlaneGenerator, resolution: int = 128, seed: int = 0) -> dict:
    """Marching cubes of one held-out head, queried as ``python -m engine generate`` does."""
    from engine.generator.inference import head_mesh
    from engine.mesh import MeshConfig

    c_cond = conditioning_camera(G)
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET))
    with torch.no_grad():
        ws = G.mapping(z, c_cond)
    config = MeshConfig.for_box_warp(G.config.rendering.box_warp, resolution=resolution)
    try:
        mesh = head_mesh(G, ws, config)
    except EngineError as exc:  # an untrained or failed field has no surface at the iso level
        return {"resolution": resolution, "iso_level": config.iso_level, "faces": 0, "error": str(exc)}
    vertices = torch.as_tensor(mesh.vertices)
    lo, hi = vertices.min(0).values, vertices.max(0).values
    return {"resolution": resolution, "iso_level": config.iso_level, "faces": int(len(mesh.faces)),
            "vertices": int(len(vertices)), "bounds_min": lo.tolist(), "bounds_max": hi.tolist()}


# ------------------------------------------------------------------------------------------------ main
def train(config: TrainConfig, out: Path, sheet: Path | None = None, init: Path | None = None) -> dict:
    """Train (from scratch, or continuing from the generator file ``init``) and write the pack files.

    A continued run keeps the earlier run's report under ``previous_stage`` so the whole history of the
    shipped weights stays in one report.
    """
    config = config.validate()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    facts = run_facts(config.seed, config.threads)
    previous = None
    if init is not None:
        G = load_generator(init).generator
        old_report = out / "reports" / "generator.json"
        previous = json.loads(old_report.read_text()) if old_report.is_file() else None
    else:
        G = TriPlaneGenerator(get_preset(config.preset))
    G.train()
    zero_camera_offset(G)
    optimizer = make_optimizer(G, config)
    c_cond = conditioning_camera(G)
    data_rng = torch.Generator().manual_seed(config.seed)
    render_rng = torch.Generator().manual_seed(config.seed + 1)
    log = JsonlLog(out / "logs" / "generator.jsonl")
    start = time.perf_counter()
    data_seconds = 0.0
    steps_done = 0
    skipped = 0
    for step in range(config.total_steps):
        if time.perf_counter() - start > config.minutes * 60:
            print(f"stopping at step {step}: {config.minutes} minute cap reached", file=sys.stderr)
            break
        t0 = time.perf_counter()
        batch = make_batch(step, G, config, data_rng)
        data_seconds += time.perf_counter() - t0
        losses = training_step(G, optimizer, batch, c_cond, config, step, render_rng)
        skipped += int(losses.pop("skipped"))
        steps_done = step + 1
        if step % config.log_every == 0 or step == config.total_steps - 1:
            record = {"step": step, "loss": losses["total"], "skipped_steps": skipped, "seconds": round(time.perf_counter() - start, 2),
                      "lr": learning_rate(step, config), "neural_resolution": batch.neural_resolution,
                      "background": batch.background, **{f"loss_{k}": v for k, v in losses.items() if k != "total"}}
            log.write(**record)
            print(record, flush=True)
    wall = time.perf_counter() - start
    log.close()

    G.eval().requires_grad_(False)
    set_w_average(G, c_cond, seed=config.seed)
    t0 = time.perf_counter()
    metrics = evaluate(G, seed=config.seed)
    images, targets = metrics.pop("_images"), metrics.pop("_targets")
    if sheet is not None:
        contact_sheet(images, targets, sheet)
    mesh = mesh_check(G, seed=config.seed)
    eval_seconds = time.perf_counter() - t0

    path = out / "generator" / "generator.safetensors"
    extra = {"trained_on": f"procedural world, style {STYLE}", "latent_map": "engine.world.latent",
             "conditioning_camera": "yaw 0, pitch 0.2, pivot (0, 0, 0)", "steps": steps_done, "seed": config.seed}
    save_generator(G, path, extra=extra)
    reloaded = load_generator(path).generator.state_dict()
    bit_exact = all(torch.equal(v, reloaded[k]) for k, v in G.state_dict().items())
    report = {
        "model": "generator",
        "script": "scripts/pack/train_generator.py",
        **facts,
        "config": asdict(config),
        "preset": config.preset,
        "steps": steps_done,
        "skipped_steps": skipped,
        "wall_seconds": round(wall, 1),
        "world_render_seconds": round(data_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "data": {"identities_seen": min(steps_done, config.shape_steps) * config.shape_batch
                 + max(0, steps_done - config.shape_steps) * config.batch, "views_per_identity": 1, "style": STYLE,
                 "held_out_heads": metrics["heads"], "held_out_views": metrics["views"]},
        "parameters": sum(p.numel() for p in G.parameters()),
        "file_bytes": path.stat().st_size,
        "reload_bit_exact": bit_exact,
        "final_losses": {k: v for k, v in log.records[-1].items()} if log.records else {},
        "held_out": metrics,
        "mesh": mesh,
        "init": None if init is None else str(init),
        "previous_stage": previous,
        "total_wall_seconds": round(wall + (previous or {}).get("total_wall_seconds", (previous or {}).get("wall_seconds", 0.0)), 1),
    }
    write_report(out / "reports" / "generator.json", report)
    return report


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Path, Path | None, Path | None]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="pack folder (writes generator/, logs/, reports/)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--steps", type=int, default=TrainConfig.steps, help="rendering steps")
    p.add_argument("--shape-steps", type=int, default=TrainConfig.shape_steps, help="3-D-only steps first")
    p.add_argument("--minutes", type=float, default=TrainConfig.minutes, help="wall-clock cap")
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    p.add_argument("--batch", type=int, default=TrainConfig.batch)
    p.add_argument("--preset", default=TrainConfig.preset)
    p.add_argument("--sheet", type=Path, default=None, help="also write a held-out contact sheet PNG here")
    p.add_argument("--init", type=Path, default=None, help="continue from this generator .safetensors")
    a = p.parse_args(argv)
    config = TrainConfig(preset=a.preset, seed=a.seed, steps=a.steps, shape_steps=a.shape_steps, minutes=a.minutes,
                         threads=a.threads,
                         batch=a.batch)
    return config, a.out, a.sheet, a.init


def main(argv: list[str] | None = None) -> int:
    config, out, sheet, init = parse_args(argv)
    report = train(config, out, sheet, init)
    summary = {k: report[k] for k in ("steps", "wall_seconds", "file_bytes", "reload_bit_exact")}
    print({**summary, "held_out": report["held_out"]["mean"], "mesh_faces": report["mesh"]["faces"]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
