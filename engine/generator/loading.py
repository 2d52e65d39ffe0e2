"""Build a generator from whatever the user points at: a preset name, a config JSON, our checkpoint or the
official PanoHead pickle. One entry point so the CLI, stylization and Blender all accept the same things."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, InputError
from ..io.checkpoint import load_state_into
from ..io.untrusted import RAISE_HINT, current_limits, read_json
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


def model_size_bound(config: GeneratorConfig) -> int:
    """A cheap upper bound on the parameters + buffers of the generator ``config`` describes (no build).

    Every weight of the architecture is at most a 3×3 kernel between two of its widths, so it holds at most
    9·M² values (M: the widest size of the config), and there are fewer than L of them (L grows with the
    mapping depth and the number of resolution levels); buffers (noise maps) are at most R² each (R: the
    largest resolution). Loose (10–5000× on the presets and random configs), but never below the truth.
    """
    r = config.rendering
    widths = [config.z_dim, config.w_dim, config.c_dim, config.img_channels, config.channel_max, *config.sr_channels,
              r.decoder_hidden, r.decoder_output_dim, config.backbone_channels]
    m = max(int(w) for w in widths)
    resolutions = [int(config.img_resolution), int(r.triplane_size), int(r.neural_rendering_resolution)]
    levels = sum(max(x, 1).bit_length() for x in resolutions)
    layers = 2 * int(config.mapping_layers) + 8 * levels + 32
    return 9 * m * m * layers + max(resolutions) ** 2 * layers


def check_model_size(config: GeneratorConfig, source: str) -> int:
    """Refuse, before allocating, a generator config from a file that asks for more than the
    ``max_model_parameters`` limit. Ordinary configs pass on :func:`model_size_bound` alone; a config whose
    bound is over the limit is counted exactly by building it on the ``meta`` device (no memory; the first
    meta build in a process costs a few seconds of torch imports). Returns the bound or the exact count."""
    limit = current_limits().max_model_parameters
    try:
        bound = model_size_bound(config)
    except (TypeError, ValueError):
        bound = limit + 1  # not computable: count exactly
    if bound <= limit:
        return bound
    try:
        with torch.device("meta"):
            probe = TriPlaneGenerator(config)
        count = sum(t.numel() for t in probe.parameters()) + sum(t.numel() for t in probe.buffers())
    except Exception:  # noqa: BLE001 - only a guard; an unbuildable config fails in the real build with its message
        return 0
    if count > limit:
        raise CheckpointError(
            f"{source}: the generator config asks for {count:,} parameters, over the limit of {limit:,}; "
            f"refused before allocating ({RAISE_HINT})"
        )
    return count


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
            check_model_size(config, str(path))
            G = TriPlaneGenerator(config)
            load_state_into(G, state, str(path))
            loaded = LoadedGenerator(G, str(path), True, {})
        elif suffix == ".json" and not path.with_suffix(".safetensors").exists():
            try:
                config = GeneratorConfig.from_dict(read_json(path, "generator config JSON"))
            except InputError as exc:
                raise ConfigError(str(exc)) from None
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: not a generator config JSON ({exc})") from None
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            check_model_size(config, str(path))
            G = _random_generator(config, init_seed)
            loaded = LoadedGenerator(G, str(path), False, {})
        elif suffix in (".safetensors", ".json"):
            config, state, extra = load_checkpoint(path)
            check_model_size(config, str(path))
            G = TriPlaneGenerator(config)
            if "head_planes" in state or "head_ws" in state:  # a single-head field (head mode)
                if "head_planes" not in state or "head_ws" not in state:
                    raise CheckpointError(f"{path}: a single-head field needs both head_planes and head_ws")
                try:
                    G.make_single_head(state["head_planes"], state["head_ws"])
                except ValueError as exc:
                    raise CheckpointError(f"{path}: {exc}") from None
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
