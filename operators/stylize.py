"""Stylize Head: run ``python -m engine head`` out of process and bring the result into the scene.

:class:`StylizeSession` is the one piece of logic both ways of running share: the modal operator pumps it
from a window-manager timer (the UI never waits), background mode (``blender -b``, the bpy module, tests)
pumps it in a blocking loop. Events from the engine update the scene's panel state; when the engine says
``done`` the head is imported, previews are loaded and, if asked, the turntable is rendered. With the
*Selected Mesh* head source the object is first exported to a ``.glb`` (:mod:`bridge.mesh_source`) and the
result is placed beside it at its scale and orientation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import bpy

from ..bridge import engine_process
from ..bridge.engine_process import EngineProcess
from ..bridge.job import StylizeRequest, engine_argv, engine_environment
from ..bridge.mesh_import import HeadFileError, import_run_head
from ..bridge.mesh_source import (MeshSourceError, beside_offset, export_source_glb, placement_matrix, scan_to_world_of,
                                  world_bounds)
from ..bridge.preferences import build_request
from ..bridge.properties import settings_of
from ..bridge.scores import NOT_MEASURED

# The progress bar covers the whole run: stylization steps fill the first 85 %, the later stages
# (before/after views, marching cubes, scoring) move it on as they start; "done" completes it.
STYLIZE_SHARE = 0.85
STAGE_PROGRESS = {"stylize": STYLIZE_SHARE, "render": 0.88, "mesh": 0.93, "evaluate": 0.97}
# Head mode first fits the mesh's field (as long as the stylization, or longer): the bar gives it the first half.
FIT_SHARE = 0.45


def progress_span(stage: str, head_mode: bool) -> tuple[float, float]:
    """(start, width) of the progress bar that a stage's step fraction fills."""
    if not head_mode:
        return 0.0, STYLIZE_SHARE
    if stage == "fit":
        return 0.0, FIT_SHARE
    return FIT_SHARE, STYLIZE_SHARE - FIT_SHARE
_ACTIVE: "StylizeSession | None" = None  # one run at a time: the engine may use all cores or the whole GPU


def active_session() -> "StylizeSession | None":
    return _ACTIVE


def head_object_name(request: StylizeRequest) -> str:
    """"Head.zombie.seed7" (or "Head.zombie.<latent file name>", "Head.zombie.<source object>")."""
    if request.head_mode:
        source = request.source_object
    else:
        source = Path(request.latent_file).stem if request.latent_file else f"seed{request.seed}"
    return f"Head.{request.style_name}.{source}"


def load_head_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            result = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise HeadFileError(f"{path}: cannot read the run summary ({exc})") from exc
    if not isinstance(result, dict) or "mesh_npz" not in result:
        raise HeadFileError(f"{path}: the run summary has no 'mesh_npz' entry")
    return result


