"""bench/gpu_suite.sh: the dry run lists what it would run; a real run without CUDA refuses at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "bench" / "gpu_suite.sh"


def _run(*args: str, hide_gpus: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if hide_gpus:  # a CI machine with a GPU must still take the "no CUDA" path here
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(["bash", str(SUITE), "--python", sys.executable, *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=timeout)  # fmt: skip


def test_dry_run_lists_every_item_with_its_command_and_exits_0():
    done = _run("--dry-run")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "in 480 s at most" in out
    for needle in (
        "bench/bench_stylize.py --full --device cuda --precision fp16 --steps 6",  # full-size s/iter + VRAM
        "--attention-slicing --vae-slicing",  # the 12 GB configuration
        "--mesh-preset panohead --mesh-resolutions 512",  # 512³ mesh extraction
        "-m engine demo --device cuda",  # demo time
        "--steps 200",  # the 200-step throughput
        "bench/memory_budget.py --markdown",
    ):
        assert needle in out, needle
    assert "compare_official.py" not in out  # not without the checkouts
    assert "give --official and --panohead" in out
    # Every share of the budget together stays within it.
    shares = [int(line.split("[≤ ")[1].split(" s]")[0]) for line in out.splitlines() if "[≤ " in line]
    assert len(shares) == 5 and sum(shares) <= 480


def test_dry_run_with_the_official_checkouts_adds_the_side_by_side(tmp_path):
    done = _run("--dry-run", "--official", str(tmp_path / "off"), "--panohead", str(tmp_path / "ph"), "--budget-seconds", "300")
    assert done.returncode == 0, done.stderr
    assert f"compare_official.py --official {tmp_path / 'off'} --panohead {tmp_path / 'ph'} --device cuda --size full" in done.stdout
    shares = [int(line.split("[≤ ")[1].split(" s]")[0]) for line in done.stdout.splitlines() if "[≤ " in line]
    assert len(shares) == 6 and sum(shares) <= 300


def test_a_real_run_without_cuda_refuses_loudly_and_runs_nothing(tmp_path):
    out = tmp_path / "results"
    done = _run("--out", str(out))
    assert done.returncode == 3
    assert "no CUDA device" in done.stderr and "--dry-run" in done.stderr
    assert "==" not in done.stdout  # no item started
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (("--official", "/x"), "--official and --panohead go together"),
        (("--panohead", "/x"), "--official and --panohead go together"),
        (("--budget-seconds", "soon"), "--budget-seconds needs a whole number"),
        (("--fast",), "unknown option --fast"),
    ],
)
def test_bad_options_are_refused_with_a_reason(args, message):
    done = _run(*args, "--dry-run")
    assert done.returncode == 2 and message in done.stderr
