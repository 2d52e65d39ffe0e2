"""Train the embedded pack's generator v2 in resumable stages: a head field with faces, then its renders.

Why v2 differs from :mod:`scripts.pack.train_generator` (v1): v1 learned mostly through volume-rendered
photometric losses and ended as a semi-transparent shell 2–3 cm thick (raw density ~11–15 just inside the
surface), so every head rendered as a soft, nearly identical blob with no face. The world is an SDF with
known materials, so v2 supervises the tri-grid field *in 3-D* first, which needs no ray marching:

1. ``field`` — per step 8 fresh identities. The raw density at points sampled uniformly in the tri-grid box,
   around the visible surface (σ 1 cm) and tightly around it (σ 0.3 cm) is regressed (L1) onto a sharp
   target ``clamp(iso − sdf / 2.5e-5, −20, 250)``: the iso level (10, what mesh extraction uses) sits on the
   world's surface and the inside is opaque after the renderer's softplus. Colour is supervised at surface
   points the world render saw, with face features (eyes, brows, lips) drawn 6× as often as skin, plus a
   *colour-gradient* term on pairs of neighbouring pixels' surface points (their colour difference must match
   the world's), which rewards edges where plain L1 averages them away.
2. ``render`` — fine-tunes through the volume renderer and the super-resolution head: L1 and image-gradient
   L1 on the super-resolved image and on the raw render, coverage-mask L1, and the field losses at a lower
   weight so the geometry stays sharp. The background rotates (white / background network / none) so every
   :class:`RenderOptions` background gives a clean head.

Targets are the world's ``photo`` style, matte (``Lighting(gloss=0)``: no highlights or rim light), lit by
studio lights fixed to the *head* (the lights of a front camera), not to each camera: a view-independent
radiance field (the generator's decoder has no view input, like PanoHead's) can then reproduce every view of
a head. With the default camera-fixed glossy lights the same surface point seen from ±20° differs by 0.09
(mean absolute, images in [-1, 1], 128²); head-fixed glossy lights 0.076, head-fixed matte 0.019, about the
0.013 that re-sampling two renders costs (``tests/engine/world/test_world.py``).

Every step's data comes from ``seed`` and the step number alone, every stage keeps a resumable checkpoint
(weights, Adam moments, step, log) in ``--work`` (default ``scripts/pack/checkpoints/generator_v2``), and a
sitting stops cleanly at ``--minutes``; rerunning the same command continues, so a stage may span several
sittings and still ends with the same weights as an uninterrupted run on the same machine. ::

    python scripts/pack/train_generator_v2.py run --stage field --minutes 100     # repeat until finished
    python scripts/pack/train_generator_v2.py run --stage field2 --minutes 100    # from field's step 2208
    python scripts/pack/train_generator_v2.py run --stage sr --minutes 100        # from the finished field2
    python scripts/pack/train_generator_v2.py run --stage joint --minutes 100     # from the finished sr
    python scripts/pack/train_generator_v2.py run --stage joint2 --minutes 100    # joint, longer (not shipped)
    python scripts/pack/train_generator_v2.py run --stage joint3 --minutes 100    # joint2 with squared image errors
    python scripts/pack/train_generator_v2.py evaluate --stage joint --sheet docs/images/generator_v2.png
    python scripts/pack/train_generator_v2.py publish --stage joint --out engine/pack/embedded-v1

``field`` starts from the v1 pack generator (its mapping, synthesis and super-resolution are a usable
initialisation); each later stage from the one its config's ``init`` names.
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

from engine.errors import CheckpointError, ConfigError, EngineError  # noqa: E402
from engine.generator.camera import cameras_at, named_views, split_camera_vector  # noqa: E402
from engine.generator.config import get_preset  # noqa: E402
from engine.generator.field_supervision import DensityTarget  # noqa: E402
from engine.generator.field_supervision import density_loss as field_density_loss  # noqa: E402
from engine.generator.loading import load_generator, save_generator  # noqa: E402
from engine.generator.renderer import pixel_rays  # noqa: E402
from engine.generator.triplane import RenderOptions, TriPlaneGenerator  # noqa: E402
from engine.world import HeadGeometry, Lighting, get_style, render_heads, to_physical  # noqa: E402
from engine.world.latent import identity_from_latent  # noqa: E402
from engine.world.sdf import Material, geometry_distance  # noqa: E402
from scripts.pack.common import REPO_ROOT, JsonlLog, run_facts, write_report  # noqa: E402
from scripts.pack.train_generator import (  # noqa: E402
    camera_config,
    conditioning_camera,
    sample_training_cameras,
    set_w_average,
    zero_camera_offset,
)
from scripts.pack.training_checkpoint import (  # noqa: E402
    latest_checkpoint,
    load_training_checkpoint,
    normalised,
    save_training_checkpoint,
)

STYLE = "photo"
TARGET_LIGHTING = Lighting(gloss=0.0)  # no highlights or rim: nothing in the targets depends on the view
DEFAULT_WORK = REPO_ROOT / "scripts" / "pack" / "checkpoints" / "generator_v2"
# The v1 pack generator (``scripts/pack/train_generator.py``), kept here because the field stage starts from it
# and the pack's own generator file is replaced by v2.
V1_GENERATOR = REPO_ROOT / "scripts" / "pack" / "checkpoints" / "generator_v1" / "generator.safetensors"
EVAL_SEED = 1_000_003  # held-out latents come from a different stream than any training step's
FEATURE_MATERIALS = (Material.SCLERA, Material.IRIS, Material.PUPIL, Material.LIPS, Material.BROW)
EYE_MATERIALS = (Material.SCLERA, Material.IRIS, Material.PUPIL)
MOUTH_MATERIALS = (Material.LIPS,)
BACKGROUND_CYCLE = (("white", "white"), ("model", "white"), ("white", "white"), ("none", "black"))


@dataclass(frozen=True)
class StageConfig:
    """One training stage; the step count (not the wall clock) decides what a finished stage is."""

    name: str
    render: bool  # False: field losses only (no ray marching); True: through renderer + super-resolution
    steps: int
    init: str  # "v1" (the v1 pack generator) or the name of the stage whose final weights start this one
    # layer groups that train (TriPlaneGenerator.layer_group names); empty = all but the camera offset net
    trainable: tuple[str, ...] = ()
    seed: int = 0
    batch: int = 8
    lr: float = 2e-3
    # Adam's step on the mapping network relative to ``lr``. Its layers store weights ×100 (StyleGAN's
    # lr_multiplier 0.01), so 1.0 keeps it as good as frozen; 100 lets it learn as fast as the synthesis
    # network, which in regression (unlike GAN training) learns the faces' colours faster: on 8 held-out heads
    # 80 steps from the field stage's step 2208 brought the surface-colour L1 to 0.077 against 0.084 without
    mapping_lr_scale: float = 1.0
    # Adam's step on the synthesis network (w → tri-grid) relative to ``lr``. The renderer's shared parts
    # (decoder, ToRGB, super-resolution) are not what caps the held-out score: a per-head tri-grid fitted
    # through them (``bench/probe_generator_ceiling.py``) scores 1.1–1.3 dB above the synthesis network's. But
    # stepping the synthesis network faster does not close that gap: 150 steps from joint3 at 5× scored 0.36 dB
    # *below* 1× on 8 held-out heads (``bench/ab_generator_stage.py``), so every stage keeps 1.
    synthesis_lr_scale: float = 1.0
    lr_final_fraction: float = 0.1  # linear decay to this fraction over the last 30 % of the steps
    betas: tuple[float, float] = (0.9, 0.99)
    target_resolution: int = 64  # world render that supplies surface points and colours (field stage)
    density_points: int = 4096  # per head: 1/4 uniform, 1/2 around the surface (σ 1 cm), 1/4 tight (σ 0.3 cm)
    colour_points: int = 2048  # per head
    feature_weight: float = 6.0  # how much more often eye/brow/lip pixels are drawn than skin or hair
    ray_fraction: float = 0.5  # share of colour points moved along their ray by an offset drawn from …
    ray_offset: tuple[float, float] = (-0.025, 0.008)  # … this range (world units; negative = towards the camera)
    # share of colour points moved along the surface normal (outwards or inwards) by up to normal_offset: the
    # renderer averages the colours of consecutive samples, one in front of the surface and one behind it, so
    # the field must carry each surface point's colour through a thin shell — along the normal, which (unlike
    # an offset along one view's ray) gives every view the same target for the same point
    normal_fraction: float = 0.0
    normal_offset: tuple[float, float] = (-0.03, 0.03)  # world units, negative = into the head
    surface_sigma: float = 0.02  # world units (about 1.2 cm of a real head)
    tight_sigma: float = 0.005
    iso_level: float = 10.0
    density_slope: float = 1.0 / 2.5e-5  # raw-density units per world unit of signed distance
    density_range: tuple[float, float] = (-20.0, 250.0)
    density_scale: float = 50.0  # the density L1 is divided by this so it weighs about as much as colour
    # errors smaller than this (raw density units) cost nothing, and a density beyond a clamped target (more
    # transparent than −20 outside, more opaque than 250 inside) is not an error: a 64² tri-grid cannot draw
    # the target's sub-texel step exactly, and an L1 that never reaches zero keeps pulling the shared weights
    # away from the colours once the geometry is right
    density_tolerance: float = 0.0
    density_one_sided: bool = False
    weight_density: float = 0.5
    weight_colour: float = 1.0
    weight_colour_grad: float = 1.0
    # render stage
    # "l1": the images' mean absolute error; "l2": twice their mean squared error, whose pull grows with the
    # error, as PSNR's weight does — the silhouette's few large errors (two thirds of the held-out squared
    # error) then count more than the many small ones inside the head, which L1 weighs alike
    image_loss: str = "l1"
    weight_image: float = 1.0
    weight_image_grad: float = 1.0
    weight_raw: float = 1.0
    weight_mask: float = 1.0
    weight_field: float = 0.5  # the field losses keep the geometry sharp while the renders train
    yaw_front_fraction: float = 0.5
    yaw_front_sigma: float = 0.7
    pitch_limit: float = 0.35
    save_every: int = 100
    log_every: int = 10

    def validate(self) -> "StageConfig":
        if self.steps < 1 or self.batch < 1:
            raise ConfigError(f"stage {self.name}: steps and batch must be ≥ 1")
        if self.image_loss not in IMAGE_LOSSES:
            raise ConfigError(f"stage {self.name}: image_loss must be one of {sorted(IMAGE_LOSSES)}, got {self.image_loss!r}")
        return self

    def learning_rate(self, step: int) -> float:
        decay_from = 0.7 * self.steps
        if step < decay_from:
            return self.lr
        progress = (step - decay_from) / max(1.0, self.steps - decay_from)
        return self.lr * (1.0 - (1.0 - self.lr_final_fraction) * progress)


STAGES: dict[str, StageConfig] = {
    # Stopped at step 2208 of 8000 (4,050 s): the surface colours had stalled at L1 ≈ 0.097 (heads without
    # faces) while the density L1 of the sub-texel target kept pulling; ``field2`` continues from there.
    "field": StageConfig(name="field", render=False, steps=8000, init="v1"),
    # From field's step 2208: the mapping learns too, density errors within 15 units (or beyond a clamped
    # target) are free and weigh 0.1, and colour points sit in a shell along the surface normal (mostly
    # inside, where the renderer's weights land) instead of along one view's ray.
    "field2": StageConfig(name="field2", render=False, steps=6000, init="field@2208", seed=3, mapping_lr_scale=100.0,
                          weight_density=0.1, density_one_sided=True, density_tolerance=15.0, ray_fraction=0.0,
                          normal_fraction=0.5, normal_offset=(-0.03, 0.01)),
    # The field is frozen: renders need no backward pass through the renderer, so steps are cheap.
    "sr": StageConfig(name="sr", render=True, steps=1500, init="field2", seed=1, batch=4, lr=1e-3,
                      trainable=("superresolution", "torgb", "background"), weight_field=0.0,
                      density_points=0, colour_points=0),
    # Everything together at a low learning rate: the renders' losses reach the tri-grid.
    "joint": StageConfig(name="joint", render=True, steps=400, init="sr", seed=2, batch=2, lr=2e-4,
                         density_points=2048, colour_points=512),
    # joint's 400 steps raised the held-out raw PSNR from 20.0 to 21.7 dB and had not levelled off: the same
    # recipe, longer (fresh Adam moments and its own sample stream).
    "joint2": StageConfig(name="joint2", render=True, steps=1500, init="joint", seed=4, batch=2, lr=2e-4,
                          density_points=2048, colour_points=512),
    # joint2 had levelled off under L1 (150 more steps: raw +0.02 dB on 8 held-out heads; at 5× the rate −0.3);
    # the same 150 steps with squared image errors gave raw +0.24 dB, super-resolved +0.07.
    "joint3": StageConfig(name="joint3", render=True, steps=1500, init="joint2", seed=5, batch=2, lr=2e-4,
                          density_points=2048, colour_points=512, image_loss="l2"),
}


# ------------------------------------------------------------------------------------------------ world
def head_light_camera(G: TriPlaneGenerator) -> Tensor:
    """(1, 25) front camera the studio lights are fixed to (yaw 0, pitch 0, looking at the origin)."""
    return cameras_at(0.0, 0.0, camera_config(G)).c


def world_views(identity: Tensor, c: Tensor, resolution: int, G: TriPlaneGenerator, background: str = "white") -> dict:
    """World renders of the training style, matte, with head-fixed lights (image in [-1, 1], depth, mask,
    material): one colour per surface point from every side."""
    return render_heads(identity, c, resolution, style=STYLE, background=background,
                        light_cameras=head_light_camera(G), lighting=TARGET_LIGHTING)


def photo_geometry(identity: Tensor) -> HeadGeometry:
    return HeadGeometry.from_physical(get_style(STYLE).reshape(to_physical(identity)))


def step_generator(seed: int, step: int) -> torch.Generator:
    """The random stream of one step: the same data whether the stage ran straight through or resumed."""
    return torch.Generator().manual_seed(seed * 1_000_000_007 + step)


@dataclass
class FieldTargets:
    """3-D supervision of one batch: density probes and coloured surface points (with right/down neighbours)."""

    points: Tensor  # (B, P, 3)
    density: Tensor  # (B, P) target raw density
    surface: Tensor  # (B, K, 3)
    colour: Tensor  # (B, K, 3) in [0, 1]
    neighbour: Tensor  # (B, K, 3) surface point of the next pixel right or down
    neighbour_colour: Tensor  # (B, K, 3)
    pair_valid: Tensor  # (B, K) 1 where both pixels are fully covered


def pixel_surface_points(c: Tensor, depth: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """(B, R², 3) world point every pixel's ray hits at the world's ray depth, and the rays' unit directions."""
    cam2world, intrinsics = split_camera_vector(c)
    origins, directions = pixel_rays(cam2world, intrinsics, resolution)
    return origins + depth.reshape(depth.shape[0], -1, 1) * directions, directions


