"""Diffusion guidance: Stable Diffusion + ControlNets as a frozen noise predictor for distillation.

Modules: :mod:`.models` (offline loading of an SD-1.5-layout folder), :mod:`.control` (Canny / depth
conditioning images in torch), :mod:`.guidance` (noising, CFG noise prediction, Tweedie estimate) and
:mod:`.tiny` (a random miniature model folder for tests).

Names are exported lazily so that ``engine.guidance.control`` can be used without importing diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "canny_edges": "control",
    "depth_control": "control",
    "Guidance": "guidance",
    "GuidanceConfig": "guidance",
    "GuidanceOutput": "guidance",
    "DiffusionModels": "models",
    "MemoryOptions": "models",
    "load_diffusion_models": "models",
    "resolve_dtype": "models",
    "CONTROL_KINDS": "models",
    "TinyDiffusionFolder": "tiny",
    "TinyDiffusionSpec": "tiny",
    "build_tiny_diffusion_folder": "tiny",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
