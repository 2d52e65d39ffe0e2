"""Our generator checkpoint format: ``<name>.safetensors`` (tensors) + ``<name>.json`` (everything else).

Why two files: safetensors stores tensors without any code path (no pickle), and memory-maps them; the JSON
beside it is human-readable and carries what is needed to rebuild the module (the GeneratorConfig), the
format version, the engine version, and user metadata such as the style prompt and training step.

The JSON also records the SHA-256 and size of the safetensors file. Each file is written atomically
(``engine.io.atomic``), tensors first and JSON last, so an interrupted save can leave at worst an old JSON next
to new tensors: the hash then disagrees and loading fails loudly instead of mixing two checkpoints.

Also here: :func:`load_state_into`, which copies a state dict into a module by name and explains a
wrong-architecture checkpoint (missing / unexpected keys, shape mismatches), and :func:`manifest_mismatches`,
which compares a module's tensor shapes to a JSON manifest such as ``tests/data/panohead_G_ema_manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import safetensors.torch
import torch

from . import __version__ as ENGINE_VERSION
from .io.atomic import write_bytes, write_json
from .errors import CheckpointError, ConfigError
from .generator.config import GeneratorConfig

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "checkpoint_files",
    "save_checkpoint",
    "load_checkpoint",
    "load_state_into",
    "state_shapes",
    "load_manifest",
    "manifest_mismatches",
]

FORMAT_NAME = "head-stylizer-generator"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)

_SUFFIXES = (".safetensors", ".json")
_LISTED = 5  # how many offending names an error message spells out


def checkpoint_files(path: str | os.PathLike, default_name: str | None = None) -> tuple[Path, Path]:
    """``(tensors, metadata)`` paths for a checkpoint given as a stem, either file, or a folder.

    ``dir/name``, ``dir/name.safetensors`` and ``dir/name.json`` all mean the same pair. An existing folder
    means ``folder/<default_name>.*`` (the config's name when saving).
    """
    path = Path(path)
    if path.is_dir():
        if not default_name:
            raise CheckpointError(f"{path}: is a folder; name the checkpoint file inside it")
        stem = path / default_name
    elif path.suffix in _SUFFIXES:
        stem = path.with_suffix("")
    else:
        stem = path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


# =================================================================================================
# Save
# =================================================================================================


def _tensors_for_saving(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; views that share memory are copied (safetensors refuses aliasing)."""
    out: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"state dict entry {name!r} is not a named tensor ({type(tensor).__name__})")
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen_storages and tensor.numel() > 0:
            tensor = tensor.clone()
            pointer = tensor.untyped_storage().data_ptr()
        seen_storages.add(pointer)
        out[name] = tensor
    return out


