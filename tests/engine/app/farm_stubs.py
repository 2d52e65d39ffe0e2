"""Worker-side stand-ins for tests/engine/app/test_farm.py: a picklable, hashable recipe that builds
test_batch's stub models inside a Ray worker, logs every item a worker starts, and can kill its own worker
process in the middle of an item (SIGKILL, as the OOM killer or a lost node would) on the first attempt."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from engine.app.batch import BatchModels
from tests.engine.app.test_batch import stub_models


@dataclass(frozen=True)
class StubRecipe:
    log_dir: str  # calls.log: one "<input name> <worker pid>" line per item a worker starts
    kill_at: str = ""  # input file name whose first attempt SIGKILLs its worker after the inversion
    delay: float = 0.0  # seconds each item's head building takes
    tag: str = ""  # non-empty: other settings than the driver's stub models (a node that makes other heads)

    def __call__(self) -> BatchModels:
        models = stub_models()
        if self.tag:
            models.settings = {"stub": self.tag}
        log = Path(self.log_dir) / "calls.log"
        current: dict[str, str] = {}
        invert, build_head = models.invert, models.build_head

        def logged_invert(path: Path, kind: str):
            current["name"] = path.name
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(f"{path.name} {os.getpid()}\n")
            return invert(path, kind)

        def slow_build(ws, score_cameras=None):
            marker = Path(self.log_dir) / f"killed-{current.get('name')}"
            if current.get("name") == self.kill_at and not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)  # mid-item: inverted, nothing written yet
            time.sleep(self.delay)
            return build_head(ws, score_cameras)

        models.invert, models.build_head = logged_invert, slow_build
        return models


def calls(log_dir: Path) -> list[tuple[str, int]]:
    path = Path(log_dir) / "calls.log"
    if not path.is_file():
        return []
    return [(name, int(pid)) for name, pid in (line.split() for line in path.read_text().splitlines())]
