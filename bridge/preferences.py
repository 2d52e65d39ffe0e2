"""Add-on preferences: which Python runs the engine, where the models and the results live.

Every model location may stay empty: the engine then uses the embedded model pack shipped inside the
extension. :func:`resolve_python` and :func:`build_request` turn the preferences plus the panel's settings
into a :class:`~.job.StylizeRequest`, so that the operators report one readable problem instead of
starting a process that would fail.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import bpy

from . import engine_install, engine_process
from .job import ModelPaths, StylizeRequest, check_request
from .styles import chosen_style_id, style_name

ADDON_PACKAGE = __package__.rpartition(".")[0]  # the extension's root package, e.g. bl_ext.user_default.head_stylizer
EXTENSION_ROOT = Path(__file__).resolve().parent.parent  # holds engine/ and the embedded pack


class HEADSTYLIZER_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    python_path: bpy.props.StringProperty(
        name="Engine Python",
        description="Python interpreter with torch and diffusers that runs the engine. "
        "Empty: Blender's own Python, if torch imports there",
        subtype="FILE_PATH",
    )
    engine_root: bpy.props.StringProperty(
        name="Engine Folder",
        description="Folder that contains the 'engine' package. Empty: the one inside this extension",
        subtype="DIR_PATH",
    )
    generator_path: bpy.props.StringProperty(
        name="Generator Checkpoint",
        description="Head generator (.safetensors or PanoHead .pkl). Empty: the embedded model pack",
        subtype="FILE_PATH",
    )
    diffusion_dir: bpy.props.StringProperty(
        name="Diffusion Model Folder",
        description="Stable Diffusion 1.5-layout folder (model_index.json, unet/, vae/ …). Empty: embedded pack",
        subtype="DIR_PATH",
    )
    depth_controlnet_dir: bpy.props.StringProperty(
        name="Depth ControlNet Folder", description="Empty: the embedded pack's", subtype="DIR_PATH"
    )
    edge_controlnet_dir: bpy.props.StringProperty(
        name="Edge (Canny) ControlNet Folder", description="Empty: the embedded pack's", subtype="DIR_PATH"
    )
    lpips_dir: bpy.props.StringProperty(
        name="LPIPS Folder",
        description="LPIPS-Alex weights (Model manager › LPIPS-Alex › Download). Empty: no LPIPS term "
        "(the Paper recipe warns)",
        subtype="DIR_PATH",
    )
    depth_model_dir: bpy.props.StringProperty(
        name="Depth Model Folder",
        description="A transformers depth-estimation model (e.g. Depth Anything V2): the Paper recipe's official "
        "depth control. Empty: the generator's own depth",
        subtype="DIR_PATH",
    )
    device: bpy.props.EnumProperty(
        name="Device",
        items=(("auto", "Auto", "CUDA GPU when available, else CPU"),
               ("cuda", "CUDA", "NVIDIA GPU"),
               ("cpu", "CPU", "Processor only (slow for real Stable Diffusion models)")),
        default="auto",
    )
    output_dir: bpy.props.StringProperty(
        name="Output Folder",
        description="Where runs are written. Empty: a 'head_stylizer' folder next to the .blend file, "
        "or in the temporary folder for unsaved files",
        subtype="DIR_PATH",
    )
    attention_slicing: bpy.props.BoolProperty(
        name="Attention Slicing", description="Lower GPU memory for the diffusion model, a little slower"
    )
    vae_slicing: bpy.props.BoolProperty(
        name="VAE Slicing", description="Lower GPU memory when decoding images, a little slower"
    )

    engine_env_dir: bpy.props.StringProperty(
        name="Engine Environment",
        description="Where Install Engine puts the engine's Python environment. Empty: this extension's user folder",
        subtype="DIR_PATH",
    )
    torch_variant: bpy.props.EnumProperty(
        name="Torch",
        items=(("cpu", "CPU", "Processor only: works everywhere, slow for real Stable Diffusion models"),
               ("cuda", "CUDA", "NVIDIA GPU (PyTorch's CUDA build)"),
               ("apple", "Apple", "Apple silicon (Metal): PyPI's macOS wheels")),
        default="cpu",
    )
    package_index: bpy.props.StringProperty(
        name="Package Index", description="Python package index URL for Install Engine. Empty: PyPI",
    )
    models_dir: bpy.props.StringProperty(
        name="Models Folder",
        description="Where the model manager downloads real models. Empty: this extension's user folder",
        subtype="DIR_PATH",
    )
    wheel_folder: bpy.props.StringProperty(
        name="Offline Wheels",
        description="Install from this folder of wheels instead of the internet (pip --no-index --find-links)",
        subtype="DIR_PATH",
    )

    def draw(self, context):
        layout = self.layout
        draw_engine_setup(layout, self)
        col = layout.column()
        col.prop(self, "python_path")
        row = col.row()
        row.label(text=python_status_text(self))
        row.operator("headstylizer.check_python", icon="FILE_REFRESH")
        col.prop(self, "device")
        col.prop(self, "output_dir")
        from ..operators.models import draw_model_manager  # late: operators import this module

        draw_model_manager(layout, self)
        box = layout.box()
        box.label(text="Models (empty = embedded model pack)")
        for name in ("generator_path", "diffusion_dir", "depth_controlnet_dir", "edge_controlnet_dir", "lpips_dir",
                     "depth_model_dir"):
            box.prop(self, name)
        box = layout.box()
        box.label(text="Memory")
        box.prop(self, "attention_slicing")
        box.prop(self, "vae_slicing")
        layout.prop(self, "engine_root")


def get_preferences(context=None) -> HEADSTYLIZER_AP_preferences:
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    if addon is None:
        raise RuntimeError(f"add-on {ADDON_PACKAGE!r} is not enabled")
    return addon.preferences


def _abspath(path: str) -> str:
    return os.path.abspath(bpy.path.abspath(path)) if path else ""


def model_paths(prefs) -> ModelPaths:
    """The preferences' model locations, absolute (empty: the embedded pack's, or the term off)."""
    return ModelPaths(
        generator=_abspath(prefs.generator_path),
        diffusion=_abspath(prefs.diffusion_dir),
        depth_controlnet=_abspath(prefs.depth_controlnet_dir),
        edge_controlnet=_abspath(prefs.edge_controlnet_dir),
        lpips=_abspath(prefs.lpips_dir),
        depth_model=_abspath(prefs.depth_model_dir),
    )


def _user_folder(preference: str, name: str) -> Path:
    """``preference`` when set, else ``name`` in the extension's user folder (the scripts folder when it is
    not installed as an extension: legacy add-on, tests)."""
    if preference:
        return Path(_abspath(preference))
    try:
        return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, path=name, create=False))
    except (ValueError, RuntimeError):
        return Path(bpy.utils.user_resource("SCRIPTS", path="head_stylizer")) / name


def managed_env_dir(prefs) -> Path:
    """The Install Engine environment: the preference, else ``engine_env`` in the extension's user folder."""
    return _user_folder(prefs.engine_env_dir, "engine_env")


