"""Head mode, part 1: fit one head's own tri-grid radiance field to an artist's mesh.

The generator route can only return heads the generator can make (inverting a scan into its latent space
loses a character head, a bust or an unusual face). Head mode instead gives the mesh its *own* tri-grid —
the generator's tri-grid tensor, decoder, ToRGB, renderer and mesh extraction, so everything downstream
(stylization, views, marching cubes) runs through the same code as a generated head — fitted to the mesh:

* **density** at points sampled uniformly in the tri-grid box and around the surface (σ 2 cm and 0.5 cm of
  a real head) is regressed onto :class:`engine.generator.field_supervision.DensityTarget` of the mesh's
  signed distance. The sign comes from libigl's fast generalised winding number, which stays right for
  scans that are not watertight (an open neck, holes at the ears);
* **colour** at surface points drawn by area, and at points moved along the surface normal into a thin shell
  (mostly inside), is the mesh's colour at the source point (vertex colours interpolated barycentrically,
  times the base-colour texture where it has one, :mod:`engine.heads.texture`; a mesh without either gets a
  neutral albedo). The renderer averages the colours of consecutive samples
  around the surface, so the shell must carry the surface colour;
* **photometric**, every few steps: the field's raw and super-resolved renders of one of several cameras
  around the head against the mesh rasterised with its bare colours. Without it the super-resolution head,
  which reads all 32 decoder features and not only the colour they decode to, paints the fitted head in
  wrong colours (cyan skin on a fitted world head) while the raw render is right.

* **hidden features**: the variance over the colour points of the decoder features ToRGB maps to nothing —
  the super-resolution reads them, and left alone they keep the generator's mean face.

Then, with the field fixed, the **super-resolution head is polished** on the photometric views
(:func:`polish_superresolution`): their raw renders are made once, so each step is only the super-resolution's
forward and backward pass. The weights from before the polish are kept too
(:attr:`MeshField.fitted_superresolution`): a stylization of the field starts from them.

The tri-grid starts from the generator's mean head and the decoder from the generator's own (a head prior)
with its density step made steeper about the iso level (:func:`sharpen_density`); Adam moves both. The mesh
must already be in the generator's frame (:func:`engine.heads.scans.normalize_scan`).
Per-step randomness comes from ``seed`` and the step number, so a fit is reproducible.
"""

from __future__ import annotations

import contextlib
import copy
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, InputError
from ..generator.field_supervision import DensityTarget, density_loss
from ..generator.triplane import TriPlaneGenerator
from ..io.configs import JsonConfig
from ..mesh import Mesh
from .texture import TextureSampler, linear_to_srgb, srgb_to_linear

NEUTRAL_ALBEDO = (0.72, 0.57, 0.48)  # a light skin tone, for meshes without colours
# Steps of a fit unless asked otherwise. On the young woman's real head (super-resolved PSNR on its own views):
# 300 steps 26.7 dB, 600 steps 26.9 dB for twice the time (the fit is over half of `engine head --mesh`).
DEFAULT_FIELD_STEPS = 300


