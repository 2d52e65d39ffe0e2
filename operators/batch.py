"""Batch operator: a folder of head scans → stylized glb heads, with per-item progress in the panel.

Two phases, both cancellable:

1. **Views** (inside Blender, one scan per timer tick so the UI stays responsive): each scan (obj, ply,
   glb/gltf, fbx) is imported with Blender's importer, normalised and rendered from the generator's
   calibrated cameras into ``OUT/views/<name>/`` with a ``cameras.json`` (:mod:`.scan_render`). A scan that
   fails to import is reported and skipped; a views folder that is already complete is reused.
   In the *Each Mesh* mode each scan is instead written as ``OUT/meshes/<name>.glb`` (Blender's importer, then
   its glTF exporter), for the engine's head mode.
2. **Engine** (out of process): ``python -m engine batch --views OUT/views --out OUT --i-have-consent …``
   (``--mode mesh --in OUT/meshes`` in the *Each Mesh* mode)
   runs through :class:`.engine_process.EngineProcess`; its ``item`` events update the progress bar and
   status. Cancel stops after the current item (the engine keeps everything finished; rerunning resumes).
   With *Run on Ray* the engine farms the items out on Ray (``--ray [ADDRESS]`` and the per-item resources,
   :mod:`engine.app.farm`): a local Ray instance, or the cluster at the given address.

The operator refuses to start unless "I have the subjects' consent" is ticked; the confirmation is recorded
in every output's provenance. Source scans are never copied into the output folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bpy

from ..bridge import engine_process, scan_render, styles
from ..bridge.job import HEAD_MODE_ANCHOR, RECIPE_ENGINE_NAME, RECIPES, anchor_argv, engine_environment

_SESSION: "BatchSession | None" = None


def active_batch() -> "BatchSession | None":
    return _SESSION


@dataclass
class BatchPlan:
    """What a batch will do (built from the scene settings and the preferences)."""

    python: str
    engine_root: str
    in_dir: Path
    out_dir: Path
    style: str
    prompt: str
    method: str
    resolution: int = 128
    samples: int = 8
    units: str = "auto"
    mesh_resolution: int = 128
    inversion_steps: int = 0
    device: str = "auto"
    consent: bool = False
    scans: list[Path] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # engine flag (without --) → path; empty = embedded pack
    mode: str = "generator"  # "generator": views → inversion; "mesh": glb → each scan's own field (head mode)
    style_id: str = ""  # an approved style (bridge/styles.py); empty: train from style/prompt
    ray: str | None = None  # None: on this machine; "": a local Ray instance; else a Ray cluster's address
    ray_cpus_per_item: float = 1.0
    ray_gpus_per_item: float = 0.0
    recipe: str = "ours"  # engine --preset: "ours" or "paper" (ignored under an approved style, which brings its own)
    keep_colours: float = HEAD_MODE_ANCHOR[0]  # mesh mode: --anchor-image
    keep_shape: float = HEAD_MODE_ANCHOR[1]  # mesh mode: --anchor-geometry

    @property
    def handoff_dir(self) -> Path:
        """Where phase 1 leaves what the engine reads: rendered views, or the scans as glb files."""
        return self.out_dir / ("meshes" if self.mode == "mesh" else "views")

    def engine_argv(self) -> list[str]:
        source = ["--mode", "mesh", "--in", str(self.handoff_dir), "--units", self.units] if self.mode == "mesh" \
            else ["--views", str(self.handoff_dir)]
        argv = [self.python, "-m", "engine", "batch", "--json", *source, "--out", str(self.out_dir),
                "--method", self.method, "--mesh-resolution", str(self.mesh_resolution), "--device", self.device,
                "--cancel-file", str(self.out_dir / ".cancel")]
        if self.style_id and self.style_id != styles.NO_STYLE:
            argv += styles.style_id_argv(self.style_id)  # production: the approved style brings its prompt
        else:
            argv += ["--prompt", self.prompt] if self.prompt else ["--style", self.style]
            if self.recipe != "ours":
                argv += ["--preset", self.recipe]
        if self.mode == "mesh":
            argv += anchor_argv(self.keep_colours, self.keep_shape)
        if self.inversion_steps:
            argv += ["--inversion-steps", str(self.inversion_steps)]
        for flag, path in sorted(self.models.items()):
            if path:
                argv += [f"--{flag}", path]
        if self.ray is not None:
            argv += ["--ray", *([self.ray] if self.ray else []), "--ray-cpus-per-item", f"{self.ray_cpus_per_item:g}",
                     "--ray-gpus-per-item", f"{self.ray_gpus_per_item:g}"]
        if self.consent:
            argv.append("--i-have-consent")
        return argv


def find_scans(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in scan_render.SCAN_SUFFIXES)


class BatchSession:
    """State of one batch run; advanced by :meth:`step` from a timer (or a loop in background mode)."""

    def __init__(self, plan: BatchPlan):
        self.plan = plan
        self.phase = "views"
        self.index = 0
        self.failures: dict[str, str] = {}
        self.process: engine_process.EngineProcess | None = None
        self.status = "rendering views"
        self.progress = 0.0
        self.cancelled = False
        self.items_done = 0
        self.returncode: int | None = None

    def view_folder(self, scan: Path) -> Path:
        return self.plan.out_dir / "views" / scan.stem

    def mesh_file(self, scan: Path) -> Path:
        return self.plan.handoff_dir / f"{scan.stem}.glb"

    def _prepare(self, scan: Path) -> None:
        """Phase 1 for one scan (skipped when already done): render its views, or write it as a glb."""
        if self.plan.mode == "mesh":
            if not self.mesh_file(scan).is_file():
                scan_render.prepare_scan_glb(scan, self.mesh_file(scan))
            return
        folder = self.view_folder(scan)
        if not (folder / "cameras.json").is_file():
            scan_render.prepare_scan_views(scan, folder, self.plan.resolution, self.plan.samples, self.plan.units)

    def step(self) -> bool:
        """Advance by one unit of work; False when finished."""
        if self.phase == "views":
            if self.cancelled:
                self.phase = "done"
                self.status = "cancelled"
                return False
            if self.index < len(self.plan.scans):
                scan = self.plan.scans[self.index]
                doing = "meshes" if self.plan.mode == "mesh" else "views"
                self.status = f"{doing} {self.index + 1}/{len(self.plan.scans)}: {scan.name}"
                try:
                    self._prepare(scan)
                except Exception as exc:  # noqa: BLE001 - an importer failure must not stop the batch
                    self.failures[scan.name] = f"{type(exc).__name__}: {exc}"
                    if self.plan.mode != "mesh":
                        scan_render.write_failure(self.view_folder(scan), scan, self.failures[scan.name])
                self.index += 1
                self.progress = 0.3 * self.index / max(len(self.plan.scans), 1)
                return True
            self.phase = "engine"
            self.process = engine_process.EngineProcess(
                self.plan.engine_argv(), cwd=self.plan.engine_root, env=engine_environment(self.plan.engine_root),
                cancel_file=self.plan.out_dir / ".cancel",
            ).start()
            self.status = "engine: loading models"
            return True
        if self.phase == "engine" and self.process is not None:
            for event in self.process.drain():
                self.apply_event(event)
            if self.process.finished:
                self.returncode = self.process.returncode
                self.phase = "done"
                if self.returncode not in (0, None):
                    self.status = f"engine failed: {self.process.error_message()}"
                return False
            return True
        return False

    def apply_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "item" and event.get("status") not in (None, "started"):
            self.items_done += 1  # one finished event per item; on Ray they come in any order, so count them
            total = int(event.get("total", 1)) or 1
            self.progress = 0.3 + 0.7 * self.items_done / total
            self.status = f"{self.items_done}/{total} {Path(str(event.get('input', ''))).name}: {event.get('status')}"
        elif kind == "stage":
            self.status = f"engine: {event.get('message') or event.get('stage')}"
        elif kind == "done":
            self.status = f"done: {event.get('done', 0)} heads, {event.get('skipped', 0)} reused, {event.get('failed', 0) + len(self.failures)} failed"
            self.progress = 1.0
        elif kind == "cancelled":
            self.status = "cancelled (finished heads kept)"

    def cancel(self) -> None:
        self.cancelled = True
        if self.process is not None:
            self.process.cancel()

    def run_blocking(self) -> None:
        while self.step():
            if self.phase == "engine":
                import time

                time.sleep(0.1)


# --------------------------------------------------------------------------------------------------
# Properties, operators, panel
# --------------------------------------------------------------------------------------------------
class HeadStylizerBatchSettings(bpy.types.PropertyGroup):
    input_dir: bpy.props.StringProperty(name="Scans", subtype="DIR_PATH", description="Folder of head scans (obj, ply, glb, gltf, fbx)")
    output_dir: bpy.props.StringProperty(name="Output", subtype="DIR_PATH", description="Where the glb heads, sidecars and report go")
    style: bpy.props.StringProperty(name="Style", default="zombie", description="Style preset (zombie, statue, cartoon, sketch, gold, photo, Pixar, …)")
    prompt: bpy.props.StringProperty(name="Prompt", default="", description="Custom prompt (overrides the style)")
    approved_style: bpy.props.EnumProperty(
        name="Approved Style", items=styles.enum_items,
        description="Production: an approved style from the style library (engine style approve); used as approved, "
                    "never retrained. None: stylize from Style/Prompt")
    recipe: bpy.props.EnumProperty(name="Recipe", items=[(key, label, help) for key, label, _engine, help in RECIPES],
                                   default="FAST", description="Training recipe (an approved style brings its own)")
    keep_colours: bpy.props.FloatProperty(
        name="Keep Colours", min=0.0, soft_max=5.0, default=HEAD_MODE_ANCHOR[0],
        description="Each Mesh: how strongly each stylized head keeps its scan's colour layout (skin, hair and "
                    "features, blurred). 0: the style may recolour freely; higher keeps more of the person")
    keep_shape: bpy.props.FloatProperty(
        name="Keep Shape", min=0.0, soft_max=5.0, default=HEAD_MODE_ANCHOR[1],
        description="Each Mesh: how strongly each stylized head keeps its scan's silhouette and depth")
    units: bpy.props.EnumProperty(name="Units", items=[(u, u, f"Scan units: {u}") for u in ("auto", "mm", "cm", "m", "world", "fit")], default="auto")
    mode: bpy.props.EnumProperty(
        name="Mode",
        items=(("generator", "Generator", "Invert each scan into the stylized generator (fast per head; the head is "
                                          "what the generator can make of it)"),
               ("mesh", "Each Mesh", "Stylize each scan as itself: its own fitted field (head mode; slower, keeps "
                                     "heads the generator cannot make)")),
        default="generator",
    )
    view_resolution: bpy.props.IntProperty(name="View Size", default=128, min=32, max=1024)
    mesh_resolution: bpy.props.IntProperty(name="Mesh Resolution", default=128, min=32, max=512)
    use_ray: bpy.props.BoolProperty(name="Run on Ray", default=False,
                                    description="Farm the items out on Ray, one task per item (needs Ray in the engine's environment)")
    ray_address: bpy.props.StringProperty(name="Ray Address", default="",
                                          description="Empty: a local Ray instance on this machine; else the cluster's "
                                                      "address (auto, HOST:6379, ray://HOST:10001)")
    ray_cpus_per_item: bpy.props.FloatProperty(name="CPUs per Item", default=1.0, min=0.01, max=256.0,
                                               description="CPUs each item's Ray task declares")
    ray_gpus_per_item: bpy.props.FloatProperty(name="GPUs per Item", default=0.0, min=0.0, max=16.0,
                                               description="GPUs each item's Ray task declares (0: CPU; 0.5: two items share a GPU)")
    consent: bpy.props.BoolProperty(name="I have the subjects' consent", default=False,
                                    description="Confirm that every scanned person consented; recorded in each output")
    progress: bpy.props.FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    status: bpy.props.StringProperty(name="Status", default="")


def _plan_from(context, settings) -> tuple[BatchPlan | None, str | None]:
    from ..bridge.preferences import engine_root, get_preferences, model_paths, resolve_python

    if not settings.consent:
        return None, "Tick \"I have the subjects' consent\" before running a batch"
    in_dir = Path(bpy.path.abspath(settings.input_dir)) if settings.input_dir else None
    if in_dir is None or not in_dir.is_dir():
        return None, f"Scans folder not found: {settings.input_dir!r}"
    out_dir = Path(bpy.path.abspath(settings.output_dir)) if settings.output_dir else in_dir / "stylized"
    prefs = get_preferences(context)
    python, problem = resolve_python(prefs)
    if problem:
        return None, problem
    approved = styles.chosen_style_id(settings.approved_style)  # '' for None and for a choice no longer listed
    if approved and settings.mode == "mesh":
        return None, "An approved style runs in Generator mode (Each Mesh trains every scan's own field)"
    scans = find_scans(in_dir)
    if not scans:
        return None, f"No scans (.obj/.ply/.glb/.gltf/.fbx) in {in_dir}"
    return BatchPlan(python=python, engine_root=engine_root(prefs), in_dir=in_dir, out_dir=out_dir, style=settings.style,
                     prompt=settings.prompt, method="ld", resolution=settings.view_resolution,
                     units=settings.units, mesh_resolution=settings.mesh_resolution, device=getattr(prefs, "device", "auto").lower(),
                     consent=True, scans=scans, mode=settings.mode, style_id=approved,
                     ray=settings.ray_address.strip() if settings.use_ray else None,
                     ray_cpus_per_item=settings.ray_cpus_per_item, ray_gpus_per_item=settings.ray_gpus_per_item,
                     recipe=RECIPE_ENGINE_NAME[settings.recipe], keep_colours=settings.keep_colours,
                     keep_shape=settings.keep_shape,
                     models=model_paths(prefs).engine_flags()), None


class HEADSTYLIZER_OT_batch(bpy.types.Operator):
    """Stylize every head scan of a folder into glb files (needs the subjects' consent)"""

    bl_idname = "headstylizer.batch"
    bl_label = "Run Batch"
    bl_options = {"REGISTER"}

    _timer = None

    def _sync(self, context, session: BatchSession) -> None:
        settings = context.scene.head_stylizer_batch
        settings.progress = session.progress
        settings.status = session.status
        for area in getattr(context.screen, "areas", []) if context.screen else []:
            area.tag_redraw()

    def execute(self, context):
        global _SESSION
        settings = context.scene.head_stylizer_batch
        plan, problem = _plan_from(context, settings)
        if problem:
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        _SESSION = BatchSession(plan)
        if bpy.app.background:
            _SESSION.run_blocking()
            self._sync(context, _SESSION)
            return self._finish(_SESSION)
        self._timer = context.window_manager.event_timer_add(0.2, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def invoke(self, context, event):
        return self.execute(context)

    def modal(self, context, event):
        session = _SESSION
        if session is None:
            return {"CANCELLED"}
        if event.type == "ESC":
            session.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        running = session.step()
        self._sync(context, session)
        if running:
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        return self._finish(session)

    def _finish(self, session: BatchSession):
        for name, error in session.failures.items():
            self.report({"WARNING"}, f"{name}: {error}")
        if session.returncode not in (0, None):
            self.report({"ERROR"}, session.status)
            return {"CANCELLED"}
        self.report({"INFO"}, session.status)
        return {"FINISHED"}


class HEADSTYLIZER_OT_batch_cancel(bpy.types.Operator):
    """Stop the batch after the current scan (finished heads are kept; running it again resumes)"""

    bl_idname = "headstylizer.batch_cancel"
    bl_label = "Cancel Batch"

    @classmethod
    def poll(cls, context):
        return _SESSION is not None and _SESSION.phase != "done"

    def execute(self, context):
        if _SESSION is not None:
            _SESSION.cancel()
        return {"FINISHED"}


def draw_batch_panel(layout, context) -> None:
    settings = getattr(context.scene, "head_stylizer_batch", None)
    if settings is None:
        return
    col = layout.column(align=True)
    col.prop(settings, "input_dir")
    col.prop(settings, "output_dir")
    col.prop(settings, "approved_style")
    if settings.approved_style == styles.NO_STYLE:
        col.prop(settings, "style")
        col.prop(settings, "prompt")
        col.prop(settings, "recipe")
    col.prop(settings, "mode")
    if settings.mode == "mesh":
        col.prop(settings, "keep_colours", slider=True)
        col.prop(settings, "keep_shape", slider=True)
    col.prop(settings, "units")
    col.prop(settings, "mesh_resolution")
    col.prop(settings, "use_ray")
    if settings.use_ray:
        col.prop(settings, "ray_address")
        col.prop(settings, "ray_cpus_per_item")
        col.prop(settings, "ray_gpus_per_item")
    col.prop(settings, "consent")
    row = layout.row(align=True)
    row.operator("headstylizer.batch", icon="PLAY")
    row.operator("headstylizer.batch_cancel", icon="CANCEL", text="")
    if hasattr(layout, "progress"):
        layout.progress(factor=settings.progress, type="BAR", text=settings.status or "idle")
    else:
        layout.prop(settings, "progress")
        layout.label(text=settings.status or "idle")


def _register_scene_property(*_args) -> None:
    bpy.types.Scene.head_stylizer_batch = bpy.props.PointerProperty(type=HeadStylizerBatchSettings)


class HEADSTYLIZER_batch_property_hook(bpy.types.PropertyGroup):
    """Registering this (after the settings group) attaches the scene property; unregistering removes it."""

    @classmethod
    def register(cls) -> None:
        _register_scene_property()

    @classmethod
    def unregister(cls) -> None:
        if hasattr(bpy.types.Scene, "head_stylizer_batch"):
            del bpy.types.Scene.head_stylizer_batch


CLASSES = (HeadStylizerBatchSettings, HEADSTYLIZER_batch_property_hook, HEADSTYLIZER_OT_batch, HEADSTYLIZER_OT_batch_cancel)
