"""Progress for people (bar + stage lines at a terminal), JSON lines for Blender, a log file per run, and
arguments refused before any work."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.app.cli import main
from engine.app.terminal import EventLog, TerminalDisplay, wants_terminal
from engine.io.events import emit, use_sink

ROOT = Path(__file__).resolve().parents[3]


def test_display_shows_stage_lines_a_bar_and_the_result():
    out = io.StringIO()
    display = TerminalDisplay(out)
    with use_sink(display):
        emit("stage", stage="stylize", message="40 steps of LD")
        for step in range(1, 11):
            emit("progress", stage="stylize", step=step, total=10, loss=0.5)
        emit("warning", message="slow CPU")
        emit("checkpoint", step=10, generator="/x/g.safetensors")
        emit("done", result="/tmp/out/head.json")
    text = out.getvalue()
    assert "» stylize: 40 steps of LD" in text
    assert "10/10" in text and "100%" in text and "loss=0.5" in text  # tqdm's bar
    assert "warning: slow CPU" in text
    assert "/x/g.safetensors" not in text  # data-only events stay quiet
    assert "done in" in text and "/tmp/out/head.json" in text
    assert "{" not in text  # no JSON for a person


def test_without_a_sink_emit_writes_json_lines():
    out = io.StringIO()
    emit("progress", stream=out, step=1, total=2, loss=float("nan"))
    assert json.loads(out.getvalue()) == {"event": "progress", "step": 1, "total": 2, "loss": None}


def test_terminal_only_for_a_tty_without_json():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert wants_terminal(False, Tty()) and not wants_terminal(True, Tty()) and not wants_terminal(False, io.StringIO())


def test_event_log_appends_timestamped_events(tmp_path):
    log = EventLog(tmp_path / "logs" / "x.jsonl", ["head", "--out", "o"])
    with use_sink(log):
        emit("stage", stage="load")
        emit("done", result="r")
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "logs" / "x.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "run" and lines[0]["argv"] == ["head", "--out", "o"]
    assert [line["event"] for line in lines[1:]] == ["stage", "done"] and all("time" in line for line in lines)


# ------------------------------------------------------------------------------------------------
# Arguments refused up front (exit 2, one line, nothing written)
# ------------------------------------------------------------------------------------------------
def test_head_out_that_is_a_file_is_refused_before_anything_runs(tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    started = time.perf_counter()
    assert main(["head", "--out", str(existing), "--style-preset", "zombie", "--device", "cpu"]) == 2
    assert time.perf_counter() - started < 5
    assert "is an existing file" in capsys.readouterr().err
    assert existing.read_text() == "keep me"


def test_out_below_a_file_is_refused(tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("x")
    assert main(["demo", "--out", str(existing / "demo")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_invert_out_that_is_a_folder_is_refused(tmp_path, capsys):
    assert main(["invert", str(tmp_path / "missing.ply"), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["head", "batch"])
def test_empty_prompt_is_refused(tmp_path, capsys, command):
    extra = ["--in", str(tmp_path), "--i-have-consent"] if command == "batch" else []
    assert main([command, "--out", str(tmp_path / "o"), "--prompt", "  ", *extra]) == 2
    assert "--prompt is empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# A real command under a pseudo-terminal, and the same command for Blender
# ------------------------------------------------------------------------------------------------
RENDER = ["-m", "engine", "render", "--generator", "tiny", "--seeds", "0-2", "--frames", "0", "--device", "cpu"]


def _run_in_pty(argv: list[str], timeout: float = 120.0) -> tuple[int, str]:
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")


def test_a_command_at_a_terminal_shows_a_progress_bar_and_writes_a_log(tmp_path):
    rc, text = _run_in_pty([*RENDER, "--out", str(tmp_path / "r")])
    assert rc == 0, text
    assert "3/3" in text and "100%" in text, text  # the bar reached the end
    assert "done in" in text
    assert not any(line.lstrip().startswith('{"event"') for line in text.splitlines()), text
    logs = list((tmp_path / "r" / "logs").glob("render-*.jsonl"))
    assert len(logs) == 1
    events = [json.loads(line)["event"] for line in logs[0].read_text().splitlines()]
    assert events[0] == "run" and events[-1] == "done" and "progress" in events


def test_json_flag_keeps_the_protocol_even_at_a_terminal(tmp_path):
    rc, text = _run_in_pty([*RENDER, "--json", "--out", str(tmp_path / "r")])
    assert rc == 0, text
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert [r["event"] for r in records] == ["progress"] * 3 + ["done"]
    assert [r["step"] for r in records[:3]] == [1, 2, 3] and records[0]["total"] == 3
    assert "%|" not in text  # no bar


def test_piped_output_is_json_lines_without_the_flag(tmp_path):
    proc = subprocess.run([sys.executable, *RENDER, "--out", str(tmp_path / "r")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["event"] for line in proc.stdout.splitlines()] == ["progress"] * 3 + ["done"]
