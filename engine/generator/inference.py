"""Apply a (stylized) generator to seeds or W+ latents: named views, a before/after sheet, a turntable GIF.

No diffusion model is involved: a stylized generator is an ordinary generator whose synthesis and
super-resolution weights were fine-tuned, so inference is one render per view (as the official
``infer_LD.py``). W+ latents come as ``.npz`` files with key ``w`` of shape (1, num_ws, w_dim) or
(num_ws, w_dim), the format of PanoHead's projector and of the official examples; seeds are mapped with the
same truncation (ψ 0.75 up to layer 14) and conditioning camera (yaw 0, pitch 0.2) the stylization used.

Cameras look at the origin, as the official stylization code's ``infer_LD.py`` and PanoHead's sampling
scripts do ((0, 0, 0.2) is only PanoHead's *visualiser's* average pivot, ``ViewSettings.camera_pivot`` can
ask for it), at a pitch of 10° as ``infer_LD.py`` renders its comparison views. The synthesis network's noise
is its constant noise by default; ``noise_mode="random"`` (the official inference's) draws one noise sample
per head from ``noise_seed``, shared by all of its views, so they stay comparable and a re-run gives the same
pictures. Every file is written atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, InputError
from ..io.atomic import write_json, write_with
from ..io.events import emit
from ..io.images import image_grid, save_png, to_uint8
from ..io.untrusted import load_npz, npz_headers
from ..mesh import Mesh, MeshConfig, extract_mesh
from .camera import CameraConfig, cameras_at, named_views, orbit_cameras
from .noise import NOISE_MODES, seeded_noise
from .triplane import RenderOptions, TriPlaneGenerator

BACKGROUNDS = ("none", "white", "model")


@dataclass(frozen=True)
class ViewSettings:
    """How heads are sampled and rendered for inspection."""

    truncation_psi: float = 0.75
    truncation_cutoff: int | None = 14  # clamped to the generator's num_ws
    conditioning_yaw: float = 0.0
    conditioning_pitch: float = 0.2
    camera_pivot: tuple[float, float, float] = (0.0, 0.0, 0.0)
    view_pitch: float = math.radians(10.0)
    background: str = "white"
    turntable_frames: int = 36
    frame_ms: int = 80
    chunk: int = 6  # views rendered per batch
    noise_mode: str = "const"
    noise_seed: int = 0  # random noise: the draw every view of a head shares

    def validate(self) -> "ViewSettings":
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.noise_mode not in NOISE_MODES:
            raise ConfigError(f"noise mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")
        if self.turntable_frames < 0:
            raise ConfigError(f"turntable frames must be ≥ 0, got {self.turntable_frames}")
        if self.frame_ms < 1:
            raise ConfigError(f"frame duration must be ≥ 1 ms, got {self.frame_ms}")
        if self.chunk < 1:
            raise ConfigError(f"chunk must be ≥ 1, got {self.chunk}")
        if not 0.0 <= self.truncation_psi <= 1.0:
            raise ConfigError(f"truncation_psi must be in [0, 1], got {self.truncation_psi}")
        return self


@dataclass(frozen=True)
class Subject:
    """One head to render: a name (used as its folder) and its W+ latent (1, num_ws, w_dim)."""

    name: str
    ws: torch.Tensor


@dataclass
class SubjectResult:
    name: str
    folder: Path
    views: dict[str, Path] = field(default_factory=dict)
    sheet: Path | None = None
    compare: Path | None = None
    turntable: Path | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "folder": str(self.folder),
            "views": {k: str(v) for k, v in self.views.items()},
            "sheet": str(self.sheet) if self.sheet else None,
            "compare": str(self.compare) if self.compare else None,
            "turntable": str(self.turntable) if self.turntable else None,
        }


# ------------------------------------------------------------------------------------------------
# Cameras and latents
# ------------------------------------------------------------------------------------------------
def camera_config_for(G: TriPlaneGenerator, pivot: Sequence[float]) -> CameraConfig:
    """The generator's orbit radius and field of view, looking at ``pivot``."""
    return replace(CameraConfig.from_rendering(G.config.rendering), pivot=tuple(float(v) for v in pivot))


