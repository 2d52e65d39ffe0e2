"""How far is the pack generator from what its own tri-grid, decoder and super-resolution can hold?

Pack v2 (issue #11) asks for 24 dB held-out PSNR and the generator's training has been gaining about 0.15 dB
an hour. This probe separates the two things that could cap it: the *shared* renderer parts (decoder, ToRGB,
super-resolution, the 64² neural render) and the *synthesis network* (w → tri-grid), which must produce every
identity's tri-grid from its latent. For each of ``--heads`` held-out identities (the training script's
held-out stream, the first ones its ``evaluate`` scores) it starts from the generator's own tri-grid for that
latent and fits, per head, with the render stages' image losses against ``--views`` training views of the world
head (white background, the evaluation's):

* ``planes`` — the tri-grid alone (decoder, ToRGB and super-resolution frozen): what a perfect synthesis
  network could reach with the shipped renderer parts;
* ``planes+decoder`` — the decoder and ToRGB too;
* ``all`` — the super-resolution head as well: the architecture's own per-head ceiling.

Each arm is scored on the six evaluation views (pitch 0; not among the training views, which are drawn like the
training stages' cameras) exactly as ``train_generator_v2.py evaluate`` scores them. If ``planes`` stays near the
generator's score, the shared parts are the cap; if it clears 24 dB, the synthesis network's learning is. ::

    python bench/probe_generator_ceiling.py --stage joint3 --heads 2 --steps 150 --arms planes all   # ~26 min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere

from engine.generator.camera import named_views  # noqa: E402
from engine.generator.triplane import RenderOptions, TriPlaneGenerator  # noqa: E402
from scripts.pack.train_generator_v2 import (  # noqa: E402
    DEFAULT_WORK,
    EVAL_SEED,
    STAGES,
    camera_config,
    conditioning_camera,
    finish_for_inference,
    identity_from_latent,
    load_stage_generator,
    psnr,
    render_losses,
    render_weights,
    sample_training_cameras,
    world_views,
)

RECIPE = STAGES["joint3"]  # the image losses and training cameras of the generator's last render stage

ARMS = {
    "planes": (),
    "planes+decoder": ("decoder", "torgb"),
    "all": ("decoder", "torgb", "superresolution"),
}


@dataclass(frozen=True)
class ProbeConfig:
    steps: int = 200
    views: int = 48  # training views per head (drawn once, cycled)
    batch: int = 4  # views per step
    lr_planes: float = 1e-2
    lr_networks: float = 2e-4
    seed: int = 7


def training_targets(G: TriPlaneGenerator, identity: torch.Tensor, config: ProbeConfig) -> dict:
    """``config.views`` random training cameras of one head and its world renders (white) at both sizes."""
    rng = torch.Generator().manual_seed(config.seed)
    c = sample_training_cameras(config.views, rng, RECIPE, camera_config(G))  # type: ignore[arg-type]
    world = world_views(identity.expand(config.views, -1), c, G.img_resolution, G)
    native = G.config.rendering.neural_rendering_resolution
    return {"c": c, "image": world["image"],
            "raw": F.adaptive_avg_pool2d(world["image"], native), "mask": F.adaptive_avg_pool2d(world["mask"], native)}


@torch.no_grad()
def score(G: TriPlaneGenerator, ws: torch.Tensor, planes: torch.Tensor, identity: torch.Tensor) -> dict:
    """Super-resolved and raw PSNR on the six evaluation views, as the training script's ``evaluate``."""
    views = named_views(0.0, camera_config(G))
    n = views.c.shape[0]
    out = G.render(ws.expand(n, -1, -1), views.c, RenderOptions(background="white", deterministic_samples=True),
                   planes=planes.expand(n, *planes.shape[1:]))
    world = world_views(identity.expand(n, -1), views.c, G.img_resolution, G)
    world_raw = world_views(identity.expand(n, -1), views.c, G.config.rendering.neural_rendering_resolution, G)
    return {"psnr": float(psnr(out["image"], world["image"]).mean()),
            "psnr_raw": float(psnr(out["image_raw"], world_raw["image"]).mean())}


def fit_head(G: TriPlaneGenerator, ws: torch.Tensor, identity: torch.Tensor, groups: tuple[str, ...],
             targets: dict, config: ProbeConfig) -> tuple[torch.Tensor, TriPlaneGenerator]:
    """Fit one head's tri-grid (and the named network groups) with :data:`RECIPE`'s image losses; returns both."""
    import copy

    head = copy.deepcopy(G)
    head.requires_grad_(False)
    networks = [p for g in groups for p in head.layer_group(g).parameters()]
    for p in networks:
        p.requires_grad_(True)
    with torch.no_grad():
        planes = head.synthesize_planes(ws).clone()
    planes.requires_grad_(True)
    param_groups = [{"params": [planes], "lr": config.lr_planes}]
    if networks:
        param_groups.append({"params": networks, "lr": config.lr_networks})
    optimizer = torch.optim.Adam(param_groups, betas=(0.9, 0.99))
    order = torch.randperm(config.views, generator=torch.Generator().manual_seed(config.seed + 1))
    for step in range(config.steps):
        pick = order[(torch.arange(config.batch) + step * config.batch) % config.views]
        c = targets["c"][pick]
        out = head.render(ws.expand(len(pick), -1, -1), c, RenderOptions(background="white"),
                          planes=planes.expand(len(pick), *planes.shape[1:]))
        losses = render_losses(out, targets["image"][pick], {"image": targets["raw"][pick], "mask": targets["mask"][pick]},
                               RECIPE)
        loss = sum(weight * losses[k] for k, weight in render_weights(RECIPE).items())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return planes.detach(), head


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", default="joint3", help="generator v2 stage whose latest checkpoint is probed")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS))
    p.add_argument("--steps", type=int, default=ProbeConfig.steps)
    p.add_argument("--lr-planes", type=float, default=ProbeConfig.lr_planes)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    config = ProbeConfig(steps=a.steps, lr_planes=a.lr_planes)
    G = finish_for_inference(load_stage_generator(a.stage, a.work))
    z = torch.randn(a.heads, G.z_dim, generator=torch.Generator().manual_seed(EVAL_SEED))
    identities = identity_from_latent(z)
    with torch.no_grad():
        all_ws = G.mapping(z, conditioning_camera(G).expand(a.heads, -1))
    rows = []
    for h in range(a.heads):
        ws, identity = all_ws[h : h + 1], identities[h : h + 1]
        with torch.no_grad():
            row = {"head": h, "generator": score(G, ws, G.synthesize_planes(ws), identity)}
        targets = training_targets(G, identity, config)
        for arm in a.arms:
            t0 = time.perf_counter()
            planes, head = fit_head(G, ws, identity, ARMS[arm], targets, config)
            row[arm] = {**score(head, ws, planes, identity), "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = ["generator", *a.arms]
    mean = {k: {m: round(sum(r[k][m] for r in rows) / len(rows), 2) for m in ("psnr", "psnr_raw")} for k in keys}
    summary = {"stage": a.stage, "heads": a.heads, "config": config.__dict__, "mean": mean, "rows": rows}
    print(json.dumps({"mean": mean}, indent=1))
    if a.json is not None:
        a.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
