"""The main job on the embedded pack: stylize, show before/after from every side, mesh, measure, report.

``python -m engine demo`` is the first thing a new user runs (the README's main command). It needs no
downloads and no GPU: the embedded pack's generator is stylized toward one of the world styles with
likelihood distillation on the CPU, then for a handful of heads (seeds) it writes

* ``views/seed_<s>_{before,after}_<view>.png`` and a per-head ``compare`` sheet (before row over after row),
* ``turntable.gif`` (the first head, before | after side by side, a full orbit),
* ``meshes/seed_<s>_{before,after}.ply`` + ``.obj`` for the first head (vertex colours),
* ``metrics.json`` (identity: re-identification top-1 of each stylized head among the demo's originals
  against chance 1/N, per view and in reverse, the margin of its own-original cosine over the other
  originals, the raw before→after cosine and the cosine two different originals get; identity diversity;
  leave-one-out multi-view consistency; style scores; see :mod:`engine.evaluate.metrics`) and
  ``report.html`` that shows all of it, identity next to its control.

Everything reuses :mod:`engine.app.pipeline` (the same code as Blender's Stylize Head), so the stylized generator
is cached in ``<out>/cache`` and a second run with the same settings only re-renders.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..generator.camera import orbit_cameras
from ..generator.inference import camera_config_for, render_images, seed_latent
from ..generator.loading import load_generator, resolve_device
from ..io.atomic import write_json, write_with
from ..io.configs import JsonConfig
from ..io.events import emit
from ..io.images import image_grid, save_png, to_uint8
from ..mesh import write_mesh
from ..pack import load_manifest
from ..stylize.cancel import CancelToken
from ..stylize.presets import STYLE_PRESETS
from .pipeline import HeadJob, embedded_backends, extract_head, render_views, resolve_models, resolve_prompt, stylized_generator, view_settings
from .report_html import write_demo_report

EventSink = Callable[..., None]


@dataclass
class DemoConfig(JsonConfig):
    """What the demo runs. ``steps``/``lr`` default to the pipeline's embedded-pack values."""

    config_label: ClassVar[str] = "demo"

    out_dir: str = "out/demo"
    style: str = "zombie"
    method: str = "ld"
    steps: int | None = None
    lr: float | None = None
    train_seed: int = 0
    subjects: int = 4
    first_seed: int = 0
    mesh_resolution: int = 128
    iso_level: float = 10.0
    turntable_frames: int = 24
    evaluate: bool = True
    pack: str | None = None
    device: str = "auto"

    def validate(self) -> "DemoConfig":
        embedded = [name for name, p in STYLE_PRESETS.items() if p.embedded_style]
        if self.style not in embedded:
            raise ConfigError(f"demo style must be one the embedded pack was trained on: {', '.join(embedded)}; got {self.style!r}")
        if not 1 <= self.subjects <= 64:
            raise ConfigError(f"subjects must be in 1..64, got {self.subjects}")
        if self.turntable_frames < 0:
            raise ConfigError(f"turntable frames must be ≥ 0, got {self.turntable_frames}")
        return self

    def head_job(self) -> HeadJob:
        return HeadJob(
            out_dir=self.out_dir,
            style_preset=self.style,
            method=self.method,
            steps=self.steps,
            lr=self.lr,
            train_seed=self.train_seed,
            mesh_resolution=self.mesh_resolution,
            iso_level=self.iso_level,
            pack=self.pack,
            device=self.device,
        ).validate()


@dataclass
class DemoResult:
    out_dir: Path
    cancelled: bool
    metrics: dict[str, Any]


def _save_turntable(before: torch.Tensor, after: torch.Tensor, path: Path, frame_ms: int = 80) -> Path:
    frames = [Image.fromarray(image_grid([to_uint8(b), to_uint8(a)], 2)) for b, a in zip(before, after)]

    def write(tmp: Path) -> None:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)

    return write_with(path, write)


