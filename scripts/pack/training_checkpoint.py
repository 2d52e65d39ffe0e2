"""Resumable checkpoints of the pack's staged training scripts.

A stage folder holds ``step_NNNNNN/`` checkpoints — the generator in the engine's checkpoint format,
Adam's moments per parameter name (:func:`engine.stylize.training_state.optimizer_tensors`) and a
``state.json`` (step, seconds spent, the stage's config, finished or not) — and a ``latest`` pointer that is
replaced only after a checkpoint is complete, so a sitting killed at any moment resumes from the last whole
one. Only the newest checkpoint is kept: the folders are small enough to commit between sittings.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import safetensors.torch
import torch

from engine.io.atomic import write_bytes, write_json, write_text
from engine.io.checkpoint import read_json_object
from engine.errors import CheckpointError
from engine.generator.loading import load_generator, save_generator
from engine.generator.triplane import TriPlaneGenerator
from engine.stylize.training_state import load_tensors, optimizer_tensors, restore_optimizer

LATEST = "latest"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
GENERATOR_FILE = "generator.safetensors"


@dataclass
class StageCheckpoint:
    folder: Path
    generator: TriPlaneGenerator
    step: int
    seconds: float
    stage_config: dict[str, Any]
    finished: bool


def normalised(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as it reads back from JSON (tuples become lists), so saved and live configs compare equal."""
    return json.loads(json.dumps(dict(config)))


def save_training_checkpoint(stage_folder: Path, G: TriPlaneGenerator, optimizer: torch.optim.Optimizer,
                             params: Mapping[str, torch.Tensor], *, step: int, seconds: float,
                             stage_config: Mapping[str, Any], finished: bool) -> Path:
    folder = stage_folder / f"step_{step:06d}"
    save_generator(G, folder / GENERATOR_FILE, extra={"stage": stage_config.get("name"), "step": step})
    tensors = {k: v.contiguous() for k, v in optimizer_tensors(optimizer, params).items()}
    write_bytes(folder / OPTIMIZER_FILE, safetensors.torch.save(tensors, metadata={"format": "pack-training"}))
    write_json(folder / STATE_FILE, {"step": step, "seconds": round(seconds, 1), "finished": finished,
                                     "stage_config": normalised(stage_config)})
    write_text(stage_folder / LATEST, folder.name + "\n")
    for old in stage_folder.glob("step_*"):
        if old.is_dir() and old.name != folder.name:
            shutil.rmtree(old)
    return folder


def latest_checkpoint(stage_folder: Path) -> StageCheckpoint | None:
    pointer = stage_folder / LATEST
    if not pointer.is_file():
        return None
    folder = stage_folder / pointer.read_text().strip()
    state = read_json_object(folder / STATE_FILE, "training state")
    try:
        return StageCheckpoint(folder, load_generator(folder / GENERATOR_FILE).generator, int(state["step"]),
                               float(state["seconds"]), dict(state["stage_config"]), bool(state["finished"]))
    except KeyError as exc:
        raise CheckpointError(f"{folder / STATE_FILE}: missing key {exc}") from None


def load_training_checkpoint(state: StageCheckpoint, optimizer: torch.optim.Optimizer,
                             params: Mapping[str, torch.Tensor]) -> None:
    """Put the checkpoint's Adam moments onto ``params`` (the parameters of ``state.generator``)."""
    path = state.folder / OPTIMIZER_FILE
    restore_optimizer(optimizer, params, load_tensors(path), str(path))
