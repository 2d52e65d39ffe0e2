"""engine.evaluate.metrics: metrics with hand-computed cosines, the backend registry, evaluate_renders, embedded models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from engine.errors import ConfigError, InputError
from engine.evaluate import metrics as ev

pytestmark = pytest.mark.usefixtures("single_thread")

R2 = 1 / math.sqrt(2)


class PixelIdentity:
    """Synthetic identity backend: the embedding is the RGB of the top-left pixel (so tests pick cosines)."""

    name = "pixel"

    def embed(self, images):
        return images[:, :, 0, 0].clone()


class RedStyle:
    """Synthetic style backend: the score of 'red' is the mean red channel mapped to [0, 1]."""

    name = "red"

    def supports(self, style):
        return style == "red"

    def style_score(self, images, style):
        return (images[:, 0].mean(dim=(1, 2)) + 1) / 2


def grid(pixels):
    """(S, V, 3) RGB values → (S, V, 3, 4, 4) constant images."""
    t = torch.tensor(pixels, dtype=torch.float32)
    return t[..., None, None].expand(*t.shape, 4, 4).contiguous()


# ---------------------------------------------------------------------------------------------- metrics
def test_identity_similarity_hand_values():
    before = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    after = torch.tensor([[1.0, 1.0, 0.0], [0.0, -3.0, 0.0]])
    torch.testing.assert_close(ev.identity_similarity(before, after), torch.tensor([R2, -1.0]))
    # With views: per-view cosines 1 and 0 average to 0.5.
    before_v = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    after_v = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    torch.testing.assert_close(ev.identity_similarity(before_v, after_v), torch.tensor([0.5]))
    with pytest.raises(InputError, match="differ"):
        ev.identity_similarity(before, after[:1])


def test_identity_diversity_hand_values():
    assert math.isclose(ev.identity_diversity(torch.eye(3)), 1.0, abs_tol=1e-6)  # orthogonal: distance 1
    assert math.isclose(ev.identity_diversity(torch.ones(4, 2)), 0.0, abs_tol=1e-6)  # collapsed: 0
    # Pairs (0°, 90°, 45°) apart: distances 1, 1 − 1/√2, 1 − 1/√2 → mean (3 − √2) / 3.
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert math.isclose(ev.identity_diversity(three), (3 - math.sqrt(2)) / 3, rel_tol=1e-5)
    with pytest.raises(InputError, match="at least 2"):
        ev.identity_diversity(torch.ones(1, 3))


def test_multiview_consistency_hand_values():
    views = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[3.0, 0.0], [1.0, 0.0]]])
    # Leave-one-out: subject 0's views are orthogonal → 0 (the view is not in its own reference);
    # subject 1's views agree → 1.
    torch.testing.assert_close(ev.multiview_consistency(views), torch.tensor([0.0, 1.0]))
    # The biased all-views mean counts each view in its own reference: orthogonal views get 1/√2.
    torch.testing.assert_close(ev.multiview_consistency(views, "mean"), torch.tensor([R2, 1.0]))
    # Front reference: subject 0's other view is orthogonal to the front.
    torch.testing.assert_close(ev.multiview_consistency(views, "front"), torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError):
        ev.multiview_consistency(torch.ones(2, 3))
    with pytest.raises(InputError, match="V ≥ 2"):
        ev.multiview_consistency(torch.ones(2, 1, 3))
    with pytest.raises(ConfigError):
        ev.multiview_consistency(views, "median")


def test_leave_one_out_consistency_scores_orthogonal_views_zero_for_any_view_count():
    for v in (2, 3, 5, 8):
        orthogonal = torch.eye(8)[:v][None]  # one subject, V mutually orthogonal views
        assert float(ev.multiview_consistency(orthogonal)) == pytest.approx(0.0, abs=1e-6)
        assert float(ev.multiview_consistency(orthogonal, "mean")) == pytest.approx(1 / math.sqrt(v), rel=1e-5)
    # Three views: two agree, the third is orthogonal. View 0 and 1 each see (1 + 0)/… → cos 1/√2; view 2 sees 0.
    three = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    assert float(ev.multiview_consistency(three)) == pytest.approx((R2 + R2 + 0.0) / 3, rel=1e-5)


def test_reidentify_hand_values_ranks_ties_and_margin():
    # Three originals along x, y, z; the stylized heads are rotated toward the wrong one in the third case.
    originals = torch.eye(3)
    stylized = torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.0], [0.0, 1.0, 0.5]])
    reid = ev.reidentify(stylized, originals)
    assert (reid.queries, reid.candidates, reid.chance) == (3, 3, pytest.approx(1 / 3))
    assert reid.ranks == [1, 1, 2] and reid.top1 == pytest.approx(2 / 3)
    unit = torch.nn.functional.normalize(stylized, dim=-1)
    assert reid.matched == pytest.approx(unit.diagonal().tolist(), rel=1e-5)
    mismatched = [(float(unit[i].sum()) - float(unit[i, i])) / 2 for i in range(3)]
    assert reid.mismatched == pytest.approx(mismatched, rel=1e-5)
    assert reid.margin_mean == pytest.approx(sum(unit.diagonal().tolist()) / 3 - sum(mismatched) / 3, rel=1e-5)
    assert reid.top1_per_view is None

    # Everyone collapsed onto one face: every cosine ties, so nobody is re-identified (not 1/N, not 1).
    collapsed = ev.reidentify(torch.ones(4, 4), torch.eye(4))
    assert collapsed.top1 == 0.0 and collapsed.ranks == [4, 4, 4, 4]
    # A perfect stylization (after == before) is re-identified every time, with margin 1 − 0 for orthogonal heads.
    perfect = ev.reidentify(torch.eye(4), torch.eye(4))
    assert perfect.top1 == 1.0 and perfect.margin_mean == pytest.approx(1.0)


def test_reidentify_with_views_and_distractors():
    # 2 queries × 2 views; the gallery has their 2 originals + 1 distractor that looks like query 0 from view 1.
    originals = torch.tensor([[[1.0, 0, 0], [1.0, 0, 0]], [[0, 1.0, 0], [0, 1.0, 0]], [[0, 0, 1.0], [0.9, 0, 0.1]]])
    stylized = torch.tensor([[[1.0, 0, 0.2], [1.0, 0, 0.2]], [[0, 1.0, 0], [0, 1.0, 0]]])
    reid = ev.reidentify(stylized, originals)
    assert reid.candidates == 3 and reid.chance == pytest.approx(1 / 3)
    assert reid.ranks == [1, 1] and reid.top1 == 1.0
    # Per view: query 0's view 1, (1, 0, .2), is closer to the distractor's view 1, (.9, 0, .1) (cos 0.996), than
    # to its own original's (1, 0, 0) (cos 0.981): one miss in four, while the mean-over-views ranks stay 1.
    assert reid.top1_per_view == pytest.approx(3 / 4)
    with pytest.raises(InputError, match="N ≥ 2"):
        ev.reidentify(torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(InputError, match="same V and D"):
        ev.reidentify(torch.ones(2, 2, 3), torch.ones(2, 3, 3))
    with pytest.raises(InputError, match="N ≥ queries"):
        ev.reidentify(torch.ones(3, 3), torch.ones(2, 3))


def test_cross_similarity_is_the_mean_cosine_of_different_subjects():
    assert ev.cross_similarity(torch.eye(3)) == pytest.approx(0.0)
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert ev.cross_similarity(three) == pytest.approx((0 + R2 + R2) / 3, rel=1e-5)
    views = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])  # per-view cosines 1 and 0
    assert ev.cross_similarity(views) == pytest.approx(0.5)
    with pytest.raises(InputError):
        ev.cross_similarity(torch.ones(1, 2))


# ---------------------------------------------------------------------------------------------- registry
def test_registry_register_get_replace_and_errors():
    ev.register_identity_backend("pixel-test", PixelIdentity, replace=True)
    assert isinstance(ev.get_identity_backend("pixel-test"), PixelIdentity)
    assert {"embedded", "pixel-test"} <= set(ev.identity_backend_names())
    with pytest.raises(ConfigError, match="already registered"):
        ev.register_identity_backend("pixel-test", PixelIdentity)
    with pytest.raises(ConfigError, match="unknown identity backend 'nope'.*embedded"):
        ev.get_identity_backend("nope")
    ev.register_style_backend("broken-test", lambda: object(), replace=True)
    with pytest.raises(ConfigError, match="lacks the StyleBackend"):
        ev.get_style_backend("broken-test")
    with pytest.raises(ConfigError):
        ev.register_style_backend("x", "not callable")


def test_style_score_delegates_and_refuses_unknown_styles():
    images = grid([[[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]]).flatten(0, 1)
    torch.testing.assert_close(ev.style_score(images, "red", RedStyle()), torch.tensor([1.0, 0.0]))
    with pytest.raises(ConfigError, match="blue"):
        ev.style_score(images, "blue", RedStyle())


# ---------------------------------------------------------------------------------------------- evaluate_renders
def test_evaluate_renders_hand_computed_report():
    # 2 subjects × 2 views; before: subject 0 along x, subject 1 along y (both views identical).
    before = grid([[[1, 0, 0], [1, 0, 0]], [[0, 1, 0], [0, 1, 0]]])
    # after: subject 0 turns 45° toward y in view 1 only; subject 1 is unchanged.
    after = grid([[[1, 0, 0], [1, 1, 0]], [[0, 1, 0], [0, 1, 0]]])
    report = ev.evaluate_renders(before, after, "red", PixelIdentity(), RedStyle())
    assert (report.subjects, report.views, report.identity_backend, report.style_backend) == (2, 2, "pixel", "red")
    assert report.identity_similarity == pytest.approx([(1 + R2) / 2, 1.0])
    assert report.diversity_before == pytest.approx(1.0)
    # After: subject 0's mean direction is 22.5° from x, so its distance to y is 1 − sin(22.5°).
    assert report.diversity_after == pytest.approx(1 - math.sin(math.radians(22.5)), rel=1e-5)
    assert report.diversity_ratio == pytest.approx(report.diversity_after / report.diversity_before)
    assert report.consistency_before == pytest.approx([1.0, 1.0])
    # Leave-one-out: subject 0's two views are 45° apart, each is compared with the other.
    assert report.consistency_after == pytest.approx([R2, 1.0], rel=1e-5)
    # Re-identification: each stylized head is nearest to its own original (chance 1/2). Per view, subject 0's
    # view 1 is exactly between x and y: a tie, which counts as a miss → 3 of 4 views.
    assert (report.reid_top1, report.reid_top1_per_view, report.reid_top1_reverse) == (1.0, 0.75, 1.0)
    assert report.reid_chance == 0.5 and report.reid_candidates == 2 and report.reid_ranks == [1, 1]
    # Mismatched: subject 0 after vs subject 1 before: views (x·y = 0, (1,1)/√2·y = 1/√2) → R2/2; subject 1: 0.
    assert report.identity_mismatched_mean == pytest.approx((R2 / 2 + 0.0) / 2, rel=1e-5)
    assert report.identity_margin == pytest.approx([(1 + R2) / 2 - R2 / 2, 1.0], rel=1e-5)
    assert report.original_cross_similarity == pytest.approx(0.0, abs=1e-6) and report.gallery is None
    # Red channel 1 → score 1, red 0 → score 0.5: before (1, 1, 0.5, 0.5), after per subject (1, 0.5).
    assert report.style_score_before_mean == pytest.approx(0.75)
    assert report.style_score_after == pytest.approx([1.0, 0.5])
    assert report.style_score_after_mean == pytest.approx(0.75)
    json.dumps(report.to_dict(), allow_nan=False)


def test_evaluate_renders_single_subject_and_unsupported_style_are_json_safe():
    one = grid([[[1, 0, 0], [0, 1, 0]]])
    report = ev.evaluate_renders(one, one, "blue", PixelIdentity(), RedStyle())
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["diversity_before"] is None and data["style_score_after_mean"] is None
    assert data["reid_top1"] is None and data["identity_margin_mean"] is None
    assert any("blue" in note for note in data["notes"]) and any("2 subjects" in note for note in data["notes"])
    assert any("re-identification" in note for note in data["notes"])
    assert ev.evaluate_renders(one, one, "red", PixelIdentity(), None).style_backend is None


def test_evaluate_renders_gallery_makes_one_head_re_identifiable():
    # One head along x (views x, x); after stylization it drifted toward y. Gallery: a y head and a z head.
    before = grid([[[1, 0, 0], [1, 0, 0]]])
    drifted = grid([[[1, 0.8, 0], [1, 0.8, 0]]])
    gallery = ev.IdentityGallery(before=torch.tensor([[[0.0, 1, 0], [0, 1, 0]], [[0.0, 0, 1], [0, 0, 1]]]),
                                 after=torch.tensor([[[0.0, 1, 0], [0, 1, 0]], [[0.0, 0, 1], [0, 0, 1]]]), label="two others")
    report = ev.evaluate_renders(before, drifted, "red", PixelIdentity(), None, gallery=gallery)
    assert report.gallery == "two others" and report.reid_candidates == 3 and report.reid_chance == pytest.approx(1 / 3)
    cos_x = 1 / math.sqrt(1 + 0.8**2)
    assert report.identity_similarity_mean == pytest.approx(cos_x, rel=1e-5)
    assert report.reid_top1 == 1.0  # cos to x (0.78) beats cos to y (0.62)
    assert report.identity_margin_mean == pytest.approx(cos_x - (0.8 * cos_x + 0.0) / 2, rel=1e-5)
    # Drifted past the diagonal: now closer to the y head, so the raw cosine is still 0.6 but re-id fails.
    past = grid([[[1, 1.3, 0], [1, 1.3, 0]]])
    failed = ev.evaluate_renders(before, past, "red", PixelIdentity(), None, gallery=gallery)
    assert failed.identity_similarity_mean > 0.6 and failed.reid_top1 == 0.0 and failed.reid_ranks == [2]
    with pytest.raises(InputError, match="identity gallery"):
        ev.evaluate_renders(before, past, "red", PixelIdentity(), None, gallery=ev.IdentityGallery(torch.ones(2, 3, 3)))


class FaceFindingPixelIdentity(PixelIdentity):
    """Like PixelIdentity, but 'finds no face' (NaN row) where the top-left pixel's blue channel is 1."""

    name = "face-finding"

    def embed(self, images):
        out = super().embed(images)
        out[images[:, 2, 0, 0] == 1] = float("nan")
        return out


