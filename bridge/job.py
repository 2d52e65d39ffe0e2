"""What one Stylize Head press asks the engine for, as the engine's command line.

Pure Python (no ``bpy``): the panel fills a :class:`StylizeRequest` from its properties and the add-on
preferences, :func:`check_request` finds the mistakes an artist can fix (missing interpreter, missing model
folder) before anything starts, and :func:`engine_argv` turns the request into
``python -m engine head …`` — the same command a terminal user runs, which is what keeps the panel and the
engine CLI in step (every panel setting is one engine option). With *Selected Mesh* as the head source the
operator first exports the object to ``mesh_file`` and the command becomes ``engine head --mesh FILE``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .styles import style_name

# Panel preset → engine ``--style-preset`` name. "Custom" sends the prompt text instead.
PRESETS: tuple[tuple[str, str, str], ...] = (
    ("JOKER", "Joker", "joker"),
    ("PIXAR", "Pixar", "pixar"),
    ("ZOMBIE", "Zombie", "zombie"),
    ("STATUE", "Statue", "statue"),
    ("WEREWOLF", "Werewolf", "werewolf"),
    ("SKETCH", "Sketch", "sketch"),
    ("CUSTOM", "Custom", ""),
)
PRESET_ENGINE_NAME = {key: engine for key, _label, engine in PRESETS}
PRESET_LABEL = {key: label for key, label, _engine in PRESETS}

# Panel recipe → engine ``--preset``: Fast is the engine's own recipe (2000 steps on real models, 40 on the
# embedded pack), Paper every setting of the official training code (10,000 steps, LPIPS, official ᾱ …).
RECIPES: tuple[tuple[str, str, str, str], ...] = (
    ("FAST", "Fast", "ours", "The engine's own recipe: 2000 steps on real models (40 on the embedded pack)"),
    ("PAPER", "Paper", "paper", "Every setting of the paper's official training code: 10,000 steps, LPIPS (set the "
                                "LPIPS folder), official ᾱ indexing, random noise, the depth network if set"),
)
RECIPE_ENGINE_NAME = {key: engine for key, _label, engine, _help in RECIPES}

# Identity-vs-style strength s ∈ [0, 1] → classifier-free guidance scale G = G_MIN + s·(G_MAX − G_MIN).
# The diffusion model's pull toward the text grows with G; s = 0.5 gives the paper's G = 7.5.
GUIDANCE_MIN = 2.5
GUIDANCE_MAX = 12.5
# Head mode's pull toward the source head (Keep Colours → ``--anchor-image``, Keep Shape → ``--anchor-geometry``):
# the engine's own defaults (``engine.app.pipeline.HEAD_MODE_ANCHOR``; a test keeps the two equal), which are not
# sent, so a default press runs the same command as before these settings existed.
HEAD_MODE_ANCHOR = (1.0, 1.0)
METHODS = ("ld", "sds")
DEVICES = ("auto", "cpu", "cuda")


def strength_to_guidance_scale(strength: float) -> float:
    """Map the panel's identity (0) ↔ style (1) slider to the engine's ``--guidance-scale``."""
    s = min(1.0, max(0.0, float(strength)))
    return GUIDANCE_MIN + s * (GUIDANCE_MAX - GUIDANCE_MIN)


@dataclass
class ModelPaths:
    """Model locations from the preferences; empty strings mean "the embedded pack"."""

    generator: str = ""
    diffusion: str = ""
    depth_controlnet: str = ""
    edge_controlnet: str = ""
    lpips: str = ""  # the model manager's lpips-alex folder; empty = no LPIPS term
    depth_model: str = ""  # a transformers depth-estimation folder; empty = the generator's own depth

    def engine_flags(self) -> dict[str, str]:
        """Engine flag (without ``--``) → path for every model that is set; the others come from the pack."""
        named = {"generator": self.generator, "diffusion": self.diffusion, "depth-controlnet": self.depth_controlnet,
                 "edge-controlnet": self.edge_controlnet, "lpips": self.lpips, "depth-model": self.depth_model}
        return {flag: path for flag, path in named.items() if path}


@dataclass
class StylizeRequest:
    """One press of Stylize Head: the style, the head, the options and where things run and go."""

    out_dir: str
    python: str
    engine_root: str
    preset: str = "ZOMBIE"
    recipe: str = "FAST"
    # production: an approved style (``name@N``, bridge/styles.py) used as approved, never retrained; it brings
    # its own prompt, method and recipe, so preset/prompt/recipe/method/options/strength/steps are not sent
    style_id: str = ""
    prompt: str = ""
    method: str = "ld"
    mirror: bool = True
    grid: bool = True
    rank: bool = True
    steps: int = 0  # 0 = the engine's default for the models in use
    seed: int = 0
    latent_file: str = ""  # a W+ latent .npz; wins over the seed when set
    # head mode: the artist's mesh, exported by the operator (a .glb with its world transform and textures);
    # wins over the latent and the seed. ``source_object`` names the Blender object it came from.
    mesh_file: str = ""
    source_object: str = ""
    field_steps: int = 0  # 0 = the engine's default fit length
    keep_colours: float = HEAD_MODE_ANCHOR[0]  # head mode: weight of the pull toward the source's colours
    keep_shape: float = HEAD_MODE_ANCHOR[1]  # head mode: … toward its silhouette and depth
    strength: float = 0.5
    mesh_resolution: int = 128
    device: str = "auto"
    attention_slicing: bool = False
    vae_slicing: bool = False
    cache_dir: str = ""
    cancel_file: str = ""
    models: ModelPaths = field(default_factory=ModelPaths)

    @property
    def head_mode(self) -> bool:
        """True when the head is the artist's selected mesh (fitted field), not a generated one."""
        return bool(self.mesh_file)

    @property
    def style_name(self) -> str:
        """Short style word for object names ("zombie", or "custom" for free text; an approved style's name)."""
        if self.style_id:
            return style_name(self.style_id)
        return PRESET_ENGINE_NAME.get(self.preset) or "custom"


