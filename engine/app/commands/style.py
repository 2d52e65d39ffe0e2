"""``python -m engine style``: the approved-style library (:mod:`engine.styles.library`).

    style approve RUN --name zombie --approver "A. Lead" [--scores metrics.json] [--note TEXT]
    style list                      every version: id, status, approver, date, prompt
    style show zombie@1             the record, and whether its files verify
    style retire zombie@1 --by "A. Lead" --reason "too gory for the client"

``--style-library DIR`` (or ``$HEAD_STYLIZER_STYLES``) picks the library; default ``<engine data dir>/styles``.
Results go to stdout (``--json`` for machine-readable output); errors are one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json

from ...errors import EngineError
from ...styles import library as lib


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style-library", default=None, metavar="DIR",
                   help=f"style library folder (default ${lib.LIBRARY_ENV}, else <engine data dir>/styles)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = _action(sub, "approve", help="freeze a finished stylization run as the next version of a named style")
    a.add_argument("run", help="the stylization run folder (with 'latest' and checkpoints/), a checkpoint folder, "
                               "or a head/batch cache folder holding one run")
    a.add_argument("--name", required=True, help="style name, e.g. zombie (the first approval is zombie@1)")
    a.add_argument("--approver", required=True, help="who approves it (recorded)")
    a.add_argument("--scores", default=None, help="what the run measured: engine demo's metrics.json, engine head's "
                                                  "head.json or a bench JSON (identity, diversity, style, fairness)")
    a.add_argument("--note", default="", help="free text kept with the approval (the quality check done, the ticket)")
    _action(sub, "list", help="every style version in the library")
    s = _action(sub, "show", help="a style's record and whether its files verify")
    s.add_argument("style_id", help="name@version, e.g. zombie@1")
    r = _action(sub, "retire", help="retire a style: production refuses it from now on (the record stays)")
    r.add_argument("style_id")
    r.add_argument("--by", required=True, help="who retires it (recorded)")
    r.add_argument("--reason", default="", help="why (recorded, shown in production's refusal)")


def _action(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-action that also takes ``--json`` / ``--style-library`` after its name (``style list --json``);
    SUPPRESS keeps the value given before the action when it is not repeated after it."""
    parser = sub.add_parser(name, help=help, description=help)
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parser.add_argument("--style-library", default=argparse.SUPPRESS, metavar="DIR", help="style library folder")
    return parser


def _print(args: argparse.Namespace, data, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


def run(args: argparse.Namespace) -> int:
    library = args.style_library
    if args.action == "approve":
        record = lib.approve_style(lib.Approval(args.run, args.name, args.approver, args.scores, args.note, library))
        missing = record["scores"].get("missing", [])
        _print(args, record, f"approved {record['id']} in {lib.library_root(library)} (prompt {record['prompt']!r}, "
                             f"step {record['source_run']['step']})"
                             + (f"; scores not measured: {', '.join(missing)}" if missing else ""))
    elif args.action == "list":
        styles = lib.list_styles(library)
        lines = [f"{s['id']:<20} {s['status']:<10} {s['approved_at'] or '':<20} {s['approved_by'] or '':<16} "
                 f"{s['prompt'] or s['problem']}" for s in styles]
        _print(args, styles, "\n".join(lines) if lines else f"no styles in {lib.library_root(library)}")
    elif args.action == "show":
        record = lib.read_record(args.style_id, library)
        try:
            lib.verify_style(args.style_id, library)
            verdict = "usable in production"
        except EngineError as exc:
            verdict = f"refused in production: {exc}"
        _print(args, {**record, "verification": verdict},
               json.dumps(record, indent=2, sort_keys=True) + f"\n{args.style_id}: {verdict}")
    elif args.action == "retire":
        record = lib.retire_style(args.style_id, args.by, args.reason, library)
        _print(args, record, f"retired {record['id']} ({record['retired_at']})")
    return 0
