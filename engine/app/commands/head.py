"""``python -m engine head``: stylize one head end to end (what Blender's Stylize Head button runs).

The generator is stylized toward the prompt once per settings and cached (``--cache``); then the head
(``--seed`` or ``--latent``, or ``--mesh``: head mode, :mod:`engine.app.head_mode`) is rendered
before/after, meshed and scored. A ``--latent`` or ``--mesh`` file is read and checked before any model
is loaded (:func:`engine.heads.head_input.read_head_mesh` says what happens to a mesh with no faces, a
triangle soup, too many triangles or a missing texture). Every model path defaults to the
embedded pack. Progress is JSON lines on stdout (see :mod:`engine.app.pipeline`); creating ``--cancel-file``,
SIGINT or SIGTERM stop the stylization after the current step (exit 0, last event ``cancelled``).
``--preset paper`` trains with every setting of the official code (:mod:`engine.stylize.recipes`); explicit
``--steps``, ``--lr``, switches and anchors still win. A recipe that wants LPIPS without ``--lpips`` says so
in its first lines and in head.json.
"""

from __future__ import annotations

import argparse

from ...heads.head_input import DEFAULT_MAX_TRIANGLES
from ...heads.mesh_field import DEFAULT_FIELD_STEPS
from ...stylize.cancel import CancelToken
from ...stylize.presets import STYLE_PRESETS
from ...stylize.recipes import OURS, RECIPES
from ..cli import add_recipe_model_arguments
from ..pipeline import GALLERY_FIRST_SEED, GALLERY_HEADS, IDENTITY_BACKEND_CHOICES, METHODS, HeadJob, run_head


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder for head.json, head.npz/.ply and views/")
    p.add_argument("--prompt", default=None, help="style prompt (overrides --style-preset)")
    p.add_argument("--style-preset", choices=sorted(STYLE_PRESETS), help="named style (prompt chosen for the models in use)")
    p.add_argument("--preset", choices=RECIPES, default=OURS,
                   help="training recipe: ours (default: fast, 2000 steps on real models) or paper (every official "
                        "default: ᾱ indexing, LPIPS, 10k steps, random noise, the official depth with --depth-model)")
    p.add_argument("--method", choices=METHODS, default="ld", help="likelihood distillation (default) or SDS")
    p.add_argument("--no-mirror", action="store_true", help="disable mirror gradients")
    p.add_argument("--no-grid", action="store_true", help="disable the 2×2 multi-view grid stage")
    p.add_argument("--no-rank", action="store_true", help="disable score rank re-weighting")
    p.add_argument("--steps", type=int, help="stylization steps (default: 40 on the embedded pack, 2000 otherwise; "
                                             "10000 with --preset paper)")
    p.add_argument("--lr", type=float, help="learning rate (default: 2e-3 embedded pack, 1e-4 otherwise)")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance: higher = stronger style")
    p.add_argument("--train-seed", type=int, default=0, help="seed of the stylization run")
    head = p.add_mutually_exclusive_group()
    head.add_argument("--seed", type=int, default=0, help="which head: latent seed")
    head.add_argument("--latent", help="which head: a W+ latent .npz (key 'w'), e.g. from 'engine invert'")
    head.add_argument("--mesh", help="which head: a mesh (.ply, .obj, .glb/.gltf, mesh .npz) — head mode fits the "
                                     "mesh its own tri-grid (cached) and stylizes that instead of a generated head")
    p.add_argument("--field-steps", type=int, default=DEFAULT_FIELD_STEPS,
                   help=f"head mode: steps of the mesh's field fit (default {DEFAULT_FIELD_STEPS})")
    p.add_argument("--anchor-image", type=float, default=None, metavar="W",
                   help="weight of the pull toward the source head's colours, blurred to 16² (default: 1 in head mode, "
                        "0 for generated heads; higher keeps more of the person, less of the style)")
    p.add_argument("--anchor-geometry", type=float, default=None, metavar="W",
                   help="weight of the pull toward the source head's silhouette and depth (default: 1 in head mode, "
                        "0 for generated heads)")
    p.add_argument("--max-fit-triangles", type=int, default=DEFAULT_MAX_TRIANGLES, metavar="N",
                   help=f"head mode: a denser mesh is simplified to N triangles before the fit, with a warning "
                        f"(default {DEFAULT_MAX_TRIANGLES:,}; finer than the fitted tri-grid holds)")
    p.add_argument("--truncation", type=float, default=0.75, help="truncation ψ for seeds")
    p.add_argument("--generator", help="base generator checkpoint (default: embedded pack)")
    p.add_argument("--diffusion", help="Stable Diffusion 1.5-layout folder (default: embedded pack)")
    p.add_argument("--depth-controlnet", help="depth ControlNet folder")
    p.add_argument("--edge-controlnet", help="Canny ControlNet folder")
    add_recipe_model_arguments(p)
    p.add_argument("--pack", help="embedded model pack folder (default: the one shipped with the engine)")
    p.add_argument("--mesh-resolution", type=int, default=128, help="marching-cubes grid size N (N³ samples)")
    p.add_argument("--iso-level", type=float, default=10.0, help="density of the mesh surface (PanoHead: 10)")
    p.add_argument("--turntable", type=int, default=0, help="also render N neural turntable frames (views/turntable/frame_###.png)")
    p.add_argument("--no-evaluate", action="store_true", help="skip identity/style scoring")
    p.add_argument("--no-game-asset", action="store_true",
                   help="skip head.glb (game-ready: life size, UV texture baked from the field, LODs 100/30/10 %%)")
    p.add_argument("--texture-size", type=int, choices=(512, 1024, 2048, 4096), default=1024,
                   help="head.glb base-colour texture of level 0 in texels (default 1024)")
    p.add_argument("--engine-units", action="store_true", help="head.glb in the engine's units instead of metres")
    p.add_argument("--gallery-heads", type=int, default=GALLERY_HEADS,
                   help=f"other heads (fixed seeds from {GALLERY_FIRST_SEED}) the stylized head is re-identified among (default {GALLERY_HEADS})")
    p.add_argument("--identity-backend", choices=IDENTITY_BACKEND_CHOICES, default="auto",
                   help="who scores identity: auto (default) = dlib's real-face ResNet for real models and meshes, "
                        "the pack's encoder for the pack's heads")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("auto", "fp16", "bf16", "fp32"), default="auto")
    p.add_argument("--attention-slicing", action="store_true", help="lower GPU memory, slower")
    p.add_argument("--vae-slicing", action="store_true", help="lower GPU memory, slower")
    p.add_argument("--cache", help="folder of cached stylized generators (default: <out>/cache)")
    p.add_argument("--cancel-file", help="stop cleanly once this file exists")
    p.add_argument("--style-id", default=None, metavar="NAME@N",
                   help="production: the approved style NAME@N (engine style list) instead of training one; refused if "
                        "retired or if any of its files changed")
    p.add_argument("--style-library", default=None, metavar="DIR",
                   help="style library folder (default $HEAD_STYLIZER_STYLES, else <engine data dir>/styles)")


