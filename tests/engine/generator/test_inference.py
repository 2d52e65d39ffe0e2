"""Tests of inference: seeds / W+ latents → named views, before/after sheet, turntable GIF; the render CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.app.cli import main as cli_main
from engine.app.commands.render import parse_seeds
from engine.errors import ConfigError, InputError
from engine.generator.camera import NAMED_VIEW_YAWS_DEG, cameras_at
from engine.generator.inference import (
    Subject,
    ViewSettings,
    camera_config_for,
    load_w_plus,
    render_images,
    render_subjects,
    seed_latent,
    whiten_padded_border,
)
from engine.generator.config import get_preset
from engine.generator.loading import load_generator, save_generator
from engine.generator.superresolution import build_superresolution
from engine.generator.triplane import RenderOptions

VIEW_NAMES = [name for name, _ in NAMED_VIEW_YAWS_DEG]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def base():
    return load_generator("tiny").generator


@pytest.fixture(scope="module")
def stylized(base, tmp_path_factory):
    """A 'stylized' checkpoint: the tiny generator with its synthesis weights nudged."""
    G = load_generator("tiny").generator
    with torch.no_grad():
        for name, p in G.backbone.synthesis.named_parameters():
            if not name.endswith("bias"):
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    path = save_generator(G, tmp_path_factory.mktemp("ckpt") / "stylized", extra={"prompt": "a zombie"})
    return path, G


def test_parse_seeds():
    assert parse_seeds("0,3,10-12") == [0, 3, 10, 11, 12]
    assert parse_seeds(" 7 ") == [7]
    for bad in ("x", "3-1", "-2", ","):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_seed_latent_is_reproducible_and_truncated(base):
    settings = ViewSettings()
    ws = seed_latent(base, 3, settings)
    assert ws.shape == (1, base.num_ws, base.w_dim)
    assert torch.equal(ws, seed_latent(base, 3, settings))
    assert not torch.equal(ws, seed_latent(base, 4, settings))
    # ψ = 0 collapses every latent onto w_avg (cutoff 14 is clamped to the tiny generator's 8 layers).
    collapsed = seed_latent(base, 3, ViewSettings(truncation_psi=0.0))
    w_avg = base.backbone.mapping.w_avg
    assert torch.allclose(collapsed, w_avg.expand_as(collapsed))


def test_batched_views_match_one_by_one(base):
    ws = seed_latent(base, 0, ViewSettings())
    cams = cameras_at(torch.tensor([0.0, 0.7, -1.2, math.pi]), 0.1, camera_config_for(base, (0, 0, 0))).c
    together = render_images(base, ws, cams, background="white", chunk=4)
    apart = render_images(base, ws, cams, background="white", chunk=1)
    assert together.shape == (4, 3, base.img_resolution, base.img_resolution)
    assert torch.allclose(together, apart, atol=1e-5)
    assert not torch.allclose(together[0], together[3], atol=1e-3)  # front and back differ


def test_padded_border_is_the_rows_the_zero_padded_upsampling_darkens():
    # By hand, [1, 3, 3, 1] upsampling of a constant 1 padded with zeros: the outer output row gets 3/4.
    # The pack's 2X SR upsamples once → 1 row; PanoHead's 8XDC twice: 256² row 0 at 0.75, then at 512²
    # (3·0.75 + 0)/4, (3·0.75 + 1)/4, (3 + 0.75)/4 = 0.5625, 0.8125, 0.9375 and 1 from row 3 → 3 rows.
    assert {name: build_superresolution(get_preset(name)).padded_border() for name in ("pack", "panohead")} == {
        "pack": 1, "panohead": 3}
    assert build_superresolution(dataclasses.replace(get_preset("tiny"), superresolution="none")).padded_border() == 0


def test_whiten_padded_border_puts_white_back_only_where_the_frame_is_empty():
    image = torch.full((1, 3, 8, 8), -0.5)
    opacity = torch.zeros(1, 1, 4, 4)
    opacity[..., 2:] = 1.0  # right half opaque (after the ×2 resize, columns 5-7 exactly 1, 0-2 exactly 0)
    out = whiten_padded_border(image, opacity, border=1)
    assert torch.equal(out[..., 1:7, 1:7], image[..., 1:7, 1:7])  # the inside is never touched
    assert torch.equal(out[..., 0, :3], torch.ones(1, 3, 3)) and torch.equal(out[..., :3, 0], torch.ones(1, 3, 3))
    assert torch.equal(out[..., 0, 5:], image[..., 0, 5:]) and torch.equal(out[..., :, 7], image[..., :, 7])
    assert torch.equal(whiten_padded_border(image, opacity, border=0), image)


def test_white_views_have_no_grey_frame_where_the_head_does_not_reach():
    """The pack generator's super-resolution greys the outer row of a white view (0.75 instead of 1); the views
    users see come back white there, and identical to the generator's render inside."""
    from engine.pack import pack_paths

    G = load_generator(pack_paths().generator).generator
    ws = seed_latent(G, 0, ViewSettings())
    cams = cameras_at(torch.tensor([0.0]), 0.17, camera_config_for(G, (0, 0, 0))).c
    raw = G.render(ws, cams, RenderOptions(background="white", deterministic_samples=True))
    shown = render_images(G, ws, cams, background="white")
    top = raw["image"][0, :, 0]
    assert top.mean() < 0.8  # the frame the fix is for: ≈ 0.5 in [−1, 1]
    assert shown[0, :, 0].min() > 0.98 and shown[0, :, :, 0].min() > 0.98
    assert torch.equal(shown[0, :, 1:-1, 1:-1], raw["image"][0, :, 1:-1, 1:-1].clamp(-1, 1))