def test_evaluate_renders_measures_identity_on_views_where_every_head_has_a_face():
    # Two heads × three views. View 1 has no face for head 1 after stylization, view 2 none anywhere.
    # Views 0 and 1 would match perfectly; on view 1 head 0's stylized render is head 1's face.
    nf = [0, 0, 1]  # blue = 1: "no face"
    before = grid([[[1, 0, 0], [1, 0, 0], nf], [[0, 1, 0], [0, 1, 0], nf]])
    after = grid([[[1, 0, 0], [0, 1, 0], nf], [[0, 1, 0], nf, nf]])
    report = ev.evaluate_renders(before, after, "red", FaceFindingPixelIdentity(), None)
    assert report.identity_views == [0]
    assert report.faces_found_before == pytest.approx(4 / 6) and report.faces_found_after == pytest.approx(3 / 6)
    # Measured on view 0 alone: both heads keep their identity exactly; no NaN leaks into any number.
    assert report.identity_similarity == pytest.approx([1.0, 1.0]) and report.reid_top1 == 1.0
    assert report.identity_margin_mean == pytest.approx(1.0)
    assert math.isfinite(report.diversity_after) and math.isnan(report.consistency_after_mean)
    assert any("views [1, 2]" in n for n in report.notes)
    # A gallery head without a face in view 0 removes that view too: nothing left to measure.
    gallery = ev.IdentityGallery(before=torch.tensor([[[float("nan")] * 3] * 3]))
    none = ev.evaluate_renders(before, after, "red", FaceFindingPixelIdentity(), None, gallery=gallery)
    assert none.identity_views == [] and none.reid_top1 is None
    assert math.isnan(none.identity_similarity_mean) and any("no view with a face" in n for n in none.notes)
    assert json.loads(json.dumps(none.to_dict()))["identity_similarity_mean"] is None
    # A backend that embeds everything keeps every view.
    full = ev.evaluate_renders(before, after, "red", PixelIdentity(), None)
    assert full.identity_views == [0, 1, 2] and full.faces_found_after == 1.0


