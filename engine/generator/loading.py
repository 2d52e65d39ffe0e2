"""Build a generator from whatever the user points at: a preset name, a config JSON, our checkpoint or the
official PanoHead pickle. One entry point so the CLI, stylization and Blender all accept the same things."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..io.checkpoint import load_state_into
from .checkpoint import load_checkpoint, save_checkpoint
from .config import PRESETS, GeneratorConfig, get_preset
from .triplane import TriPlaneGenerator


@dataclass(frozen=True)
class LoadedGenerator:
    generator: TriPlaneGenerator
    source: str  # what was loaded, for reports
    trained: bool  # False when the weights are a random initialisation of a preset/config
    extra: dict  # metadata stored with our checkpoints (prompt, step, …)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU. A request for CUDA on a machine without it is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def _random_generator(config: GeneratorConfig, seed: int) -> TriPlaneGenerator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TriPlaneGenerator(config)


def load_generator(source: str | Path, device: str | torch.device = "cpu", init_seed: int = 0) -> LoadedGenerator:
    """Load a generator in eval mode with gradients off.

    ``source`` may be a preset name (``tiny``, ``small``, ``panohead``; random weights seeded by
    ``init_seed``), a config ``.json`` (random weights), our checkpoint (``.safetensors`` or its ``.json``)
    or the official PanoHead ``.pkl`` (read with the restricted unpickler).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    text = str(source)
    if text in PRESETS:
        G = _random_generator(get_preset(text), init_seed)
        loaded = LoadedGenerator(G, f"preset:{text}", False, {})
    else:
        path = Path(text)
        if not path.exists():
            raise CheckpointError(
                f"{path}: no such generator checkpoint (expected a .safetensors/.pkl file, a config .json, or a preset: {sorted(PRESETS)})"
            )
        suffix = path.suffix.lower()
        if suffix == ".pkl":
            from .safe_pickle import load_panohead_pkl, panohead_config_from_init_kwargs

            init_kwargs, state = load_panohead_pkl(path)
            config = panohead_config_from_init_kwargs(init_kwargs, source=str(path))
            G = TriPlaneGenerator(config)
            load_state_into(G, state, str(path))
            loaded = LoadedGenerator(G, str(path), True, {})
        elif suffix == ".json" and not path.with_suffix(".safetensors").exists():
            try:
                config = GeneratorConfig.from_dict(json.loads(path.read_text()))
            except (json.JSONDecodeError, TypeError) as exc:
                raise ConfigError(f"{path}: not a generator config JSON ({exc})") from None
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            G = _random_generator(config, init_seed)
            loaded = LoadedGenerator(G, str(path), False, {})
        elif suffix in (".safetensors", ".json"):
            config, state, extra = load_checkpoint(path)
            G = TriPlaneGenerator(config)
            load_state_into(G, state, str(path))
            loaded = LoadedGenerator(G, str(path), True, extra)
        else:
            raise CheckpointError(f"{path}: unsupported generator file type {suffix!r} (use .safetensors, .json or .pkl)")
    loaded.generator.to(device).eval().requires_grad_(False)
    return loaded


def save_generator(G: TriPlaneGenerator, path: str | Path, extra: dict | None = None) -> Path:
    """Save ``G`` in our format (safetensors + JSON), atomically."""
    state = {k: v.detach().cpu() for k, v in G.state_dict().items()}
    return save_checkpoint(path, state, G.config, extra)
