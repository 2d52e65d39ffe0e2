"""Measure a stylization: is each person still recognisable, are people still distinct, do the views agree,
and does the result show the style?

The measures need an identity embedding (ArcFace in the paper) and a style score (CLIP in the paper). Both
are *backends* behind two small protocols, looked up by name in a registry, so the same code runs with the
embedded pack's networks (:mod:`engine.evaluate.recognition`, no downloads; the default ``"embedded"``) or with
full-size models a user has on disk.

Metrics (all on cosine similarity of embeddings):

* ``identity_similarity(before, after)``: per subject, cosine between the embedding of the unstylized and the
  stylized render of the same latent (averaged over views when views are given). This raw cosine has **no
  control**: the pack's encoder gives different people cosines of 0.7–0.85 too, so a high value alone says
  nothing. Read it next to:
* ``reidentify(queries, gallery)``: the control. Each query (a stylized head) is matched among all candidates
  of a gallery (the originals; candidate ``i`` is the true match of query ``i``, any further candidates are
  distractors) by the cosine of the mean-over-views embeddings. **top-1** = fraction of queries whose true
  candidate is strictly the most similar (ties count as misses, so a collapse onto one face scores 0);
  chance = 1/N for N candidates. Also **per-view top-1** (each view matched among the same view of every
  candidate, so pose never helps) and the **margin**: matched cosine minus the mean cosine to the other
  candidates (per-view cosines averaged over views, so the matched part equals ``identity_similarity``).
  A margin near 0 means the cosine is what any two heads get.
* ``identity_diversity(embeddings)``: mean pairwise cosine *distance* (1 − cos) between subjects. Stylization
  tends to collapse everyone onto one "style face"; the report gives it before and after and their ratio
  (after / before; 1 = as diverse as before).
* ``multiview_consistency(embeddings)``: per subject, mean cosine of each view to the normalised mean of the
  subject's *other* views (leave-one-out; V ≥ 2): views that share nothing score 0. (Counting a view inside
  its own reference, as an earlier version did, gave orthogonal views 1/√V.)
* ``style_score(images, style, backend)``: (N,) how strongly each image shows ``style``.

Adding a backend (e.g. ArcFace exported to ONNX, or CLIP): write a class with the protocol's methods and
register a factory for it; nothing is downloaded, the user points at local files::

    import numpy as np, onnxruntime, torch
    from engine.evaluate.metrics import register_identity_backend, get_identity_backend

    class ArcFaceOnnx:
        name = "arcface-onnx"

        def __init__(self, model_path: str):
            self.session = onnxruntime.InferenceSession(model_path)
            self.input_name = self.session.get_inputs()[0].name

        def embed(self, images: torch.Tensor) -> torch.Tensor:  # (N, 3, H, W) in [-1, 1]
            x = torch.nn.functional.interpolate(images, size=(112, 112), mode="bilinear", antialias=True)
            out = self.session.run(None, {self.input_name: x.cpu().numpy().astype(np.float32)})[0]
            return torch.nn.functional.normalize(torch.from_numpy(out), dim=-1)

    register_identity_backend("arcface-onnx", ArcFaceOnnx)
    backend = get_identity_backend("arcface-onnx", model_path="/models/arcface_r100.onnx")

A CLIP style backend is the same shape: ``style_score`` embeds the images and the style's prompt (e.g. from
``engine.world.STYLES[style].prompt`` or any text) with a local ``transformers.CLIPModel.from_pretrained(
path, local_files_only=True)`` and returns the softmax probability of the style prompt against a neutral
prompt ("a photo of a head"); ``supports`` returns True for every style. Register it with
``register_style_backend("clip", factory)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, InputError
from .face_recognition import DlibFaceBackend
from .recognition import load_identity_encoder, load_style_classifier
from .recognition.preprocess import check_images


# ==================================================================================================
# Backend protocols and registry
# ==================================================================================================
@runtime_checkable
class IdentityBackend(Protocol):
    """Maps head images to identity embeddings; cosine similarity compares them."""

    name: str

    def embed(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) in [-1, 1], any size → (N, D) embeddings (normalised or not)."""
        ...


@runtime_checkable
class StyleBackend(Protocol):
    """Scores how strongly head images show a named style."""

    name: str

    def supports(self, style: str) -> bool:
        """Whether :meth:`style_score` can score ``style``."""
        ...

    def style_score(self, images: Tensor, style: str) -> Tensor:
        """(N, 3, H, W) in [-1, 1] → (N,) score, higher = more of ``style`` (a probability for the embedded one)."""
        ...