def save_checkpoint(
    path: str | os.PathLike,
    module_state: Mapping[str, torch.Tensor],
    config: GeneratorConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``module_state`` + ``config`` (+ JSON-serialisable ``extra``) and return the safetensors path.

    ``path`` is a stem, either file name, or an existing folder (then the files are named after
    ``config.name``). Existing files of the same name are replaced only once the new ones are complete.
    """
    tensors_path, meta_path = checkpoint_files(path, default_name=config.name)
    extra = dict(extra or {})
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: extra metadata is not JSON-serialisable: {exc}") from None
    try:
        config_dict = config.validate().to_dict()
    except ConfigError as exc:
        raise CheckpointError(f"{meta_path}: refusing to save an invalid config: {exc}") from None

    tensors = _tensors_for_saving(module_state)
    # One metadata key: safetensors stores the metadata map in hash order, so several keys would make the
    # bytes (and the SHA-256 in pack manifests) of identical weights differ from run to run.
    blob = safetensors.torch.save(tensors, metadata={"format": f"{FORMAT_NAME}/{FORMAT_VERSION}"})
    write_bytes(tensors_path, blob)
    write_json(
        meta_path,
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "engine_version": ENGINE_VERSION,
            "config": config_dict,
            "tensor_count": len(tensors),
            "tensor_names": list(tensors),  # safetensors sorts its entries; this restores the module's order
            "tensors_file": tensors_path.name,
            "tensors_sha256": hashlib.sha256(blob).hexdigest(),
            "tensors_bytes": len(blob),
            "extra": extra,
        },
    )
    return tensors_path


# =================================================================================================
# Load
# =================================================================================================


def _sha256_of_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Read a JSON file that must hold an object; every failure is a CheckpointError naming ``path`` and
    saying what the file was supposed to be (``what``, e.g. "checkpoint metadata file")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable {what} ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: invalid JSON, unreadable {what} ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_metadata(meta_path: Path) -> dict[str, Any]:
    meta = read_json_object(meta_path, "checkpoint metadata file")
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{meta_path}: not a {FORMAT_NAME} checkpoint (format={meta.get('format')!r})")
    version = meta.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise CheckpointError(
            f"{meta_path}: unknown checkpoint format version {version!r}; this engine ({ENGINE_VERSION}) reads "
            f"{list(SUPPORTED_FORMAT_VERSIONS)}"
        )
    required = {"config": dict, "tensor_count": int, "tensors_sha256": str, "extra": dict}
    for key, kind in required.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{meta_path}: field {key!r} is missing or not a {kind.__name__}")
    return meta


def load_checkpoint(path: str | os.PathLike) -> tuple[GeneratorConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`: ``(config, state_dict, extra)``.

    The tensors file is checked against the SHA-256 in the JSON before it is parsed, so a truncated or edited
    file is reported as such rather than loaded.
    """
    tensors_path, meta_path = checkpoint_files(path)
    meta = _read_metadata(meta_path)
    if not tensors_path.is_file():
        raise CheckpointError(f"{tensors_path}: checkpoint tensors file not found (metadata is {meta_path.name})")
    actual = _sha256_of_file(tensors_path)
    if actual != meta["tensors_sha256"]:
        size = tensors_path.stat().st_size
        expected_size = meta.get("tensors_bytes")
        hint = f" (size {size} bytes, expected {expected_size})" if expected_size not in (None, size) else ""
        raise CheckpointError(
            f"{tensors_path}: SHA-256 does not match {meta_path.name}{hint}; the file is truncated, corrupt "
            f"or from a different save"
        )
    try:
        state = safetensors.torch.load_file(str(tensors_path), device="cpu")
    except Exception as exc:  # safetensors raises SafetensorError / OSError / ValueError on malformed files
        raise CheckpointError(f"{tensors_path}: corrupt safetensors file ({type(exc).__name__}: {exc})") from None
    if len(state) != meta["tensor_count"]:
        raise CheckpointError(
            f"{tensors_path}: holds {len(state)} tensors but {meta_path.name} lists {meta['tensor_count']}"
        )
    names = meta.get("tensor_names")
    if isinstance(names, list) and sorted(names) == sorted(state):
        state = {name: state[name] for name in names}
    try:
        config = GeneratorConfig.from_dict(meta["config"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: invalid generator config: {exc}") from None
    return config, state, meta["extra"]


# =================================================================================================
# Copy into a module, with a readable wrong-architecture report
# =================================================================================================


def _listed(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_LISTED])
    return shown + (f", … (+{len(names) - _LISTED} more)" if len(names) > _LISTED else "")


def _architecture_problems(expected: Mapping[str, torch.Tensor], provided: Mapping[str, torch.Tensor]) -> list[str]:
    missing = [k for k in expected if k not in provided]
    unexpected = [k for k in provided if k not in expected]
    shapes = [
        f"{k}: checkpoint {list(provided[k].shape)} vs model {list(expected[k].shape)}"
        for k in expected
        if k in provided and provided[k].shape != expected[k].shape
    ]
    dtypes = [
        f"{k}: checkpoint {provided[k].dtype} vs model {expected[k].dtype}"
        for k in expected
        if k in provided
        and provided[k].dtype != expected[k].dtype
        and not (provided[k].is_floating_point() and expected[k].is_floating_point())
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_listed(shapes)}")
    if dtypes:
        problems.append(f"{len(dtypes)} dtype mismatch(es): {_listed(dtypes)}")
    return problems


def load_state_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state_dict`` into ``module`` by name (values move to the module's device; floats are cast).

    Every key must match and every shape must agree; otherwise nothing is copied and a CheckpointError
    naming ``source`` lists the first few missing / unexpected keys and shape mismatches.
    """
    expected = module.state_dict()
    problems = _architecture_problems(expected, state_dict)
    if problems:
        raise CheckpointError(f"{source}: wrong architecture: " + "; ".join(problems))
    try:
        with torch.no_grad():
            module.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:  # should not happen after the checks above; keep the file name anyway
        raise CheckpointError(f"{source}: cannot copy weights: {exc}") from None


# =================================================================================================
# Manifest comparison (names and shapes only)
# =================================================================================================


def state_shapes(module_or_state: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Name → shape of a module's state dict (parameters and persistent buffers) or of a state dict."""
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def load_manifest(manifest_path: str | os.PathLike) -> dict[str, Any]:
    """Read a tensor manifest ``{"source", "init_kwargs", "tensors": {name: {shape, dtype, kind}}}``."""
    manifest = read_json_object(manifest_path, "manifest")
    tensors = manifest.get("tensors")
    well_formed = isinstance(tensors, dict) and all(
        isinstance(spec, dict) and isinstance(spec.get("shape"), list) for spec in tensors.values()
    )
    if not well_formed:
        raise CheckpointError(f"{manifest_path}: expected a 'tensors' object of {{name: {{shape: [...]}}}}")
    return manifest


def manifest_mismatches(
    module_state_shapes: Mapping[str, Iterable[int]], manifest_path: str | os.PathLike
) -> list[str]:
    """Differences between a module's tensor shapes and a manifest, one readable line each (empty = match).

    Lines read ``missing from module: <name> [shape]``, ``not in manifest: <name> [shape]`` and
    ``shape of <name>: module [..] vs manifest [..]``, sorted by name within each kind.
    """
    wanted = {name: list(spec["shape"]) for name, spec in load_manifest(manifest_path)["tensors"].items()}
    have = {name: list(shape) for name, shape in module_state_shapes.items()}
    lines = [f"missing from module: {name} {wanted[name]}" for name in sorted(wanted.keys() - have.keys())]
    lines += [f"not in manifest: {name} {have[name]}" for name in sorted(have.keys() - wanted.keys())]
    lines += [
        f"shape of {name}: module {have[name]} vs manifest {wanted[name]}"
        for name in sorted(have.keys() & wanted.keys())
        if have[name] != wanted[name]
    ]
    return lines