def run_demo(config: DemoConfig, cancel: CancelToken | None = None, on_event: EventSink = emit) -> DemoResult:
    config.validate()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(config.out_dir)
    job = config.head_job()

    on_event("stage", stage="load", message="checking the embedded model pack")
    sources = resolve_models(job)
    manifest = load_manifest(job.pack)
    prompt, _ = resolve_prompt(job, sources)

    t = time.perf_counter()
    stylized = stylized_generator(job, sources, prompt, cancel, on_event)
    timings["stylize"] = time.perf_counter() - t
    if stylized.cancelled:
        on_event("cancelled", stage="stylize", run=str(stylized.run_dir))
        return DemoResult(out, True, {})

    on_event("stage", stage="render", message=f"rendering {config.subjects} heads before and after")
    t = time.perf_counter()
    device = resolve_device(config.device)
    base = load_generator(sources.generator, device=device).generator
    styled = load_generator(stylized.path, device=device).generator
    settings = view_settings(stylized.config)
    seeds = list(range(config.first_seed, config.first_seed + config.subjects))
    latents = [seed_latent(base, s, settings) for s in seeds]
    before, after, heads = [], [], []
    for seed, ws in zip(seeds, latents):
        names, b = render_views(base, ws, settings)
        _, a = render_views(styled, ws, settings)
        before.append(b)
        after.append(a)
        files = {}
        for side, images in (("before", b), ("after", a)):
            for name, image in zip(names, images):
                files[f"{side}_{name}"] = save_png(to_uint8(image), out / "views" / f"seed_{seed}_{side}_{name}.png")
        sheet = save_png(image_grid([to_uint8(i) for i in torch.cat([b, a])], len(names)), out / "views" / f"seed_{seed}_compare.png")
        heads.append({"seed": seed, "compare": sheet, "views": files})
        on_event("progress", stage="render", step=len(heads), total=len(seeds), fraction=len(heads) / len(seeds))
    timings["render"] = time.perf_counter() - t

    turntable = None
    if config.turntable_frames:
        t = time.perf_counter()
        orbit = orbit_cameras(config.turntable_frames, settings.view_pitch, camera_config_for(styled, settings.camera_pivot))
        turn_before = render_images(base, latents[0], orbit.c, settings.background, settings.chunk)
        turn_after = render_images(styled, latents[0], orbit.c, settings.background, settings.chunk)
        turntable = _save_turntable(turn_before, turn_after, out / "turntable.gif")
        timings["turntable"] = time.perf_counter() - t

    on_event("stage", stage="mesh", message=f"marching cubes at {config.mesh_resolution}³")
    t = time.perf_counter()
    meshes = {}
    for side, G in (("before", base), ("after", styled)):
        mesh = extract_head(G, latents[0], config.mesh_resolution, job.iso_level)
        stem = out / "meshes" / f"seed_{seeds[0]}_{side}"
        meshes[side] = {"ply": write_mesh(mesh, stem.with_suffix(".ply")), "obj": write_mesh(mesh, stem.with_suffix(".obj")),
                        "vertices": mesh.num_vertices, "faces": mesh.num_faces}
    timings["mesh"] = time.perf_counter() - t

    scores: dict[str, Any] = {}
    if config.evaluate:
        on_event("stage", stage="evaluate", message="identity, diversity, consistency and style")
        t = time.perf_counter()
        from ..evaluate.metrics import evaluate_renders

        identity_backend, style_backend = embedded_backends(sources.pack)
        style = STYLE_PRESETS[config.style].embedded_style
        scores = evaluate_renders(torch.stack(before), torch.stack(after), style, identity_backend, style_backend).to_dict()
        timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    rel = lambda p: Path(p).relative_to(out).as_posix()  # noqa: E731
    metrics = {
        "style": config.style,
        "prompt": prompt,
        "method": config.method,
        "steps": stylized.config.steps,
        "lr": stylized.config.lr,
        "seeds": seeds,
        "view_names": names,
        "stylize_reused": stylized.reused,
        "stylized_generator": str(stylized.path),
        "pack": {"name": manifest["name"], "version": manifest["version"]},
        "scores": scores,
        "heads": [{"seed": h["seed"], "compare": rel(h["compare"]), "views": {k: rel(v) for k, v in h["views"].items()}} for h in heads],
        "turntable": rel(turntable) if turntable else None,
        "meshes": {side: {k: (rel(v) if isinstance(v, Path) else v) for k, v in m.items()} for side, m in meshes.items()},
        "timings_s": timings,
        "machine": {"device": str(device), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": np.__version__},
    }
    write_json(out / "metrics.json", metrics)
    report = write_demo_report(out / "report.html", metrics)
    on_event("done", result=str(out / "metrics.json"), report=str(report), seconds=timings["total"])
    return DemoResult(out, False, metrics)