IdentityFactory = Callable[..., IdentityBackend]
StyleFactory = Callable[..., StyleBackend]
_IDENTITY_BACKENDS: dict[str, IdentityFactory] = {}
_STYLE_BACKENDS: dict[str, StyleFactory] = {}


def _register(table: dict, kind: str, name: str, factory: Callable, replace: bool) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{kind} backend name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise ConfigError(f"{kind} backend {name!r}: factory must be callable, got {type(factory).__name__}")
    if name in table and not replace:
        raise ConfigError(f"{kind} backend {name!r} is already registered (pass replace=True to override it)")
    table[name] = factory


def _get(table: dict, kind: str, name: str, protocol: type, kwargs: dict) -> Any:
    factory = table.get(name)
    if factory is None:
        raise ConfigError(f"unknown {kind} backend {name!r}; registered: {', '.join(sorted(table)) or 'none'}")
    backend = factory(**kwargs)
    if not isinstance(backend, protocol):
        raise ConfigError(f"{kind} backend {name!r}: factory returned a {type(backend).__name__}, "
                          f"which lacks the {protocol.__name__} methods")
    return backend


def register_identity_backend(name: str, factory: IdentityFactory, *, replace: bool = False) -> None:
    """Make ``get_identity_backend(name, **kw)`` call ``factory(**kw)``."""
    _register(_IDENTITY_BACKENDS, "identity", name, factory, replace)


def register_style_backend(name: str, factory: StyleFactory, *, replace: bool = False) -> None:
    """Make ``get_style_backend(name, **kw)`` call ``factory(**kw)``."""
    _register(_STYLE_BACKENDS, "style", name, factory, replace)


def get_identity_backend(name: str = "embedded", **kwargs: Any) -> IdentityBackend:
    return _get(_IDENTITY_BACKENDS, "identity", name, IdentityBackend, kwargs)


def get_style_backend(name: str = "embedded", **kwargs: Any) -> StyleBackend:
    return _get(_STYLE_BACKENDS, "style", name, StyleBackend, kwargs)


def identity_backend_names() -> list[str]:
    return sorted(_IDENTITY_BACKENDS)


def style_backend_names() -> list[str]:
    return sorted(_STYLE_BACKENDS)


# ==================================================================================================
# Embedded backends (the pack's recognition networks)
# ==================================================================================================
def _pack_file(attribute: str) -> Path:
    from ..pack import pack_paths  # imported late: the pack module is optional for custom backends

    return getattr(pack_paths(), attribute)


class EmbeddedIdentityBackend:
    """The pack's identity encoder. ``path`` defaults to ``pack_paths().identity_encoder``."""

    name = "embedded"

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu"):
        self.path = Path(path) if path is not None else _pack_file("identity_encoder")
        self.model = load_identity_encoder(self.path, device)

    def embed(self, images: Tensor) -> Tensor:
        return self.model.embed(images).cpu()


class EmbeddedStyleBackend:
    """The pack's style classifier; scores are softmax probabilities over its styles."""

    name = "embedded"

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu"):
        self.path = Path(path) if path is not None else _pack_file("style_classifier")
        self.model = load_style_classifier(self.path, device)

    @property
    def styles(self) -> tuple[str, ...]:
        return self.model.styles

    def supports(self, style: str) -> bool:
        return style in self.model.styles

    def style_score(self, images: Tensor, style: str) -> Tensor:
        return self.model.style_score(images, style).cpu()


register_identity_backend("embedded", EmbeddedIdentityBackend)
register_style_backend("embedded", EmbeddedStyleBackend)
register_identity_backend("dlib-face", DlibFaceBackend)


# ==================================================================================================
# Metrics
# ==================================================================================================
def _unit(embeddings: Tensor, name: str) -> Tensor:
    if not isinstance(embeddings, Tensor) or embeddings.dim() < 2 or not embeddings.is_floating_point():
        raise InputError(f"{name} must be a floating tensor of embeddings (..., D)")
    return F.normalize(embeddings.float(), dim=-1)


