"""``python -m engine stylize``: fine-tune a generator toward a text style (likelihood distillation).

A fresh run needs ``--prompt``, ``--generator``, ``--diffusion`` and ``--out``; ``--resume --out DIR``
continues the run saved in DIR with its saved settings (``--steps`` may raise the total; other training
options, if given, must match). Progress is printed as JSON lines on stdout (see :mod:`engine.stylize.loop`);
Ctrl-C, SIGTERM or creating ``--cancel-file`` stop the run cleanly after the current step with a checkpoint.
Exit status 0 when the run finished or was cancelled cleanly (the last event says which), 2 on bad input.

``--preset paper`` starts from every setting of the official training code (:mod:`engine.stylize.recipes`:
official ᾱ indexing, LPIPS, random noise, …); flags given with it still win. ``--preset ours`` (the default)
keeps the engine's own defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ...errors import ConfigError, InputError
from ...generator.config import PRESETS
from ...stylize.recipes import PAPER, RECIPES, apply_recipe
from ..cli import add_recipe_model_arguments

# CLI flag → top-level StylizeConfig field (flags default to None: "not given").
_TOP_LEVEL = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "generator": "generator",
    "diffusion": "diffusion",
    "edge_controlnet": "edge_controlnet",
    "depth_controlnet": "depth_controlnet",
    "lpips": "lpips_path",
    "depth_model": "depth_model",
    "steps": "steps",
    "lr": "lr",
    "batch_size": "batch_size",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "checkpoint_every": "checkpoint_every",
    "preview_every": "preview_every",
    "keep_checkpoints": "keep_checkpoints",
}
_PATH_FIELDS = ("diffusion", "edge_controlnet", "depth_controlnet", "lpips_path", "depth_model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", help="the style, e.g. 'a zombie head, highly detailed'")
    parser.add_argument("--negative-prompt", help="negative prompt for classifier-free guidance (default: empty)")
    parser.add_argument("--generator", help="base generator: preset name, our .safetensors checkpoint or PanoHead .pkl")
    parser.add_argument("--diffusion", help="Stable Diffusion 1.5-layout folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/)")
    parser.add_argument("--edge-controlnet", help="Canny ControlNet folder (default: <diffusion>/controlnet_edge if present)")
    parser.add_argument("--depth-controlnet", help="depth ControlNet folder (default: <diffusion>/controlnet_depth if present)")
    add_recipe_model_arguments(parser)
    parser.add_argument("--preset", choices=RECIPES, help="training recipe: ours (default) or paper (every official "
                                                          "default: ᾱ indexing, LPIPS, 10k steps, random noise …)")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, previews)")
    parser.add_argument("--config", help="a StylizeConfig JSON file to start from (flags override it)")
    parser.add_argument("--steps", type=int, help="total optimisation steps (default 10000)")
    parser.add_argument("--method", choices=("ld", "sds"), help="likelihood distillation (default) or score distillation")
    parser.add_argument("--no-mirror", action="store_true", help="disable mirror gradients")
    parser.add_argument("--no-grid", action="store_true", help="disable the 2×2 multi-view grid stage")
    parser.add_argument("--no-rank", action="store_true", help="disable rank re-weighting of the score")
    parser.add_argument("--official-compat", action="store_true", help="weight gradients with ᾱ at the DDIM step index, as the official code")
    parser.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4)")
    parser.add_argument("--batch-size", type=int, help="heads per step (default 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where to train (default auto)")
    parser.add_argument("--precision", choices=("auto", "fp16", "bf16", "fp32"), help="diffusion model precision (default auto)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 250; 0 = only at the end)")
    parser.add_argument("--preview-every", type=int, help="steps between preview images (default 100; 0 = none)")
    parser.add_argument("--keep-checkpoints", type=int, help="how many checkpoint folders to keep (default 3; 0 = all)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--cancel-file", help="stop cleanly (with a checkpoint) once this file exists")


def _absolute(value: str | None) -> str | None:
    """Paths are stored absolute so a resumed run finds them from any working directory."""
    return None if value is None else str(Path(value).expanduser().resolve())


def _overrides(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(top-level changes, distill changes) for the flags that were actually given."""
    top = {field: getattr(args, flag) for flag, field in _TOP_LEVEL.items() if getattr(args, flag) is not None}
    for name in _PATH_FIELDS:
        if name in top:
            top[name] = _absolute(top[name])
    if "generator" in top and top["generator"] not in PRESETS:
        top["generator"] = _absolute(top["generator"])
    distill: dict[str, Any] = {}
    if args.method is not None:
        distill["method"] = args.method
    if args.no_mirror:
        distill["use_mirror"] = False
    if args.no_grid:
        distill["use_grid"] = False
    if args.no_rank:
        distill["use_rank"] = False
    if args.official_compat:
        distill["official_compat"] = True
    if args.guidance_scale is not None:
        distill["guidance_scale"] = args.guidance_scale
    return top, distill


