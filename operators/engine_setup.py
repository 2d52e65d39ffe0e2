"""Install Engine, Repair, Remove, Cancel and Check: the engine's Python environment without a terminal.

The work is in :mod:`bridge.engine_install` (plain Python, a background thread); these operators start it,
follow it from a timer (Blender never waits on pip), and report. In background mode (``blender -b``, scripts,
tests) the install runs to its end before the operator returns.
"""

from __future__ import annotations

import bpy

from ..bridge import engine_install, engine_process
from ..bridge.preferences import _abspath, get_preferences, managed_env_dir, requirements_file
from .stylize import redraw_areas


class HEADSTYLIZER_OT_install_engine(bpy.types.Operator):
    """Create the engine's Python environment in the extension's user folder and install its pinned packages"""

    bl_idname = "headstylizer.install_engine"
    bl_label = "Install Engine"

    repair: bpy.props.BoolProperty(name="Repair", description="Recreate the environment from scratch")
    _timer = None
    _install: engine_install.EngineInstall | None = None

    def execute(self, context):
        if engine_install.running_install() is not None:
            self.report({"WARNING"}, "Install Engine is already running")
            return {"CANCELLED"}
        prefs = get_preferences(context)
        options = engine_install.InstallOptions(
            env_dir=str(managed_env_dir(prefs)),
            base_python=engine_process.blender_python(),
            requirements=str(requirements_file()),
            torch_variant=prefs.torch_variant,
            index_url=prefs.package_index.strip(),
            wheel_dir=_abspath(prefs.wheel_folder) if prefs.wheel_folder else "",
            repair=self.repair,
        )
        try:
            self._install = engine_install.current_install = engine_install.EngineInstall(options).start()
        except engine_install.InstallError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if bpy.app.background:
            return self._finish(self._install.wait())
        self._timer = context.window_manager.event_timer_add(0.5, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC":
            self._install.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        redraw_areas(context, None)
        if not self._install.state.done:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        return self._finish(self._install.state)

    def _finish(self, state):
        engine_process.forget_python_checks()
        if state.ok:
            self.report({"INFO"}, f"Engine installed: {state.message}")
            return {"FINISHED"}
        self.report({"WARNING"} if state.cancelled else {"ERROR"}, f"Install Engine: {state.message}")
        return {"CANCELLED"}


class HEADSTYLIZER_OT_cancel_install(bpy.types.Operator):
    """Stop Install Engine (the half-made environment stays; Repair or Remove it)"""

    bl_idname = "headstylizer.cancel_install"
    bl_label = "Cancel Install"

    def execute(self, context):
        running = engine_install.running_install()
        if running is None:
            return {"CANCELLED"}
        running.cancel()
        return {"FINISHED"}


class HEADSTYLIZER_OT_remove_engine(bpy.types.Operator):
    """Delete the environment Install Engine made (only that folder)"""

    bl_idname = "headstylizer.remove_engine"
    bl_label = "Remove"

    def execute(self, context):
        if engine_install.running_install() is not None:
            self.report({"ERROR"}, "Cancel the running install first")
            return {"CANCELLED"}
        env = managed_env_dir(get_preferences(context))
        try:
            engine_install.remove_environment(env)
        except (engine_install.InstallError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        engine_install.current_install = None
        engine_process.forget_python_checks()
        self.report({"INFO"}, f"Removed {env}")
        return {"FINISHED"}


CLASSES = (HEADSTYLIZER_OT_install_engine, HEADSTYLIZER_OT_cancel_install, HEADSTYLIZER_OT_remove_engine)
