"""The one-head pipeline (``engine head``): caching, outputs, cancel, errors — on tiny random models."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.app.head_mode import STYLIZE_SR_FILE
from engine.app.pipeline import (
    GALLERY_FIRST_SEED,
    HeadJob,
    gallery_seeds,
    render_views,
    resolve_models,
    resolve_prompt,
    run_head,
    stylize_cache_key,
    stylize_config_for,
    view_settings,
)
from engine.errors import CheckpointError, ConfigError
from engine.heads.mesh_field import MeshFieldConfig
from engine.mesh import read_npz
from engine.stylize.cancel import CancelToken

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_job(tmp_path: Path, models, **changes) -> HeadJob:
    settings = dict(
        out_dir=str(tmp_path / "out"),
        prompt="a zombie head",
        generator="tiny",
        diffusion=str(models.sd_folder),
        steps=2,
        mesh_resolution=32,
        iso_level=1.0,  # the random tiny generator's density never reaches PanoHead's 10
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
        gallery_heads=3,  # the default 8 costs ~15 s of tiny renders; the code path is the same
    )
    settings.update(changes)
    return HeadJob(**settings)


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event, **fields):
        self.events.append((event, fields))

    def names(self):
        return [e for e, _ in self.events]


def test_run_head_writes_every_output_and_reuses_the_stylized_generator(tmp_path, tiny_diffusion):
    job = tiny_job(tmp_path, tiny_diffusion, turntable_frames=2)
    rec = Recorder()
    result = run_head(job, on_event=rec)
    out = Path(job.out_dir)
    summary = json.loads((out / "head.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    mesh = read_npz(out / summary["mesh_npz"])
    assert summary["faces"] == mesh.num_faces > 100 and summary["vertices"] == mesh.num_vertices
    assert mesh.vertex_colors is not None and mesh.vertex_colors.shape == (mesh.num_vertices, 3)
    for side in ("before", "after"):
        assert set(summary[side]) == {"front", "yaw+45", "yaw-45", "yaw+90", "yaw-90", "back"}
        assert all((out / p).is_file() for p in summary[side].values())
    assert (out / summary["latent_npz"]).is_file() and summary["stylize_reused"] is False
    assert summary["turntable"] == ["views/turntable/frame_000.png", "views/turntable/frame_001.png"]
    assert all((out / p).is_file() for p in summary["turntable"])
    progress = [f for e, f in rec.events if e == "progress"]
    assert [p["step"] for p in progress] == [1, 2] and progress[-1]["fraction"] == 1.0
    assert all(p["stage"] == "stylize" for p in progress)
    assert rec.names()[-1] == "done" and "done" not in rec.names()[:-1]

    # Another head with the same style reuses the cached stylized generator: no training events.
    again = Recorder()
    second = run_head(tiny_job(tmp_path, tiny_diffusion, seed=5, out_dir=str(tmp_path / "out2")), on_event=again)
    assert second.summary["stylize_reused"] is True and "progress" not in again.names()
    assert second.summary["generator"] == summary["generator"]
    # ... and the saved latent of the first head renders the same head again.
    third = run_head(tiny_job(tmp_path, tiny_diffusion, latent=str(out / "latent.npz"), out_dir=str(tmp_path / "o3")), on_event=Recorder())
    a = read_npz(out / "head.npz").vertices
    b = read_npz(tmp_path / "o3" / "head.npz").vertices
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert third.summary["seed"] is None


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def test_head_renders_after_with_the_stylized_generator_and_always_scores_it(tmp_path, tiny_diffusion):
    """The "after" views are the stylized generator's renders of the head (not the base generator's), and
    head.json carries the identity score with its control, unconditionally."""
    from engine.generator.inference import seed_latent
    from engine.generator.loading import load_generator
    from engine.io.images import to_uint8

    # A large learning rate so that two steps change the tiny generator's pictures visibly. The tiny random
    # generator makes no faces: dlib (auto's choice for user models) would find none, so the pack's encoder
    # is asked for explicitly to exercise the control measures.
    job = tiny_job(tmp_path, tiny_diffusion, lr=0.05, seed=3, identity_backend="embedded")
    summary = run_head(job, on_event=Recorder()).summary
    out = Path(job.out_dir)
    config = stylize_config_for(job, resolve_models(job), job.prompt)
    settings = view_settings(config)
    base = load_generator("tiny").generator
    styled = load_generator(summary["generator"]).generator
    ws = seed_latent(base, job.seed, settings)
    names, base_views = render_views(base, ws, settings)
    _, styled_views = render_views(styled, ws, settings)
    for name, b, a in zip(names, base_views, styled_views):
        after, before = _png(out / summary["after"][name]), _png(out / summary["before"][name])
        np.testing.assert_array_equal(after, to_uint8(a).astype(np.int16))  # the stylized generator's pixels
        np.testing.assert_array_equal(before, to_uint8(b).astype(np.int16))
    moved = np.abs(np.stack([_png(out / summary["after"][n]) - _png(out / summary["before"][n]) for n in names])).mean()
    assert moved > 2.0, f"stylization left the views unchanged (mean |after − before| = {moved:.2f} levels)"

    # The score is there, with its control.
    data = json.loads((out / "head.json").read_text())
    scores = data["scores"]
    assert isinstance(data["identity_similarity"], float) and -1.0 <= data["identity_similarity"] <= 1.0
    assert data["identity_similarity"] < 0.9999, "after == before: the 'after' views are not stylized"
    assert data["reid_candidates"] == 1 + job.gallery_heads and scores["reid_chance"] == pytest.approx(1 / 4)
    assert 1 <= data["reid_rank"] <= data["reid_candidates"] and scores["reid_top1"] == float(data["reid_rank"] == 1)
    assert isinstance(data["identity_margin"], float) and isinstance(scores["identity_mismatched"], float)
    assert data["identity_margin"] == pytest.approx(data["identity_similarity"] - scores["identity_mismatched"], abs=1e-6)
    assert 0.0 <= scores["reid_top1_per_view"] <= 1.0 and scores["reid_top1_reverse"] in (0.0, 1.0)
    assert -1.0 <= scores["consistency_after"] <= 1.0 and scores["identity_backend"] == "embedded"
    assert str(GALLERY_FIRST_SEED) in scores["gallery"] and data["style_score"] is None  # a free-text prompt
    # The gallery's embeddings are cached: originals per base generator, stylized ones in the run folder.
    cached = sorted(p.name for p in (Path(job.cache_folder) / "identity_gallery").rglob("seed_*.safetensors"))
    assert cached == [f"seed_{s}.safetensors" for s in gallery_seeds(job.gallery_heads)]


def test_identity_scorer_is_dlib_for_user_models_and_the_pack_encoder_for_the_pack(tmp_path, tiny_diffusion):
    from engine.app.pipeline import identity_scorer, uses_real_models
    from engine.pack import pack_paths

    pack = pack_paths()
    user = resolve_models(tiny_job(tmp_path, tiny_diffusion))
    embedded = resolve_models(HeadJob(out_dir=str(tmp_path / "o"), style_preset="zombie"))
    assert uses_real_models(user) and not uses_real_models(embedded)
    assert identity_scorer(user, pack).backend.name == "dlib-face"
    scorer = identity_scorer(embedded, pack)
    assert scorer.backend.name == "embedded" and scorer.fingerprint.startswith("embedded:") and scorer.note == ""
    assert identity_scorer(user, pack, "embedded").backend.name == "embedded"
    assert identity_scorer(embedded, pack, "dlib-face").backend.name == "dlib-face"
    # A field fitted to an artist's mesh is a real head even when every model is the pack's.
    assert uses_real_models(dataclasses.replace(embedded, field_of=str(pack.generator)))
    with pytest.raises(ConfigError, match="identity backend"):
        HeadJob(out_dir=str(tmp_path), style_preset="zombie", identity_backend="arcface").validate()


def test_gallery_seeds_are_fixed_and_skip_the_head():
    assert gallery_seeds(3) == [GALLERY_FIRST_SEED, GALLERY_FIRST_SEED + 1, GALLERY_FIRST_SEED + 2]
    assert gallery_seeds(3, exclude=GALLERY_FIRST_SEED + 1) == [GALLERY_FIRST_SEED, GALLERY_FIRST_SEED + 2, GALLERY_FIRST_SEED + 3]
    assert gallery_seeds(2, exclude=7) == gallery_seeds(2)


def test_cache_key_follows_training_settings_only(tmp_path, tiny_diffusion):
    job = tiny_job(tmp_path, tiny_diffusion)
    sources = resolve_models(job)
    key = lambda j: stylize_cache_key(stylize_config_for(j, sources, "p"), sources)  # noqa: E731
    base = key(job)
    assert key(tiny_job(tmp_path, tiny_diffusion, seed=9, mesh_resolution=64, out_dir="elsewhere")) == base
    for change in ({"method": "sds"}, {"mirror": False}, {"grid": False}, {"rank": False}, {"steps": 3},
                   {"guidance_scale": 3.0}, {"train_seed": 1}, {"lr": 0.5}, {"anchor_image": 0.5},
                   {"anchor_geometry": 0.5}):
        assert key(tiny_job(tmp_path, tiny_diffusion, **change)) != base, change


def test_head_mode_anchors_to_its_source_by_default_and_generated_heads_do_not(tmp_path, tiny_diffusion):
    from engine.app.pipeline import HEAD_MODE_ANCHOR

    sources = resolve_models(tiny_job(tmp_path, tiny_diffusion))
    distill = lambda **c: stylize_config_for(tiny_job(tmp_path, tiny_diffusion, **c), sources, "p").distill  # noqa: E731
    assert (distill().anchor_image_weight, distill().anchor_geometry_weight) == (0.0, 0.0)
    head = distill(mesh="head.ply")
    assert (head.anchor_image_weight, head.anchor_geometry_weight) == HEAD_MODE_ANCHOR and min(HEAD_MODE_ANCHOR) > 0
    field = stylize_config_for(tiny_job(tmp_path, tiny_diffusion), dataclasses.replace(sources, field_of="base"), "p").distill
    assert (field.anchor_image_weight, field.anchor_geometry_weight) == HEAD_MODE_ANCHOR  # the batch's mesh mode
    mine = distill(mesh="head.ply", anchor_image=0.0, anchor_geometry=2.5)
    assert (mine.anchor_image_weight, mine.anchor_geometry_weight) == (0.0, 2.5)
    with pytest.raises(ConfigError, match="anchor image weight"):
        tiny_job(tmp_path, tiny_diffusion, anchor_image=-1.0).validate()


def test_cancel_before_the_first_step_writes_no_head(tmp_path, tiny_diffusion):
    job = tiny_job(tmp_path, tiny_diffusion, steps=50)
    cancel = CancelToken()
    cancel.request("test")
    rec = Recorder()
    result = run_head(job, cancel, on_event=rec)
    assert result.cancelled and rec.names()[-1] == "cancelled"
    assert not (Path(job.out_dir) / "head.json").exists()


def test_prompt_and_presets(tmp_path, tiny_diffusion):
    sources = resolve_models(tiny_job(tmp_path, tiny_diffusion))
    assert resolve_prompt(tiny_job(tmp_path, tiny_diffusion, prompt="custom"), sources) == ("custom", None)
    prompt, warning = resolve_prompt(tiny_job(tmp_path, tiny_diffusion, prompt="", style_preset="werewolf"), sources)
    assert "werewolf" in prompt and warning is None  # real (non-pack) models take the full prompt


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prompt": "", "style_preset": None}, "give a style"),
        ({"style_preset": "vaporwave"}, "unknown style preset"),
        ({"method": "xyz"}, "method must be"),
        ({"steps": 0}, "steps must be"),
        ({"mesh_resolution": 4}, "mesh resolution"),
        ({"gallery_heads": 0}, "gallery heads"),
    ],
)
def test_bad_jobs_are_config_errors(tmp_path, tiny_diffusion, changes, message):
    with pytest.raises(ConfigError, match=message):
        run_head(tiny_job(tmp_path, tiny_diffusion, **changes), on_event=Recorder())


def test_missing_model_paths_name_the_path(tmp_path, tiny_diffusion):
    with pytest.raises(ConfigError, match="nowhere.*does not exist"):
        run_head(tiny_job(tmp_path, tiny_diffusion, diffusion=str(tmp_path / "nowhere")), on_event=Recorder())
    with pytest.raises(CheckpointError, match="pack manifest not found"):
        run_head(tiny_job(tmp_path, tiny_diffusion, diffusion=None, pack=str(tmp_path / "nopack")), on_event=Recorder())


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "head", "--out", str(tmp_path / "o"), "--style-preset", "zombie",
         "--pack", str(tmp_path / "missing-pack")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------------
# Head mode: a mesh's own fitted field through the same pipeline
# --------------------------------------------------------------------------------------------------
def _sphere_ply(path: Path) -> Path:
    from engine.mesh import write_ply
    from tests.engine.heads.shapes import uv_sphere

    return write_ply(uv_sphere(), path)


def _pack_generator() -> str:
    # Head mode starts from a trained decoder (the random tiny one never makes an opaque surface to fit)
    from engine.pack import pack_paths

    return str(pack_paths().generator)


def test_head_mode_fits_once_stylizes_the_field_and_scores_against_generated_people(tmp_path, tiny_diffusion):
    mesh = _sphere_ply(tmp_path / "sphere.ply")
    rec = Recorder()
    job = tiny_job(tmp_path, tiny_diffusion, mesh=str(mesh), field_steps=12, lr=0.05, generator=_pack_generator(),
                   iso_level=10.0, identity_backend="embedded")
    summary = run_head(job, on_event=rec).summary
    fit_progress = [f for e, f in rec.events if e == "progress" and f["stage"] == "fit"]
    # the fit's 12 steps, then its super-resolution polish (shortened in proportion to the short fit)
    polish = MeshFieldConfig(steps=12).polish_steps()
    assert polish > 0 and fit_progress and fit_progress[-1]["step"] == 12 + polish
    assert fit_progress[-1]["fraction"] == 1.0 and "sr_polish" in fit_progress[-1]["losses"]
    assert summary["mesh"]["source"] == "sphere.ply" and summary["mesh"]["steps"] == 12
    assert summary["mesh"]["fit_reused"] is False and summary["seed"] is None
    assert summary["base_generator"] == job.generator  # the gallery's people come from the base generator
    from engine.generator.loading import load_generator

    field = load_generator(summary["mesh"]["field"]).generator
    assert field.is_single_head and load_generator(summary["generator"]).generator.is_single_head
    # the stylization started from the fit's super-resolution from before its polish, kept beside the field
    start = Path(summary["mesh"]["field"]).parent / STYLIZE_SR_FILE
    state = json.loads((Path(summary["generator"]).parent / "state.json").read_text())
    assert start.is_file() and state["config"]["superresolution_start"] == str(start)
    # "before" is the fitted field's head, not a generated one
    out = Path(job.out_dir)
    settings = view_settings(stylize_config_for(job, resolve_models(job), job.prompt))
    from engine.generator.inference import seed_latent
    from engine.io.images import to_uint8

    names, field_views = render_views(field, seed_latent(field, 0, settings), settings)
    for name, view in zip(names, field_views):
        np.testing.assert_array_equal(_png(out / summary["before"][name]), to_uint8(view).astype(np.int16))
    scores = summary["scores"]
    assert summary["reid_candidates"] == 1 + job.gallery_heads and "unstylized" in scores["gallery"]
    assert scores["reid_top1_reverse"] is None  # no stylized gallery: a field makes only its own head
    # another style on the same mesh reuses the fit
    again = Recorder()
    second = run_head(tiny_job(tmp_path, tiny_diffusion, mesh=str(mesh), field_steps=12, prompt="a marble statue",
                               generator=job.generator, iso_level=10.0, out_dir=str(tmp_path / "out2")), on_event=again)
    assert second.summary["mesh"]["fit_reused"] is True
    assert not [f for e, f in again.events if e == "progress" and f["stage"] == "fit"]
    # By default a mesh is a real head, judged by dlib's face recognition: a sphere has no face, and says so.
    real = second.summary["scores"]
    assert real["identity_backend"] == "dlib-face" and real["faces_found_before"] == 0.0
    assert second.summary["identity_similarity"] is None and real["identity_views"] == []
    assert any("no view with a face" in note for note in real["notes"])


def test_head_mode_refuses_bad_meshes_and_two_heads(tmp_path, tiny_diffusion):
    from engine.errors import EngineError

    bad = tmp_path / "broken.ply"
    bad.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 2\nend_header\n0 0\n")
    with pytest.raises(EngineError, match="broken.ply"):
        run_head(tiny_job(tmp_path, tiny_diffusion, mesh=str(bad), field_steps=2), on_event=Recorder())
    assert not (tmp_path / "out" / "head.json").exists()
    with pytest.raises(ConfigError, match="--mesh FILE or --latent FILE"):
        tiny_job(tmp_path, tiny_diffusion, mesh="a.ply", latent="b.npz").validate()


def test_head_mode_cancel_during_the_fit_writes_nothing(tmp_path, tiny_diffusion):
    mesh = _sphere_ply(tmp_path / "sphere.ply")
    cancel = CancelToken(str(tmp_path / "stop"))
    (tmp_path / "stop").write_text("")
    result = run_head(tiny_job(tmp_path, tiny_diffusion, mesh=str(mesh), field_steps=5), cancel, on_event=Recorder())
    assert result.cancelled and not (tmp_path / "out" / "head.json").exists()
    assert not list((tmp_path / "cache").rglob("head.safetensors"))


def test_embedded_step_defaults_come_from_the_preset_and_an_explicit_count_wins(tmp_path):
    """On the pack, zombie defaults to the 20 steps its bench curve chose, other styles to 40; real models
    keep their own default; --steps always wins."""
    from engine.app.pipeline import EMBEDDED_DEFAULT_STEPS, FULL_DEFAULT_STEPS

    def steps(**kw):
        job = HeadJob(out_dir=str(tmp_path), device="cpu", **kw).validate()
        return stylize_config_for(job, resolve_models(job), "p").steps

    assert steps(style_preset="zombie") == 20
    assert steps(style_preset="statue") == EMBEDDED_DEFAULT_STEPS == 40
    assert steps(prompt="a zombie head") == 40
    assert steps(style_preset="zombie", steps=7) == 7
    assert steps(style_preset="zombie", generator="tiny", diffusion=str(tmp_path)) == FULL_DEFAULT_STEPS