def build_config(args: argparse.Namespace):
    """The StylizeConfig this command line asks for (the saved one, with overrides, on --resume)."""
    from ...stylize.config import StylizeConfig
    from ...stylize.training_state import read_latest

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    top, distill_changes = _overrides(args)
    if args.resume:
        state = read_latest(out)
        if state is None:
            raise InputError(f"--resume: {out / 'latest'} not found; there is no run to continue in {out}")
        base = state.config
    elif args.config:
        from ...io.untrusted import read_json

        base = StylizeConfig.from_dict(read_json(Path(args.config), "stylize config"))  # untrusted: size/depth-limited
    else:
        missing = [f"--{name}" for name in ("prompt", "generator", "diffusion") if name not in top]
        if missing:
            raise ConfigError(f"a new stylization run needs {', '.join(missing)} (or --resume to continue one)")
        base = StylizeConfig(prompt=top["prompt"], diffusion=top["diffusion"])
    if args.preset:  # on --resume too: a preset that changes the saved run is refused by the resume check
        base = apply_recipe(base, args.preset)
    distill = base.distill.replace(**distill_changes) if distill_changes else base.distill
    return dataclasses.replace(base, **top, out_dir=str(out.resolve()), distill=distill).validate()


def _check_paths(config) -> None:
    """Fail fast, with the path in the message, before any model is loaded."""
    from ...errors import CheckpointError

    if config.generator not in PRESETS and not Path(config.generator).exists():
        raise CheckpointError(f"--generator {config.generator}: no such file (or preset: {sorted(PRESETS)})")
    if not Path(config.diffusion).is_dir():
        raise CheckpointError(f"--diffusion {config.diffusion}: no such folder")
    for flag, value in (("--edge-controlnet", config.edge_controlnet), ("--depth-controlnet", config.depth_controlnet)):
        if value is not None and not Path(value).is_dir():
            raise CheckpointError(f"{flag} {value}: no such folder")
    if config.lpips_path is not None and not Path(config.lpips_path).exists():
        raise InputError(f"--lpips {config.lpips_path}: no such file or folder")
    if config.depth_model is not None and not Path(config.depth_model).is_dir():
        raise CheckpointError(f"--depth-model {config.depth_model}: no such folder")


def run(args: argparse.Namespace) -> int:
    from ...stylize.cancel import CancelToken
    from ...stylize.loop import stylize

    config = build_config(args)
    _check_paths(config)
    if args.preset == PAPER:  # what the paper recipe wants and will not get: the run's first lines
        from ...io.events import emit
        from ...stylize.loop import run_notes

        for note in run_notes(config):
            emit("warning", message=note)
    if args.cancel_file is not None and not Path(args.cancel_file).expanduser().parent.is_dir():
        raise InputError(f"--cancel-file {args.cancel_file}: its folder does not exist")
    token = CancelToken(Path(args.cancel_file).expanduser() if args.cancel_file else None)
    with token.signal_handlers():
        stylize(config, token, resume=args.resume)
    return 0
