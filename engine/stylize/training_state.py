"""Checkpoints of a stylization run that resume to *exactly* the parameters of an uninterrupted run.

One checkpoint is a folder ``<out>/checkpoints/step_NNNNNN/`` holding

* ``generator.safetensors`` + ``generator.json``: the trainable generator in our checkpoint format
  (:func:`engine.generator.checkpoint.save_checkpoint`); its JSON ``extra`` carries the full StylizeConfig, the prompt,
  the step and the method, so the file alone is a usable stylized generator;
* ``optimizer.safetensors``: Adam's moments and step count per parameter *name* (so the order of
  ``parameters()`` cannot scramble them);
* ``loop.safetensors``: tensors the next step needs besides the weights (the previous sample's tri-planes
  for the LDIS regulariser);
* ``state.json``: step, file names, config, and a fingerprint of the frozen base generator.

Every file is written atomically, ``state.json`` last, and only then the pointer file ``<out>/latest`` is
replaced; a crash at any moment therefore leaves ``latest`` naming a complete checkpoint.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import safetensors.torch
import torch

from ..errors import CheckpointError, ConfigError
from ..generator.checkpoint import save_checkpoint
from ..io.atomic import write_bytes, write_json, write_text
from ..io.checkpoint import read_json_object
from .config import StylizeConfig

STATE_FORMAT = "head-stylizer-training"
STATE_VERSION = 1
LATEST_POINTER = "latest"
CHECKPOINTS_DIR = "checkpoints"
GENERATOR_STEM = "generator"
OPTIMIZER_FILE = "optimizer.safetensors"
LOOP_FILE = "loop.safetensors"
STATE_FILE = "state.json"

_STEP_DIR = re.compile(r"^step_(\d+)$")
_MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "step")


@dataclass(frozen=True)
class TrainingState:
    """A complete checkpoint as found on disk."""

    folder: Path
    step: int
    config: StylizeConfig
    base_fingerprint: str
    meta: dict[str, Any]

    @property
    def generator_path(self) -> Path:
        return self.folder / f"{GENERATOR_STEM}.safetensors"

    @property
    def optimizer_path(self) -> Path:
        return self.folder / OPTIMIZER_FILE

    @property
    def loop_path(self) -> Path:
        return self.folder / LOOP_FILE


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def checkpoint_folder(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS_DIR / f"step_{step:06d}"


def state_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's tensor names, shapes, dtypes and bytes: detects resuming on another base."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def optimizer_tensors(optimizer: torch.optim.Optimizer, named_params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adam's per-parameter state keyed ``<moment>/<parameter name>`` (CPU copies)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, param in named_params.items():
        state = optimizer.state.get(param, {})
        for key in _MOMENT_KEYS:
            if key in state:
                value = state[key]
                value = value if isinstance(value, torch.Tensor) else torch.tensor(float(value))
                tensors[f"{key}/{name}"] = value.detach().to("cpu").clone()
    return tensors


def restore_optimizer(
    optimizer: torch.optim.Optimizer,
    named_params: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
    source: str,
) -> None:
    """Put saved moments back (moments on each parameter's device, step counts where Adam keeps them)."""
    expected = {f"{key}/{name}" for name in named_params for key in _MOMENT_KEYS}
    unknown = sorted(set(tensors) - expected)
    if unknown:
        raise CheckpointError(f"{source}: optimizer state for unknown parameters, e.g. {unknown[:3]}")
    for name, param in named_params.items():
        keys = {key: tensors.get(f"{key}/{name}") for key in _MOMENT_KEYS}
        if all(v is None for v in keys.values()):
            continue
        if any(v is None for v in keys.values()):
            raise CheckpointError(f"{source}: incomplete optimizer state for {name}")
        for key in ("exp_avg", "exp_avg_sq"):
            if keys[key].shape != param.shape:
                raise CheckpointError(
                    f"{source}: optimizer {key} of {name} has shape {list(keys[key].shape)}, parameter has {list(param.shape)}"
                )
        optimizer.state[param] = {
            "step": keys["step"].clone(),  # Adam keeps its (non-capturable) step counter on the CPU
            "exp_avg": keys["exp_avg"].to(device=param.device, dtype=param.dtype).clone(),
            "exp_avg_sq": keys["exp_avg_sq"].to(device=param.device, dtype=param.dtype).clone(),
        }


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write ``tensors`` (moved to the CPU) as one safetensors file, atomically; :func:`load_tensors` reads it."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_bytes(path, safetensors.torch.save(cpu, metadata={"format": STATE_FORMAT}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises several types on malformed files
        raise CheckpointError(f"{path}: corrupt safetensors file ({type(exc).__name__}: {exc})") from None


# ------------------------------------------------------------------------------------------------
# Save
# ------------------------------------------------------------------------------------------------
def save_training_state(
    out_dir: str | Path,
    step: int,
    generator: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    named_params: Mapping[str, torch.Tensor],
    loop_tensors: Mapping[str, torch.Tensor],
    config: StylizeConfig,
    base_fingerprint: str,
    keep: int = 0,
) -> Path:
    """Write one complete checkpoint for ``step`` and point ``<out>/latest`` at it; returns the folder.

    ``keep`` > 0 deletes all but the newest ``keep`` checkpoint folders afterwards.
    """
    out_dir = Path(out_dir)
    folder = checkpoint_folder(out_dir, step)
    folder.mkdir(parents=True, exist_ok=True)
    extra = {
        "kind": "stylized",
        "prompt": config.prompt,
        "negative_prompt": config.negative_prompt,
        "method": config.distill.method,
        "step": step,
        "base_generator": config.generator,
        "stylize": config.to_dict(),
    }
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    save_checkpoint(folder / GENERATOR_STEM, state, generator.config, extra)
    save_tensors(folder / OPTIMIZER_FILE, optimizer_tensors(optimizer, named_params))
    save_tensors(folder / LOOP_FILE, loop_tensors)
    write_json(
        folder / STATE_FILE,
        {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": step,
            "total": config.steps,
            "files": {
                "generator": f"{GENERATOR_STEM}.safetensors",
                "optimizer": OPTIMIZER_FILE,
                "loop": LOOP_FILE,
            },
            "base_fingerprint": base_fingerprint,
            "config": config.to_dict(),
        },
    )
    write_text(out_dir / LATEST_POINTER, f"{folder.relative_to(out_dir).as_posix()}\n")
    if keep > 0:
        prune_checkpoints(out_dir, keep)
    return folder


def prune_checkpoints(out_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` step folders (never the one ``latest`` names); returns deleted."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if keep <= 0 or not root.is_dir():
        return []
    latest = _latest_folder_name(Path(out_dir))
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)),
        key=lambda p: int(_STEP_DIR.match(p.name).group(1)),
    )
    doomed = [p for p in folders[:-keep] if p.name != latest]
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


# ------------------------------------------------------------------------------------------------
# Load
# ------------------------------------------------------------------------------------------------
def _latest_folder_name(out_dir: Path) -> str | None:
    pointer = out_dir / LATEST_POINTER
    if not pointer.is_file():
        return None
    return Path(pointer.read_text(encoding="utf-8").strip()).name


def read_latest(out_dir: str | Path) -> TrainingState | None:
    """The checkpoint ``<out>/latest`` points to, or None when the run has never checkpointed."""
    out_dir = Path(out_dir)
    pointer = out_dir / LATEST_POINTER
    if not pointer.is_file():
        return None
    relative = pointer.read_text(encoding="utf-8").strip()
    if not relative:
        raise CheckpointError(f"{pointer}: empty pointer file")
    return read_training_state(out_dir / relative)


def read_training_state(folder: str | Path) -> TrainingState:
    """Read and check ``state.json`` of one checkpoint folder (the tensors are loaded by the caller)."""
    folder = Path(folder)
    state_path = folder / STATE_FILE
    meta = read_json_object(state_path, "checkpoint state")
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{state_path}: not a {STATE_FORMAT} state file")
    if meta.get("version") != STATE_VERSION:
        raise CheckpointError(f"{state_path}: unsupported state version {meta.get('version')!r}")
    step = meta.get("step")
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{state_path}: invalid step {step!r}")
    try:
        config = StylizeConfig.from_dict(meta.get("config"))
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{state_path}: invalid stylize config ({exc})") from None
    for name in (f"{GENERATOR_STEM}.safetensors", f"{GENERATOR_STEM}.json", OPTIMIZER_FILE, LOOP_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder / name}: checkpoint file missing")
    return TrainingState(folder, step, config, str(meta.get("base_fingerprint", "")), meta)
