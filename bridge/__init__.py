"""Between Blender and the engine: settings, preferences, the engine process, and what comes back.

``properties`` (the panel's settings and the last run's state on the scene), ``preferences`` (add-on
preferences: engine interpreter, model folders, output folder), ``job`` (a Stylize Head press as the engine's
command line), ``engine_process`` (the engine as a child process speaking JSON lines), ``mesh_import``
(``head.npz`` → a Blender mesh) and ``scan_render`` (a scan → calibrated views for the batch's inversion).
The operators (``operators/``) and panels (``panels/``) use these; nothing here is an operator.

Modules that need ``bpy`` are imported inside :func:`register`, so the pure-Python parts (:mod:`.job`,
:mod:`.engine_process`) and the repository root stay importable without Blender.
"""

from __future__ import annotations

_registered: list[type] = []


def register() -> None:
    import bpy

    from . import preferences, properties

    for module in (properties, preferences):
        for cls in module.CLASSES:
            bpy.utils.register_class(cls)
            _registered.append(cls)
    properties.register_scene_property()


def unregister() -> None:
    import bpy

    from . import properties

    properties.unregister_scene_property()
    while _registered:
        bpy.utils.unregister_class(_registered.pop())