def identity_similarity(before: Tensor, after: Tensor) -> Tensor:
    """(S,) cosine between each subject's embedding before and after stylization.

    ``before``/``after`` are (S, D), or (S, V, D) with views (then the per-view cosines are averaged).
    """
    if before.shape != after.shape:
        raise InputError(f"identity_similarity: before {tuple(before.shape)} and after {tuple(after.shape)} differ")
    cos = (_unit(before, "before") * _unit(after, "after")).sum(-1)
    return cos.mean(dim=1) if cos.dim() == 2 else cos


def subject_embeddings(embeddings: Tensor) -> Tensor:
    """(S, D) unit vectors: (S, D) normalised, or the normalised mean over views of (S, V, D)."""
    unit = _unit(embeddings, "embeddings")
    return F.normalize(unit.mean(dim=1), dim=-1) if unit.dim() == 3 else unit


def identity_diversity(embeddings: Tensor) -> float:
    """Mean pairwise cosine distance (1 − cos) between distinct subjects; (S, D) or (S, V, D), S ≥ 2."""
    unit = subject_embeddings(embeddings)
    s = unit.shape[0]
    if s < 2:
        raise InputError(f"identity_diversity needs at least 2 subjects, got {s}")
    cos = unit @ unit.T
    pairs = torch.triu_indices(s, s, offset=1)
    return float((1.0 - cos[pairs[0], pairs[1]]).mean())


def multiview_consistency(embeddings: Tensor, reference: str = "leave-one-out", front_index: int = 0) -> Tensor:
    """(S,) per subject, mean cosine of its views to a reference embedding; ``embeddings`` is (S, V, D), V ≥ 2.

    ``reference="leave-one-out"`` (default): each view against the normalised mean of the subject's *other*
    V − 1 views, so views that share nothing score 0 and identical views 1. ``"mean"``: against the mean of
    all V views, the view itself included (biased upward: V orthogonal views score 1/√V; kept for
    comparison with old numbers). ``"front"``: view ``front_index``, averaged over the other V − 1 views.
    """
    unit = _unit(embeddings, "embeddings")
    if unit.dim() != 3:
        raise InputError(f"multiview_consistency needs (S, V, D) embeddings, got {tuple(embeddings.shape)}")
    views = unit.shape[1]
    if reference == "leave-one-out":
        if views < 2:
            raise InputError(f"multiview_consistency: leave-one-out needs V ≥ 2 views, got V = {views}")
        others = F.normalize(unit.sum(dim=1, keepdim=True) - unit, dim=-1)  # a zero sum stays 0 → cosine 0
        return (unit * others).sum(-1).mean(dim=1)
    if reference == "mean":
        ref = F.normalize(unit.mean(dim=1, keepdim=True), dim=-1)
        return (unit * ref).sum(-1).mean(dim=1)
    if reference == "front":
        if views < 2 or not -views <= front_index < views:
            raise InputError(f"multiview_consistency: front_index {front_index} needs V ≥ 2 views, got V = {views}")
        front = front_index % views
        cos = (unit * unit[:, front : front + 1]).sum(-1)
        others = torch.ones(views, dtype=torch.bool)
        others[front] = False
        return cos[:, others].mean(dim=1)
    raise ConfigError(f"multiview_consistency: reference must be 'leave-one-out', 'mean' or 'front', got {reference!r}")


# ==================================================================================================
# Re-identification: the control for the identity cosine
# ==================================================================================================
@dataclass
class Reidentification:
    """How well each query finds its own candidate among N (see :func:`reidentify`)."""

    queries: int
    candidates: int  # N: true candidates + distractors
    chance: float  # 1 / N: top-1 of a random guess
    top1: float  # fraction of queries whose true candidate is strictly the most similar (mean-over-views embeddings)
    ranks: list[int]  # 1-based rank of the true candidate per query (ties ranked against it)
    top1_per_view: float | None  # each view matched among the same view of every candidate; None without views
    matched: list[float]  # per query: cosine to its true candidate (per-view cosines averaged over views)
    mismatched: list[float]  # per query: mean cosine to the other N − 1 candidates (same averaging)
    margin: list[float]  # matched − mismatched
    matched_mean: float
    mismatched_mean: float
    margin_mean: float

    def to_dict(self) -> dict[str, Any]:
        return _finite_or_none(asdict(self))


