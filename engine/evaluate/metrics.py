"""Measure a stylization: is each person still recognisable, are people still distinct, do the views agree,
and does the result show the style?

The measures need an identity embedding (ArcFace in the paper) and a style score (CLIP in the paper). Both
are *backends* behind two small protocols, looked up by name in a registry, so the same code runs with the
embedded pack's networks (:mod:`engine.evaluate.recognition`, no downloads; the default ``"embedded"``) or with
full-size models a user has on disk.

Metrics (all on cosine similarity of embeddings):

* ``identity_similarity(before, after)``: per subject, cosine between the embedding of the unstylized and the
  stylized render of the same latent (averaged over views when views are given). High = identity kept.
* ``identity_diversity(embeddings)``: mean pairwise cosine *distance* (1 − cos) between subjects. Stylization
  tends to collapse everyone onto one "style face"; the report gives it before and after and their ratio
  (after / before; 1 = as diverse as before).
* ``multiview_consistency(embeddings)``: per subject, mean cosine of each view to the subject's mean
  embedding (or to its front view). High = the views show one person.
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

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, InputError
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


def multiview_consistency(embeddings: Tensor, reference: str = "mean", front_index: int = 0) -> Tensor:
    """(S,) per subject, mean cosine of its views to a reference embedding; ``embeddings`` is (S, V, D).

    ``reference="mean"``: the normalised mean of all V views (every view counted). ``"front"``: view
    ``front_index``, averaged over the other V − 1 views (V ≥ 2).
    """
    unit = _unit(embeddings, "embeddings")
    if unit.dim() != 3:
        raise InputError(f"multiview_consistency needs (S, V, D) embeddings, got {tuple(embeddings.shape)}")
    if reference == "mean":
        ref = F.normalize(unit.mean(dim=1, keepdim=True), dim=-1)
        return (unit * ref).sum(-1).mean(dim=1)
    if reference == "front":
        views = unit.shape[1]
        if views < 2 or not -views <= front_index < views:
            raise InputError(f"multiview_consistency: front_index {front_index} needs V ≥ 2 views, got V = {views}")
        front = front_index % views
        cos = (unit * unit[:, front : front + 1]).sum(-1)
        others = torch.ones(views, dtype=torch.bool)
        others[front] = False
        return cos[:, others].mean(dim=1)
    raise ConfigError(f"multiview_consistency: reference must be 'mean' or 'front', got {reference!r}")


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
class EvaluationReport:
    """Measures of one stylization on S subjects × V views (``to_dict`` is JSON-safe: NaN → null)."""

    style: str
    subjects: int
    views: int
    identity_backend: str
    style_backend: str | None
    identity_similarity: list[float]  # per subject, before vs after
    identity_similarity_mean: float
    diversity_before: float
    diversity_after: float
    diversity_ratio: float  # after / before
    consistency_before: list[float]  # per subject, views vs mean embedding
    consistency_after: list[float]
    consistency_before_mean: float
    consistency_after_mean: float
    style_score_before_mean: float | None = None
    style_score_after_mean: float | None = None
    style_score_after: list[float] | None = None  # per subject, mean over views
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _finite_or_none(asdict(self))


def _check_render_grid(images: Tensor, name: str) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 5 or images.shape[2] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"{name} must be a (subjects, views, 3, H, W) tensor in [-1, 1], got {shape}")
    check_images(images.flatten(0, 1), name)
    return images


def evaluate_renders(
    before: Tensor,
    after: Tensor,
    style: str,
    identity_backend: IdentityBackend | str = "embedded",
    style_backend: StyleBackend | str | None = "embedded",
) -> EvaluationReport:
    """Evaluate renders of the same S latents from the same V cameras, unstylized (``before``) and
    stylized (``after``), both (S, V, 3, H, W) in [-1, 1] (H×W may differ between the two).

    Style scores are skipped (``None``, with a note) when ``style_backend`` is None or does not know
    ``style``; identity measures need S ≥ 2 subjects for diversity.
    """
    before, after = _check_render_grid(before, "before"), _check_render_grid(after, "after")
    if before.shape[:2] != after.shape[:2]:
        raise InputError(f"before has {tuple(before.shape[:2])} subjects × views but after has {tuple(after.shape[:2])}")
    s, v = before.shape[:2]
    ident = get_identity_backend(identity_backend) if isinstance(identity_backend, str) else identity_backend
    emb_before = ident.embed(before.flatten(0, 1)).reshape(s, v, -1)
    emb_after = ident.embed(after.flatten(0, 1)).reshape(s, v, -1)
    similarity = identity_similarity(emb_before, emb_after)
    diversity_before = identity_diversity(emb_before) if s >= 2 else float("nan")
    diversity_after = identity_diversity(emb_after) if s >= 2 else float("nan")
    consistency_before = multiview_consistency(emb_before)
    consistency_after = multiview_consistency(emb_after)
    notes = [] if s >= 2 else ["diversity needs at least 2 subjects"]

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
        identity_similarity=similarity.tolist(),
        identity_similarity_mean=float(similarity.mean()),
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
        notes=notes,
    )