def job_from_args(args: argparse.Namespace) -> HeadJob:
    return HeadJob(
        out_dir=args.out,
        prompt=args.prompt or "",
        style_preset=args.style_preset,
        method=args.method,
        mirror=not args.no_mirror,
        grid=not args.no_grid,
        rank=not args.no_rank,
        steps=args.steps,
        lr=args.lr,
        guidance_scale=args.guidance_scale,
        train_seed=args.train_seed,
        seed=args.seed,
        latent=args.latent,
        mesh=args.mesh,
        field_steps=args.field_steps,
        anchor_image=args.anchor_image,
        anchor_geometry=args.anchor_geometry,
        max_fit_triangles=args.max_fit_triangles,
        truncation_psi=args.truncation,
        generator=args.generator,
        diffusion=args.diffusion,
        depth_controlnet=args.depth_controlnet,
        edge_controlnet=args.edge_controlnet,
        pack=args.pack,
        mesh_resolution=args.mesh_resolution,
        iso_level=args.iso_level,
        turntable_frames=args.turntable,
        evaluate=not args.no_evaluate,
        game_asset=not args.no_game_asset,
        texture_size=args.texture_size,
        life_size=not args.engine_units,
        gallery_heads=args.gallery_heads,
        identity_backend=args.identity_backend,
        device=args.device,
        precision=args.precision,
        attention_slicing=args.attention_slicing,
        vae_slicing=args.vae_slicing,
        cache_dir=args.cache,
        style_id=args.style_id,
        style_library=args.style_library,
        recipe=args.preset,
        lpips=args.lpips,
        depth_model=args.depth_model,
    )


def run(args: argparse.Namespace) -> int:
    job = job_from_args(args).validate()
    if job.latent:  # untrusted input: refuse a broken or hostile latent now, not after the stylization
        from ...generator.inference import read_w_array

        read_w_array(job.latent)
    cancel = CancelToken(args.cancel_file)
    with cancel.signal_handlers():
        run_head(job, cancel)
    return 0