def _check_pair(queries: Tensor, gallery: Tensor) -> tuple[Tensor, Tensor]:
    q, g = _unit(queries, "queries"), _unit(gallery, "gallery")
    if q.dim() not in (2, 3) or q.dim() != g.dim() or q.shape[1:] != g.shape[1:]:
        raise InputError(f"reidentify: queries {tuple(queries.shape)} and gallery {tuple(gallery.shape)} must both be "
                         "(S, D) or (S, V, D) with the same V and D")
    s, n = q.shape[0], g.shape[0]
    if s < 1 or n < 2 or n < s:
        raise InputError(f"reidentify needs at least one query and N ≥ 2 candidates with N ≥ queries, got {s} queries, {n} candidates")
    return q, g


def _ranks(similarity: Tensor) -> Tensor:
    """(…, S, N) similarities whose true column for row i is i → (…, S) 1-based ranks; a tie ranks below."""
    s = similarity.shape[-2]
    idx = torch.arange(s)
    true = similarity[..., idx, idx]  # (…, S)
    at_least = (similarity >= true.unsqueeze(-1)).sum(-1)  # counts the true candidate itself once
    return at_least  # rank 1 only when every other candidate is strictly less similar


def reidentify(queries: Tensor, gallery: Tensor) -> Reidentification:
    """Match each query among all candidates of ``gallery`` by identity-embedding cosine.

    ``queries`` (S, D) or (S, V, D); ``gallery`` (N, D) or (N, V, D) with N ≥ S and N ≥ 2, where candidate
    ``i`` is the true match of query ``i`` and candidates S…N−1 are distractors (heads nobody is looking
    for). With views, ranks use the normalised mean over views of each head's unit embeddings; per-view
    top-1 matches view v of a query among view v of every candidate. Matched / mismatched cosines are the
    per-view cosines averaged over views, so ``matched`` equals :func:`identity_similarity`.
    """
    q, g = _check_pair(queries, gallery)
    s, n = q.shape[0], g.shape[0]
    ranks = _ranks(subject_embeddings(q) @ subject_embeddings(g).T)
    if q.dim() == 3:
        per_view = torch.einsum("svd,nvd->vsn", q, g)  # (V, S, N)
        top1_per_view: float | None = float((_ranks(per_view) == 1).float().mean())
        cos = per_view.mean(dim=0)
    else:
        top1_per_view = None
        cos = q @ g.T
    idx = torch.arange(s)
    matched = cos[idx, idx]
    others = torch.ones(s, n, dtype=torch.bool)
    others[idx, idx] = False
    mismatched = cos.masked_fill(~others, 0.0).sum(-1) / (n - 1)
    margin = matched - mismatched
    return Reidentification(
        queries=s,
        candidates=n,
        chance=1.0 / n,
        top1=float((ranks == 1).float().mean()),
        ranks=[int(r) for r in ranks],
        top1_per_view=top1_per_view,
        matched=matched.tolist(),
        mismatched=mismatched.tolist(),
        margin=margin.tolist(),
        matched_mean=float(matched.mean()),
        mismatched_mean=float(mismatched.mean()),
        margin_mean=float(margin.mean()),
    )


def cross_similarity(embeddings: Tensor) -> float:
    """Mean cosine between *different* subjects of one set ((S, D) or (S, V, D), per-view cosines averaged
    over views; S ≥ 2): what the encoder gives two people who are not the same (the baseline of a cosine)."""
    unit = _unit(embeddings, "embeddings")
    s = unit.shape[0]
    if s < 2:
        raise InputError(f"cross_similarity needs at least 2 subjects, got {s}")
    cos = torch.einsum("svd,nvd->sn", unit, unit) / unit.shape[1] if unit.dim() == 3 else unit @ unit.T
    pairs = torch.triu_indices(s, s, offset=1)
    return float(cos[pairs[0], pairs[1]].mean())


def style_score(images: Tensor, style: str, backend: StyleBackend | str = "embedded") -> Tensor:
    """(N,) score of ``style`` for each image, from ``backend`` (an object or a registered name)."""
    backend = get_style_backend(backend) if isinstance(backend, str) else backend
    if not backend.supports(style):
        raise ConfigError(f"style backend {backend.name!r} cannot score style {style!r}")
    return backend.style_score(check_images(images), style)


# ==================================================================================================
# One call for a before/after set of renders
# ==================================================================================================
def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


