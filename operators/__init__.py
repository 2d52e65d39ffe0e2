"""Blender operators (Stylize Head, Import Head, Export glTF, Batch).

The operators are tracked in the Blender-extension issue; until they land, the extension registers no
classes. Kept importable without bpy for the same reason as the root package.
"""

from __future__ import annotations

CLASSES: tuple = ()


def register() -> None:
    import bpy

    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    import bpy

    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