class StylizeSession:
    """One Stylize Head run bound to a scene: start, pump events, finish (import) or fail/cancel."""

    def __init__(self, scene_name: str, request: StylizeRequest):
        self.scene_name = scene_name
        self.request = request
        self.process: EngineProcess | None = None
        self.result_path: str | None = None
        self.cancelled = False
        self.messages: list[tuple[str, str]] = []  # (report type, text) for the operator to show

    @property
    def settings(self):
        return bpy.data.scenes[self.scene_name].head_stylizer

    def start(self) -> None:
        global _ACTIVE
        os.makedirs(self.request.out_dir, exist_ok=True)
        self.process = EngineProcess(
            engine_argv(self.request), cwd=self.request.engine_root,
            env=engine_environment(self.request.engine_root), cancel_file=self.request.cancel_file,
        ).start()
        _ACTIVE = self
        s = self.settings
        s.is_running, s.progress, s.status = True, 0.0, "Starting the engine…"
        s.identity_score = s.style_score = -1.0
        s.identity_rank = s.identity_candidates = 0
        s.identity_margin = NOT_MEASURED

    def cancel(self) -> None:
        if self.process is not None:
            self.process.cancel()
            self.settings.status = "Cancelling after the current step…"

    # ------------------------------------------------------------------------------------------------
    def apply_event(self, event: dict[str, Any]) -> None:
        """Update the panel from one engine event."""
        s = self.settings
        kind = event.get("event")
        if kind == "progress":
            fraction = event.get("fraction")
            if fraction is None and event.get("total"):
                fraction = event.get("step", 0) / event["total"]
            stage = str(event.get("stage", "stylize"))
            if fraction is not None:
                start, width = progress_span(stage, self.request.head_mode)
                s.progress = start + width * max(0.0, min(1.0, float(fraction)))
            loss = event.get("loss")
            loss_text = f", loss {loss:.4g}" if isinstance(loss, (int, float)) else ""
            doing = "Fitting the mesh's field" if stage == "fit" else "Stylizing"
            s.status = f"{doing} {event.get('step', '?')}/{event.get('total', '?')}{loss_text}"
        elif kind == "stage":
            stage = str(event.get("stage", ""))
            s.status = str(event.get("message") or f"{stage.capitalize()}: {event.get('status', '')}".strip(": "))
            if stage in STAGE_PROGRESS and (stage != "stylize" or event.get("status") in ("done", "reused")):
                s.progress = max(s.progress, STAGE_PROGRESS[stage])
        elif kind == "warning":
            self.messages.append(("WARNING", str(event.get("message", ""))))
        elif kind == "done":
            self.result_path = str(event.get("result", ""))
            s.progress = 1.0
        elif kind == "cancelled":
            self.cancelled = True

    def pump(self) -> bool:
        """Apply pending events; True once the engine has exited and all its output is read."""
        assert self.process is not None
        for event in self.process.drain():
            self.apply_event(event)
        return self.process.finished

    def run_blocking(self) -> None:
        """Background mode: the same events, waited for."""
        assert self.process is not None
        self.process.wait(on_event=self.apply_event)

    # ------------------------------------------------------------------------------------------------
    def finish(self, context) -> bool:
        """After the engine exited: import the head (success), or record why not. True on success."""
        global _ACTIVE
        if _ACTIVE is self:
            _ACTIVE = None
        s = self.settings
        s.is_running = False
        code = self.process.returncode if self.process else None
        if self.cancelled or (self.process and self.process.cancel_requested_at and not self.result_path):
            s.status = "Cancelled"
            self.messages.append(("WARNING", "Stylization cancelled; pressing Stylize Head again resumes it"))
            return False
        if code != 0 or not self.result_path:
            why = self.process.error_message() if self.process else "engine did not start"
            s.status = f"Failed: {why}"
            self.messages.append(("ERROR", f"Engine failed: {why}"))
            return False
        try:
            result = load_head_json(self.result_path)
            run_dir = os.path.dirname(self.result_path)
            obj, metres_per_unit = import_run_head(context, run_dir, result, head_object_name(self.request))
        except HeadFileError as exc:
            s.status = f"Failed: {exc}"
            self.messages.append(("ERROR", str(exc)))
            return False
        if self.request.head_mode:
            try:
                self.place_beside_source(obj, result, metres_per_unit)
            except MeshSourceError as exc:  # the head is imported; it just stays at the cursor
                self.messages.append(("WARNING", f"Stylized head left at the 3D cursor: {exc}"))
        obj["head_stylizer_result"] = self.result_path
        s.result_path = self.result_path
        s.object_name = obj.name
        s.identity_score = _score(result.get("identity_similarity"))
        s.identity_rank, s.identity_candidates = _count(result.get("reid_rank")), _count(result.get("reid_candidates"))
        s.identity_margin = _score(result.get("identity_margin"), NOT_MEASURED)
        s.style_score = _score(result.get("style_score"))
        s.progress = 1.0
        s.status = f"Done: {obj.name} ({len(obj.data.polygons):,} faces)"
        from ..panels import previews  # late: panels import operators

        previews.load_run_previews(self.result_path, result)
        if s.turntable:
            from .turntable import TurntableSettings, render_turntable

            try:
                frames = render_turntable(context, obj, Path(run_dir) / "turntable",
                                          TurntableSettings(frames=s.turntable_frames))
            except (RuntimeError, OSError) as exc:  # the head is imported; only the extra renders failed
                self.messages.append(("WARNING", f"Turntable not rendered: {exc}"))
            else:
                s.status += f", turntable: {len(frames)} frames"
        return True


    def place_beside_source(self, obj, result: dict[str, Any], metres_per_unit: float = 1.0) -> None:
        """Head mode: same scale and orientation as the source object, moved beside it along +X. The mesh data
        may be in metres (a life-size glb): undo that factor first, the placement maps engine units."""
        import mathutils

        source = bpy.data.objects.get(self.request.source_object)
        offset = beside_offset(*world_bounds(source)) if source is not None else (0.0, 0.0, 0.0)
        matrix = placement_matrix(scan_to_world_of(result), offset)
        matrix[:3, :3] = matrix[:3, :3] / float(metres_per_unit)
        obj.matrix_world = mathutils.Matrix(matrix.tolist())


def _score(value: Any, missing: float = -1.0) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else missing


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _report_all(operator, session: StylizeSession) -> None:
    for kind, text in session.messages:
        operator.report({kind}, text)
    session.messages.clear()


