"""Preferences › Engine Python › Check: can the chosen interpreter import torch and diffusers?"""

from __future__ import annotations

import bpy

from ..bridge import engine_process
from ..bridge.preferences import _abspath, get_preferences


class HEADSTYLIZER_OT_check_python(bpy.types.Operator):
    """Check whether the engine interpreter can import torch and diffusers"""

    bl_idname = "headstylizer.check_python"
    bl_label = "Check"

    def execute(self, context):
        prefs = get_preferences(context)
        python = _abspath(prefs.python_path) if prefs.python_path else engine_process.blender_python()
        ok, message = engine_process.cached_python_check(python, refresh=True)
        self.report({"INFO"} if ok else {"ERROR"}, message)
        return {"FINISHED"} if ok else {"CANCELLED"}


CLASSES = (HEADSTYLIZER_OT_check_python,)