def surface_normals(points: Tensor, geometry: HeadGeometry) -> Tensor:
    """(B, M, 3) unit outward normals of the world head at points (B, M, 3): the SDF's normalised gradient."""
    with torch.enable_grad():
        x = points.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(geometry_distance(x, geometry).sum(), x)
    return F.normalize(grad, dim=-1)


def field_targets(identity: Tensor, c: Tensor, world: dict, config: StageConfig, rng: torch.Generator,
                  half_box: float) -> FieldTargets:
    batch, res = identity.shape[0], world["depth"].shape[-1]
    points_all, directions = pixel_surface_points(c, world["depth"], res)
    covered = world["mask"].reshape(batch, -1) > 0.99
    material = world["material"].reshape(batch, -1)
    feature = torch.zeros_like(covered)
    for m in FEATURE_MATERIALS:
        feature |= material == int(m)
    weights = covered.float() * (1.0 + (config.feature_weight - 1.0) * feature.float()) + 1e-6
    pick = torch.multinomial(weights, config.colour_points, replacement=True, generator=rng)
    # neighbour: the pixel to the right (or below, for half the picks); clamped at the image border
    down = torch.rand(pick.shape, generator=rng) < 0.5
    row, col = pick // res, pick % res
    n_row = torch.where(down, (row + 1).clamp_max(res - 1), row)
    n_col = torch.where(down, col, (col + 1).clamp_max(res - 1))
    n_pick = n_row * res + n_col
    colours = (world["image"].flatten(2).transpose(1, 2) + 1) / 2  # (B, R², 3)
    take = lambda values, index: values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))  # noqa: E731
    surface, neighbour = take(points_all, pick), take(points_all, n_pick)
    pair_valid = (covered.gather(1, n_pick) & (n_pick != pick)).float()
    # Part of the colour points slide along their pixel's ray, mostly in front of the surface: the volume
    # renderer integrates colour over the samples around the surface, so those must carry the pixel's colour
    # too (else the unsupervised colour just outside the surface shows as blotches in the renders).
    lo_t, hi_t = config.ray_offset
    offset = lo_t + (hi_t - lo_t) * torch.rand(batch, pick.shape[1], 1, generator=rng)
    offset = offset * (torch.rand(batch, pick.shape[1], 1, generator=rng) < config.ray_fraction)
    surface = surface + offset * take(directions, pick)
    neighbour = neighbour + offset * take(directions, n_pick)
    if config.normal_fraction > 0:
        geometry = photo_geometry(identity)
        lo_n, hi_n = config.normal_offset
        shift = lo_n + (hi_n - lo_n) * torch.rand(batch, pick.shape[1], 1, generator=rng)
        shift = shift * (torch.rand(batch, pick.shape[1], 1, generator=rng) < config.normal_fraction)
        surface = surface + shift * surface_normals(surface, geometry)
        neighbour = neighbour + shift * surface_normals(neighbour, geometry)

    quarter = config.density_points // 4
    lo = -half_box
    uniform = lo + 2 * half_box * torch.rand(batch, quarter, 3, generator=rng)
    anchor = torch.multinomial(weights, config.density_points - quarter, replacement=True, generator=rng)
    near = take(points_all, anchor)
    sigma = torch.full((batch, near.shape[1], 1), config.surface_sigma)
    sigma[:, 2 * quarter:] = config.tight_sigma  # the last third of the near points hug the surface
    near = near + torch.randn(near.shape, generator=rng) * sigma
    points = torch.cat((uniform, near), dim=1)
    density = density_spec(config)(geometry_distance(points, photo_geometry(identity)))
    return FieldTargets(points, density, surface, take(colours, pick), neighbour, take(colours, n_pick), pair_valid)


