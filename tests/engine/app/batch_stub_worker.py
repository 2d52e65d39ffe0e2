"""Subprocess used by tests/engine/app/test_batch.py: runs the batch driver with stub models that take a while per item,
so the test can SIGKILL it after the first item finished and check that a rerun completes the rest."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from engine.app.batch import collect_inputs, run_batch  # noqa: E402

from test_batch import stub_models  # noqa: E402

if __name__ == "__main__":
    in_dir, out_dir, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    models = stub_models()
    inner = models.build_head

    def slow_build(ws, score_cameras=None):
        time.sleep(delay)
        return inner(ws, score_cameras)

    models.build_head = slow_build
    run_batch(collect_inputs(in_dir), out_dir, models, consent=True)