def models_dir(prefs) -> Path:
    """The model manager's folder: the preference, else ``models`` in the extension's user folder."""
    return _user_folder(prefs.models_dir, "models")


def requirements_file() -> Path:
    return EXTENSION_ROOT / "requirements.txt"


def resolve_python(prefs) -> tuple[str, str | None]:
    """(interpreter, problem or None). A configured path is used as given (checked later); else the Install
    Engine environment when it is ready; else Blender's own Python, which only works if torch imports there
    (checked once, in a subprocess)."""
    if prefs.python_path:
        return _abspath(prefs.python_path), None
    env = managed_env_dir(prefs)
    if engine_install.is_installed(env):
        return str(engine_install.environment_python(env)), None
    python = engine_process.blender_python()
    ok, message = engine_process.cached_python_check(python)
    if ok:
        return python, None
    return python, (f"the engine is not installed (Blender's Python has no torch: {message}); press Install "
                    "Engine in the Head Stylizer panel, or set 'Engine Python' in the preferences")


def engine_status(prefs) -> tuple[bool, str]:
    """(ready, one line) for the setup checklist, without starting any process."""
    running = engine_install.running_install()
    if running is not None:
        return False, f"installing: {running.state.message}"
    if prefs.python_path:
        checked = engine_process.previous_python_check(_abspath(prefs.python_path))
        return (checked is None or checked[0]), f"Engine Python {prefs.python_path}" + (
            "" if checked is None else (" (ready)" if checked[0] else " (cannot run the engine)"))
    env = managed_env_dir(prefs)
    if engine_install.is_installed(env):
        check = engine_install.read_marker(env).get("check", {})
        return True, engine_install.describe(check) if check else "installed"
    checked = engine_process.previous_python_check(engine_process.blender_python())
    if checked is not None and checked[0]:
        return True, f"Blender's Python ({checked[1]})"
    finished = engine_install.current_install
    if finished is not None and not finished.state.ok:
        return False, f"install failed: {finished.state.message}"
    return False, "not installed"