def _expand(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path)) if path else ""


def check_request(request: StylizeRequest) -> list[str]:
    """Problems an artist can fix, one readable sentence each (empty list = ready to run)."""
    problems: list[str] = []
    python = request.python
    if not python:
        problems.append("No engine Python interpreter is set (Preferences › Add-ons › Head Stylizer)")
    elif not (os.path.isfile(python) and os.access(python, os.X_OK)):
        problems.append(f"Engine Python interpreter not found or not executable: {python}")
    root = Path(request.engine_root)
    if not (root / "engine" / "__main__.py").is_file():
        problems.append(f"Engine folder has no 'engine' package: {root}")
    m = request.models
    for label, value, want_dir in (
        ("Generator checkpoint", m.generator, False),
        ("Diffusion model folder", m.diffusion, True),
        ("Depth ControlNet folder", m.depth_controlnet, True),
        ("Edge ControlNet folder", m.edge_controlnet, True),
        ("LPIPS folder", m.lpips, None),
        ("Depth model folder", m.depth_model, True),
    ):
        if not value:
            continue
        p = Path(_expand(value))
        if not p.exists():
            problems.append(f"{label} does not exist: {value}")
        elif want_dir is None:  # a folder (the model manager's) or a file (an exported network): either
            continue
        elif want_dir and not p.is_dir():
            problems.append(f"{label} must be a folder: {value}")
        elif not want_dir and not p.is_file():
            problems.append(f"{label} must be a file: {value}")
    if request.mesh_file and not request.source_object:
        problems.append("Head mode needs the name of the selected mesh object it exports")
    for label, value in (("Keep Colours", request.keep_colours), ("Keep Shape", request.keep_shape)):
        if not value >= 0:  # also refuses NaN
            problems.append(f"{label} must be ≥ 0 (0 = no pull toward the source), got {value}")
    if request.field_steps < 0:
        problems.append(f"Field fit steps must be ≥ 0 (0 = the engine's default), got {request.field_steps}")
    if request.latent_file and not request.mesh_file and not Path(_expand(request.latent_file)).is_file():
        problems.append(f"Latent file does not exist: {request.latent_file}")
    if request.style_id:
        name, _, version = request.style_id.partition("@")
        if not name or not version.isdigit():
            problems.append(f"Approved style must be NAME@N, got {request.style_id!r}")
        if request.mesh_file:
            problems.append("An approved style stylizes generated heads and latent files; Selected Mesh trains the "
                            "mesh's own field, which no approval covers")
    elif request.preset == "CUSTOM" and not request.prompt.strip():
        problems.append("Custom style needs a prompt")
    if request.preset not in PRESET_ENGINE_NAME:
        problems.append(f"Unknown style preset: {request.preset}")
    if request.method not in METHODS:
        problems.append(f"Unknown method: {request.method}")
    if request.recipe not in RECIPE_ENGINE_NAME:
        problems.append(f"Unknown recipe: {request.recipe}")
    if request.device not in DEVICES:
        problems.append(f"Unknown device: {request.device}")
    if not 16 <= request.mesh_resolution <= 1024:
        problems.append(f"Mesh resolution must be 16…1024, got {request.mesh_resolution}")
    return problems


