"""The engine as a child process: JSON-line events in, cancel out, never a blocked UI or an orphan.

Pure Python (no ``bpy``) so it is tested without Blender. Torch and diffusers run in a separate interpreter
(Blender's bundled Python usually lacks them, and a crash or an out-of-memory kill must not take the scene
down). Two reader threads turn the child's stdout (one JSON object per line) into a queue and keep the tail
of its stderr for error messages; the owner drains the queue from Blender's timer (modal operator) or from
a wait loop (background mode) — the same code either way.

Cancelling is polite first: the ``--cancel-file`` appears and the engine stops after its current step and
writes a checkpoint; if it has not exited after a grace period it is terminated, then killed. Every live
process is remembered so that :func:`kill_all` (``atexit`` and Blender's ``load_pre``) leaves none behind.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

EventSink = Callable[[dict[str, Any]], None]


@dataclass
class CancelPolicy:
    """How long a cancel waits for a clean stop before it terminates, then kills."""

    grace_seconds: float = 15.0  # a stylization step on CPU can take seconds; let it finish and checkpoint
    terminate_seconds: float = 3.0


def parse_event_line(line: str) -> dict[str, Any]:
    """One stdout line → event dict. Lines that are not JSON objects become ``{"event": "log"}`` events."""
    text = line.strip()
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("event"), str):
            return record
    return {"event": "log", "message": text}


_LIVE: set["EngineProcess"] = set()
_LIVE_LOCK = threading.Lock()


class EngineProcess:
    """One engine run. Create, :meth:`start`, then :meth:`drain` (timer) or :meth:`wait` (blocking)."""

    def __init__(
        self,
        argv: list[str],
        cwd: str | os.PathLike,
        env: dict[str, str] | None = None,
        cancel_file: str | os.PathLike | None = None,
        policy: CancelPolicy | None = None,
        stderr_lines: int = 200,
    ):
        self.argv = list(argv)
        self.cwd = str(cwd)
        self.env = env
        self.cancel_file = Path(cancel_file) if cancel_file else None
        self.policy = policy or CancelPolicy()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self.process: subprocess.Popen | None = None
        self.cancel_requested_at: float | None = None
        self._terminated_at: float | None = None
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._readers: list[threading.Thread] = []

    # -------------------------------------------------------------------------------------------------
    def start(self) -> "EngineProcess":
        if self.cancel_file is not None:
            self.cancel_file.unlink(missing_ok=True)  # a stale file from an earlier cancel would stop us at once
        kwargs: dict[str, Any] = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True  # Ctrl-C in Blender's terminal must not hit the engine directly
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        self.process = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, name="engine-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="engine-stderr", daemon=True),
        ]
        for thread in self._readers:
            thread.start()
        with _LIVE_LOCK:
            _LIVE.add(self)
        return self

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip():
                self._events.put(parse_event_line(line))

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    # -------------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process else None

    @property
    def finished(self) -> bool:
        """Exited and every line it printed has been read (so no event can still arrive)."""
        if self.returncode is None:
            return False
        return not any(t.is_alive() for t in self._readers)

    def drain(self) -> list[dict[str, Any]]:
        """Events received since the last call (never blocks); also enforces the cancel deadline."""
        self.enforce_cancel_deadline()
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        if self.returncode is not None and self.finished:
            self._forget()
        return out

    def error_message(self) -> str:
        """The engine's own one-line error (``error: …`` on stderr) or the last stderr line."""
        for line in reversed(self.stderr_tail):
            if line.startswith("error:"):
                return line[len("error:"):].strip()
        tail = [line for line in self.stderr_tail if line.strip()]
        return tail[-1].strip() if tail else f"engine exited with status {self.returncode}"

    # -------------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask for a clean stop (cancel file + SIGTERM-free); escalation happens in :meth:`drain`/:meth:`wait`."""
        if self.cancel_requested_at is not None or self.returncode is not None:
            return
        self.cancel_requested_at = time.monotonic()
        if self.cancel_file is not None:
            self.cancel_file.parent.mkdir(parents=True, exist_ok=True)
            self.cancel_file.touch()
        else:
            self._signal(signal.SIGTERM)  # the engine treats SIGTERM as "stop after this step"

    def enforce_cancel_deadline(self) -> None:
        if self.cancel_requested_at is None or self.returncode is not None:
            return
        now = time.monotonic()
        if self._terminated_at is None and now - self.cancel_requested_at > self.policy.grace_seconds:
            self._terminated_at = now
            self._signal(signal.SIGTERM)
        elif self._terminated_at is not None and now - self._terminated_at > self.policy.terminate_seconds:
            self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))

    def _signal(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(self.process.pid, sig)  # the whole session: the engine and anything it started
            elif sig == signal.SIGTERM:
                self.process.terminate()
            else:
                self.process.kill()
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self, timeout: float = 5.0) -> None:
        """Stop now (Blender is quitting or loading another file): terminate, kill if needed, reap."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(getattr(signal, "SIGKILL", signal.SIGTERM))
                self.process.wait(timeout=timeout)
        self._join_readers(timeout)
        self._forget()

    def wait(self, on_event: EventSink | None = None, poll_seconds: float = 0.05,
             should_cancel: Callable[[], bool] | None = None) -> int:
        """Block until the engine exits, passing every event to ``on_event``; returns the exit status.

        ``should_cancel`` is polled between events, so a background-mode caller can still cancel.
        """
        assert self.process is not None, "start() first"
        while True:
            if should_cancel is not None and should_cancel():
                self.cancel()
            for event in self.drain():
                if on_event is not None:
                    on_event(event)
            if self.finished:
                break
            time.sleep(poll_seconds)
        for event in self.drain():
            if on_event is not None:
                on_event(event)
        return int(self.process.returncode)

    def _join_readers(self, timeout: float) -> None:
        for thread in self._readers:
            thread.join(timeout)

    def _forget(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self)


def live_processes() -> list[EngineProcess]:
    with _LIVE_LOCK:
        return list(_LIVE)


def kill_all(processes: Iterable[EngineProcess] | None = None) -> int:
    """Kill and reap every engine process still running; returns how many were running."""
    victims = list(processes) if processes is not None else live_processes()
    count = 0
    for proc in victims:
        if proc.returncode is None:
            count += 1
        proc.kill()
    return count


atexit.register(kill_all)


def python_can_run_engine(python: str, timeout: float = 60.0) -> tuple[bool, str]:
    """Whether ``python`` can import the engine's heavy dependencies (torch, numpy, diffusers).

    Checked in a subprocess: importing torch into Blender itself would cost seconds and memory and could
    clash with Blender's own libraries.
    """
    code = ("import importlib.util, torch, numpy, safetensors\n"
            "missing = [m for m in ('diffusers', 'transformers', 'mcubes') if importlib.util.find_spec(m) is None]\n"
            "assert not missing, f'missing packages: {missing}'\n"
            "print(torch.__version__)")  # torch is imported to prove it loads; the rest only looked up (fast)
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout,
                              env={k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"{python}: {exc}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["import failed"])[-1]
        return False, f"{python}: {last}"
    return True, f"torch {done.stdout.strip()}"


_PYTHON_CHECKS: dict[str, tuple[bool, str]] = {}


def cached_python_check(python: str, refresh: bool = False) -> tuple[bool, str]:
    """:func:`python_can_run_engine`, remembered per interpreter for the session (it takes seconds)."""
    if refresh or python not in _PYTHON_CHECKS:
        _PYTHON_CHECKS[python] = python_can_run_engine(python)
    return _PYTHON_CHECKS[python]


def remember_python_check(python: str, ok: bool, message: str) -> None:
    """Record a check made another way (Check's fuller probe), so status lines need not start a second one."""
    _PYTHON_CHECKS[python] = (ok, message)


def forget_python_checks() -> None:
    """Drop remembered checks (after an install changed what an interpreter can import)."""
    _PYTHON_CHECKS.clear()


def previous_python_check(python: str) -> tuple[bool, str] | None:
    """The remembered check of ``python``, or None if it was never checked (never starts a process)."""
    return _PYTHON_CHECKS.get(python)


def blender_python() -> str:
    """The interpreter Blender itself runs (``sys.executable``; for the bpy module, the host Python)."""
    return sys.executable
