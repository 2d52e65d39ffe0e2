"""Blender UI panels (3D Viewport › Sidebar › Head Stylizer) and the before/after preview icons.

``bpy`` is imported inside :func:`register`, so the repository root stays importable without Blender.
"""

from __future__ import annotations

_registered: list[type] = []


def register() -> None:
    import bpy

    from . import main, previews

    previews.register()
    for cls in main.panel_classes():
        bpy.utils.register_class(cls)
        _registered.append(cls)


def unregister() -> None:
    import bpy

    from . import previews

    while _registered:
        bpy.utils.unregister_class(_registered.pop())
    previews.unregister()
