"""Tensors in ``<name>.safetensors`` + everything else in ``<name>.json``: the pieces every such pair shares.

Used by the generator checkpoints (:mod:`engine.generator.checkpoint`), the recognition networks and the
stylization's training state: :func:`checkpoint_files` (which two files a path means),
:func:`read_json_object` (a JSON object, or a CheckpointError naming the file), :func:`load_state_into`, which
copies a state dict into a module by name and explains a wrong-architecture checkpoint (missing / unexpected
keys, shape mismatches), and :func:`manifest_mismatches`, which compares a module's tensor shapes to a JSON
manifest such as ``tests/data/panohead_G_ema_manifest.json``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..errors import CheckpointError, InputError
from .untrusted import read_json

__all__ = [
    "checkpoint_files",
    "read_json_object",
    "load_state_into",
    "state_shapes",
    "load_manifest",
    "manifest_mismatches",
]

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


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Read a JSON file that must hold an object; every failure is a CheckpointError naming ``path`` and
    saying what the file was supposed to be (``what``, e.g. "checkpoint metadata file").

    Read as untrusted input (:func:`engine.io.untrusted.read_json`): a regular file (never a FIFO or a
    device), within the JSON size and nesting limits."""
    path = Path(path)
    try:
        data = read_json(path, what)
    except InputError as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data



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
