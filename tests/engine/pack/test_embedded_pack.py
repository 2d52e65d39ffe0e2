"""The shipped embedded pack: intact, loadable offline through the production loaders, and the demo runs on it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.pack import MANIFEST_NAME, load_manifest, pack_paths, verify_pack

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[3]
PACK = pack_paths()


def test_pack_hashes_verify_and_it_stays_within_budget():
    assert verify_pack() == [], "embedded pack differs from its manifest: rerun scripts/pack/build_manifest.py"
    manifest = load_manifest()
    assert manifest["name"] == "head-stylizer-embedded" and re.fullmatch(r"\d+\.\d+\.\d+", manifest["version"])
    assert manifest["total_bytes"] <= 40 * 2**20
    for model in ("generator", "diffusion", "identity_encoder", "style_classifier"):
        report = manifest["reports"][model]
        assert report.get("seed") is not None or report.get("args", {}).get("seed") is not None, model
    assert (PACK.root / MANIFEST_NAME).is_file()


def test_pack_models_load_offline_through_the_production_loaders(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from engine.evaluate.metrics import EmbeddedIdentityBackend, EmbeddedStyleBackend
    from engine.generator.loading import load_generator
    from engine.guidance import load_diffusion_models

    loaded = load_generator(PACK.generator)
    assert loaded.trained and loaded.generator.config.name == "pack"
    models = load_diffusion_models(PACK.diffusion, PACK.controlnet_edge, PACK.controlnet_depth, device="cpu")
    assert set(models.controlnets) == {"edge", "depth"}
    assert EmbeddedStyleBackend(PACK.style_classifier).supports("zombie")
    EmbeddedIdentityBackend(PACK.identity_encoder)


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_embedded_pack(tmp_path):
    """The README's main command, with fewer steps and heads so CI stays quick — and the stylization must
    work: after 10 steps toward zombie the style score rises by a clear margin while the stylized heads are
    still re-identified among the originals above chance (a sign error in the distillation gradient leaves
    the style at ~0; a stylization that destroys identity drops re-identification to chance)."""
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "demo", "--out", str(out), "--steps", "10", "--subjects", "4",
         "--turntable", "4", "--mesh-resolution", "64", "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "done"
    metrics = json.loads((out / "metrics.json").read_text())
    scores = metrics["scores"]
    assert scores["subjects"] == 4 and scores["views"] == 6 and scores["style"] == "zombie"
    # Measured on the pack with generator v2 (whose sharper heads take longer to turn than v1's: 4 steps gave
    # 0.11): style 0.03 → 0.58 after 10 steps, 0.0004 with every distillation gradient's sign flipped;
    # re-identification 1.0 (chance 0.25), margin 0.83.
    assert scores["style_score_before_mean"] < 0.1
    assert scores["style_score_after_mean"] - scores["style_score_before_mean"] > 0.3, scores
    assert scores["reid_chance"] == 0.25 and scores["reid_candidates"] == 4
    assert scores["reid_top1"] > scores["reid_chance"] and scores["reid_top1_per_view"] > scores["reid_chance"], scores
    assert scores["identity_margin_mean"] > 0.0
    assert -1.0 <= scores["identity_similarity_mean"] <= 1.0 and 0.0 <= scores["consistency_after_mean"] <= 1.0
    assert metrics["meshes"]["after"]["faces"] > 1000
    page = (out / "report.html").read_text()
    assert "re-identification top-1" in page and "margin" in page
    referenced = re.findall(r"(?:src|href)='([^']+)'", page)
    assert all((out / ref).is_file() for ref in referenced) and "turntable.gif" in referenced