@dataclass(frozen=True)
class MeshFieldConfig(JsonConfig):
    """How a mesh's field is fitted (world units: a head is about 0.6 tall)."""

    config_label = "mesh field fit"

    steps: int = DEFAULT_FIELD_STEPS
    seed: int = 0
    # Adam steps are ±lr per element: a generator's decoder may start with densities of ~10 inside (the v1
    # pack's semi-transparent shell) where the target wants 250, so both move fast (on a sphere, 100 steps at
    # 1e-2 / 1e-3 left the inside at σ ≈ 8; at 5e-2 / 1e-2 at 21; at 1e-1 / 3e-2 at 62). On a real head
    # (300 steps, density_gain 4) planes at 0.1 beat 0.05 by 0.4 dB and 0.2 by 0.2 dB; a decoder at 0.03
    # loses 1.1 dB (its colours drift); decaying every rate to a fifth along a cosine loses 0.7 dB (the
    # density is still far from its target at the end: it wants the rate, not the calm).
    lr_planes: float = 0.1
    lr_decoder: float = 0.01
    # The fitted decoder starts as the generator's with its raw density scaled about the iso level by this
    # (:func:`sharpen_density`): the same surface with a steeper step across it. The generator's density
    # climbs from the iso level 10 to the target's opaque 250 over a few centimetres, and Adam's ±lr steps take
    # hundreds of steps to steepen it, which left the silhouette soft (and thin ears and shoulder edges
    # missing). On a real head, 300 steps: gain 4 +0.7 dB super-resolved, +1.3 dB raw; gain 8 the same as 4.
    density_gain: float = 4.0
    density_points: int = 8192  # per step: 1/4 uniform in the box, 1/2 at σ = surface_sigma, 1/4 at tight_sigma
    colour_points: int = 4096
    surface_sigma: float = 0.02
    tight_sigma: float = 0.005
    shell_fraction: float = 0.5  # share of colour points moved along the normal …
    shell_offset: tuple[float, float] = (-0.03, 0.01)  # … by this much (negative = into the head)
    weight_density: float = 0.5
    weight_colour: float = 1.0
    # Photometric term: every ``photo_every`` steps one of ``photo_views`` views of the mesh (rasterised with
    # its bare colours, :func:`engine.heads.scan_views.render_scan_views` with lighting 0) is compared with the
    # field's render — raw and super-resolved — so the super-resolution head, which reads all 32 decoder
    # features and not only the colour they give, shows the fitted colours too. 0 turns it off.
    photo_every: int = 4
    photo_views: int = 12
    weight_photo: float = 1.0
    # (coarse, importance) ray samples of the photometric renders (None: the generator's own, 24 + 24 for the
    # pack). Half as many make the fit a third faster for about the same quality (300 steps, super-resolved
    # seen / held-out, quiet 2-core machine): old man 21.3 / 20.4 dB in 112 s against 21.7 / 20.8 in 162 s,
    # young woman 27.5 / 26.6 in 106 s against 27.2 / 26.5 (8 + 8: 27.6 / 26.7 in 102 s). The fitted field is
    # still judged, stylized and meshed with the generator's own samples.
    photo_ray_samples: tuple[int, int] | None = (12, 12)
    lr_superresolution: float = 1e-3
    # Pull the decoder features ToRGB cannot see toward one value over the surface (their variance across the
    # colour points, × this). The colour loss pins only the 3 colours ToRGB makes of the 32 features; the
    # super-resolution reads all 32, so without this the generator's mean face survives in the rest and shows
    # through the super-resolved views (a dark "mouth" on a real head with none). The features are large (their
    # hidden variance starts near 250 on a real head), hence the small weight. On the young woman, 300 steps:
    # 1e-3 +0.55 dB super-resolved (26.7 → 27.2) and the ghost mouth faint; 1e-2 +0.3 dB. 0 turns it off.
    weight_hidden_features: float = 1e-3
    density: DensityTarget = DensityTarget(one_sided=True, tolerance=15.0)
    # Side of the fitted tri-grid planes (0: the generator's own). The field starts from the generator's mean
    # head, resampled to this size; finer planes hold finer detail at the same per-step cost (the renderer
    # samples each point once whatever the plane size).
    plane_size: int = 0
    # After the fit, ``sr_polish_steps`` Adam steps (rate ``sr_polish_lr``, ``sr_polish_batch`` views a step)
    # train the super-resolution head alone, with a squared error, on the photometric views' raw renders (the
    # field frozen, so no render is differentiated). Inside the fit it gets one view every ``photo_every``
    # steps while the field moves under it, and never learns what its ×2 upsampling does at the image border
    # (it pads with zeros: a white background comes out at 0.75 in the outermost rows and columns). On the
    # young woman's real head (300-step fit; super-resolved PSNR seen / held-out): 27.5 / 26.6 dB without,
    # 100 steps at 1e-3 28.1 / 27.2, 100 at 3e-3 29.0 / 27.9, 200 at 3e-3 29.7 / 28.6 (about 20 s). Longer and
    # faster helps both scores, the held-out ones too, so it is not only memorising the 12 views (probe of
    # 2026-12-02 on cached 300-step fits, old man · young woman): 400 steps at 3e-3 26.0 / 24.9 · 31.4 / 29.9,
    # 1,200 at 3e-3 29.0 / 25.5 · 34.2 / 31.2, 400 at 1e-2 27.4 / 25.2, **400 at 2e-2 28.4 / 25.8 · 33.7 /
    # 31.2** (about 38 s), 400 at 4e-2 27.5 / 25.5; a cosine decay scored lower at each rate (400 at 2e-2: 27.3 /
    # 25.3). 0 turns it off. A fit shorter than the default ``DEFAULT_FIELD_STEPS`` gets a polish shortened in
    # proportion (:meth:`polish_steps`): a quick look stays quick.
    sr_polish_steps: int = 400
    sr_polish_lr: float = 2e-2
    sr_polish_batch: int = 4

    def polish_steps(self) -> int:
        """Steps of the super-resolution polish for this fit: ``sr_polish_steps``, scaled down in proportion
        for a fit shorter than :data:`DEFAULT_FIELD_STEPS` (at least 1 unless the polish is off)."""
        if not self.sr_polish_steps:
            return 0
        return max(1, round(self.sr_polish_steps * min(1.0, self.steps / DEFAULT_FIELD_STEPS)))

    def validate(self) -> "MeshFieldConfig":
        if self.steps < 1:
            raise ConfigError(f"mesh field fit: steps must be ≥ 1, got {self.steps}")
        if self.density_points < 4 or self.colour_points < 1:
            raise ConfigError("mesh field fit: density_points must be ≥ 4 and colour_points ≥ 1")
        if self.plane_size and (self.plane_size < 8 or self.plane_size & (self.plane_size - 1)):
            raise ConfigError(f"mesh field fit: plane_size must be 0 or a power of two ≥ 8, got {self.plane_size}")
        if self.photo_every < 0 or self.photo_views < 1:
            raise ConfigError("mesh field fit: photo_every must be ≥ 0 and photo_views ≥ 1")
        if self.photo_ray_samples is not None and (len(self.photo_ray_samples) != 2 or self.photo_ray_samples[0] < 4
                                                   or self.photo_ray_samples[1] < 0):
            raise ConfigError("mesh field fit: photo_ray_samples must be (coarse ≥ 4, importance ≥ 0) or None, "
                              f"got {self.photo_ray_samples}")
        if self.weight_hidden_features < 0:
            raise ConfigError(f"mesh field fit: weight_hidden_features must be ≥ 0, got {self.weight_hidden_features}")
        if self.density_gain <= 0:
            raise ConfigError(f"mesh field fit: density_gain must be > 0, got {self.density_gain}")
        if not 0.0 <= self.shell_fraction <= 1.0:
            raise ConfigError(f"mesh field fit: shell_fraction must be in [0, 1], got {self.shell_fraction}")
        lo, hi = self.shell_offset
        if lo > hi:
            raise ConfigError(f"mesh field fit: shell_offset must be (low, high), got {self.shell_offset}")
        if self.sr_polish_steps < 0 or self.sr_polish_batch < 1 or not self.sr_polish_lr > 0:
            raise ConfigError("mesh field fit: sr_polish_steps must be ≥ 0, sr_polish_batch ≥ 1 and "
                              f"sr_polish_lr > 0, got {self.sr_polish_steps}, {self.sr_polish_batch}, "
                              f"{self.sr_polish_lr}")
        return self


