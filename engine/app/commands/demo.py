"""``python -m engine demo``: the main job on the embedded model pack (see :mod:`engine.app.demo`).

Stylizes the pack's generator toward one world style with likelihood distillation on this machine,
renders a few heads before/after from six views, a turntable and meshes, measures identity preservation
and style, and writes ``metrics.json`` and ``report.html`` into ``--out``. No downloads, no GPU needed.
"""

from __future__ import annotations

import argparse

from ...io.events import log
from ...stylize.cancel import CancelToken
from ...stylize.presets import STYLE_PRESETS
from ..demo import DemoConfig, run_demo
from ..pipeline import METHODS


def add_arguments(p: argparse.ArgumentParser) -> None:
    embedded = sorted(name for name, preset in STYLE_PRESETS.items() if preset.embedded_style)
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--style", choices=embedded, default="zombie", help="embedded style to stylize toward")
    p.add_argument("--method", choices=METHODS, default="ld", help="likelihood distillation (default) or SDS")
    p.add_argument("--steps", type=int, help="stylization steps (default: the pipeline's embedded-pack default)")
    p.add_argument("--lr", type=float, help="learning rate (default: the pipeline's embedded-pack default)")
    p.add_argument("--subjects", type=int, default=4, help="how many heads (seeds) to show and measure")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--mesh-resolution", type=int, default=128)
    p.add_argument("--turntable", type=int, default=24, help="turntable frames (0 = none)")
    p.add_argument("--no-evaluate", action="store_true")
    p.add_argument("--pack", help="embedded model pack folder (default: the one shipped with the engine)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--cancel-file", help="stop cleanly once this file exists")


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(
        out_dir=args.out, style=args.style, method=args.method, steps=args.steps, lr=args.lr,
        subjects=args.subjects, first_seed=args.first_seed, mesh_resolution=args.mesh_resolution,
        turntable_frames=args.turntable, evaluate=not args.no_evaluate, pack=args.pack, device=args.device,
    ).validate()
    cancel = CancelToken(args.cancel_file)
    with cancel.signal_handlers():
        result = run_demo(config, cancel)
    if not result.cancelled:
        log(f"demo finished: open {result.out_dir / 'report.html'}")
    return 0
