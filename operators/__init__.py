"""Blender operators: Stylize Head, Cancel, Import Head, Export glTF, Render Turntable, Check, Install Engine (+ Batch).

Only ``bpy.types.Operator`` classes live here; the settings, preferences and the engine process they use are
in ``bridge/``. Modules that need ``bpy`` are imported inside :func:`register`.

The batch operators (``batch.py``) are written separately; the module exports a ``CLASSES`` tuple and is
registered here when it exists (guarded import: the extension works without it).
"""

from __future__ import annotations

import importlib

_CORE_MODULES = ("check_python", "engine_setup", "models", "stylize", "head_io", "turntable")
_OPTIONAL_MODULES = ("batch",)
_registered: list[type] = []
_handlers: list[tuple[list, object]] = []


def _optional(name: str):
    try:
        return importlib.import_module(f".{name}", __package__)
    except ImportError as exc:
        if getattr(exc, "name", None) == f"{__package__}.{name}":
            return None  # the module simply is not there
        raise


def _modules() -> list:
    modules = [importlib.import_module(f".{name}", __package__) for name in _CORE_MODULES]
    return modules + [m for m in (_optional(n) for n in _OPTIONAL_MODULES) if m is not None]


def _menu_import(self, context):
    self.layout.operator("headstylizer.import_head", text="Stylized Head (.npz/.json)")


def _menu_export(self, context):
    self.layout.operator("headstylizer.export_gltf", text="Stylized Head (.glb)")


def register() -> None:
    import bpy

    from . import stylize

    for module in _modules():
        for cls in getattr(module, "CLASSES", ()):
            bpy.utils.register_class(cls)
            _registered.append(cls)
    for handler_list, handler in stylize.HANDLERS:
        if handler not in handler_list:
            handler_list.append(handler)
            _handlers.append((handler_list, handler))
    bpy.types.TOPBAR_MT_file_import.append(_menu_import)
    bpy.types.TOPBAR_MT_file_export.append(_menu_export)


def unregister() -> None:
    import bpy

    from . import stylize

    stylize.kill_running_engines()
    bpy.types.TOPBAR_MT_file_export.remove(_menu_export)
    bpy.types.TOPBAR_MT_file_import.remove(_menu_import)
    while _handlers:
        handler_list, handler = _handlers.pop()
        if handler in handler_list:
            handler_list.remove(handler)
    while _registered:
        bpy.utils.unregister_class(_registered.pop())