def anchor_argv(keep_colours: float, keep_shape: float) -> list[str]:
    """Head mode's anchor flags for the engine: each weight that differs from the engine's default."""
    argv = []
    for flag, value, default in (("--anchor-image", keep_colours, HEAD_MODE_ANCHOR[0]),
                                 ("--anchor-geometry", keep_shape, HEAD_MODE_ANCHOR[1])):
        if float(value) != default:
            argv += [flag, f"{float(value):g}"]
    return argv


def engine_argv(request: StylizeRequest) -> list[str]:
    """The full command line: ``[python, -m, engine, head, --out, …]`` (paths made absolute)."""
    argv = [request.python, "-m", "engine", "head", "--json", "--out", _expand(request.out_dir)]
    approved = bool(request.style_id)
    if approved:  # production: the approved style's own prompt and settings, nothing trained
        argv += ["--style-id", request.style_id]
    elif request.preset == "CUSTOM":
        argv += ["--prompt", request.prompt.strip()]
    else:
        argv += ["--style-preset", PRESET_ENGINE_NAME[request.preset]]
    if not approved:
        if request.recipe != "FAST":
            argv += ["--preset", RECIPE_ENGINE_NAME[request.recipe]]
        argv += ["--method", request.method]
        argv += [flag for flag, on in (("--no-mirror", request.mirror), ("--no-grid", request.grid),
                                       ("--no-rank", request.rank)) if not on]
        if request.steps > 0:
            argv += ["--steps", str(int(request.steps))]
    if request.mesh_file:
        argv += ["--mesh", _expand(request.mesh_file)]
        if request.field_steps > 0:
            argv += ["--field-steps", str(int(request.field_steps))]
        argv += anchor_argv(request.keep_colours, request.keep_shape)
    elif request.latent_file:
        argv += ["--latent", _expand(request.latent_file)]
    else:
        argv += ["--seed", str(int(request.seed))]
    if not approved:
        argv += ["--guidance-scale", f"{strength_to_guidance_scale(request.strength):.4g}"]
    argv += ["--mesh-resolution", str(int(request.mesh_resolution)), "--device", request.device]
    for flag, value in request.models.engine_flags().items():
        argv += [f"--{flag}", _expand(value)]
    if request.attention_slicing:
        argv.append("--attention-slicing")
    if request.vae_slicing:
        argv.append("--vae-slicing")
    if request.cache_dir:
        argv += ["--cache", _expand(request.cache_dir)]
    if request.cancel_file:
        argv += ["--cancel-file", _expand(request.cancel_file)]
    return argv


def engine_environment(engine_root: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the engine process: the extension root first on ``PYTHONPATH``, unbuffered output.

    Blender's own environment may carry ``PYTHONHOME``/``PYTHONPATH`` for its bundled Python; those would
    break a different interpreter, so they are replaced rather than extended.
    """
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONHOME", None)
    env["PYTHONPATH"] = str(Path(engine_root).resolve())
    env["PYTHONUNBUFFERED"] = "1"
    return env
