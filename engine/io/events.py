"""Progress events: one JSON object per line on stdout, or whatever sink the command line installs.

Blender (and any other front end) runs the engine out of process and reads these lines, e.g.
``{"event": "progress", "step": 3, "total": 200, "loss": 0.12, "preview": "/out/preview.png"}``. Human-readable
messages go to stderr so they never corrupt the protocol.

Engine code always reports through :func:`emit` (directly or as the default ``on_event`` of a stage). The
command line may install a different sink with :func:`use_sink` — a progress bar for a person at a terminal
(:mod:`engine.app.terminal`), plus a log file — without any stage knowing who listens.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from typing import Any, Callable, Iterator, TextIO

EventRecord = dict[str, Any]
Sink = Callable[[EventRecord], None]

_sink: Sink | None = None


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf; a front end should see "unknown", not a parse error
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def event_record(event: str, **fields: Any) -> EventRecord:
    return {"event": event, **{k: _clean(v) for k, v in fields.items()}}


def json_line(record: EventRecord) -> str:
    return json.dumps(record, sort_keys=False, default=str) + "\n"


def write_json_line(record: EventRecord, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(json_line(record))
    out.flush()


def emit(event: str, stream: TextIO | None = None, **fields: Any) -> None:
    """Report one event: to ``stream`` as a JSON line if given, else to the installed sink (default: stdout)."""
    record = event_record(event, **fields)
    if stream is None and _sink is not None:
        _sink(record)
    else:
        write_json_line(record, stream)


@contextlib.contextmanager
def use_sink(sink: Sink | None) -> Iterator[None]:
    """Route :func:`emit` calls without an explicit stream to ``sink`` (None: JSON lines on stdout)."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield
    finally:
        _sink = previous


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
