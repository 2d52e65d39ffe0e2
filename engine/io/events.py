"""Machine-readable progress: one JSON object per line on stdout.

Blender (and any other front end) runs the engine out of process and reads these lines, e.g.
``{"event": "progress", "step": 3, "total": 200, "loss": 0.12, "preview": "/out/preview.png"}``. Human-readable
messages go to stderr so they never corrupt the protocol.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, TextIO


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/Inf; a front end should see "unknown", not a parse error
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def emit(event: str, stream: TextIO | None = None, **fields: Any) -> None:
    record = {"event": event, **{k: _clean(v) for k, v in fields.items()}}
    out = stream or sys.stdout
    out.write(json.dumps(record, sort_keys=False) + "\n")
    out.flush()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