@dataclass
class IdentityGallery:
    """Distractor heads for re-identification: identity embeddings of K *other* heads from the same V views,
    unstylized (``before``, (K, V, D)) and, optionally, stylized (``after``). They make the matching harder
    than among the evaluated subjects alone (chance 1/(S + K)), and let a single head (``engine head``) be
    re-identified at all. ``label`` says where they come from (it is copied into the report)."""

    before: Tensor
    after: Tensor | None = None
    label: str = ""

    def validate(self, views: int, dim: int) -> "IdentityGallery":
        for name in ("before", "after"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, Tensor) or value.dim() != 3 or tuple(value.shape[1:]) != (views, dim):
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise InputError(f"identity gallery {name} must be (K, {views}, {dim}) embeddings, got {shape}")
        if self.after is not None and self.after.shape[0] != self.before.shape[0]:
            raise InputError("identity gallery before and after must hold the same heads")
        return self


@dataclass
class EvaluationReport:
    """Measures of one stylization on S subjects × V views (``to_dict`` is JSON-safe: NaN → null).

    Identity is reported as the raw cosine (``identity_similarity``) *with its controls*: the re-identification
    top-1 of each stylized head among the originals (``reid_top1``, chance ``reid_chance``), the same per view,
    the reverse direction (each original among the stylized heads: catches a collapse onto one face), the
    margin over mismatched pairs and the cosine two different originals get (``original_cross_similarity``).
    """

    style: str
    subjects: int
    views: int
    identity_backend: str
    style_backend: str | None
    identity_similarity: list[float]  # per subject, before vs after (raw cosine: read with the controls below)
    identity_similarity_mean: float
    reid_top1: float | None  # stylized → originals (+ gallery originals), mean-over-views embeddings
    reid_top1_per_view: float | None
    reid_top1_reverse: float | None  # originals → stylized (+ gallery stylized)
    reid_chance: float | None  # 1 / candidates
    reid_candidates: int | None
    reid_ranks: list[int] | None  # per subject, rank of its own original
    identity_mismatched_mean: float | None  # mean cosine of a stylized head to the other originals
    identity_margin: list[float] | None  # per subject: matched − mean mismatched cosine
    identity_margin_mean: float | None
    original_cross_similarity: float | None  # mean cosine between two different originals (the encoder's floor)
    gallery: str | None  # where the distractors come from (None: the subjects only)
    diversity_before: float
    diversity_after: float
    diversity_ratio: float  # after / before
    consistency_before: list[float]  # per subject, leave-one-out multi-view consistency
    consistency_after: list[float]
    consistency_before_mean: float
    consistency_after_mean: float
    style_score_before_mean: float | None = None
    style_score_after_mean: float | None = None
    style_score_after: list[float] | None = None  # per subject, mean over views
    # Backends that find a face first (dlib-face) embed only renders with one; the others embed every render.
    faces_found_before: float = 1.0  # fraction of the renders the identity backend could embed
    faces_found_after: float = 1.0
    identity_views: list[int] | None = None  # the views the identity measures use (every head has a face there)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _finite_or_none(asdict(self))


def _check_render_grid(images: Tensor, name: str) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 5 or images.shape[2] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"{name} must be a (subjects, views, 3, H, W) tensor in [-1, 1], got {shape}")
    check_images(images.flatten(0, 1), name)
    return images


def embed_renders(images: Tensor, backend: IdentityBackend | str = "embedded") -> Tensor:
    """(S, V, 3, H, W) renders → (S, V, D) unit identity embeddings from ``backend``."""
    images = _check_render_grid(images, "images")
    backend = get_identity_backend(backend) if isinstance(backend, str) else backend
    s, v = images.shape[:2]
    return F.normalize(backend.embed(images.flatten(0, 1)).float().cpu(), dim=-1).reshape(s, v, -1)


def found_fraction(embeddings: Tensor) -> float:
    """Fraction of the (…, D) embeddings that are finite (a face-finding backend leaves NaN where none was found)."""
    return float(torch.isfinite(embeddings).all(dim=-1).float().mean())


def views_with_faces(emb_before: Tensor, emb_after: Tensor, gallery: IdentityGallery | None = None) -> list[int]:
    """Indices of the views where every head — before, after and the gallery's — has a finite embedding.

    Identity is compared view by view and averaged over heads, so a view counts only when all heads have it:
    dropping a missing view for one head but not the others would compare different poses.
    """
    stacks = [emb_before, emb_after]
    if gallery is not None:
        stacks += [gallery.before] + ([gallery.after] if gallery.after is not None else [])
    ok = torch.stack([torch.isfinite(e).all(dim=-1).all(dim=0) for e in stacks]).all(dim=0)  # (V,)
    return [int(i) for i in torch.nonzero(ok).flatten()]


