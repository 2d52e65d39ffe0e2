"""Provenance of every batch output: who made it, from what, with which models, under what consent.

The business asks that a stylized head can always be traced back: the record goes into the glb's
``asset.extras`` and into a JSON sidecar next to it. It holds the tool version, the style prompt and method,
SHA-256 of every model used (taken from the embedded pack's manifest, which :func:`engine.pack.verify_pack`
has checked, or computed from the given checkpoint files), the SHA-256 of the source file (never the file
itself — source images and scans are not copied into outputs), the UTC date and the consent flag the user
confirmed. Rights and traceability: each model's licence and required attribution
(:mod:`engine.heads.licences`), the chain's commercial-use flag, the attribution text that also goes into glTF
``asset.copyright``, the item's consent record (an id from the batch's consent CSV, or the operator's global
confirmation) and the approved style id when production used one. :func:`settings_fingerprint` hashes the
settings that change the output, which is how the batch recognises finished work when it resumes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .. import __version__
from .licences import chain_commercial_use, copyright_notice

TOOL_NAME = "head-stylizer"
PROVENANCE_SCHEMA = 1
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a folder as the hash of its files' relative paths and hashes."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    entries = [(f.relative_to(p).as_posix(), sha256_file(f)) for f in sorted(p.rglob("*")) if f.is_file()]
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def pack_model_hashes(pack_root: str | os.PathLike, manifest: Mapping[str, Any]) -> dict[str, str]:
    """Model → SHA-256 from a pack manifest (folders: hash of their files' manifest entries)."""
    files: Mapping[str, Mapping[str, Any]] = manifest.get("files", {})
    groups = {
        "generator": "generator/generator.safetensors",
        "diffusion": "diffusion/",
        "identity_encoder": "recognition/identity_encoder.safetensors",
        "style_classifier": "recognition/style_classifier.safetensors",
    }
    hashes: dict[str, str] = {}
    for model, key in groups.items():
        if key.endswith("/"):
            entries = sorted((name, entry["sha256"]) for name, entry in files.items() if name.startswith(key))
            if entries:
                hashes[model] = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
        elif key in files:
            hashes[model] = str(files[key]["sha256"])
    return hashes


def model_hashes(models: Mapping[str, str | None], pack_root: str | os.PathLike | None = None) -> dict[str, str]:
    """SHA-256 per model: from the pack manifest for models inside the pack, hashed from disk otherwise."""
    hashes: dict[str, str] = {}
    manifest_hashes: dict[str, str] = {}
    root = Path(pack_root).resolve() if pack_root else None
    if root is not None and (root / "manifest.json").is_file():
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        manifest_hashes = pack_model_hashes(root, manifest)
    for name, path in models.items():
        if not path:
            continue
        p = Path(path)
        inside_pack = root is not None and p.exists() and (p.resolve() == root or root in p.resolve().parents)
        if inside_pack and name in manifest_hashes:
            hashes[name] = manifest_hashes[name]
        elif p.exists():
            hashes[name] = sha256_tree(p)
        else:
            hashes[name] = f"preset:{path}"  # a random-weight preset name (tests), not a file
    return hashes


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance_date() -> str:
    """Now (UTC, to the second), or the time ``SOURCE_DATE_EPOCH`` gives (the reproducible-builds convention):
    with it set, two runs of the same settings — a local batch and the same batch on a Ray farm — write
    byte-identical outputs, which is how the farm is checked against a local run."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            when = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
        except (ValueError, OverflowError, OSError):
            raise ValueError(f"SOURCE_DATE_EPOCH must be whole seconds since 1970, got {epoch!r}") from None
    else:
        when = _dt.datetime.now(_dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Provenance:
    """One output's provenance record (see module docstring); :meth:`to_dict` is what gets written."""

    source_file: str
    source_sha256: str
    prompt: str
    method: str
    consent: bool
    model_sha256: dict[str, str]
    settings_fingerprint: str
    date: str = field(default_factory=lambda: provenance_date())
    tool: str = TOOL_NAME
    tool_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    licences: list[dict[str, str]] = field(default_factory=list)  # engine.heads.licences.model_licences
    consent_record: dict[str, Any] | None = None  # engine.app.consent: {"id", "source"}
    style_id: str | None = None  # an approved style (engine/styles), when production used one

    def copyright(self) -> str:
        """The attribution text for glTF ``asset.copyright`` (and this record's ``attribution``)."""
        return copyright_notice(self.licences, self.tool, self.tool_version, self.style_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": PROVENANCE_SCHEMA,
            "tool": self.tool,
            "tool_version": self.tool_version,
            "date": self.date,
            "prompt": self.prompt,
            "method": self.method,
            "consent": bool(self.consent),
            "source_file": self.source_file,
            "source_sha256": self.source_sha256,
            "model_sha256": dict(self.model_sha256),
            "settings_fingerprint": self.settings_fingerprint,
            **({"extra": self.extra} if self.extra else {}),
            **self._rights(),
        }

    def _rights(self) -> dict[str, Any]:
        return {
            "licences": [dict(r) for r in self.licences],
            "commercial_use": chain_commercial_use(self.licences),
            "attribution": self.copyright(),
            "consent_record": dict(self.consent_record) if self.consent_record else None,
            "style_id": self.style_id,
        }


REQUIRED_FIELDS = ("tool", "tool_version", "date", "prompt", "method", "consent", "source_sha256", "model_sha256")
