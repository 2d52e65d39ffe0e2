"""Helpers of the hostile-input suite (conftest.py makes the fixtures): the generated corpus, a deadline that
turns a hang into a failure, and a record of every file the process opens (Python's audit hooks: ``open`` is raised by ``open()``,
``io.open`` and ``os.open``, so a reader cannot open a file without it being seen — no strace needed)."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.hostile.corpus import Case, build_corpus

READ_SECONDS = 5.0  # the bound on one reader call or one refused command (a hang is cut at HANG_SECONDS)
HANG_SECONDS = 30

_opened: list[str] | None = None
_forbidden: list[Path] = []


class ForbiddenOpen(BaseException):
    """Raised by the audit hook when code opens a forbidden path: the open is aborted before it happens (so a
    regression cannot block on a FIFO or read /dev/zero until the machine runs out of memory), and no
    ``except Exception`` of the code under test can hide it."""


def _audit(event: str, args: tuple) -> None:
    if _opened is None or event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(args[0])
    _opened.append(path)
    if _forbidden and touches([path], _forbidden):
        raise ForbiddenOpen(f"opened {path} (resolves to {os.path.realpath(path)}), which no input may reach")


sys.addaudithook(_audit)  # audit hooks cannot be removed; it only acts while recording_opens() is active


@contextlib.contextmanager
def recording_opens(forbidden: list[Path] | None = None) -> Iterator[list[str]]:
    """Record every path the process opens; opening one inside ``forbidden`` raises :class:`ForbiddenOpen`."""
    global _opened, _forbidden
    _opened, _forbidden = [], list(forbidden or [])
    try:
        yield _opened
    finally:
        _opened, _forbidden = None, []


class Hung(BaseException):
    """Raised by :func:`deadline` (a BaseException, so that no reader's ``except Exception`` can hide it)."""


@contextlib.contextmanager
def deadline(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Interrupt the block (also a blocking ``open`` of a FIFO) after ``seconds`` with :class:`Hung`."""
    def on_alarm(signum, frame):
        raise Hung(f"still running after {seconds} s (a blocking read of a FIFO or device?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def timed() -> Iterator[dict]:
    info: dict = {}
    start = time.perf_counter()
    try:
        yield info
    finally:
        info["seconds"] = time.perf_counter() - start


def touches(opened: list[str], forbidden: list[Path]) -> list[str]:
    """The opened paths that are (or resolve into) one of ``forbidden``."""
    hits = []
    for p in opened:
        real = Path(os.path.realpath(p))
        if any(real == f or f in real.parents for f in forbidden):
            hits.append(p)
    return hits


@functools.lru_cache(maxsize=1)
def corpus_listing() -> tuple[Case, ...]:
    """The cases (names, readers, commands) for test ids, from a corpus built once per process in a
    throwaway folder; the tests run on the session's own copy (:func:`corpus`)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hostile-ids-") as tmp:
        return tuple(build_corpus(Path(tmp)))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, build_corpus(root)


@pytest.fixture(autouse=True)
def default_limits():
    """Commands set the process-wide limits from their flags; every test starts and ends on the defaults."""
    from engine.io.untrusted import InputLimits, set_limits

    set_limits(InputLimits())
    yield
    set_limits(InputLimits())


def forbidden_paths(root: Path) -> list[Path]:
    """What no traversal case may ever open: the outside folder and the devices the corpus points at."""
    return [Path(os.path.realpath(root / "outside")), Path("/dev/zero"), Path("/etc/passwd")]


def find_case(cases: list[Case], name: str) -> Case:
    return next(c for c in cases if c.name == name)


def check_message(case: Case, message: str) -> None:
    """The message names the input (for a checkpoint: its stem, as the .json or .safetensors may be meant)
    and gives the case's reason."""
    wanted = case.path.stem if "checkpoint" in case.readers else case.path.name
    assert wanted in message, f"message does not name the file {wanted!r}: {message}"
    assert re.search(case.match, message), f"message does not give the reason /{case.match}/: {message}"
    for text in case.names:
        assert text in message, f"message does not name {text!r}: {message}"