def redraw_areas(context, area_type: str | None = "VIEW_3D") -> None:
    """Ask Blender to redraw every area of ``area_type`` (None: every area, e.g. the preferences) in all windows."""
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area_type is None or area.type == area_type:
                area.tag_redraw()


class HEADSTYLIZER_OT_stylize_head(bpy.types.Operator):
    """Stylize a generated head, or the selected mesh, toward the chosen style and import the coloured result (runs the engine in the background)"""

    bl_idname = "headstylizer.stylize_head"
    bl_label = "Stylize Head"
    bl_options = {"REGISTER", "UNDO"}

    _timer = None
    _session: StylizeSession | None = None

    def _prepare(self, context) -> StylizeSession | None:
        if _ACTIVE is not None:
            self.report({"ERROR"}, "A stylization is already running; cancel it first")
            return None
        try:
            request, problems = build_request(context, settings_of(context))
        except RuntimeError as exc:  # add-on not enabled through the preferences
            self.report({"ERROR"}, str(exc))
            return None
        if problems:
            for problem in problems[1:]:
                self.report({"WARNING"}, problem)
            self.report({"ERROR"}, problems[0])
            settings_of(context).status = f"Not started: {problems[0]}"
            return None
        if request.head_mode:
            try:
                os.makedirs(os.path.dirname(request.mesh_file), exist_ok=True)
                export_source_glb(context, bpy.data.objects[request.source_object], request.mesh_file)
            except (MeshSourceError, RuntimeError, OSError) as exc:
                self.report({"ERROR"}, f"Cannot export {request.source_object!r} for head mode: {exc}")
                settings_of(context).status = "Not started: the selected mesh could not be exported"
                return None
        session = StylizeSession(context.scene.name, request)
        try:
            session.start()
        except OSError as exc:
            self.report({"ERROR"}, f"Cannot start the engine ({request.python}): {exc}")
            settings_of(context).status = "Not started: the engine could not be launched"
            return None
        return session

    def execute(self, context):
        """Blocking run (background mode and scripts)."""
        session = self._prepare(context)
        if session is None:
            return {"CANCELLED"}
        try:
            session.run_blocking()
        except KeyboardInterrupt:
            session.cancel()
            session.run_blocking()
        ok = session.finish(context)
        _report_all(self, session)
        return {"FINISHED"} if ok else {"CANCELLED"}

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        session = self._prepare(context)
        if session is None:
            return {"CANCELLED"}
        self._session = session
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        session = self._session
        if event.type == "ESC" and event.value == "PRESS":
            session.cancel()
            return {"RUNNING_MODAL"}  # consumed: Esc cancels the run, nothing else
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        finished = session.pump()
        _report_all(self, session)
        redraw_areas(context)
        if not finished:
            return {"PASS_THROUGH"}
        context.window_manager.event_timer_remove(self._timer)
        ok = session.finish(context)
        _report_all(self, session)
        redraw_areas(context)
        return {"FINISHED"} if ok else {"CANCELLED"}


class HEADSTYLIZER_OT_cancel(bpy.types.Operator):
    """Stop the running stylization after its current step (a later run resumes it)"""

    bl_idname = "headstylizer.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return _ACTIVE is not None

    def execute(self, context):
        if _ACTIVE is None:
            self.report({"WARNING"}, "No stylization is running")
            return {"CANCELLED"}
        _ACTIVE.cancel()
        return {"FINISHED"}


def kill_running_engines(*_args) -> None:
    """Blender is loading another file or quitting: no engine may outlive the session that started it."""
    global _ACTIVE
    engine_process.kill_all()
    _ACTIVE = None


@bpy.app.handlers.persistent
def _on_load_pre(*_args) -> None:
    kill_running_engines()


@bpy.app.handlers.persistent
def _on_load_post(*_args) -> None:
    from ..bridge.properties import reset_run_state

    for scene in bpy.data.scenes:
        if hasattr(scene, "head_stylizer"):
            reset_run_state(scene)
    _reload_previews(bpy.context.scene)


def _reload_previews(scene) -> None:
    """Show the opened file's last run again (preview icons do not live in the .blend)."""
    from ..panels import previews

    path = getattr(getattr(scene, "head_stylizer", None), "result_path", "")
    if path and os.path.isfile(path):
        try:
            previews.load_run_previews(path, load_head_json(path))
        except HeadFileError:
            pass


HANDLERS = ((bpy.app.handlers.load_pre, _on_load_pre), (bpy.app.handlers.load_post, _on_load_post))
CLASSES = (HEADSTYLIZER_OT_stylize_head, HEADSTYLIZER_OT_cancel)
