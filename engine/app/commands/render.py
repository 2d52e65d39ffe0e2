"""``python -m engine render``: render a (stylized) generator for seeds or W+ latents.

For every subject (``seed0003`` for seed 3, the file stem for a latent ``.npz``) it writes
``<out>/<subject>/{front,yaw+45,yaw-45,yaw+90,yaw-90,back}.png``, ``views.png`` (all views in a row),
``compare.png`` (base generator above, stylized below; only with ``--base``) and ``turntable.gif``, plus
``<out>/render.json`` listing the files. Progress and the final file list are JSON lines on stdout.
Cameras are the official inference cameras (looking at the origin, pitch 10°); ``--visualiser-pivot`` looks
at (0, 0, 0.2), PanoHead's visualiser's average pivot, instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

from ...errors import ConfigError

DEFAULT_SEEDS = "0"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", required=True, help="stylized checkpoint (.safetensors), any generator file or preset")
    parser.add_argument("--base", help="base generator for a before/after sheet (e.g. the one stylization started from)")
    parser.add_argument("--seeds", help="seeds, e.g. '0,3,10-12' (default 0 when no --latents are given)")
    parser.add_argument("--latents", nargs="+", help="W+ latent .npz files (key 'w') or folders of them")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--frames", type=int, default=36, help="turntable frames (0 = no GIF; default 36)")
    parser.add_argument("--frame-ms", type=int, default=80, help="turntable frame duration in ms (default 80)")
    parser.add_argument("--pitch", type=float, default=10.0, help="view pitch in degrees, PanoHead convention (default 10)")
    parser.add_argument("--psi", type=float, default=0.75, help="truncation ψ for seeds (default 0.75)")
    parser.add_argument("--background", choices=("white", "none", "model"), default="white", help="background (default white)")
    parser.add_argument("--chunk", type=int, default=6, help="views rendered per batch (default 6)")
    parser.add_argument("--visualiser-pivot", action="store_true",
                        help="look at (0, 0, 0.2), PanoHead's visualiser's average pivot, instead of the origin")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")


def parse_seeds(text: str) -> list[int]:
    """'0,3,10-12' → [0, 3, 10, 11, 12] (non-negative); bad syntax is a ConfigError naming --seeds."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                seeds.extend(range(lo_i, hi_i + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(f"--seeds: cannot read {part!r} (use e.g. '0,3,10-12')") from None
    if not seeds:
        raise ConfigError(f"--seeds: no seeds in {text!r}")
    return seeds


def run(args: argparse.Namespace) -> int:
    from ...generator.inference import (
        Subject,
        ViewSettings,
        check_compatible,
        latent_files,
        load_w_plus,
        render_subjects,
        seed_latent,
    )
    from ...generator.loading import load_generator
    from ...io.events import emit

    settings = ViewSettings(
        truncation_psi=args.psi,
        view_pitch=math.radians(args.pitch),
        background=args.background,
        turntable_frames=args.frames,
        frame_ms=args.frame_ms,
        chunk=args.chunk,
    ).validate()
    out = Path(args.out).expanduser()  # an existing file was refused by the command line (cli.check_arguments)

    G = load_generator(args.generator, args.device).generator
    if args.visualiser_pivot:
        settings = dataclasses.replace(settings, camera_pivot=tuple(G.config.rendering.avg_camera_pivot))
    device = next(G.parameters()).device
    base = None
    if args.base:
        base = load_generator(args.base, device).generator
        check_compatible(G, base, args.base)

    subjects = []
    if args.latents:
        for path in latent_files(args.latents):
            subjects.append(Subject(path.stem, load_w_plus(path, G)))
    if args.seeds or not args.latents:
        for seed in parse_seeds(args.seeds or DEFAULT_SEEDS):
            subjects.append(Subject(f"seed{seed:04d}", seed_latent(G, seed, settings)))
    results = render_subjects(G, subjects, out, settings, base)
    emit("done", out=str(out), subjects=[r.to_dict() for r in results], summary=str(out / "render.json"))
    return 0
