"""Our generator checkpoint format: ``<name>.safetensors`` (tensors) + ``<name>.json`` (everything else).

Why two files: safetensors stores tensors without any code path (no pickle), and memory-maps them; the JSON
beside it is human-readable and carries what is needed to rebuild the module (the GeneratorConfig), the
format version, the engine version, and user metadata such as the style prompt and training step.

The JSON also records the SHA-256 and size of the safetensors file. Each file is written atomically
(``engine.io.atomic``), tensors first and JSON last, so an interrupted save can leave at worst an old JSON next
to new tensors: the hash then disagrees and loading fails loudly instead of mixing two checkpoints.

The pieces every safetensors + JSON pair shares (file naming, JSON reading, :func:`load_state_into` with its
wrong-architecture report, :func:`manifest_mismatches`) are in :mod:`engine.io.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import safetensors.torch
import torch

from .. import __version__ as ENGINE_VERSION
from ..errors import CheckpointError, ConfigError, InputError
from ..io.atomic import write_bytes, write_json
from ..io.checkpoint import checkpoint_files, read_json_object
from ..io.untrusted import check_file, open_checked
from .config import GeneratorConfig

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "save_checkpoint",
    "load_checkpoint",
]

FORMAT_NAME = "head-stylizer-generator"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS = (1,)


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
    """SHA-256 of an untrusted file (a regular file within the size limit; never a FIFO or a device)."""
    digest = hashlib.sha256()
    try:
        handle = open_checked(path, "checkpoint tensors file")
    except InputError as exc:
        raise CheckpointError(str(exc)) from None
    with handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
    try:
        check_file(tensors_path, "checkpoint tensors file")  # a regular file (never a FIFO/device), size-capped
    except InputError as exc:
        raise CheckpointError(f"{exc} (metadata is {meta_path.name})") from None
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