def clamp_cutoff(G: TriPlaneGenerator, cutoff: int | None) -> int | None:
    """Truncation cutoff limited to the generator's number of W+ layers (14 for PanoHead, fewer for tests)."""
    return None if cutoff is None else min(int(cutoff), G.num_ws)


def map_latents(
    G: TriPlaneGenerator,
    z: torch.Tensor,
    psi: float,
    cutoff: int | None,
    yaw: float,
    pitch: float,
    pivot: Sequence[float],
) -> torch.Tensor:
    """z (N, z_dim) → ws (N, num_ws, w_dim) with truncation, conditioned on the camera at (yaw, pitch)."""
    device = next(G.parameters()).device
    c = cameras_at(yaw, pitch, camera_config_for(G, pivot)).c.to(device)
    with torch.no_grad():
        return G.mapping(z.to(device), c.expand(z.shape[0], -1), truncation_psi=psi, truncation_cutoff=clamp_cutoff(G, cutoff))


def seed_latent(G: TriPlaneGenerator, seed: int, settings: ViewSettings) -> torch.Tensor:
    """The W+ latent of ``seed``: z ~ N(0, I) from a CPU generator seeded with ``seed`` (device independent)."""
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(int(seed)))
    return map_latents(
        G,
        z,
        settings.truncation_psi,
        settings.truncation_cutoff,
        settings.conditioning_yaw,
        settings.conditioning_pitch,
        settings.camera_pivot,
    )


LATENT_MAX_BYTES = 16 << 20  # a W+ latent is (1, num_ws, w_dim): PanoHead's is 28 kB


def read_w_array(path: str | Path) -> np.ndarray:
    """The ``w`` array of a W+ latent ``.npz``, as untrusted input: a regular file, no pickles, at most
    :data:`LATENT_MAX_BYTES` declared, finite floating-point numbers, 2 or 3 dimensions. The shape is checked
    against a generator by :func:`load_w_plus`."""
    path = Path(path)
    headers = npz_headers(path, "W+ latent file", max_bytes=LATENT_MAX_BYTES)
    if "w" not in headers:
        raise InputError(f"{path}: no array named 'w' (found {sorted(headers)}); expected a W+ latent .npz")
    w = load_npz(path, {"w"}, "W+ latent file", max_bytes=LATENT_MAX_BYTES)["w"]
    if w.ndim not in (2, 3):
        raise InputError(f"{path}: 'w' has shape {tuple(w.shape)}; expected (1, num_ws, w_dim) or (num_ws, w_dim)")
    if not np.issubdtype(w.dtype, np.floating) or not np.isfinite(w).all():
        raise InputError(f"{path}: 'w' must hold finite floating-point numbers (dtype {w.dtype})")
    return w


def load_w_plus(path: str | Path, G: TriPlaneGenerator) -> torch.Tensor:
    """Read a W+ latent ``.npz`` (key ``w``) and check it fits ``G``; returns (1, num_ws, w_dim) float32."""
    path = Path(path)
    w = read_w_array(path)
    expected = (G.num_ws, G.w_dim)
    found = tuple(w.shape)
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3 or w.shape[0] != 1 or tuple(w.shape[1:]) != expected:
        raise InputError(
            f"{path}: 'w' has shape {found} but this generator needs "
            f"(1, {expected[0]}, {expected[1]}) or {expected} (num_ws, w_dim)"
        )
    return torch.from_numpy(w.astype(np.float32))


