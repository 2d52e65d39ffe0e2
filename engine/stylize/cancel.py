"""Cooperative cancellation of a long run: a flag, a cancel file, and SIGINT/SIGTERM.

Blender runs the engine out of process and cannot call into it, so it asks for a stop by creating a file
(``--cancel-file``); a terminal user presses Ctrl-C. Either way the training loop must not die mid-step: it
finishes the current step, writes a valid checkpoint and exits. :class:`CancelToken` collects all three
sources behind one ``cancelled`` check that the loop polls after every step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class CancelToken:
    """A stop request from code (:meth:`request`), from a file appearing at ``cancel_file``, or a signal.

    The file is *consumed* (deleted) when the request is honoured (:meth:`acknowledge`), so that resuming
    the same run with the same ``--cancel-file`` does not stop again at once.
    """

    def __init__(self, cancel_file: str | os.PathLike | None = None):
        self.cancel_file = Path(cancel_file) if cancel_file is not None else None
        self._event = threading.Event()
        self.reason: str | None = None

    def request(self, reason: str = "requested") -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """True once any source asked for a stop (checks the cancel file each time it is read)."""
        if not self._event.is_set() and self.cancel_file is not None and self.cancel_file.exists():
            self.request(f"cancel file {self.cancel_file}")
        return self._event.is_set()

    def acknowledge(self) -> None:
        """Delete the cancel file (if any) once the stop has been carried out."""
        if self.cancel_file is not None:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                self.cancel_file.unlink()

    @contextlib.contextmanager
    def signal_handlers(self) -> Iterator["CancelToken"]:
        """While active, SIGINT/SIGTERM set the flag instead of killing the process; a second signal
        raises KeyboardInterrupt (the user insists). Outside the main thread (where Python forbids signal
        handlers) this does nothing. Previous handlers are restored on exit."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {}

        def handler(signum, frame):  # noqa: ARG001 - signal handler signature
            if self._event.is_set():
                raise KeyboardInterrupt
            self.request(f"signal {signal.Signals(signum).name}")

        try:
            for sig in _SIGNALS:
                previous[sig] = signal.signal(sig, handler)
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
