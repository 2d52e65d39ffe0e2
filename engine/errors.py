"""Errors the engine raises for bad input.

Every error that reaches a user names the file (or option) and what is wrong with it, so the CLI and the
Blender operators can show one readable line instead of a traceback from deep inside torch.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class: a problem the user can fix (bad file, bad option), reported without a traceback."""


class CheckpointError(EngineError):
    """A checkpoint is missing, corrupt, unsafe, or does not match the expected architecture."""


class ConfigError(EngineError):
    """A configuration value or preset name is invalid."""


class InputError(EngineError):
    """An input file (scan, image, latent) cannot be used."""
