"""Save and load recognition networks as ``<name>.safetensors`` + ``<name>.json``.

Same two-file idea as the generator checkpoints (:mod:`engine.generator.checkpoint`): tensors without pickle, and a
readable JSON with the network kind, its config, the SHA-256 of the tensors and free-form training facts.
Weights are stored in float16 (halves the pack size; the networks are evaluated in float32 after loading,
and BatchNorm running statistics stay float32 because their variances can underflow fp16's precision).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, TypeVar

import safetensors.torch
import torch

from ... import __version__ as ENGINE_VERSION
from ...errors import CheckpointError, ConfigError
from ...io.atomic import write_bytes, write_json
from ...io.checkpoint import checkpoint_files, load_state_into, read_json_object
from .networks import IdentityEncoder, IdentityEncoderConfig, StyleClassifier, StyleClassifierConfig

FORMAT_NAME = "head-stylizer-recognition"
FORMAT_VERSION = 1

_KINDS = {
    IdentityEncoder.kind: (IdentityEncoder, IdentityEncoderConfig),
    StyleClassifier.kind: (StyleClassifier, StyleClassifierConfig),
}
Net = TypeVar("Net", IdentityEncoder, StyleClassifier)


def _storage_dtype(name: str, tensor: torch.Tensor) -> torch.Tensor:
    keep_fp32 = "running_" in name or not tensor.is_floating_point()
    return tensor.detach().cpu().contiguous() if keep_fp32 else tensor.detach().cpu().to(torch.float16).contiguous()


def save_recognition_model(
    model: IdentityEncoder | StyleClassifier, path: str | os.PathLike, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``path`` (a stem or either file name; a folder means ``folder/<kind>``).

    Returns the safetensors path. Tensors are written first, the JSON (with their hash) last.
    """
    tensors_path, meta_path = checkpoint_files(path, default_name=model.kind)
    tensors = {name: _storage_dtype(name, t) for name, t in model.state_dict().items()}
    # One metadata key only: safetensors writes its metadata map in hash order, so two keys would make the
    # bytes (and SHA-256) of identical weights differ between runs. The kind is in the JSON.
    blob = safetensors.torch.save(tensors, metadata={"format": FORMAT_NAME})
    write_bytes(tensors_path, blob)
    write_json(
        meta_path,
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "engine_version": ENGINE_VERSION,
            "kind": model.kind,
            "config": model.config.to_dict(),
            "tensors_file": tensors_path.name,
            "tensors_sha256": hashlib.sha256(blob).hexdigest(),
            "tensors_bytes": len(blob),
            "extra": dict(extra or {}),
        },
    )
    return tensors_path


def read_recognition_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON half of a recognition checkpoint, checked for format and version."""
    _, meta_path = checkpoint_files(path)
    meta = read_json_object(meta_path, "recognition model metadata file")
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{meta_path}: not a {FORMAT_NAME} file (format={meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: unsupported format_version {meta.get('format_version')!r}")
    if meta.get("kind") not in _KINDS or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{meta_path}: unknown model kind {meta.get('kind')!r} or missing config")
    return meta


def load_recognition_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> IdentityEncoder | StyleClassifier:
    """Load either network (the JSON says which) in eval mode, float32, gradients off."""
    tensors_path, meta_path = checkpoint_files(path)
    meta = read_recognition_metadata(path)
    if not tensors_path.is_file():
        raise CheckpointError(f"{tensors_path}: recognition tensors file not found (metadata is {meta_path.name})")
    blob = tensors_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
        raise CheckpointError(f"{tensors_path}: SHA-256 does not match {meta_path.name}; truncated or from another save")
    try:
        state = safetensors.torch.load(blob)
    except Exception as exc:  # safetensors raises its own error types on malformed files
        raise CheckpointError(f"{tensors_path}: corrupt safetensors file ({type(exc).__name__}: {exc})") from None
    cls, config_cls = _KINDS[meta["kind"]]
    try:
        config = config_cls.from_dict(meta["config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: invalid {meta['kind']} config: {exc}") from None
    model = cls(config)
    load_state_into(model, state, str(tensors_path))
    model.extra = meta.get("extra", {})
    return model.float().to(device).eval().requires_grad_(False)


def _load_kind(path: str | os.PathLike, cls: type[Net], device: str | torch.device) -> Net:
    model = load_recognition_model(path, device)
    if not isinstance(model, cls):
        raise CheckpointError(f"{path}: holds a {model.kind}, expected a {cls.kind}")
    return model


def load_identity_encoder(path: str | os.PathLike, device: str | torch.device = "cpu") -> IdentityEncoder:
    """The identity encoder stored at ``path`` (stem, ``.safetensors`` or ``.json``)."""
    return _load_kind(path, IdentityEncoder, device)


def load_style_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> StyleClassifier:
    """The style classifier stored at ``path`` (stem, ``.safetensors`` or ``.json``)."""
    return _load_kind(path, StyleClassifier, device)