def draw_engine_setup(layout, prefs) -> None:
    """Install / Repair / Remove / Check, the install's progress, and its options (the preferences' top box)."""
    box = layout.box()
    ready, text = engine_status(prefs)
    box.label(text=f"Engine: {text}", icon="CHECKMARK" if ready else "ERROR")
    running = engine_install.running_install()
    if running is not None:
        if hasattr(box, "progress"):
            box.progress(factor=running.state.fraction, type="BAR", text=f"{running.state.stage} {running.state.fraction * 100:.0f}%")
        box.operator("headstylizer.cancel_install", icon="CANCEL")
    else:
        row = box.row()
        row.operator("headstylizer.install_engine", text="Repair" if ready else "Install Engine",
                     icon="FILE_REFRESH" if ready else "IMPORT").repair = ready
        row.operator("headstylizer.remove_engine", icon="TRASH")
        row.operator("headstylizer.check_python", text="Check", icon="VIEWZOOM")
    col = box.column()
    col.prop(prefs, "torch_variant", expand=True)
    col.prop(prefs, "package_index")
    col.prop(prefs, "wheel_folder")
    col.prop(prefs, "engine_env_dir")


def python_status_text(prefs) -> str:
    if prefs.python_path:
        return f"Using {prefs.python_path}"
    python = engine_process.blender_python()
    checked = engine_process.previous_python_check(python)
    if checked is None:
        return "Blender's Python (not checked yet)"
    return f"Blender's Python: {'ready, ' + checked[1] if checked[0] else 'cannot run the engine'}"


def engine_root(prefs) -> str:
    return _abspath(prefs.engine_root) if prefs.engine_root else str(EXTENSION_ROOT)


def output_root(prefs) -> Path:
    if prefs.output_dir:
        return Path(_abspath(prefs.output_dir))
    if bpy.data.filepath:
        return Path(bpy.data.filepath).parent / "head_stylizer"
    return Path(tempfile.gettempdir()) / "head_stylizer"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "head"


def build_request(context, settings) -> tuple[StylizeRequest, list[str]]:
    """The request for the scene's panel settings, and the problems that block it (empty = go)."""
    prefs = get_preferences(context)
    python, python_problem = resolve_python(prefs)
    root = output_root(prefs)
    source_object = context.active_object if settings.head_source == "MESH" else None
    if settings.head_source == "MESH":
        source = source_object.name if source_object is not None else "mesh"
    elif settings.head_source == "LATENT" and settings.latent_file:
        source = Path(_abspath(settings.latent_file)).stem
    else:
        source = f"seed{settings.seed}"
    approved = chosen_style_id(settings.approved_style)
    style = (_slug(style_name(approved)) if approved else settings.preset.lower() if settings.preset != "CUSTOM"
             else _slug(settings.prompt))
    run_name = f"{style}_{_slug(source)}_{time.strftime('%Y%m%d-%H%M%S')}"
    request = StylizeRequest(
        out_dir=str(root / run_name),
        python=python,
        engine_root=engine_root(prefs),
        preset=settings.preset,
        recipe=settings.recipe,
        style_id=approved,
        prompt=settings.prompt,
        method=settings.method,
        mirror=settings.use_mirror,
        grid=settings.use_grid,
        rank=settings.use_rank,
        steps=settings.steps,
        seed=settings.seed,
        latent_file=_abspath(settings.latent_file) if settings.head_source == "LATENT" else "",
        mesh_file=str(root / run_name / f"{_slug(source)}.glb") if settings.head_source == "MESH" else "",
        source_object=source_object.name if source_object is not None else "",
        field_steps=settings.field_steps,
        keep_colours=settings.keep_colours,
        keep_shape=settings.keep_shape,
        strength=settings.strength,
        mesh_resolution=settings.mesh_resolution,
        device=prefs.device,
        attention_slicing=prefs.attention_slicing,
        vae_slicing=prefs.vae_slicing,
        cache_dir=str(root / "cache"),
        cancel_file=str(root / run_name / "cancel"),
        models=model_paths(prefs),
    )
    problems = ([python_problem] if python_problem else []) + check_request(request)
    if settings.head_source == "LATENT" and not settings.latent_file:
        problems.append("Choose a latent file, or switch the head source to Generated")
    if settings.head_source == "MESH":
        from .mesh_source import MeshSourceError, check_source_object

        try:
            check_source_object(source_object)
        except MeshSourceError as exc:
            problems.insert(0, str(exc))
    return request, problems


CLASSES = (HEADSTYLIZER_AP_preferences,)