def latent_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders into their ``*.npz`` files (sorted); plain files are kept in order."""
    files: list[Path] = []
    for entry in paths:
        p = Path(entry)
        if p.is_dir():
            found = sorted(p.glob("*.npz"))
            if not found:
                raise InputError(f"{p}: folder holds no .npz W+ latents")
            files.extend(found)
        else:
            files.append(p)
    return files


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def render_images(
    G: TriPlaneGenerator,
    ws: torch.Tensor,
    c: torch.Tensor,
    background: str = "white",
    chunk: int = 6,
    noise_mode: str = "const",
    noise_seed: int = 0,
) -> torch.Tensor:
    """Render one latent ws (1, num_ws, w_dim) from V cameras c (V, 25) → (V, 3, R, R) in [-1, 1] (CPU).

    The tri-grid is synthesised once (random noise: drawn from ``noise_seed``) and shared by all views; views
    go through the renderer ``chunk`` at a time. Ray samples are deterministic so that the same call always
    gives the same pixels.
    """
    device = next(G.parameters()).device
    ws = ws.to(device)
    with seeded_noise(noise_seed if noise_mode == "random" else None, device):
        planes = G.synthesize_planes(ws, noise_mode=noise_mode)
    options = RenderOptions(background=background, deterministic_samples=True)
    border = G.superresolution.padded_border() if background == "white" else 0
    out = []
    for start in range(0, c.shape[0], chunk):
        cams = c[start : start + chunk].to(device)
        n = cams.shape[0]
        result = G.render(ws.expand(n, -1, -1), cams, options, planes=planes.expand(n, *planes.shape[1:]))
        image = whiten_padded_border(result["image"].float(), result["image_mask"].float(), border)
        out.append(image.clamp(-1, 1).cpu())
    return torch.cat(out)


def whiten_padded_border(image: torch.Tensor, opacity: torch.Tensor, border: int) -> torch.Tensor:
    """``image`` (N, 3, R, R) in [−1, 1] with its outer ``border`` rows and columns composited over white by the
    raw render's ``opacity`` (N, 1, r, r), resized to R; the inside is returned unchanged.

    Those rows are the ones the super-resolution's zero-padded upsampling darkens
    (:meth:`SuperResolution.padded_border`): a white background comes out grey there, a frame around every
    view. Where the field is empty the background is known, so it is put back; where the head reaches the
    edge (opacity 1) the pixels are left as rendered. Only views shown or scored get this, never a training
    render or a fit's score.
    """
    if border <= 0:
        return image
    height, width = image.shape[-2:]
    alpha = torch.nn.functional.interpolate(opacity, size=(height, width), mode="bilinear", align_corners=False)
    alpha = alpha.clamp(0, 1).to(image.dtype)
    rows, cols = (torch.arange(n, device=image.device) for n in (height, width))
    inside_rows = (rows >= border) & (rows < height - border)
    inside_cols = (cols >= border) & (cols < width - border)
    frame = ~(inside_rows[:, None] & inside_cols[None, :])
    return torch.where(frame, image * alpha + (1 - alpha), image)


def _save_gif(frames: list[np.ndarray], path: Path, frame_ms: int) -> Path:
    images = [Image.fromarray(f) for f in frames]

    def writer(tmp: Path) -> None:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)

    return write_with(path, writer)


def render_subject(
    G: TriPlaneGenerator,
    subject: Subject,
    out_dir: Path,
    settings: ViewSettings,
    base: TriPlaneGenerator | None = None,
) -> SubjectResult:
    """Write ``<out>/<name>/``: one PNG per named view, ``views.png``, ``compare.png`` (with ``base``:
    base row above stylized row) and ``turntable.gif``."""
    folder = out_dir / subject.name
    result = SubjectResult(subject.name, folder)
    cam_config = camera_config_for(G, settings.camera_pivot)
    views = named_views(settings.view_pitch, cam_config)
    noise = {"noise_mode": settings.noise_mode, "noise_seed": settings.noise_seed}
    images = [to_uint8(img) for img in render_images(G, subject.ws, views.c, settings.background, settings.chunk, **noise)]
    for name, image in zip(views.names, images):
        result.views[name] = save_png(image, folder / f"{name}.png")
    result.sheet = save_png(image_grid(images, len(images)), folder / "views.png")
    if base is not None:
        before = [to_uint8(img) for img in render_images(base, subject.ws, views.c, settings.background, settings.chunk, **noise)]
        result.compare = save_png(image_grid(before + images, len(images)), folder / "compare.png")
    if settings.turntable_frames > 0:
        orbit = orbit_cameras(settings.turntable_frames, settings.view_pitch, cam_config)
        frames = [to_uint8(img) for img in render_images(G, subject.ws, orbit.c, settings.background, settings.chunk, **noise)]
        result.turntable = _save_gif(frames, folder / "turntable.gif", settings.frame_ms)
    return result


def field_functions(
    G: TriPlaneGenerator, ws: torch.Tensor, planes: torch.Tensor | None = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(density_fn, color_fn) of one head: raw density and raw RGB (the ToRGB layer applied per point, so
    colours match the low-resolution render) at (M, 3) world points. ``planes``: a tri-grid to use instead of
    the one ``ws`` synthesizes (a head-mode field; ``ws`` then only modulates the ToRGB layer)."""
    device = next(G.parameters()).device
    ws = ws.to(device)
    with torch.no_grad():
        planes = G.synthesize_planes(ws) if planes is None else planes.to(device)

    def density_fn(points: torch.Tensor) -> torch.Tensor:
        return G.query_points(planes, points[None].to(device))["sigma"][0, :, 0]

    def color_fn(points: torch.Tensor) -> torch.Tensor:
        return G.point_colors(planes, ws, points[None].to(device))[0]

    return density_fn, color_fn