def test_evaluate_renders_rejects_bad_shapes():
    good = grid([[[1, 0, 0]], [[0, 1, 0]]])
    with pytest.raises(InputError, match="before"):
        ev.evaluate_renders(good[0], good, "red", PixelIdentity(), None)
    with pytest.raises(InputError, match="subjects × views"):
        ev.evaluate_renders(good, good[:1], "red", PixelIdentity(), None)


# ---------------------------------------------------------------------------------------------- embedded backends
@pytest.mark.slow
def test_embedded_backends_on_world_renders():
    from engine.generator.camera import CameraConfig, cameras_at
    from engine.pack import pack_paths
    from engine.world import render_heads, sample_identities

    paths = pack_paths()
    if not (paths.identity_encoder.is_file() and paths.style_classifier.is_file()):
        pytest.skip(f"trained recognition models not in the pack ({paths.identity_encoder.parent})")
    s, yaws = 6, torch.tensor([0.0, 0.6, -0.6])
    people = sample_identities(s, torch.Generator().manual_seed(777)).repeat_interleave(len(yaws), dim=0)
    cams = cameras_at(yaws.repeat(s), 0.0, CameraConfig(pivot=(0.0, 0.0, 0.0))).c

    def renders(style):
        return render_heads(people, cams, 64, style, background="plain")["image"].view(s, len(yaws), 3, 64, 64)

    report = ev.evaluate_renders(renders("photo"), renders("statue"), "statue")
    assert report.identity_backend == "embedded" and report.style_backend == "embedded"
    # Seed-0 pack measured: style score 0.9987 after vs 0.00004 before, identity similarity 0.934,
    # leave-one-out consistency 0.951 after, diversity 1.086 before (ratio 0.925); every statue is
    # re-identified among the 6 photos (chance 1/6) with margin 0.985 (different photos: cosine −0.087).
    assert report.style_score_after_mean > 0.8 > 0.2 > report.style_score_before_mean
    assert report.identity_similarity_mean > 0.75
    assert report.reid_top1 >= 5 / 6 and report.reid_top1_reverse >= 5 / 6 and report.identity_margin_mean > 0.5
    assert report.original_cross_similarity < 0.3
    assert report.consistency_after_mean > 0.85 and report.diversity_before > 0.6
    assert 0.6 < report.diversity_ratio < 1.3
