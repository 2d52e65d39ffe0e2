"""Small helpers shared by the model-pack training scripts: JSONL training logs, reports, run facts.

Every pack model ships with ``logs/<model>.jsonl`` (one JSON object per logged step) and
``reports/<model>.json`` (how it was trained and how well it does on held-out data), so anyone can see what
a file in the pack is and rerun the command that made it. Both are written atomically.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from engine.io.atomic import write_json, write_text

REPO_ROOT = Path(__file__).resolve().parents[2]


class JsonlLog:
    """Training log kept in memory and rewritten atomically as a whole (the files are small).

    ``flush_every`` bounds how many records a crash can lose; ``close`` writes the final file.
    """

    def __init__(self, path: str | Path, flush_every: int = 20):
        self.path = Path(path)
        self.flush_every = max(1, int(flush_every))
        self.records: list[dict[str, Any]] = []

    def write(self, **record: Any) -> None:
        self.records.append(record)
        if len(self.records) % self.flush_every == 0:
            self.flush()

    def flush(self) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        write_text(self.path, text)

    close = flush


def run_facts(seed: int, threads: int) -> dict[str, Any]:
    """Facts every report records: command line, seed, threads, software versions, start time."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": int(seed),
        "threads": int(threads),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Write a model's report JSON atomically (sorted keys, so reruns diff cleanly)."""
    return write_json(path, report)
