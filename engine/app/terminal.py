"""What a person at a terminal sees, and the per-run log file.

The engine reports through :func:`engine.io.events.emit`. For Blender (``--json``, or whenever stdout is not a
terminal) those events stay JSON lines on stdout — the protocol ``bridge/engine_process.py`` parses. At a
terminal the same events drive a progress bar per stage (tqdm: maintained, handles terminal width, ETA and
redraws) and short stage lines, on stderr. Either way every event is also appended to a log file with a
timestamp, so a run that scrolled away can still be read.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from ..io.events import EventRecord, Sink, json_line

# Fields worth a word on a stage's bar (shown as "name=value" after the bar).
_BAR_FIELDS = ("loss", "subject", "input", "status")
# Events that only carry data for a front end; at a terminal the final "done" line says where things are.
_QUIET_EVENTS = ("checkpoint", "views", "mesh", "preview")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 48 else "…" + text[-47:]


def _bar_shape() -> tuple[int, int]:
    """(columns, rows) for the bar. A fresh pseudo-terminal reports 0 × 0, and tqdm hides a bar that does not fit
    the reported rows, so an unknown size falls back to 100 × 24."""
    size = shutil.get_terminal_size((100, 24))
    return (min(size.columns, 120) if size.columns >= 40 else 100), (size.lines if size.lines >= 2 else 24)


class TerminalDisplay:
    """Progress bars and stage lines for a person. One bar per stage; a new stage closes the previous bar."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bar: tqdm | None = None
        self.bar_stage: str | None = None
        self.started = time.perf_counter()

    # -- output helpers ------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.clear()
        print(text, file=self.stream, flush=True)
        if self.bar is not None:
            self.bar.refresh()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.bar_stage = None, None

    # -- the sink --------------------------------------------------------------------------------------
    def __call__(self, record: EventRecord) -> None:
        event = record.get("event")
        fields = {k: v for k, v in record.items() if k != "event"}
        if event == "progress":
            self.progress(fields)
        elif event == "stage":
            self.close_bar()
            message = fields.get("message")
            self.line(f"» {fields.get('stage', '')}" + (f": {message}" if message else ""))
        elif event == "warning":
            self.line(f"warning: {fields.get('message', '')}")
        elif event == "item":
            self.line(f"  item {int(fields.get('index', 0)) + 1}/{fields.get('total', '?')}: "
                      f"{_short(fields.get('input', ''))} {fields.get('status', '')}".rstrip())
        elif event in ("done", "cancelled"):
            self.close_bar()
            seconds = time.perf_counter() - self.started
            where = fields.get("report") or fields.get("result") or fields.get("out") or fields.get("summary")
            word = "done" if event == "done" else "cancelled"
            self.line(f"{word} in {seconds:.0f} s" + (f": {where}" if where else ""))
        elif event in _QUIET_EVENTS:
            return
        else:
            detail = ", ".join(f"{k}={_short(v)}" for k, v in fields.items() if not isinstance(v, (dict, list)))
            self.line(f"{event}: {detail}" if detail else str(event))

    def progress(self, fields: dict[str, Any]) -> None:
        total = fields.get("total")
        step = fields.get("step")
        if not isinstance(total, (int, float)) or not isinstance(step, (int, float)) or total <= 0:
            return
        stage = str(fields.get("stage") or "progress")
        if self.bar is None or self.bar_stage != stage or self.bar.total != total:
            self.close_bar()
            columns, rows = _bar_shape()
            self.bar = tqdm(total=int(total), desc=stage, file=self.stream, unit="step", ncols=columns, nrows=rows,
                            leave=True, mininterval=0.2)
            self.bar_stage = stage
        self.bar.n = int(step)
        post = {k: _short(fields[k]) for k in _BAR_FIELDS if k in fields and fields[k] is not None}
        if post:
            self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()


class EventLog:
    """Appends every event, with wall-clock time, to a JSON-lines file (opened on the first event, so a run
    refused up front leaves no file behind)."""

    def __init__(self, path: Path, argv: list[str]) -> None:
        self.path = Path(path)
        self.argv = argv
        self.handle: TextIO | None = None

    def __call__(self, record: EventRecord) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.path.open("a", encoding="utf-8")
            self.handle.write(json_line({"event": "run", "time": time.time(), "argv": self.argv}))
        self.handle.write(json_line({"time": round(time.time(), 3), **record}))
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def fan_out(*sinks: Sink) -> Sink:
    def sink(record: EventRecord) -> None:
        for s in sinks:
            s(record)

    return sink


def wants_terminal(json_flag: bool, stdout: TextIO | None = None) -> bool:
    """A person is watching when stdout is a terminal and ``--json`` was not given."""
    stream = stdout or sys.stdout
    return not json_flag and bool(getattr(stream, "isatty", lambda: False)())
