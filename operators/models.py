"""Model manager in Blender: *Download* a real model (Stable Diffusion 1.5, Realistic Vision V5.1, Canny / depth
ControlNet, LPIPS-Alex, Depth Anything V2).

Runs ``python -m engine models download KEY --out MODELS --json`` with the engine's interpreter (the download
code — listing, resumable transfer, verification, pinning — is the engine's, :mod:`engine.app.models`); the
preferences show its progress; when it finishes, the matching model preference points at the new folder.
Background mode waits for the download.
"""

from __future__ import annotations

import json
from pathlib import Path

import bpy

from ..bridge.engine_process import EngineProcess
from ..bridge.job import engine_environment
from ..bridge.preferences import engine_root, get_preferences, models_dir, resolve_python
from .stylize import redraw_areas

MODEL_KEYS = (("sd15", "Stable Diffusion 1.5", "diffusion_dir"),
              ("realistic-vision-v5.1", "Realistic Vision V5.1 (the paper's)", "diffusion_dir"),
              ("controlnet-canny", "Canny ControlNet", "edge_controlnet_dir"),
              ("controlnet-depth", "Depth ControlNet", "depth_controlnet_dir"),
              ("lpips-alex", "LPIPS-Alex", "lpips_dir"),
              ("depth-anything-v2-base", "Depth Anything V2 (non-commercial)", "depth_model_dir"))
# engine role (models.json, the download's ``done`` event) → the preference the downloaded folder fills
ROLE_PREFERENCE = {"diffusion": "diffusion_dir", "edge_controlnet": "edge_controlnet_dir",
                   "depth_controlnet": "depth_controlnet_dir", "lpips": "lpips_dir", "depth_model": "depth_model_dir"}
# key → {"fraction": float, "message": str, "running": bool}
DOWNLOADS: dict[str, dict] = {}


class HEADSTYLIZER_OT_download_model(bpy.types.Operator):
    """Download this model into the models folder (pinned revision, every file verified); resumes an interrupted download"""

    bl_idname = "headstylizer.download_model"
    bl_label = "Download"

    key: bpy.props.EnumProperty(items=[(k, label, "") for k, label, _ in MODEL_KEYS]
                                + [("all", "All", "Stable Diffusion 1.5 and both ControlNets"),
                                   ("paper", "Paper", "What the Paper recipe uses: Realistic Vision V5.1, both "
                                                      "ControlNets, LPIPS-Alex, Depth Anything V2")])
    _timer = None
    _process: EngineProcess | None = None

    def execute(self, context):
        if DOWNLOADS.get(self.key, {}).get("running"):
            self.report({"WARNING"}, f"{self.key} is already downloading")
            return {"CANCELLED"}
        prefs = get_preferences(context)
        python, problem = resolve_python(prefs)
        if problem:
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        folder = models_dir(prefs)
        argv = [python, "-m", "engine", "models", "download", self.key, "--out", str(folder), "--json"]
        root = engine_root(prefs)
        self._process = EngineProcess(argv, cwd=root, env=engine_environment(root)).start()
        DOWNLOADS[self.key] = {"fraction": 0.0, "message": "starting", "running": True}
        if bpy.app.background:
            self._process.wait(on_event=self._on_event)
            return self._finish(context)
        self._timer = context.window_manager.event_timer_add(0.5, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _on_event(self, event: dict) -> None:
        state = DOWNLOADS[self.key]
        if event.get("event") == "progress":
            state["fraction"] = float(event.get("fraction") or 0.0)
            state["message"] = f"{event.get('step')}/{event.get('total')} {event.get('file', '')}"
        elif event.get("event") == "done":
            state["result"] = event.get("result")
            state["revision"] = event.get("revision")
            state.setdefault("results", {})[event.get("role")] = event.get("result")

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        for item in self._process.drain():
            self._on_event(item)
        redraw_areas(context, None)
        if not self._process.finished:
            return {"PASS_THROUGH"}
        for item in self._process.drain():
            self._on_event(item)
        context.window_manager.event_timer_remove(self._timer)
        return self._finish(context)

    def _finish(self, context):
        state = DOWNLOADS[self.key]
        state["running"] = False
        if self._process.returncode != 0 or not state.get("result"):
            state["message"] = f"failed: {self._process.error_message()}"
            self.report({"ERROR"}, f"Download {self.key}: {self._process.error_message()}")
            return {"CANCELLED"}
        prefs = get_preferences(context)
        for role, folder in state.get("results", {}).items():
            setattr(prefs, ROLE_PREFERENCE[role], folder)
        state["message"] = f"done ({str(state.get('revision', ''))[:12]})"
        self.report({"INFO"}, f"Downloaded {self.key} to {state['result']}")
        return {"FINISHED"}


def model_status(prefs, key: str) -> str:
    """'downloading 40 %' / 'repo@commit' / 'not downloaded' (reads models.json; starts nothing)."""
    state = DOWNLOADS.get(key)
    if state and state.get("running"):
        return f"downloading {state['fraction'] * 100:.0f} %"
    try:
        entry = json.loads((models_dir(prefs) / "models.json").read_text()).get(key)
    except (OSError, ValueError):
        entry = None
    if entry:
        return f"{entry['repo_id']}@{entry['revision'][:10]} ({entry['licence']})"
    if state and state.get("message", "").startswith("failed"):
        return state["message"][:80]
    return "not downloaded"


def draw_model_manager(layout, prefs) -> None:
    box = layout.box()
    box.label(text="Model manager (downloads only when you press Download)")
    box.prop(prefs, "models_dir")
    for key, label, _pref in MODEL_KEYS:
        row = box.row()
        row.label(text=f"{label}: {model_status(prefs, key)}")
        row.operator("headstylizer.download_model", text="Download").key = key
    col = box.column(align=True)
    col.label(text="PanoHead generator: pick your .pkl as Generator Checkpoint below (not downloadable here).")
    col.label(text="PanoHead (An, Xu, Shi, Song, Ogras, Luo, CVPR 2023); its repository states CC BY 4.0 —")
    col.label(text="check the terms of the weights where you obtained them, and credit the authors.")


CLASSES = (HEADSTYLIZER_OT_download_model,)
