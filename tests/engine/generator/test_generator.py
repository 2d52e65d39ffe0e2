"""The assembled tri-grid generator: shapes, PanoHead parameter manifest, mirror property, trainable groups,
checkpoint round trip through ``load_generator``, and the ``generate`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import CheckpointError, ConfigError
from engine.generator.camera import cameras_at, mirror_camera
from engine.generator.config import PLANE_FEATURES, get_preset
from engine.generator.loading import load_generator, save_generator
from engine.generator.triplane import RenderOptions, TriPlaneGenerator
from engine.io.checkpoint import manifest_mismatches, state_shapes
from engine.mesh import read_ply

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = [
    REPO / "tests" / "data" / "panohead_G_ema_manifest.json",
    REPO.parent / "shared" / "reference" / "panohead_G_ema_manifest.json",
]


@pytest.fixture(scope="module")
def tiny() -> TriPlaneGenerator:
    torch.manual_seed(0)
    return TriPlaneGenerator(get_preset("tiny")).eval()


def _ws(G: TriPlaneGenerator, n: int = 1, seed: int = 0) -> torch.Tensor:
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    c = cameras_at(torch.zeros(n), torch.full((n,), 0.2)).c
    return G.mapping(z, c, truncation_psi=0.7)


def test_forward_shapes_and_dtypes(tiny):
    cfg = tiny.config
    z = torch.randn(2, cfg.z_dim)
    c = cameras_at(torch.tensor([0.0, 0.5]), torch.tensor([0.2, -0.1])).c
    with torch.no_grad():
        out = tiny(z, c, options=RenderOptions(return_planes=True))
    r = cfg.rendering.neural_rendering_resolution
    assert out["image"].shape == (2, 3, cfg.img_resolution, cfg.img_resolution)
    assert out["image_raw"].shape == (2, 3, r, r)
    assert out["image_depth"].shape == (2, 1, r, r)
    assert out["image_mask"].shape == (2, 1, r, r)
    assert out["features"].shape == (2, PLANE_FEATURES, r, r)
    s = cfg.rendering.triplane_size
    assert out["planes"].shape == (2, 3, PLANE_FEATURES * cfg.rendering.triplane_depth, s, s)
    for v in out.values():
        assert v.dtype == torch.float32 and torch.isfinite(v).all()
    assert 0 <= out["image_mask"].min() and out["image_mask"].max() <= 1
    # Depths lie inside the sampled interval (stratified jitter can push the last sample one step past ray_end).
    rc = cfg.rendering
    step = (rc.ray_end - rc.ray_start) / (rc.depth_resolution - 1)
    d = out["image_depth"]
    assert d.min() >= rc.ray_start - 1e-4 and d.max() <= rc.ray_end + step + 1e-4


def test_mapping_uses_all_ws_and_truncation(tiny):
    z = torch.randn(1, tiny.z_dim)
    c = cameras_at(0.0, 0.2).c
    ws = tiny.mapping(z, c)
    assert ws.shape == (1, tiny.num_ws, tiny.w_dim)
    w_avg = tiny.backbone.mapping.w_avg
    torch.testing.assert_close(tiny.mapping(z, c, truncation_psi=0.0), w_avg.expand_as(ws))


@pytest.mark.parametrize("manifest", MANIFESTS, ids=["repo", "shared"])
def test_panohead_preset_matches_official_parameter_manifest(manifest):
    if not manifest.exists():
        pytest.skip(f"{manifest} not present")
    with torch.device("meta"):
        G = TriPlaneGenerator(get_preset("panohead"))
    assert manifest_mismatches(state_shapes(G), manifest) == []
    data = json.loads(manifest.read_text())
    assert len(G.state_dict()) == len(data["tensors"])


def _mirror_symmetric_planes(G: TriPlaneGenerator, seed: int = 0) -> torch.Tensor:
    """A tri-grid whose features are symmetric under x → −x.

    Planes 0 (xy) and 1 (xz) have x along their width axis: symmetrise by averaging with a width flip.
    Plane 2 (zy, depth slices along x) is symmetrised across its depth slices.
    """
    torch.manual_seed(seed)
    planes = G.synthesize_planes(_ws(G, seed=seed)).detach().clone()
    n, p, cd, h, w = planes.shape
    d = G.config.rendering.triplane_depth
    planes[:, :2] = 0.5 * (planes[:, :2] + planes[:, :2].flip(-1))
    slab = planes[:, 2].view(n, cd // d, d, h, w)
    planes[:, 2] = (0.5 * (slab + slab.flip(2))).view(n, cd, h, w)
    return planes


def test_mirrored_camera_renders_horizontal_flip_of_symmetric_trigrid(tiny):
    planes = _mirror_symmetric_planes(tiny)
    ws = _ws(tiny)
    c = cameras_at(torch.tensor([0.6]), torch.tensor([0.15])).c
    opts = RenderOptions(background="none", run_superresolution=False, deterministic_samples=True)
    with torch.no_grad():
        a = tiny.render(ws, c, opts, planes=planes)
        b = tiny.render(ws, mirror_camera(c), opts, planes=planes)
    for key in ("image_raw", "image_depth", "image_mask", "features"):
        torch.testing.assert_close(b[key], a[key].flip(-1), atol=2e-4, rtol=1e-4, msg=key)
    # The property is not trivially true: an asymmetric grid breaks it.
    with torch.no_grad():
        raw = tiny.synthesize_planes(ws)
        a2 = tiny.render(ws, c, opts, planes=raw)["image_raw"]
        b2 = tiny.render(ws, mirror_camera(c), opts, planes=raw)["image_raw"]
    assert (b2 - a2.flip(-1)).abs().max() > 1e-2


def test_white_and_no_background(tiny):
    ws = _ws(tiny)
    c = cameras_at(0.0, 0.0).c
    with torch.no_grad():
        none = tiny.render(ws, c, RenderOptions(background="none", deterministic_samples=True))
        white = tiny.render(ws, c, RenderOptions(background="white", deterministic_samples=True))
    mask = none["image_mask"]
    torch.testing.assert_close(white["image_raw"], none["image_raw"] * mask + (1 - mask))


def test_set_trainable_groups_and_biases(tiny):
    G = TriPlaneGenerator(get_preset("tiny"))
    names = G.set_trainable(["synthesis", "superresolution"])
    assert names and all(n.startswith(("backbone.synthesis.", "superresolution.")) for n in names)
    assert not any(n.endswith("bias") for n in names)
    trainable = {n for n, p in G.named_parameters() if p.requires_grad}
    assert trainable == set(names)
    assert any(n.startswith("superresolution.") for n in names)
    with_bias = G.set_trainable(["decoder"], train_biases=True)
    assert any(n.endswith("bias") for n in with_bias) and all(n.startswith("decoder.") for n in with_bias)
    with pytest.raises(ValueError):
        G.set_trainable(["nope"])


def test_render_is_deterministic_and_seeded(tiny):
    ws = _ws(tiny)
    c = cameras_at(0.3, 0.0).c
    with torch.no_grad():
        a = tiny.render(ws, c, RenderOptions(generator=torch.Generator().manual_seed(5)))["image"]
        b = tiny.render(ws, c, RenderOptions(generator=torch.Generator().manual_seed(5)))["image"]
        d = tiny.render(ws, c, RenderOptions(generator=torch.Generator().manual_seed(6)))["image"]
    assert torch.equal(a, b)
    assert not torch.equal(a, d)


def test_ray_samples_option_renders_as_a_generator_configured_with_them(tiny):
    """``RenderOptions.ray_samples`` must be exactly the generator's own (coarse, importance) settings for one
    call: the same weights configured with 6 + 4 samples render the same image, and it is not the default."""
    from dataclasses import replace

    rendering = replace(tiny.config.rendering, depth_resolution=6, depth_resolution_importance=4)
    fewer = TriPlaneGenerator(replace(tiny.config, rendering=rendering)).eval()
    fewer.load_state_dict(tiny.state_dict())
    ws, c = _ws(tiny), cameras_at(0.3, 0.1).c
    with torch.no_grad():
        option = tiny.render(ws, c, RenderOptions(deterministic_samples=True, ray_samples=(6, 4)))
        configured = fewer.render(ws, c, RenderOptions(deterministic_samples=True))
        default = tiny.render(ws, c, RenderOptions(deterministic_samples=True))
    for key in ("image", "image_raw", "image_depth", "image_mask"):
        assert torch.equal(option[key], configured[key]), key
    assert not torch.allclose(option["image_raw"], default["image_raw"])
    assert tiny.config.rendering.depth_resolution != 6  # the generator's own config is untouched


def test_views_share_their_heads_tri_grid_exactly_as_with_copies(tiny):
    """B tri-grids with B·V cameras (views of head b at rows b·V …): the same images as rendering each view
    from its own copy of the tri-grid, and the gradient of the copies summed back onto each tri-grid."""
    ws = _ws(tiny, n=2, seed=3).detach()
    planes = tiny.synthesize_planes(ws).detach()
    cams = cameras_at(torch.tensor([0.0, 0.8, -1.5, 0.3, 2.9, -0.6]), torch.full((6,), 0.1)).c
    ws_views = ws.repeat_interleave(3, dim=0)
    weights = torch.randn(6, 3, *tiny.render(ws_views[:1], cams[:1], RenderOptions(run_superresolution=False))["image_raw"].shape[-2:])
    results = {}
    for name in ("shared", "copies"):
        leaf = planes.clone().requires_grad_()
        given = leaf if name == "shared" else leaf.repeat_interleave(3, dim=0)
        out = tiny.render(ws_views, cams, RenderOptions(generator=torch.Generator().manual_seed(1)), planes=given)
        ((out["image_raw"] * weights).sum() + out["image"].mean()).backward()
        results[name] = (out, leaf.grad)
    for key in ("image", "image_raw", "image_depth", "image_mask"):
        torch.testing.assert_close(results["shared"][0][key], results["copies"][0][key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results["shared"][1], results["copies"][1], atol=1e-5, rtol=1e-4)
    # The head-0 views must come from tri-grid 0: swapping the tri-grids changes them.
    with torch.no_grad():
        swapped = tiny.render(ws_views, cams, RenderOptions(generator=torch.Generator().manual_seed(1)), planes=planes.flip(0))
    assert not torch.allclose(swapped["image_raw"][:3], results["shared"][0]["image_raw"][:3])
    with pytest.raises(ValueError, match="whole number of views"):
        tiny.render(ws_views[:5], cams[:5], RenderOptions(), planes=planes)


def test_an_expanded_tri_grid_is_read_once_with_the_same_result(tiny):
    ws = _ws(tiny, seed=4)
    planes = tiny.synthesize_planes(ws)
    cams = cameras_at(torch.tensor([0.0, 1.0, -1.0]), torch.zeros(3)).c
    with torch.no_grad():
        expanded = tiny.render(ws.expand(3, -1, -1), cams, RenderOptions(deterministic_samples=True, return_planes=True),
                               planes=planes.expand(3, -1, -1, -1, -1))
        copied = tiny.render(ws.expand(3, -1, -1), cams, RenderOptions(deterministic_samples=True),
                             planes=planes.expand(3, -1, -1, -1, -1).contiguous())
    torch.testing.assert_close(expanded["image"], copied["image"], atol=1e-5, rtol=1e-5)
    assert expanded["planes"].shape[0] == 3  # what the caller passed comes back


def test_gradients_reach_synthesis_and_sr(tiny):
    G = TriPlaneGenerator(get_preset("tiny"))
    G.set_trainable(["synthesis", "superresolution"])
    out = G.render(_ws(G).detach(), cameras_at(0.0, 0.0).c, RenderOptions(background="none"))
    (out["image"].mean() + out["image_raw"].mean()).backward()
    grads = {n: p.grad for n, p in G.named_parameters() if p.requires_grad}
    # SR noise is off ("none" noise mode), so only its noise strengths get no gradient.
    missing = {n for n, g in grads.items() if g is None}
    assert missing == {n for n in grads if n.startswith("superresolution.") and n.endswith("noise_strength")}
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if n not in missing and not n.endswith("noise_strength"))


def test_checkpoint_round_trip_through_load_generator(tmp_path, tiny):
    path = save_generator(tiny, tmp_path / "g.safetensors", extra={"prompt": "a zombie head"})
    loaded = load_generator(path)
    assert loaded.trained and loaded.extra["prompt"] == "a zombie head"
    for (n1, a), (n2, b) in zip(tiny.state_dict().items(), loaded.generator.state_dict().items()):
        assert n1 == n2 and torch.equal(a, b)
    ws = _ws(tiny)
    c = cameras_at(0.0, 0.0).c
    opts = RenderOptions(deterministic_samples=True)
    with torch.no_grad():
        torch.testing.assert_close(tiny.render(ws, c, opts)["image"], loaded.generator.render(ws, c, opts)["image"], rtol=0, atol=0)


def test_load_generator_errors(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="no such generator"):
        load_generator(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="bad"):
        load_generator(bad)
    junk = tmp_path / "g.pkl"
    junk.write_bytes(b"\x80\x04junk")
    with pytest.raises(CheckpointError, match="g.pkl"):
        load_generator(junk)
    # Wrong architecture: tiny weights with a config claiming the small preset.
    path = save_generator(tiny, tmp_path / "arch.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["config"] = get_preset("small").to_dict()
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="wrong architecture"):
        load_generator(path)
    with pytest.raises(CheckpointError, match="unsupported"):
        (tmp_path / "x.bin").write_bytes(b"0")
        load_generator(tmp_path / "x.bin")
    with pytest.raises(ConfigError, match="CUDA"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        load_generator("tiny", device="cuda")


@pytest.mark.slow
def test_generate_command_writes_views_mesh_and_summary(tmp_path):
    out = tmp_path / "gen"
    cmd = [sys.executable, "-m", "engine", "generate", "--config", "tiny", "--seed", "3", "--out", str(out),
           "--mesh-resolution", "48", "--iso-level", "1.0", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "done"
    for name in ("front", "yaw+45", "yaw-45", "yaw+90", "yaw-90", "back"):
        img = Image.open(out / f"{name}.png")
        assert img.size == (64, 64) and img.mode == "RGB"
    # Different views are different pictures.
    front = np.asarray(Image.open(out / "front.png"), dtype=np.int16)
    back = np.asarray(Image.open(out / "back.png"), dtype=np.int16)
    assert np.abs(front - back).mean() > 1
    summary = json.loads((out / "generate.json").read_text())
    assert summary["mesh"]["faces"] > 100 and summary["trained"] is False
    mesh = read_ply(out / "head.ply")
    assert mesh.num_faces == summary["mesh"]["faces"] and mesh.vertex_colors is not None
    assert (out / "head.obj").stat().st_size > 0
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_generate_command_reports_bad_checkpoint_without_traceback(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 10)
    cmd = [sys.executable, "-m", "engine", "generate", "--checkpoint", str(bad), "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "broken" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_point_colors_unclamped_keeps_gradients_outside_the_range():
    """Training losses use ``clamp=False``: a clamped colour outside [0, 1] has no gradient, and a colour
    pushed out of range there could never come back."""
    torch.manual_seed(0)
    G = TriPlaneGenerator(get_preset("tiny"))
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))
    ws = G.mapping(z, torch.zeros(2, G.c_dim))
    planes = G.synthesize_planes(ws).detach().requires_grad_(True)
    points = torch.rand(2, 64, 3, generator=torch.Generator().manual_seed(1)) - 0.5
    with torch.no_grad():
        G.torgb.bias.fill_(10.0)  # every colour far above 1
    raw = G.point_colors(planes, ws, points, clamp=False)
    clamped = G.point_colors(planes, ws, points)
    assert raw.min() > 1.0 and torch.equal(clamped, raw.clamp(0, 1))
    raw.sum().backward()
    assert planes.grad.abs().sum() > 0