@dataclass
class Batch:
    z: Tensor
    c: Tensor
    world: dict  # world renders at the output resolution
    world_raw: dict | None  # at the neural resolution (render stage)
    field: FieldTargets | None  # None when the stage does not train the field
    background: str


def make_batch(step: int, G: TriPlaneGenerator, config: StageConfig) -> Batch:
    rng = step_generator(config.seed, step)
    z = torch.randn(config.batch, G.z_dim, generator=rng)
    identity = identity_from_latent(z)
    c = sample_training_cameras(config.batch, rng, config, camera_config(G))  # type: ignore[arg-type]
    background, world_background = BACKGROUND_CYCLE[step % len(BACKGROUND_CYCLE)] if config.render else ("white", "white")
    half_box = G.config.rendering.box_warp / 2
    if config.render:
        world = world_views(identity, c, G.img_resolution, G, world_background)
        native = G.config.rendering.neural_rendering_resolution
        # the raw render's targets: the output-size render area-averaged (one world render fewer per step)
        world_raw = {k: F.adaptive_avg_pool2d(world[k], native) for k in ("image", "mask")}
        field = None
        if config.weight_field > 0:  # surface points need a point-sampled render (averaged depth is not a depth)
            field = field_targets(identity, c, world_views(identity, c, native, G), config, rng, half_box)
    else:
        world = world_views(identity, c, config.target_resolution, G)
        world_raw = None
        field = field_targets(identity, c, world, config, rng, half_box)
    return Batch(z, c, world, world_raw, field, background)


