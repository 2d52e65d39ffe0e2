"""The head-mode bench scores the field's render that head mode shows (deterministic ray samples)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from engine.generator.loading import load_generator
from engine.generator.triplane import RenderOptions
from engine.heads.mesh_field import MeshFieldConfig, fit_mesh_field, photo_targets
from engine.pack import pack_paths
from tests.engine.heads.shapes import uv_sphere

_BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(_BENCH))  # the bench scripts import each other by name
_SPEC = importlib.util.spec_from_file_location("bench_head_mode", _BENCH / "bench_head_mode.py")
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench
_SPEC.loader.exec_module(bench)


def test_fitted_psnr_scores_the_deterministic_render_head_mode_shows():
    mesh = uv_sphere()
    G = load_generator(pack_paths().generator).generator
    field = fit_mesh_field(mesh, G, MeshFieldConfig(steps=2, photo_every=0, sr_polish_steps=0, density_points=64,
                                                    colour_points=16))
    cameras = photo_targets(mesh, field.generator, 1)["c"]
    torch.manual_seed(1)
    first = bench.fitted_psnr(field, mesh, cameras)
    torch.manual_seed(2)  # a jittered render would move with the global draw
    assert bench.fitted_psnr(field, mesh, cameras)["sr"] == first["sr"]
    with torch.no_grad():
        shown = field.generator.render(field.ws.expand(1, -1, -1), cameras,
                                       RenderOptions(background="white", deterministic_samples=True))["image"]
    from engine.heads.scan_views import ScanViewConfig, render_scan_views

    target = render_scan_views(mesh, cameras, ScanViewConfig(resolution=G.img_resolution, lighting=0.0))["image"]
    assert first["sr"] == bench.psnr(shown, target)
    assert first["sr_jittered"] != first["sr"]
