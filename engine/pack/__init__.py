"""The embedded model pack: small models trained on the procedural head world, shipped with the project.

The pack lets every command run with zero downloads, through exactly the code paths of the full-size
models: a tri-grid generator checkpoint (our safetensors format), a Stable-Diffusion-1.5-layout diffusers
folder with depth and edge ControlNets, and the identity encoder / style classifier that stand in for
ArcFace / CLIP in evaluation. Each model is trained by a script in ``scripts/pack/``.

Layout of a pack folder (``engine/pack/embedded-v1`` by default, or ``$HEAD_STYLIZER_PACK``)::

    generator/generator.safetensors (+ .json)
    diffusion/{model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/,
               controlnet_depth/, controlnet_edge/}
    recognition/identity_encoder.safetensors, recognition/style_classifier.safetensors (+ .json)
    logs/<model>.jsonl      training logs
    reports/<model>.json    training facts and held-out metrics
    manifest.json           pack name and version, every file's size and SHA-256, the reports

:func:`verify_pack` re-hashes every file against the manifest, so a damaged or edited pack is reported
by file name instead of failing somewhere inside torch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..io.atomic import write_json
from ..io.checkpoint import read_json_object

PACK_NAME = "head-stylizer-embedded"
PACK_VERSION = "1.0.0"
MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
PACK_ENV = "HEAD_STYLIZER_PACK"
DEFAULT_PACK = Path(__file__).resolve().parent / "embedded-v1"
_HASH_CHUNK = 1 << 20
# The pack's models were trained from scratch by this project's scripts on its own procedural head world, so
# they are under the project's licence (blender_manifest.toml). Recorded in the manifest, where provenance
# reads every output's licences (engine/heads/licences.py).
PACK_LICENCE = {
    "licence": "GPL-3.0-or-later",
    "attribution": f"Head Stylizer embedded model pack {PACK_VERSION} (Head Stylizer developers; trained on the "
                   "procedural head world by scripts/pack/)",
}


@dataclass(frozen=True)
class PackPaths:
    """Where each model of a pack lives."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def generator(self) -> Path:
        return self.root / "generator" / "generator.safetensors"

    @property
    def diffusion(self) -> Path:
        return self.root / "diffusion"

    @property
    def controlnet_depth(self) -> Path:
        return self.diffusion / "controlnet_depth"

    @property
    def controlnet_edge(self) -> Path:
        return self.diffusion / "controlnet_edge"

    @property
    def identity_encoder(self) -> Path:
        return self.root / "recognition" / "identity_encoder.safetensors"

    @property
    def style_classifier(self) -> Path:
        return self.root / "recognition" / "style_classifier.safetensors"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def pack_root(root: str | os.PathLike | None = None) -> Path:
    """The pack folder: ``root`` if given, else ``$HEAD_STYLIZER_PACK``, else the one shipped in the repo."""
    if root is not None:
        return Path(root)
    env = os.environ.get(PACK_ENV)
    return Path(env) if env else DEFAULT_PACK


def pack_paths(root: str | os.PathLike | None = None) -> PackPaths:
    return PackPaths(pack_root(root))


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def pack_files(root: str | os.PathLike) -> list[str]:
    """Every file of the pack except the manifest, as sorted POSIX paths relative to ``root``."""
    root = Path(root)
    names = []
    for path in root.rglob("*"):
        if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith("."):
            names.append(path.relative_to(root).as_posix())
    return sorted(names)


def build_manifest(root: str | os.PathLike, *, version: str = PACK_VERSION, notes: str = "") -> dict[str, Any]:
    """Hash every file and merge ``reports/*.json`` into a manifest dict (not written; see write_manifest)."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: pack folder does not exist")
    files = {name: {"bytes": (root / name).stat().st_size, "sha256": sha256_file(root / name)} for name in pack_files(root)}
    reports = {}
    for report in sorted((root / "reports").glob("*.json")):
        reports[report.stem] = read_json_object(report, "pack report")
    return {
        "schema": MANIFEST_SCHEMA,
        "name": PACK_NAME,
        "version": version,
        "notes": notes,
        "licence": dict(PACK_LICENCE),
        "total_bytes": sum(entry["bytes"] for entry in files.values()),
        "files": files,
        "reports": reports,
    }


def write_manifest(root: str | os.PathLike, **kwargs: Any) -> Path:
    root = Path(root)
    return write_json(root / MANIFEST_NAME, build_manifest(root, **kwargs))


def load_manifest(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The pack's manifest; CheckpointError naming the file when it is missing or malformed."""
    path = pack_paths(root).manifest
    manifest = read_json_object(path, "pack manifest")
    for key in ("schema", "name", "version", "files"):
        if key not in manifest:
            raise CheckpointError(f"{path}: pack manifest has no {key!r} entry")
    if manifest["schema"] != MANIFEST_SCHEMA:
        raise CheckpointError(f"{path}: pack manifest schema {manifest['schema']!r} is not supported (expected {MANIFEST_SCHEMA})")
    if not isinstance(manifest["files"], dict):
        raise CheckpointError(f"{path}: 'files' must be an object of path → {{bytes, sha256}}")
    return manifest


def verify_pack(root: str | os.PathLike | None = None, *, strict: bool = True) -> list[str]:
    """Problems found by re-hashing the pack against its manifest (empty list = intact).

    Missing files, size or SHA-256 mismatches are problems; with ``strict`` so are files that are not in
    the manifest (a model swapped in by hand would otherwise be used silently).
    """
    paths = pack_paths(root)
    manifest = load_manifest(paths.root)
    problems = []
    for name, entry in sorted(manifest["files"].items()):
        path = paths.root / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != entry.get("bytes"):
            problems.append(f"{path}: size {path.stat().st_size} bytes, manifest says {entry.get('bytes')}")
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{path}: SHA-256 differs from the manifest (file changed or damaged)")
    if strict:
        extra = sorted(set(pack_files(paths.root)) - set(manifest["files"]))
        problems.extend(f"{paths.root / name}: not listed in the manifest" for name in extra)
    return problems


def require_pack(root: str | os.PathLike | None = None) -> PackPaths:
    """The pack's paths after checking its manifest; CheckpointError listing what is wrong otherwise."""
    problems = verify_pack(root)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; … {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"embedded model pack is damaged: {shown}")
    return pack_paths(root)


def model_hashes(root: str | os.PathLike | None = None) -> dict[str, str]:
    """SHA-256 of each model's main weights file, from the manifest (for provenance records)."""
    paths = pack_paths(root)
    files = load_manifest(paths.root)["files"]
    wanted = {
        "generator": paths.generator,
        "unet": paths.diffusion / "unet" / "diffusion_pytorch_model.safetensors",
        "controlnet_depth": paths.controlnet_depth / "diffusion_pytorch_model.safetensors",
        "controlnet_edge": paths.controlnet_edge / "diffusion_pytorch_model.safetensors",
        "identity_encoder": paths.identity_encoder,
        "style_classifier": paths.style_classifier,
    }
    out = {}
    for key, path in wanted.items():
        entry = files.get(path.relative_to(paths.root).as_posix())
        if entry is not None:
            out[key] = entry["sha256"]
    return out
