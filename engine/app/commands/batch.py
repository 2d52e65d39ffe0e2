"""``python -m engine batch``: a folder of scans, portraits or latents → stylized glb heads + report.

``--mode mesh`` stylizes each scan as itself (head mode, :mod:`engine.app.batch_mesh`) instead of inverting it.
``--ray [ADDRESS]`` runs one Ray task per item on a local Ray instance or a cluster (:mod:`engine.app.farm`).

Needs ``--i-have-consent`` or a consent register ``--consent-csv FILE`` (checked before anything is loaded;
exit status 2 without either; :mod:`engine.app.consent`). ``--style-id zombie@1`` runs production on an approved
style (:mod:`engine.styles`: verified, never trained); ``--purge-intermediates`` deletes each finished item's
renders (:mod:`engine.app.batch_purge`); every batch ends with ``report.html`` (:mod:`engine.app.batch_report`). Progress is JSON
lines on stdout (``item`` events per input, ``progress`` with ``stage: batch``, then ``done`` or
``cancelled``); a cancel file, SIGINT or SIGTERM stops after the current item. See :mod:`engine.app.batch`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...errors import ConfigError
from ...heads.face_framing import FRAMINGS
from ...heads.head_input import DEFAULT_MAX_TRIANGLES
from ...heads.mesh_field import DEFAULT_FIELD_STEPS
from ...io.events import emit
from ...stylize.cancel import CancelToken
from ...stylize.recipes import OURS, RECIPES
from ..consent import read_consent_csv
from ..batch import BatchSettings, ConsentRequired, collect_inputs, run_batch
from ..batch_loading import load_batch_models
from ..cli import add_recipe_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="in_dir", help="folder of scans (.ply/.obj/.glb/.gltf/.npz), portraits (.png/.jpg) or W+ latents (.npz)")
    p.add_argument("--views", dest="views_dir", help="folder of per-scan view folders rendered by the Blender batch operator")
    p.add_argument("--out", required=True, help="output folder: <name>.glb + <name>.json per input, report.csv/json")
    p.add_argument("--prompt", default=None, help="style prompt (or --style-preset)")
    p.add_argument("--style", "--style-preset", dest="style_preset", default=None, help="style preset name (photo, statue, zombie, cartoon, sketch, gold, Pixar, …)")
    p.add_argument("--method", choices=("ld", "sds"), default="ld")
    p.add_argument("--preset", choices=RECIPES, default=OURS,
                   help="training recipe: ours (default) or paper (every official default; see engine head --help)")
    p.add_argument("--anchor-image", type=float, default=None, metavar="W",
                   help="pull toward each source head's colours, blurred to 16² (default: 1 in mesh mode, 0 in generator "
                        "mode; higher keeps more of the person, less of the style)")
    p.add_argument("--anchor-geometry", type=float, default=None, metavar="W",
                   help="pull toward each source head's silhouette and depth (default: 1 in mesh mode, 0 in generator mode)")
    p.add_argument("--steps", type=int, default=None, help="stylization steps (default: the pipeline's default for the models)")
    p.add_argument("--inversion-steps", type=int, default=None, help="W+ optimisation steps per input (default 25)")
    p.add_argument("--mesh-resolution", type=int, default=128)
    p.add_argument("--image-yaw", type=float, default=0.0,
                   help="pose of portrait inputs, degrees (default frontal); with face framing the face gives the yaw")
    p.add_argument("--image-pitch", type=float, default=0.0)
    p.add_argument("--up-axis", choices=("auto", "y", "z"), default="auto", help="scan up axis (see engine/heads/scans.py)")
    p.add_argument("--units", choices=("auto", "mm", "cm", "m", "world", "fit"), default="auto")
    p.add_argument("--scan-yaw", type=float, default=0.0, help="turntable angle of the scans to undo, degrees")
    p.add_argument("--identity-backend", choices=("auto", "embedded", "dlib-face"), default="auto",
                   help="who scores identity on held-out views: auto = dlib's real-face ResNet for real models and mesh "
                        "mode, the pack's encoder for the pack's heads (portraits: dlib only)")
    p.add_argument("--framing", choices=FRAMINGS, default="auto",
                   help="place scans by their face (auto: dlib landmarks, else the extent heuristic; landmarks: require a "
                        "face; heuristic: extent only)")
    p.add_argument("--mode", choices=("generator", "mesh"), default="generator",
                   help="generator: invert each input into the stylized generator; mesh: stylize each scan as itself "
                        "(head mode: its own fitted field; scans only)")
    p.add_argument("--field-steps", type=int, default=DEFAULT_FIELD_STEPS,
                   help=f"mesh mode: steps of each scan's field fit (default {DEFAULT_FIELD_STEPS})")
    p.add_argument("--max-fit-triangles", type=int, default=DEFAULT_MAX_TRIANGLES, metavar="N",
                   help=f"mesh mode: a denser scan is simplified to N triangles before its fit, with a warning "
                        f"(default {DEFAULT_MAX_TRIANGLES:,})")
    p.add_argument("--vertex-colours", action="store_true",
                   help="write plain vertex-coloured glb heads in the engine's units (default: game-ready glb — life "
                        "size, UV texture baked from the field, LODs 100/30/10 %%)")
    p.add_argument("--texture-size", type=int, choices=(512, 1024, 2048, 4096), default=1024,
                   help="game-ready glb: level-0 base-colour texture in texels (default 1024)")
    p.add_argument("--engine-units", action="store_true", help="game-ready glb in the engine's units instead of metres")
    p.add_argument("--generator", default=None)
    p.add_argument("--diffusion", default=None)
    p.add_argument("--depth-controlnet", default=None)
    p.add_argument("--edge-controlnet", default=None)
    add_recipe_model_arguments(p)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="farm the items out on Ray, one task per item (engine/app/farm.py): alone, a local Ray instance; "
                        "with an address, that cluster (auto: the one `ray start` made here; HOST:6379; ray://HOST:10001)")
    p.add_argument("--ray-cpus-per-item", type=float, default=None, metavar="N", help="--ray: CPUs each item's task declares (default 1)")
    p.add_argument("--ray-gpus-per-item", type=float, default=None, metavar="N",
                   help="--ray: GPUs each item's task declares (default 0; > 0 runs the item on CUDA; 0.5: two items share a GPU)")
    p.add_argument("--ray-max-retries", type=int, default=None, metavar="N",
                   help="--ray: reruns of an item whose worker process died (default 3)")
    p.add_argument("--ray-num-cpus", type=int, default=None, metavar="N", help="--ray without address: CPUs of the local instance (default all)")
    p.add_argument("--ray-object-store-mb", type=int, default=None, metavar="MB",
                   help="--ray without address: object store of the local instance (default Ray's, 30%% of memory)")
    p.add_argument("--cache", default=None, help="cache folder for the stylized generator (default OUT/cache)")
    p.add_argument("--cancel-file", default=None, help="stop after the current item when this file appears")
    p.add_argument("--i-have-consent", action="store_true", help="confirm you have the consent of every scanned/photographed subject (recorded in each output)")
    p.add_argument("--consent-csv", default=None, metavar="FILE",
                   help="consent register: CSV with columns source (the input's file name) and consent_id; each item's "
                        "id goes into its provenance, and an item without a row is not processed")
    p.add_argument("--style-id", default=None, metavar="NAME@N",
                   help="production: use the approved style NAME@N from the style library (never trains; refused if "
                        "retired or if any of its files changed); see `engine style list`")
    p.add_argument("--style-library", default=None, metavar="DIR",
                   help="style library folder (default $HEAD_STYLIZER_STYLES, else <engine data dir>/styles)")
    p.add_argument("--purge-intermediates", action="store_true",
                   help="data minimisation: once an item is done, delete its renders (Blender's view images; in mesh "
                        "mode its fitted field and stylization run)")


def farm_config_from_args(args: argparse.Namespace):
    """The :class:`engine.app.farm.FarmConfig` of ``--ray …``, or None without ``--ray`` (a ``--ray-*`` option
    without it is an error, not silently ignored). Imports no Ray."""
    given = {"--ray-cpus-per-item": args.ray_cpus_per_item, "--ray-gpus-per-item": args.ray_gpus_per_item,
             "--ray-max-retries": args.ray_max_retries, "--ray-num-cpus": args.ray_num_cpus,
             "--ray-object-store-mb": args.ray_object_store_mb}
    if args.ray is None:
        if any(v is not None for v in given.values()):
            raise ConfigError(f"{', '.join(k for k, v in given.items() if v is not None)}: only with --ray")
        return None
    from ..farm import FarmConfig

    defaults = FarmConfig()
    return FarmConfig(
        address=args.ray or None,
        cpus_per_item=defaults.cpus_per_item if args.ray_cpus_per_item is None else args.ray_cpus_per_item,
        gpus_per_item=defaults.gpus_per_item if args.ray_gpus_per_item is None else args.ray_gpus_per_item,
        max_retries=defaults.max_retries if args.ray_max_retries is None else args.ray_max_retries,
        local_cpus=args.ray_num_cpus,
        object_store_mb=args.ray_object_store_mb,
    ).validate()


def settings_from_args(args: argparse.Namespace) -> BatchSettings:
    """The validated :class:`BatchSettings` of a parsed ``engine batch`` command line."""
    return BatchSettings(
        prompt=args.prompt or "",
        style_preset=args.style_preset,
        method=args.method,
        steps=args.steps,
        mesh_resolution=args.mesh_resolution,
        inversion_steps=args.inversion_steps,
        image_yaw_degrees=args.image_yaw,
        image_pitch_degrees=args.image_pitch,
        up_axis=args.up_axis,
        units=args.units,
        scan_yaw_degrees=args.scan_yaw,
        framing=args.framing,
        identity_backend=args.identity_backend,
        generator=args.generator,
        diffusion=args.diffusion,
        depth_controlnet=args.depth_controlnet,
        edge_controlnet=args.edge_controlnet,
        device=args.device,
        cache_dir=args.cache or str(Path(args.out) / "cache"),
        mode=args.mode,
        field_steps=args.field_steps,
        game_asset=not args.vertex_colours,
        texture_size=args.texture_size,
        life_size=not args.engine_units,
        style_id=args.style_id,
        style_library=args.style_library,
        recipe=args.preset,
        anchor_image=args.anchor_image,
        anchor_geometry=args.anchor_geometry,
        max_fit_triangles=args.max_fit_triangles,
        lpips=args.lpips,
        depth_model=args.depth_model,
    ).validate()


def run(args: argparse.Namespace) -> int:
    if not args.i_have_consent and not args.consent_csv:
        raise ConsentRequired(
            "refusing to run: a batch needs the subjects' consent; pass --i-have-consent to confirm it "
            "or --consent-csv FILE with each subject's consent id (recorded in every output's provenance)"
        )
    consent_records = read_consent_csv(args.consent_csv) if args.consent_csv else None
    if args.style_id and (args.prompt or args.style_preset):
        raise ConfigError("--style-id with --prompt/--style: an approved style brings its own prompt; give one or the other")
    inputs = collect_inputs(args.in_dir, args.views_dir)
    settings = settings_from_args(args)
    farm = farm_config_from_args(args)
    if farm is not None:
        from ..farm import require_ray

        require_ray()  # before minutes of model loading: say at once that Ray is missing
    cancel = CancelToken(args.cancel_file)
    with cancel.signal_handlers():
        if farm is not None:
            from ..farm import run_farm_command

            return run_farm_command(inputs, args.out, settings, farm, cancel, emit, consent_records, args.purge_intermediates)
        models = load_batch_models(settings, cancel, emit)
        if models is None:
            return 0
        run_batch(inputs, args.out, models, consent=True, cancel=cancel, on_event=emit, consent_records=consent_records,
                  purge_intermediates=args.purge_intermediates)
    return 0
