"""Command line of the engine: ``python -m engine <command> …``.

Each command lives in ``engine/app/commands/<name>.py`` and provides ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``--help`` stays fast and
one command's heavy imports (diffusers) never slow another. User errors (:class:`EngineError`) print one
line on stderr and exit with status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import EngineError

COMMANDS: dict[str, str] = {
    "generate": "Render multi-view images and a coloured mesh of a generated head.",
    "stylize": "Fine-tune the generator toward a text style with likelihood distillation.",
    "render": "Render a (stylized) generator for seeds or W+ latents: views and a 360° turntable.",
    "head": "Stylize one head end to end: stylized generator (cached), before/after views, coloured mesh.",
    "demo": "The main job on the embedded pack: stylize, views, turntable, meshes, metrics and an HTML report.",
    "batch": "A folder of scans/portraits/latents → stylized glb heads with provenance, resumable, with a report.",
    "invert": "Invert a scan, portrait or folder of calibrated views into a W+ latent (.npz).",
}


# Commands that read files from the user (scans, portraits, latents, checkpoints, configs): they take the
# untrusted-input limit flags (see engine/io/untrusted.py).
FILE_COMMANDS = ("generate", "stylize", "render", "head", "batch", "invert")


def add_input_limit_arguments(p: argparse.ArgumentParser) -> None:
    from ..io.untrusted import InputLimits

    d = InputLimits()
    group = p.add_argument_group("input limits", "checked before anything is allocated (engine/io/untrusted.py)")
    group.add_argument("--max-input-mb", type=float, default=None, metavar="MB",
                       help=f"largest input file (or file it references) read, in MB (default {d.max_file_bytes >> 20})")
    group.add_argument("--allow-large-inputs", action="store_true",
                       help=f"raise every input limit 16× (file size, {d.max_vertices:,} vertices, {d.max_faces:,} faces, "
                            f"{d.max_image_pixels:,} image pixels, JSON size, model size)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, help_text in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, subparsers = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in COMMANDS:
        module = importlib.import_module(f"engine.app.commands.{command}")
        module.add_arguments(subparsers[command])
        if command in FILE_COMMANDS:
            add_input_limit_arguments(subparsers[command])
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    try:
        if hasattr(args, "allow_large_inputs"):
            from ..io.untrusted import limits_from_options, set_limits

            set_limits(limits_from_options(args.max_input_mb, args.allow_large_inputs))
        return int(module.run(args) or 0)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