@torch.no_grad()
def head_mesh(
    G: TriPlaneGenerator,
    ws: torch.Tensor,
    config: MeshConfig,
    progress: Callable[[float], None] | None = None,
    timings: dict | None = None,
    planes: torch.Tensor | None = None,
) -> Mesh:
    """Marching-cubes mesh of the head's density for one W+ latent, with vertex colours from the raw RGB
    head (see :func:`field_functions`; ``planes`` likewise)."""
    density_fn, color_fn = field_functions(G, ws, planes)
    device = next(G.parameters()).device
    return extract_mesh(density_fn, color_fn, config, device=device, progress=progress, timings=timings)


def check_compatible(G: TriPlaneGenerator, base: TriPlaneGenerator, base_source: str) -> None:
    """A before/after sheet needs the same latent space: same W+ layout."""
    if (base.num_ws, base.w_dim) != (G.num_ws, G.w_dim):
        raise InputError(
            f"{base_source}: base generator has W+ of ({base.num_ws}, {base.w_dim}) but the stylized one has "
            f"({G.num_ws}, {G.w_dim}); they cannot render the same latent"
        )


def render_subjects(
    G: TriPlaneGenerator,
    subjects: Sequence[Subject],
    out_dir: str | Path,
    settings: ViewSettings = ViewSettings(),
    base: TriPlaneGenerator | None = None,
    on_event: Callable[..., None] = emit,
) -> list[SubjectResult]:
    """Render every subject (see :func:`render_subject`), emit progress, write ``<out>/render.json``."""
    settings.validate()
    out_dir = Path(out_dir)
    names = [s.name for s in subjects]
    if len(set(names)) != len(names):
        raise InputError(f"subject names must be unique (they name the output folders), got {names}")
    results = []
    for index, subject in enumerate(subjects, start=1):
        results.append(render_subject(G, subject, out_dir, settings, base))
        on_event("progress", step=index, total=len(subjects), subject=subject.name, folder=str(out_dir / subject.name))
    write_json(out_dir / "render.json", {"subjects": [r.to_dict() for r in results]})
    return results