# ------------------------------------------------------------------------------------------------ losses
IMAGE_LOSSES = {
    "l1": lambda a, b: (a - b).abs().mean(),
    "l2": lambda a, b: 2 * ((a - b) ** 2).mean(),
}


def image_gradients(x: Tensor) -> tuple[Tensor, Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def gradient_l1(a: Tensor, b: Tensor) -> Tensor:
    """L1 between the finite-difference gradients of two images: rewards edges in the right place."""
    (ax, ay), (bx, by) = image_gradients(a), image_gradients(b)
    return (ax - bx).abs().mean() + (ay - by).abs().mean()


def density_spec(config: StageConfig) -> DensityTarget:
    lo_d, hi_d = config.density_range
    return DensityTarget(iso_level=config.iso_level, slope=config.density_slope, low=lo_d, high=hi_d,
                         scale=config.density_scale, one_sided=config.density_one_sided,
                         tolerance=config.density_tolerance)


def density_loss(sigma: Tensor, target: Tensor, config: StageConfig) -> Tensor:
    """:func:`engine.generator.field_supervision.density_loss` with the stage's settings."""
    return field_density_loss(sigma, target, density_spec(config))


def field_losses(G: TriPlaneGenerator, planes: Tensor, ws: Tensor, f: FieldTargets, config: StageConfig) -> dict[str, Tensor]:
    sigma = G.query_points(planes, f.points)["sigma"][..., 0]
    both = torch.cat((f.surface, f.neighbour), dim=1)
    rgb = G.point_colors(planes, ws, both, clamp=False)
    own, other = rgb[:, : f.surface.shape[1]], rgb[:, f.surface.shape[1]:]
    pair = ((own - other) - (f.colour - f.neighbour_colour)).abs().sum(-1)
    return {
        "density": density_loss(sigma, f.density, config),
        "colour": (own - f.colour).abs().mean(),
        "colour_grad": (pair * f.pair_valid).sum() / (3 * f.pair_valid.sum().clamp_min(1.0)),
    }


def render_losses(out: dict, image: Tensor, raw_target: dict, config: StageConfig) -> dict[str, Tensor]:
    """The render stages' image terms: ``out`` a :meth:`TriPlaneGenerator.render` result, ``image`` the world
    render at the output size, ``raw_target`` its ``image`` and coverage ``mask`` at the neural size."""
    image_error = IMAGE_LOSSES[config.image_loss]
    return {
        "image": image_error(out["image"], image),
        "image_grad": gradient_l1(out["image"], image),
        "raw": image_error(out["image_raw"], raw_target["image"]),
        "mask": (out["image_mask"] - raw_target["mask"]).abs().mean(),
    }


def render_weights(config: StageConfig) -> dict[str, float]:
    return {"image": config.weight_image, "image_grad": config.weight_image_grad,
            "raw": config.weight_raw, "mask": config.weight_mask}


def compute_losses(G: TriPlaneGenerator, batch: Batch, c_cond: Tensor, config: StageConfig) -> dict[str, Tensor]:
    ws = G.mapping(batch.z, c_cond.expand(batch.z.shape[0], -1))
    weights = {"density": config.weight_density, "colour": config.weight_colour,
               "colour_grad": config.weight_colour_grad}
    if config.render:
        out = G.render(ws, batch.c, RenderOptions(background=batch.background, return_planes=True))
        if batch.field is not None:
            losses = field_losses(G, out["planes"], ws, batch.field, config)
            weights = {k: v * config.weight_field for k, v in weights.items()}
        else:
            losses, weights = {}, {}
        losses.update(render_losses(out, batch.world["image"], batch.world_raw, config))
        weights.update(render_weights(config))
    else:
        planes = G.synthesize_planes(ws)
        losses = field_losses(G, planes, ws, batch.field, config)
    losses["total"] = sum(weights[k] * v for k, v in losses.items())
    return losses


# ------------------------------------------------------------------------------------------------ training
def trainable(G: TriPlaneGenerator, config: StageConfig) -> dict[str, Tensor]:
    if config.trainable:
        G.set_trainable(config.trainable, train_biases=True)
    else:
        G.requires_grad_(True)
    G.t_mapping.requires_grad_(False)  # inference renders without the camera offset; it stays zero
    return {name: p for name, p in G.named_parameters() if p.requires_grad}


def make_optimizer(params: dict[str, Tensor], config: StageConfig) -> torch.optim.Adam:
    """Adam over ``params``; the mapping and synthesis networks' groups step ``mapping_lr_scale`` and
    ``synthesis_lr_scale`` × the others'."""
    prefixes = {"backbone.mapping.": config.mapping_lr_scale, "backbone.synthesis.": config.synthesis_lr_scale}
    scaled = {prefix: [p for n, p in params.items() if n.startswith(prefix)] for prefix in prefixes}
    rest = [p for n, p in params.items() if not n.startswith(tuple(prefixes))]
    groups = [{"params": rest, "lr_scale": 1.0}]
    groups += [{"params": ps, "lr_scale": prefixes[prefix]} for prefix, ps in scaled.items() if ps]
    optimizer = torch.optim.Adam(groups, lr=config.lr, betas=config.betas)
    set_learning_rate(optimizer, config.lr)
    return optimizer


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def same_stage_config(saved: dict, config: StageConfig) -> bool:
    """Does a checkpoint's stage config describe ``config``? Keys added to :class:`StageConfig` after the
    checkpoint was written match when the live value is the field's default (the behaviour it had then)."""
    live, defaults = normalised(asdict(config)), normalised(asdict(StageConfig(config.name, config.render, 1, "")))
    return all(saved[k] == v if k in saved else v == defaults[k] for k, v in live.items() if k not in ("steps", "init")) \
        and saved.get("steps") == config.steps and saved.get("init") == config.init


def initial_generator(config: StageConfig, work: Path) -> TriPlaneGenerator:
    """The weights a stage starts from: the v1 pack generator, ``preset:NAME`` (fresh weights from the
    stage's seed; used by the tests), the finished checkpoint of an earlier stage, or ``STAGE@STEP``: that
    stage's checkpoint, which must be at exactly STEP (finished or not)."""
    if "@" in config.init:
        name, at = config.init.split("@", 1)
        source = latest_checkpoint(work / name)
        if source is None or source.step != int(at):
            found = "none" if source is None else f"step {source.step}"
            raise ConfigError(f"stage {config.name} starts from step {at} of stage {name!r}; {work / name} has {found}")
        return source.generator
    if config.init == "v1":
        return load_generator(V1_GENERATOR).generator
    if config.init.startswith("preset:"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return TriPlaneGenerator(get_preset(config.init.split(":", 1)[1]))
    source = latest_checkpoint(work / config.init)
    if source is None or not source.finished:
        raise ConfigError(f"stage {config.name} starts from the finished {config.init!r} stage, "
                          f"which has no finished checkpoint in {work / config.init}")
    return source.generator


def run_stage(config: StageConfig, work: Path, minutes: float, threads: int, max_steps: int | None = None) -> dict:
    """Train ``config`` from its latest checkpoint (or its initialisation) until it is done, ``minutes``
    pass or this sitting has run ``max_steps`` steps."""
    config = config.validate()
    torch.set_num_threads(threads)
    folder = work / config.name
    state = latest_checkpoint(folder)
    if state is not None:
        if not same_stage_config(state.stage_config, config):
            raise CheckpointError(f"{folder}: checkpoint was written with another stage config; "
                                  "move it away to start the stage again")
        G, start_step, seconds_before = state.generator, state.step, state.seconds
    else:
        G, start_step, seconds_before = initial_generator(config, work), 0, 0.0
    G.train()
    zero_camera_offset(G)
    params = trainable(G, config)
    optimizer = make_optimizer(params, config)
    if state is not None:
        load_training_checkpoint(state, optimizer, params)
    if start_step >= config.steps:
        print(f"stage {config.name} already finished ({start_step} steps)", flush=True)
        return {"stage": config.name, "step": start_step, "finished": True}
    c_cond = conditioning_camera(G)
    log = JsonlLog(folder / "log.jsonl")
    if state is not None and log.path.is_file():  # keep the records of the steps the checkpoint holds
        records = [json.loads(line) for line in log.path.read_text().splitlines() if line.strip()]
        log.records = [r for r in records if r["step"] < start_step]
    started = time.perf_counter()
    step = start_step

    def save(finished: bool) -> None:
        seconds = seconds_before + time.perf_counter() - started
        save_training_checkpoint(folder, G, optimizer, params, step=step, seconds=seconds,
                                 stage_config=asdict(config), finished=finished)
        log.flush()

    while step < config.steps:
        if max_steps is not None and step - start_step >= max_steps:
            break
        if time.perf_counter() - started > minutes * 60:
            print(f"stage {config.name}: {minutes} minutes up at step {step}; rerun to continue", flush=True)
            break
        t0 = time.perf_counter()
        batch = make_batch(step, G, config)
        t_data = time.perf_counter() - t0
        set_learning_rate(optimizer, config.learning_rate(step))
        optimizer.zero_grad(set_to_none=True)
        losses = compute_losses(G, batch, c_cond, config)
        losses["total"].backward()
        finite = bool(torch.isfinite(losses["total"])) and all(
            bool(torch.isfinite(p.grad).all()) for p in params.values() if p.grad is not None)
        if finite:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % config.log_every == 0 or step == config.steps - 1:
            record = {"step": step, "lr": config.learning_rate(step), "skipped": int(not finite),
                      "seconds": round(seconds_before + time.perf_counter() - started, 1),
                      "data_seconds": round(t_data, 3),
                      **{k: round(float(v.detach()), 5) for k, v in losses.items()}}
            log.write(**record)
            print(json.dumps(record), flush=True)
        step += 1
        if step % config.save_every == 0 and step < config.steps:
            save(finished=False)
    save(finished=step >= config.steps)
    return {"stage": config.name, "step": step, "finished": step >= config.steps,
            "seconds": round(seconds_before + time.perf_counter() - started, 1)}


# ------------------------------------------------------------------------------------------------ evaluation
def psnr(a: Tensor, b: Tensor, weight: Tensor | None = None) -> Tensor:
    """Per-image PSNR (dB) of images in [-1, 1]; ``weight`` (N, 1, H, W) restricts it to a region."""
    err = (a.clamp(-1, 1) - b) ** 2
    if weight is None:
        mse = err.flatten(1).mean(1)
    else:
        w = weight.expand_as(err)
        mse = (err * w).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(1e-6)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Per-image SSIM (Wang et al. 2004, Gaussian window, constants for a data range of 2) of images in [-1, 1]."""
    a, b = (a.clamp(-1, 1) + 1) / 2, (b.clamp(-1, 1) + 1) / 2
    coords = torch.arange(window, dtype=a.dtype) - window // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window)
    blur = lambda x: F.conv2d(x, kernel, groups=a.shape[1])  # noqa: E731  (valid region, as the reference does)
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def region_mask(material: Tensor, mask: Tensor, materials: tuple, dilate: int = 1) -> Tensor:
    """(N, 1, R, R) float mask of the pixels showing ``materials`` (grown by ``dilate`` pixels)."""
    region = torch.zeros_like(material, dtype=torch.bool)
    for m in materials:
        region |= material == int(m)
    region = (region & (mask > 0.5)).float()
    if dilate:
        region = F.max_pool2d(region, 2 * dilate + 1, stride=1, padding=dilate)
    return region


EVAL_VIEWS = ("front", "yaw+45", "yaw-45", "yaw+90", "yaw-90", "back")


@torch.no_grad()
def evaluate(G: TriPlaneGenerator, heads: int = 16, chunk: int = 4) -> dict:
    """Held-out metrics on ``heads`` latents no training step draws, × the six named views (pitch 0).

    Per view: PSNR and SSIM of the super-resolved image against the world render (white background), PSNR
    inside the eye and mouth regions (the world's material map, grown by one pixel), mask IoU and depth error
    at the neural resolution, and a *shuffled* PSNR (each render against another head's target), whose gap
    to the matched PSNR shows the renders follow the latent.
    """
    G.eval()
    c_cond = conditioning_camera(G)
    views = named_views(0.0, camera_config(G))
    z = torch.randn(heads, G.z_dim, generator=torch.Generator().manual_seed(EVAL_SEED))
    identity = identity_from_latent(z)
    ws = G.mapping(z, c_cond.expand(heads, -1))
    native = G.config.rendering.neural_rendering_resolution
    per_view: dict[str, dict[str, float]] = {}
    images, raws, targets = [], [], []
    for v, name in enumerate(views.names):
        c = views.c[v : v + 1].expand(heads, -1)
        outs = [G.render(ws[i : i + chunk], c[i : i + chunk], RenderOptions(background="white", deterministic_samples=True))
                for i in range(0, heads, chunk)]
        out = {k: torch.cat([o[k] for o in outs]) for k in ("image", "image_raw", "image_mask", "image_depth")}
        world = world_views(identity, c, G.img_resolution, G)
        world_raw = world_views(identity, c, native, G)
        gm, wm = out["image_mask"] > 0.5, world_raw["mask"] > 0.5
        iou = ((gm & wm).flatten(1).sum(1) / (gm | wm).flatten(1).sum(1).clamp_min(1)).mean()
        both = (gm & wm).float()
        depth_err = ((out["image_depth"] - world_raw["depth"]).abs() * both).sum() / both.sum().clamp_min(1)
        eyes = region_mask(world["material"], world["mask"], EYE_MATERIALS)
        mouth = region_mask(world["material"], world["mask"], MOUTH_MATERIALS)
        has_eyes, has_mouth = eyes.flatten(1).sum(1) > 0, mouth.flatten(1).sum(1) > 0
        record = {
            "psnr": float(psnr(out["image"], world["image"]).mean()),
            "ssim": float(ssim(out["image"], world["image"]).mean()),
            "psnr_raw": float(psnr(out["image_raw"], world_raw["image"]).mean()),
            "psnr_shuffled": float(psnr(out["image"], world["image"].roll(1, dims=0)).mean()),
            "mask_iou": float(iou),
            "depth_abs_error": float(depth_err),
        }
        if bool(has_eyes.any()):
            record["psnr_eyes"] = float(psnr(out["image"], world["image"], eyes)[has_eyes].mean())
        if bool(has_mouth.any()):
            record["psnr_mouth"] = float(psnr(out["image"], world["image"], mouth)[has_mouth].mean())
        per_view[name] = record
        images.append(out["image"])
        raws.append(F.interpolate(out["image_raw"], size=out["image"].shape[-1], mode="bilinear", align_corners=False))
        targets.append(world["image"])
    keys = sorted({k for m in per_view.values() for k in m})
    mean = {k: sum(m[k] for m in per_view.values() if k in m) / sum(k in m for m in per_view.values()) for k in keys}
    return {"heads": heads, "views": list(views.names), "pitch": 0.0, "mean": mean, "per_view": per_view,
            "_images": torch.stack(images, 1), "_raw": torch.stack(raws, 1), "_targets": torch.stack(targets, 1),
            "_names": list(views.names)}


SHEET_VIEWS = ("front", "yaw+45", "yaw-45", "yaw+90")


def contact_sheet(metrics: dict, path: Path, heads: int = 8, raw: bool = False) -> Path:
    """PNG: per held-out head a world row above a generator row, views front / ±45° / 90°.

    ``raw`` shows the neural render (upsampled) instead of the super-resolved image.
    """
    from PIL import Image

    names = metrics["_names"]
    cols = [names.index(v) for v in SHEET_VIEWS]
    images, targets = metrics["_raw" if raw else "_images"][:heads, cols], metrics["_targets"][:heads, cols]
    rows = torch.stack((targets, images), dim=1).reshape(heads * 2, len(cols), *images.shape[2:])
    res = images.shape[-1]
    grid = rows.permute(0, 3, 1, 4, 2).reshape(rows.shape[0] * res, len(cols) * res, 3)
    # two heads side by side so the sheet is not one tall strip
    half = grid.reshape(2, heads // 2 * 2 * res, len(cols) * res, 3)
    grid = torch.cat((half[0], torch.ones(half.shape[1], res // 8, 3), half[1]), dim=1)
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def load_stage_generator(stage: str, work: Path) -> TriPlaneGenerator:
    if stage == "v1":
        return load_generator(V1_GENERATOR).generator
    state = latest_checkpoint(work / stage)
    if state is None:
        raise ConfigError(f"no checkpoint of stage {stage!r} in {work / stage}")
    return state.generator


def finish_for_inference(G: TriPlaneGenerator) -> TriPlaneGenerator:
    G.eval().requires_grad_(False)
    zero_camera_offset(G)
    set_w_average(G, conditioning_camera(G))
    return G


# ------------------------------------------------------------------------------------------------ publish
def publish(work: Path, out: Path, stage: str = "joint") -> dict:
    """Write the finished stage's generator into the pack with a report of every stage."""
    from scripts.pack.train_generator import mesh_check

    state = latest_checkpoint(work / stage)
    if state is None or not state.finished:
        raise ConfigError(f"stage {stage!r} is not finished in {work / stage}")
    G = finish_for_inference(state.generator)
    t0 = time.perf_counter()
    metrics = evaluate(G)
    for key in ("_images", "_raw", "_targets", "_names"):
        metrics.pop(key)
    mesh = mesh_check(G)
    stages = {}
    for name in STAGES:
        s = latest_checkpoint(work / name)
        if s is not None:
            stages[name] = {"config": s.stage_config, "steps": s.step, "seconds": s.seconds, "finished": s.finished}
    path = out / "generator" / "generator.safetensors"
    extra = {"trained_on": f"procedural world, style {STYLE}, lights fixed to the head", "latent_map": "engine.world.latent",
             "conditioning_camera": "yaw 0, pitch 0.2, pivot (0, 0, 0)", "version": 2,
             "stages": {k: v["steps"] for k, v in stages.items()}}
    save_generator(G, path, extra=extra)
    report = {"model": "generator", "version": 2, "script": "scripts/pack/train_generator_v2.py",
              **run_facts(0, torch.get_num_threads()), "stages": stages,
              "total_wall_seconds": round(sum(v["seconds"] for v in stages.values()), 1),
              "parameters": sum(p.numel() for p in G.parameters()), "file_bytes": path.stat().st_size,
              "held_out": metrics, "mesh": mesh, "eval_seconds": round(time.perf_counter() - t0, 1)}
    write_report(out / "reports" / "generator.json", report)
    write_stage_logs(work, out / "logs" / "generator.jsonl")
    return report


def write_stage_logs(work: Path, path: Path) -> Path:
    """The pack's training log: every stage's log lines in stage order, each tagged with its stage."""
    from engine.io.atomic import write_text

    lines = []
    for name in STAGES:
        log_path = work / name / "log.jsonl"
        if log_path.is_file():
            for line in log_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    lines.append(json.dumps({"stage": name, **json.loads(line)}))
    return write_text(path, "\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train a stage (continues from its latest checkpoint)")
    run.add_argument("--stage", choices=sorted(STAGES), required=True)
    run.add_argument("--minutes", type=float, default=100.0, help="stop (with a checkpoint) after this sitting")
    run.add_argument("--max-steps", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    ev = sub.add_parser("evaluate", help="held-out metrics (and a contact sheet) of a stage's latest weights")
    ev.add_argument("--stage", choices=["v1", *sorted(STAGES)], required=True)
    ev.add_argument("--heads", type=int, default=16)
    ev.add_argument("--sheet", type=Path, default=None)
    ev.add_argument("--raw", action="store_true", help="the sheet shows the neural render, not the super-resolved one")
    ev.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    pub = sub.add_parser("publish", help="write the finished generator and its report into the pack")
    pub.add_argument("--out", type=Path, default=REPO_ROOT / "engine" / "pack" / "embedded-v1")
    pub.add_argument("--stage", choices=sorted(STAGES), default="joint", help="the finished stage to publish")
    for q in (run, ev, pub):
        q.add_argument("--work", type=Path, default=DEFAULT_WORK)
        q.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    try:
        if a.command == "run":
            print(json.dumps(run_stage(STAGES[a.stage], a.work, a.minutes, a.threads, a.max_steps)))
        elif a.command == "evaluate":
            G = finish_for_inference(load_stage_generator(a.stage, a.work))
            t0 = time.perf_counter()
            metrics = evaluate(G, heads=a.heads)
            if a.sheet is not None:
                contact_sheet(metrics, a.sheet, raw=a.raw)
            for key in ("_images", "_raw", "_targets", "_names"):
                metrics.pop(key)
            metrics["seconds"] = round(time.perf_counter() - t0, 1)
            if a.json is not None:
                write_report(a.json, metrics)
            print(json.dumps({"stage": a.stage, **metrics["mean"]}, indent=1))
        else:
            report = publish(a.work, a.out, a.stage)
            print(json.dumps(report["held_out"]["mean"], indent=1))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