def test_w_plus_files(base, tmp_path):
    w = torch.randn(1, base.num_ws, base.w_dim, generator=torch.Generator().manual_seed(0)).numpy()
    np.savez(tmp_path / "three_d.npz", w=w)
    np.savez(tmp_path / "two_d.npz", w=w[0])
    assert torch.equal(load_w_plus(tmp_path / "three_d.npz", base), torch.from_numpy(w))
    assert torch.equal(load_w_plus(tmp_path / "two_d.npz", base), torch.from_numpy(w))

    np.savez(tmp_path / "wrong.npz", w=np.zeros((1, 14, 512), np.float32))
    with pytest.raises(InputError, match=r"wrong\.npz.*\(1, 14, 512\).*\(1, 8, 32\)"):
        load_w_plus(tmp_path / "wrong.npz", base)
    np.savez(tmp_path / "nokey.npz", latent=w)
    with pytest.raises(InputError, match=r"nokey\.npz.*no array named 'w'"):
        load_w_plus(tmp_path / "nokey.npz", base)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(InputError, match=r"text\.npz.*not a readable"):
        load_w_plus(tmp_path / "text.npz", base)
    np.savez(tmp_path / "nan.npz", w=np.full_like(w, np.nan))
    with pytest.raises(InputError, match="finite"):
        load_w_plus(tmp_path / "nan.npz", base)
    with pytest.raises(InputError, match="not found"):
        load_w_plus(tmp_path / "missing.npz", base)


def test_render_subjects_writes_views_sheet_compare_and_gif(base, stylized, tmp_path):
    _, G = stylized
    settings = ViewSettings(turntable_frames=5, frame_ms=50)
    subjects = [Subject("head", seed_latent(G, 0, settings))]
    events = []
    (result,) = render_subjects(G, subjects, tmp_path, settings, base=base, on_event=lambda e, **f: events.append((e, f)))
    res = G.img_resolution
    assert list(result.views) == VIEW_NAMES
    for path in result.views.values():
        assert Image.open(path).size == (res, res)
    assert Image.open(result.sheet).size == (res * len(VIEW_NAMES), res)
    compare = np.asarray(Image.open(result.compare))
    assert compare.shape == (2 * res, res * len(VIEW_NAMES), 3)
    assert not np.array_equal(compare[:res], compare[res:])  # base row vs stylized row
    assert np.array_equal(compare[res:], np.asarray(Image.open(result.sheet)))
    gif = Image.open(result.turntable)
    assert gif.n_frames == 5 and gif.info["duration"] == 50
    front = np.asarray(Image.open(result.views["front"]).convert("RGB"))
    gif.seek(0)
    assert np.abs(np.asarray(gif.convert("RGB")).astype(int) - front.astype(int)).mean() < 8  # frame 0 = front (palette)
    assert events == [("progress", {"step": 1, "total": 1, "subject": "head", "folder": str(tmp_path / "head")})]
    summary = json.loads((tmp_path / "render.json").read_text())
    assert summary["subjects"][0]["turntable"] == str(result.turntable)
    assert not any(p.name.startswith(".") for p in (tmp_path / "head").iterdir())  # no temporary files left


def test_render_command_with_seeds_and_latents(stylized, tmp_path, capsys):
    path, G = stylized
    latents = tmp_path / "latents"
    latents.mkdir()
    np.savez(latents / "person.npz", w=torch.zeros(1, G.num_ws, G.w_dim).numpy())
    out = tmp_path / "out"
    args = ["render", "--generator", str(path), "--base", "tiny", "--seeds", "1-2", "--latents", str(latents)]
    assert cli_main([*args, "--out", str(out), "--frames", "4", "--device", "cpu"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert records[-1]["event"] == "done"
    assert [s["name"] for s in records[-1]["subjects"]] == ["person", "seed0001", "seed0002"]
    for name in ("person", "seed0001", "seed0002"):
        for file in [f"{v}.png" for v in VIEW_NAMES] + ["views.png", "compare.png", "turntable.gif"]:
            assert (out / name / file).is_file(), (name, file)


def test_render_command_rejects_a_latent_of_the_wrong_shape(stylized, tmp_path, capsys):
    path, _ = stylized
    bad = tmp_path / "official_panohead.npz"
    np.savez(bad, w=np.zeros((1, 14, 512), np.float32))
    code = cli_main(["render", "--generator", str(path), "--latents", str(bad), "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and "(1, 8, 32)" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