class SurfaceColours:
    """The colour a mesh shows at a point of a face: its vertex colours interpolated (the neutral albedo
    without any), and on a textured face vertex colour × image in linear light (the image alone without
    vertex colours). One rule for the fit's colour targets and for head mode's simplification, which bakes a
    texture into vertex colours (:func:`engine.heads.head_input.vertex_colours`)."""

    def __init__(self, mesh: Mesh, neutral_albedo: tuple[float, float, float] = NEUTRAL_ALBEDO):
        self.faces = np.asarray(mesh.faces, np.int64)
        if mesh.vertex_colors is not None:
            self.colours = np.asarray(mesh.vertex_colors, np.float64)[:, :3] / 255.0
        else:
            self.colours = np.broadcast_to(np.asarray(neutral_albedo, np.float64), (mesh.num_vertices, 3)).copy()
        self._texture = TextureSampler(mesh.texture, dtype=torch.float64) if mesh.texture is not None else None
        self._textured_base = self.colours if mesh.vertex_colors is not None else np.ones_like(self.colours)

    def at(self, face: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((M, 3) colours in [0, 1], (M,) whether the texture gave each) at barycentric ``weights`` (M, 3)
        of faces ``face`` (M,)."""
        colour = (weights[:, :, None] * self.colours[self.faces[face]]).sum(1)
        if self._texture is None:
            return colour, np.zeros(len(colour), bool)
        image, textured = self._texture.sample(torch.from_numpy(np.asarray(face, np.int64)), torch.from_numpy(weights))
        base = srgb_to_linear(torch.from_numpy((weights[:, :, None] * self._textured_base[self.faces[face]]).sum(1)))
        shown = linear_to_srgb(base * image).numpy()
        textured = textured.numpy()
        return np.where(textured[:, None], shown, colour), textured


class MeshQuery:
    """Signed distance, closest-point colour and area-weighted surface samples of one triangle mesh."""

    def __init__(self, mesh: Mesh, neutral_albedo: tuple[float, float, float] = NEUTRAL_ALBEDO):
        import igl  # libigl: fast generalised winding numbers + AABB closest points (see requirements.txt)

        self._igl = igl
        vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
        if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
            raise InputError(f"mesh field fit needs a triangle mesh, got vertices {vertices.shape} and faces {faces.shape}")
        if not np.isfinite(vertices).all():
            raise InputError("mesh field fit: the mesh has non-finite vertex coordinates")
        self.vertices, self.faces = vertices, faces
        self.surface = SurfaceColours(mesh, neutral_albedo)
        corners = vertices[faces]  # (F, 3, 3)
        cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        area = np.linalg.norm(cross, axis=1)
        if not (area > 0).any():
            raise InputError("mesh field fit: every triangle of the mesh has zero area")
        self.face_normals = cross / np.maximum(area, 1e-30)[:, None]
        self._cumulative_area = np.cumsum(area) / area.sum()
        # Both hierarchies are built once per mesh: igl.signed_distance rebuilds them on every call, which was
        # most of a fit step's time on a 30k-triangle scan.
        self._tree = igl.AABB()
        self._tree.init(vertices, faces)
        self._winding = igl.FastWindingNumberBVH()
        self._winding.init(vertices, faces, 2)

    @property
    def colours(self) -> np.ndarray:
        """(V, 3) vertex colours in [0, 1] (the neutral albedo for a mesh without any)."""
        return self.surface.colours

    def signed_distance(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(M,) signed distance (negative inside), (M,) closest face, (M, 3) closest point.

        The magnitude is the exact distance to the closest triangle; the sign is libigl's fast generalised
        winding number (inside where it exceeds ½), as ``igl.signed_distance(..., FAST_WINDING_NUMBER)``.
        """
        points = np.ascontiguousarray(points, np.float64)
        squared, face, closest = self._tree.squared_distance(self.vertices, self.faces, points)
        inside = self._winding.winding_number(points, 2.0) > 0.5
        return np.where(inside, -1.0, 1.0) * np.sqrt(squared), face, closest

    def colour_at(self, points: np.ndarray, face: np.ndarray) -> np.ndarray:
        """(M, 3) colours at points lying on faces ``face``: barycentric interpolation of vertex colours."""
        a, b, c = (self.vertices[self.faces[face, k]] for k in range(3))
        v0, v1, v2 = b - a, c - a, points - a
        d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
        d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
        denom = np.where(np.abs(d00 * d11 - d01 * d01) > 1e-30, d00 * d11 - d01 * d01, 1e-30)
        w1 = np.clip((d11 * d20 - d01 * d21) / denom, 0.0, 1.0)
        w2 = np.clip((d00 * d21 - d01 * d20) / denom, 0.0, 1.0)
        w0 = np.clip(1.0 - w1 - w2, 0.0, 1.0)
        weights = np.stack((w0, w1, w2), 1)
        weights /= np.maximum(weights.sum(1, keepdims=True), 1e-12)
        return self.surface.at(face, weights)[0]

    def sample_surface(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n points drawn uniformly by area: positions, unit face normals, colours."""
        face = np.minimum(np.searchsorted(self._cumulative_area, rng.random(n)), len(self.faces) - 1)
        r1, r2 = np.sqrt(rng.random(n)), rng.random(n)
        a, b, c = (self.vertices[self.faces[face, k]] for k in range(3))
        points = (1 - r1)[:, None] * a + (r1 * (1 - r2))[:, None] * b + (r1 * r2)[:, None] * c
        return points, self.face_normals[face], self.colour_at(points, face)


@dataclass
class FieldBatch:
    points: Tensor  # (1, P, 3) density probes
    density: Tensor  # (1, P) raw-density targets
    colour_points: Tensor  # (1, K, 3)
    colour: Tensor  # (1, K, 3) in [0, 1]


def field_batch(query: MeshQuery, config: MeshFieldConfig, step: int, half_box: float) -> FieldBatch:
    """One step's supervision, from ``config.seed`` and ``step`` alone."""
    rng = np.random.default_rng([config.seed, step])
    quarter = config.density_points // 4
    uniform = rng.uniform(-half_box, half_box, (quarter, 3))
    near, _, _ = query.sample_surface(config.density_points - quarter, rng)
    sigma = np.full((len(near), 1), config.surface_sigma)
    sigma[len(near) * 2 // 3:] = config.tight_sigma
    near = near + rng.standard_normal(near.shape) * sigma
    points = np.concatenate((uniform, near))
    sdf, _, _ = query.signed_distance(points)
    surface, normals, colours = query.sample_surface(config.colour_points, rng)
    lo, hi = config.shell_offset
    shift = rng.uniform(lo, hi, (len(surface), 1)) * (rng.random((len(surface), 1)) < config.shell_fraction)
    as_tensor = lambda x: torch.as_tensor(x, dtype=torch.float32)[None]  # noqa: E731
    return FieldBatch(as_tensor(points), config.density(as_tensor(sdf)), as_tensor(surface + shift * normals),
                      as_tensor(colours))


T = TypeVar("T")


def prefetched(make: Callable[[int], T], count: int) -> Iterator[T]:
    """``make(0)``, ``make(1)``, … ``make(count − 1)``, each built in a worker thread while the caller works on
    the one before. The fit's batches are libigl queries and numpy, which let go of the GIL, so they overlap the
    torch step instead of waiting their turn (about 0.08 s of a 0.16 s field step). Items come in order, a
    worker's exception is raised here, and closing the iterator early waits for the one batch in flight."""
    if count <= 0:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="field-batch") as pool:
        pending = pool.submit(make, 0)
        for index in range(count):
            item = pending.result()
            if index + 1 < count:
                pending = pool.submit(make, index + 1)
            yield item


@dataclass
class MeshField:
    """A fitted head: a single-head field (:meth:`TriPlaneGenerator.make_single_head`: a copy of the generator
    with the fitted decoder, rendering this tri-grid for every latent; save it with
    :func:`engine.generator.loading.save_generator`), its tri-grid and the W+ latent its ToRGB /
    super-resolution layers are modulated by (the generator's mean head)."""

    generator: TriPlaneGenerator
    planes: Tensor  # (1, 3, 32·D, S, S)
    ws: Tensor  # (1, num_ws, w_dim)
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    # :func:`polish_superresolution`'s record (steps, first and last squared error, seconds); empty if it did not run
    sr_polish: dict = field(default_factory=dict)
    # The super-resolution's weights as the fit left them, before the polish (empty if it did not run). The
    # polished head is what the field's views are rendered with; a stylization starts from these instead,
    # because the polish — training it to reproduce this one head's views — holds the style back on real heads.
    fitted_superresolution: dict[str, Tensor] = field(default_factory=dict)


def hidden_feature_spread(G: TriPlaneGenerator, features: Tensor, ws: Tensor) -> Tensor:
    """Summed variance, over the points, of the part of their decoder ``features`` (N, M, C) from
    :meth:`TriPlaneGenerator.point_features` that ToRGB maps to zero (their projection onto the null space of
    ToRGB's 3 × C matrix as modulated by ``ws``'s last layer)."""
    features = features.reshape(-1, features.shape[-1])
    if G.torgb is None:
        hidden = features[:, 3:]
    else:
        matrix = (G.torgb.weight[:, :, 0, 0] * G.torgb.styles(ws[:1, -1])).detach()  # (3, C)
        projector = torch.eye(matrix.shape[1]) - torch.linalg.pinv(matrix) @ matrix
        hidden = features @ projector.T
    return hidden.var(0).sum()


def photo_targets(mesh: Mesh, G: TriPlaneGenerator, count: int) -> dict[str, Tensor]:
    """``count`` cameras around the head (yaw over the full circle, pitch alternating ±0.25 rad) and the
    mesh's bare-colour views from them at the output and neural resolutions (white background)."""
    from ..generator.camera import cameras_at
    from ..generator.inference import camera_config_for
    from .scan_views import ScanViewConfig, render_scan_views

    yaw = torch.arange(count, dtype=torch.float32) * (2 * torch.pi / count)
    pitch = torch.where(torch.arange(count) % 2 == 0, 0.25, -0.25).float()
    c = cameras_at(yaw, pitch, camera_config_for(G, (0.0, 0.0, 0.0))).c
    image = render_scan_views(mesh, c, ScanViewConfig(resolution=G.img_resolution, lighting=0.0))["image"]
    native = G.config.rendering.neural_rendering_resolution
    return {"c": c, "image": image, "image_raw": F.adaptive_avg_pool2d(image, native)}


def photo_loss(G: TriPlaneGenerator, planes: Tensor, ws: Tensor, views: dict[str, Tensor], index: int,
               rng: torch.Generator | None = None, ray_samples: tuple[int, int] | None = None) -> Tensor:
    """L1 of the field's super-resolved and raw renders of view ``index`` against the mesh's. ``rng`` draws
    the renderer's ray-sample jitter (None: torch's global stream); ``ray_samples`` (coarse, importance)
    overrides the generator's samples per ray."""
    from ..generator.triplane import RenderOptions

    c = views["c"][index : index + 1]
    out = G.render(ws, c, RenderOptions(background="white", generator=rng, ray_samples=ray_samples), planes=planes)
    return F.l1_loss(out["image"], views["image"][index : index + 1]) + \
        F.l1_loss(out["image_raw"], views["image_raw"][index : index + 1])


def resample_planes(planes: Tensor, size: int) -> Tensor:
    """(N, 3, C·D, S, S) tri-grid planes resampled to ``size``² (0 or S: unchanged), bilinearly and with the
    renderer's ``align_corners=False`` convention, so the field they describe stays the same up to the
    interpolation: every depth slice of every feature is a separate image."""
    n, p, c, s, _ = planes.shape
    if not size or size == s:
        return planes
    flat = F.interpolate(planes.reshape(n, p * c, s, s), size=(size, size), mode="bilinear", align_corners=False)
    return flat.reshape(n, p, c, size, size)


def mean_latent(G: TriPlaneGenerator) -> Tensor:
    """(1, num_ws, w_dim): the generator's average w (its tracked ``w_avg``) broadcast to every layer."""
    mapping = G.backbone.mapping
    return mapping.w_avg.detach().reshape(1, 1, -1).expand(1, mapping.num_ws, -1).clone()


def sharpen_density(G: TriPlaneGenerator, gain: float, iso_level: float) -> None:
    """Scale the decoder's raw density about the iso level by ``gain`` (its last layer's density row): the
    extracted surface stays where it is and the step across it gets ``gain`` times steeper."""
    if gain == 1.0:
        return
    last = G.decoder.net[2]
    with torch.no_grad():
        last.weight[0] *= gain
        last.bias[0] = gain * last.bias[0] + iso_level * (1.0 - gain) / last.bias_gain


def fit_mesh_field(mesh: Mesh, G: TriPlaneGenerator, config: MeshFieldConfig = MeshFieldConfig(),
                   on_step: Callable[[dict], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> MeshField | None:
    """Fit a tri-grid + decoder to ``mesh`` (already in the generator's frame), then polish its
    super-resolution head; ``G`` is not modified.

    ``on_step`` receives each step's losses — the fit's steps 1 … ``steps``, then the polish's as steps
    ``steps`` + 1 … ``steps`` + :meth:`MeshFieldConfig.polish_steps` with an ``"sr_polish"`` loss
    (``history`` keeps the fit's only); ``should_stop`` is asked before every step (None is returned when it
    says stop: a fit is cheap enough to redo, so a cancelled one is not kept)."""
    config = config.validate()
    query = MeshQuery(mesh)
    head = copy.deepcopy(G).eval().requires_grad_(False)
    ws = mean_latent(head)
    with torch.no_grad():
        planes = resample_planes(head.synthesize_planes(ws), config.plane_size).clone()
    planes.requires_grad_(True)
    sharpen_density(head, config.density_gain, config.density.iso_level)
    head.decoder.requires_grad_(True)
    groups = [{"params": [planes], "lr": config.lr_planes},
              {"params": list(head.decoder.parameters()), "lr": config.lr_decoder}]
    views = None
    if config.photo_every or config.polish_steps():
        views = photo_targets(mesh, head, config.photo_views)
    if config.photo_every:
        head.superresolution.requires_grad_(True)
        groups.append({"params": list(head.superresolution.parameters()), "lr": config.lr_superresolution})
    optimizer = torch.optim.Adam(groups)
    half_box = head.config.rendering.box_warp / 2
    started, history = time.perf_counter(), []
    batches = contextlib.closing(prefetched(lambda s: field_batch(query, config, s, half_box), config.steps))
    with batches as stream:
        for step, batch in enumerate(stream):
            if should_stop is not None and should_stop():
                return None
            _fit_step(head, planes, ws, views if config.photo_every else None, optimizer, config, step, batch,
                      history, on_step)
    head.requires_grad_(False)
    head.make_single_head(planes.detach(), ws)
    polish, fitted_sr = {}, {}
    if config.polish_steps():
        fitted_sr = {name: value.detach().clone() for name, value in head.superresolution.state_dict().items()}
        polish = polish_superresolution(head, ws, views, config, on_step, should_stop)
        if polish is None:
            return None
    return MeshField(head, head.head_planes.detach(), ws, history, time.perf_counter() - started, polish, fitted_sr)


def polish_superresolution(head: TriPlaneGenerator, ws: Tensor, views: dict[str, Tensor], config: MeshFieldConfig,
                           on_step: Callable[[dict], None] | None = None,
                           should_stop: Callable[[], bool] | None = None) -> dict | None:
    """Train only ``head``'s super-resolution on the views of :func:`photo_targets` (white background): the
    fitted single-head field is rendered once at the neural resolution (the generator's own ray samples, no
    jitter), then each of :meth:`MeshFieldConfig.polish_steps` Adam steps takes ``sr_polish_batch`` of those
    renders and lowers the squared error of their super-resolved images against the mesh's views. Squared, not
    L1: the score it serves is a PSNR, and L1 left the grey border in (young woman, 100 steps at 1e-3: +0.2 dB
    against +0.6 dB). Returns the record, or None when ``should_stop`` said stop."""
    from ..generator.triplane import RenderOptions

    started = time.perf_counter()
    count = views["c"].shape[0]
    with torch.no_grad():
        raw = head.render(ws.expand(count, -1, -1), views["c"],
                          RenderOptions(background="white", deterministic_samples=True, run_superresolution=False))
    sr = head.superresolution
    sr.requires_grad_(True)
    optimizer = torch.optim.Adam(sr.parameters(), lr=config.sr_polish_lr)
    rng = torch.Generator().manual_seed(config.seed * 1_000_003 + 999_983)
    batch, errors = min(config.sr_polish_batch, count), []
    try:
        steps = config.polish_steps()
        for step in range(steps):
            if should_stop is not None and should_stop():
                return None
            pick = torch.randperm(count, generator=rng)[:batch]
            image = sr(raw["image_raw"][pick], raw["features"][pick], ws.expand(batch, -1, -1),
                       noise_mode=head.config.rendering.superresolution_noise_mode)
            loss = F.mse_loss(image, views["image"][pick])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            errors.append(float(loss.detach()))
            if on_step is not None:
                on_step({"step": config.steps + step + 1, "sr_polish": errors[-1]})
    finally:
        sr.requires_grad_(False)
    return {"steps": steps, "first_mse": errors[0], "last_mse": errors[-1],
            "seconds": round(time.perf_counter() - started, 1)}


def _fit_step(head: TriPlaneGenerator, planes: Tensor, ws: Tensor, views: dict[str, Tensor] | None,
              optimizer: torch.optim.Optimizer, config: MeshFieldConfig, step: int, batch: FieldBatch,
              history: list[dict], on_step: Callable[[dict], None] | None) -> None:
    """One Adam step of :func:`fit_mesh_field` on ``batch`` (its losses appended to ``history``)."""
    sigma = head.query_points(planes, batch.points)["sigma"][..., 0]
    features = head.point_features(planes, batch.colour_points)
    colour = head.feature_colors(features, ws, clamp=False)
    losses = {"density": density_loss(sigma, batch.density, config.density),
              "colour": F.l1_loss(colour, batch.colour)}
    total = config.weight_density * losses["density"] + config.weight_colour * losses["colour"]
    if config.weight_hidden_features:
        losses["hidden"] = hidden_feature_spread(head, features, ws)
        total = total + config.weight_hidden_features * losses["hidden"]
    if views is not None and step % config.photo_every == 0:
        jitter = torch.Generator().manual_seed(config.seed * 1_000_003 + step)  # reproducible, whatever ran before
        losses["photo"] = photo_loss(head, planes, ws, views, (step // config.photo_every) % views["c"].shape[0],
                                     jitter, config.photo_ray_samples)
        total = total + config.weight_photo * losses["photo"]
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    record = {"step": step + 1, **{k: float(v.detach()) for k, v in losses.items()}}
    history.append(record)
    if on_step is not None:
        on_step(record)
