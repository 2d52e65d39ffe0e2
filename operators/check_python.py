"""Check: can the engine's interpreter import torch and diffusers, and on which device will it run?"""

from __future__ import annotations

import bpy

from ..bridge import engine_install, engine_process
from ..bridge.preferences import get_preferences, resolve_python


class HEADSTYLIZER_OT_check_python(bpy.types.Operator):
    """Check the engine's interpreter: torch version, device, GPU name and memory"""

    bl_idname = "headstylizer.check_python"
    bl_label = "Check"

    def execute(self, context):
        python, _problem = resolve_python(get_preferences(context))
        try:
            info = engine_install.check_environment(python)
        except engine_install.InstallError as exc:
            engine_process.remember_python_check(python, False, str(exc))
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        engine_process.remember_python_check(python, True, engine_install.describe(info))
        self.report({"INFO"}, f"{python}: {engine_install.describe(info)}")
        return {"FINISHED"}


CLASSES = (HEADSTYLIZER_OT_check_python,)