def _no_identity_measures(subjects: int) -> dict[str, Any]:
    nan = float("nan")
    return {"identity_similarity": [nan] * subjects, "identity_similarity_mean": nan, "gallery": None,
            "reid_top1": None, "reid_top1_per_view": None, "reid_chance": None, "reid_candidates": None,
            "reid_ranks": None, "identity_mismatched_mean": None, "identity_margin": None, "identity_margin_mean": None,
            "original_cross_similarity": None, "reid_top1_reverse": None}


def paired_similarity(backend: IdentityBackend, a: Tensor, b: Tensor) -> tuple[float, int]:
    """(mean cosine, views used) of two (K, 3, H, W) stacks of the same K views: view k of ``a`` against view k
    of ``b``, over the views where ``backend`` embeds both (a face-finding backend may miss some; NaN, 0 if
    it misses all)."""
    ea = F.normalize(backend.embed(check_images(a, "a")).float().cpu(), dim=-1)
    eb = F.normalize(backend.embed(check_images(b, "b")).float().cpu(), dim=-1)
    if ea.shape != eb.shape:
        raise InputError(f"paired_similarity: {tuple(a.shape)} and {tuple(b.shape)} are not the same views")
    both = torch.isfinite(ea).all(-1) & torch.isfinite(eb).all(-1)
    if not both.any():
        return float("nan"), 0
    return float((ea[both] * eb[both]).sum(-1).mean()), int(both.sum())


def identity_measures(emb_before: Tensor, emb_after: Tensor, gallery: IdentityGallery | None = None) -> dict[str, Any]:
    """The identity part of :class:`EvaluationReport` from (S, V, D) embeddings (+ distractors); see there."""
    if emb_before.shape != emb_after.shape or emb_before.dim() != 3:
        raise InputError(f"identity_measures: before {tuple(emb_before.shape)} and after {tuple(emb_after.shape)} "
                         "must be the same (S, V, D)")
    s, v, d = emb_before.shape
    if gallery is not None:
        gallery.validate(v, d)
    notes: list[str] = []
    similarity = identity_similarity(emb_before, emb_after)
    out: dict[str, Any] = {"identity_similarity": similarity.tolist(), "identity_similarity_mean": float(similarity.mean()),
                           "gallery": None if gallery is None else (gallery.label or f"{gallery.before.shape[0]} other heads")}
    originals = emb_before if gallery is None else torch.cat([emb_before, gallery.before.float()])
    if originals.shape[0] >= 2:
        reid = reidentify(emb_after, originals)
        out.update(reid_top1=reid.top1, reid_top1_per_view=reid.top1_per_view, reid_chance=reid.chance,
                   reid_candidates=reid.candidates, reid_ranks=reid.ranks, identity_mismatched_mean=reid.mismatched_mean,
                   identity_margin=reid.margin, identity_margin_mean=reid.margin_mean)
        out["original_cross_similarity"] = cross_similarity(originals)
    else:
        notes.append("re-identification needs at least 2 heads (subjects or gallery)")
        out.update(reid_top1=None, reid_top1_per_view=None, reid_chance=None, reid_candidates=None, reid_ranks=None,
                   identity_mismatched_mean=None, identity_margin=None, identity_margin_mean=None,
                   original_cross_similarity=None)
    stylized = emb_after if gallery is None or gallery.after is None else torch.cat([emb_after, gallery.after.float()])
    out["reid_top1_reverse"] = reidentify(emb_before, stylized).top1 if stylized.shape[0] >= 2 else None
    out["notes"] = notes
    return out


