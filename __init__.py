"""Head Stylizer — Blender extension entry point.

Blender imports this package and calls :func:`register`. Everything that needs ``bpy`` is imported inside
``register``/``unregister`` so that the repository root stays importable without Blender (the engine and the
tests run as plain Python, and the engine runs out of process from Blender). Imports are relative: as an
extension this package is ``bl_ext.<repository>.head_stylizer``.
"""

from __future__ import annotations


def register() -> None:
    from . import bridge, operators, panels

    bridge.register()
    operators.register()
    panels.register()


def unregister() -> None:
    from . import bridge, operators, panels

    panels.unregister()
    operators.unregister()
    bridge.unregister()
