"""Command line of the engine: ``python -m engine <command> …``.

Each command lives in ``engine/app/commands/<name>.py`` and provides ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``--help`` stays fast and
one command's heavy imports (diffusers) never slow another. User errors (:class:`EngineError`) print one
line on stderr and exit with status 2 — never a traceback; arguments that cannot work (an ``--out`` that is
an existing file, an empty ``--prompt``) are refused before any work starts.

Progress: at a terminal, a progress bar and short stage lines (:mod:`engine.app.terminal`); with ``--json``
or when stdout is not a terminal, JSON lines (what Blender reads). Every run also appends its events to a
log file (``--log``, default ``<out>/logs/<command>-<time>.jsonl``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from ..errors import ConfigError, EngineError

COMMANDS: dict[str, str] = {
    "generate": "Render multi-view images and a coloured mesh of a generated head.",
    "stylize": "Fine-tune the generator toward a text style with likelihood distillation.",
    "render": "Render a (stylized) generator for seeds or W+ latents: views and a 360° turntable.",
    "head": "Stylize one head end to end: stylized generator (cached), before/after views, coloured mesh.",
    "demo": "The main job on the embedded pack: stylize, views, turntable, meshes, metrics and an HTML report.",
    "batch": "A folder of scans/portraits/latents → stylized glb heads with provenance, resumable, with a report.",
    "invert": "Invert a scan, portrait or folder of calibrated views into a W+ latent (.npz).",
    "style": "Approved styles: freeze a stylization run as name@N for production (approve, list, show, retire).",
    "models": "Model manager: download Stable Diffusion 1.5 / ControlNets by repository id (pinned, verified).",
}


# Commands that read files from the user (scans, portraits, latents, checkpoints, configs): they take the
# untrusted-input limit flags (see engine/io/untrusted.py).
FILE_COMMANDS = ("generate", "stylize", "render", "head", "batch", "invert")
# Commands whose --out is a file, not a folder.
FILE_OUTPUT_COMMANDS = ("invert",)


def add_input_limit_arguments(p: argparse.ArgumentParser) -> None:
    from ..io.untrusted import InputLimits

    d = InputLimits()
    group = p.add_argument_group("input limits", "checked before anything is allocated (engine/io/untrusted.py)")
    group.add_argument("--max-input-mb", type=float, default=None, metavar="MB",
                       help=f"largest input file (or file it references) read, in MB (default {d.max_file_bytes >> 20})")
    group.add_argument("--allow-large-inputs", action="store_true",
                       help=f"raise every input limit 16× (file size, {d.max_vertices:,} vertices, {d.max_faces:,} faces, "
                            f"{d.max_image_pixels:,} image pixels, JSON size, model size)")


def add_recipe_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--lpips`` and ``--depth-model``: the paper recipe's two models beyond the generator, diffusion model and
    ControlNets (``engine head``, ``engine batch`` and ``engine stylize`` take them alike)."""
    p.add_argument("--lpips", help="LPIPS network: the model manager's lpips-alex folder (or an exported .pt2); "
                                   "without it the LPIPS term is off, and the run says so")
    p.add_argument("--depth-model", help="transformers depth-estimation folder (e.g. Depth Anything V2): the grid's "
                                         "depth control the official way")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("progress output")
    group.add_argument("--json", action="store_true",
                       help="progress as JSON lines on stdout (the default when stdout is not a terminal; Blender uses it)")
    group.add_argument("--log", metavar="FILE", default=None,
                       help="append every progress event to this JSON-lines file (default <out>/logs/<command>-<time>.jsonl)")


def check_arguments(command: str, args: argparse.Namespace) -> None:
    """Refuse, before any work, arguments that would fail only at the end of a long run."""
    out = getattr(args, "out", None)
    if out:
        path = Path(out).expanduser()
        if command in FILE_OUTPUT_COMMANDS:
            if path.is_dir():
                raise ConfigError(f"--out {out} is a folder; give the file to write")
        else:
            if path.exists() and not path.is_dir():
                raise ConfigError(f"--out {out} is an existing file; give a folder (it is created if missing)")
            parent = next((p for p in path.absolute().parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
    prompt = getattr(args, "prompt", None)
    if prompt is not None and not prompt.strip():
        raise ConfigError("--prompt is empty; give the style as text (e.g. --prompt 'a zombie head') or use --style-preset")


def default_log_path(command: str, args: argparse.Namespace) -> Path | None:
    out = getattr(args, "out", None)
    if not out:
        return None
    folder = Path(out).expanduser()
    if command in FILE_OUTPUT_COMMANDS:
        folder = folder.parent
    return folder / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"


def event_sink(command: str, args: argparse.Namespace, argv: list[str]):
    """(sink for :func:`engine.io.events.use_sink`, things to close afterwards)."""
    from ..io.events import write_json_line
    from .terminal import EventLog, TerminalDisplay, fan_out, wants_terminal

    front = TerminalDisplay() if wants_terminal(args.json) else write_json_line
    log_path = Path(args.log) if args.log else default_log_path(command, args)
    if log_path is None:
        return front, []
    event_log = EventLog(log_path, list(argv))
    return fan_out(front, event_log), [event_log]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, help_text in COMMANDS.items():
        subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
    return parser, subparsers


def parse_command_line(argv: list[str]):
    """(the parser, the command's module or None, the parsed arguments): what ``main`` parses, also for tests
    that check what a command line reaches."""
    parser, subparsers = build_parser()
    command = next((a for a in argv if not a.startswith("-")), None)
    module = None
    if command in COMMANDS:
        module = importlib.import_module(f"engine.app.commands.{command}")
        module.add_arguments(subparsers[command])
        if command in FILE_COMMANDS:
            add_input_limit_arguments(subparsers[command])
        add_output_arguments(subparsers[command])
    return parser, module, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, module, args = parse_command_line(argv)
    if args.command is None:
        parser.print_help()
        return 1
    from ..io.events import use_sink
    from .allocator import keep_freed_memory

    keep_freed_memory()

    closers = []
    try:
        check_arguments(args.command, args)
        if hasattr(args, "allow_large_inputs"):
            from ..io.untrusted import limits_from_options, set_limits

            set_limits(limits_from_options(args.max_input_mb, args.allow_large_inputs))
        sink, closers = event_sink(args.command, args, argv)
        with use_sink(sink):
            return int(module.run(args) or 0)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for closer in closers:
            closer.close()