def evaluate_renders(
    before: Tensor,
    after: Tensor,
    style: str,
    identity_backend: IdentityBackend | str = "embedded",
    style_backend: StyleBackend | str | None = "embedded",
    gallery: IdentityGallery | None = None,
    identity_images: tuple[Tensor, Tensor] | None = None,
) -> EvaluationReport:
    """Evaluate renders of the same S latents from the same V cameras, unstylized (``before``) and
    stylized (``after``), both (S, V, 3, H, W) in [-1, 1] (H×W may differ between the two).

    ``identity_images``: (before, after) (S, V', 3, H', W') images identity is judged on instead, of the same S
    heads from their own V' views (head mode: the lit source and stylized meshes, engine/heads/lit_identity.py);
    a gallery then holds those views. Style is still scored on ``before`` / ``after``.

    ``gallery``: embeddings of other heads from the same views, used as re-identification distractors.
    Style scores are skipped (``None``, with a note) when ``style_backend`` is None or does not know
    ``style``; diversity needs S ≥ 2 subjects, multi-view consistency V ≥ 2 views, re-identification
    S + K ≥ 2 heads.
    """
    before, after = _check_render_grid(before, "before"), _check_render_grid(after, "after")
    if before.shape[:2] != after.shape[:2]:
        raise InputError(f"before has {tuple(before.shape[:2])} subjects × views but after has {tuple(after.shape[:2])}")
    s, v = before.shape[:2]
    ident = get_identity_backend(identity_backend) if isinstance(identity_backend, str) else identity_backend
    id_before, id_after = before, after
    if identity_images is not None:  # their own views (V may differ from the renders'), the same heads
        id_before = _check_render_grid(identity_images[0], "identity images before")
        id_after = _check_render_grid(identity_images[1], "identity images after")
        if id_before.shape[0] != s or id_before.shape[:2] != id_after.shape[:2]:
            raise InputError(f"identity images have {tuple(id_before.shape[:2])} / {tuple(id_after.shape[:2])} "
                             f"subjects × views; the renders have {s} subjects")
    v_id = id_before.shape[1]
    emb_before = embed_renders(id_before, ident)
    emb_after = embed_renders(id_after, ident)
    if gallery is not None:
        gallery.validate(v_id, emb_before.shape[-1])
    faces_before, faces_after = found_fraction(emb_before), found_fraction(emb_after)
    views = views_with_faces(emb_before, emb_after, gallery)
    notes: list[str] = []
    if len(views) < v_id:
        notes.append(f"the {ident.name} identity backend found no face in some heads' views "
                     f"{[i for i in range(v_id) if i not in views]}; identity is measured on views {views} of 0…{v_id - 1}")
    if views:
        emb_before, emb_after = emb_before[:, views], emb_after[:, views]
        if gallery is not None and len(views) < v_id:
            gallery = dataclasses.replace(gallery, before=gallery.before[:, views],
                                          after=None if gallery.after is None else gallery.after[:, views])
        identity = identity_measures(emb_before, emb_after, gallery)
        notes += identity.pop("notes")
    else:
        notes.append(f"the {ident.name} identity backend found no view with a face in every head: identity not measured")
        identity = _no_identity_measures(s)
    diversity_before = identity_diversity(emb_before) if s >= 2 and views else float("nan")
    diversity_after = identity_diversity(emb_after) if s >= 2 and views else float("nan")
    if s < 2:
        notes.append("diversity needs at least 2 subjects")
    if len(views) >= 2:
        consistency_before, consistency_after = multiview_consistency(emb_before), multiview_consistency(emb_after)
    else:
        consistency_before = consistency_after = torch.full((s,), float("nan"))
        notes.append("multi-view consistency needs at least 2 views")

    styler = get_style_backend(style_backend) if isinstance(style_backend, str) else style_backend
    score_before = score_after = score_after_subject = None
    if styler is None:
        notes.append("no style backend given; style scores skipped")
    elif not styler.supports(style):
        notes.append(f"style backend {styler.name!r} cannot score style {style!r}; style scores skipped")
    else:
        score_before = float(styler.style_score(before.flatten(0, 1), style).mean())
        per_image = styler.style_score(after.flatten(0, 1), style).reshape(s, v)
        score_after, score_after_subject = float(per_image.mean()), per_image.mean(dim=1).tolist()

    return EvaluationReport(
        style=style,
        subjects=s,
        views=v,
        identity_backend=ident.name,
        style_backend=None if styler is None else styler.name,
        **identity,
        diversity_before=diversity_before,
        diversity_after=diversity_after,
        diversity_ratio=diversity_after / diversity_before if diversity_before > 0 else float("nan"),
        consistency_before=consistency_before.tolist(),
        consistency_after=consistency_after.tolist(),
        consistency_before_mean=float(consistency_before.mean()),
        consistency_after_mean=float(consistency_after.mean()),
        style_score_before_mean=score_before,
        style_score_after_mean=score_after,
        style_score_after=score_after_subject,
        faces_found_before=faces_before,
        faces_found_after=faces_after,
        identity_views=views,
        notes=notes,
    )
