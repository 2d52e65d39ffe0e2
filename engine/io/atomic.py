"""Atomic file output: results appear whole or not at all.

Everything the engine writes goes to a temporary file in the destination folder and is renamed into place
(``os.replace`` is atomic on POSIX and Windows for same-volume renames), so a crash, a cancel from Blender or
a full disk never leaves a half-written mesh, image or checkpoint that a later run would mistake for a result.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    ``suffix`` defaults to the destination's own suffix so that writers which pick a format from the file
    extension (PIL, numpy) behave the same on the temporary file.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{dest.name}.", suffix=dest.suffix if suffix is None else suffix, dir=dest.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results should get the user's usual mode
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# ``atomic_path``'s temporary names: "." + the destination's name + "." + mkstemp's 8 random characters + a
# suffix (the destination's own, unless the caller chose another)
_TEMPORARY = re.compile(r"^\.(?P<dest>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?$")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` (not its subfolders) when a process
    died mid-write: a SIGKILL, a crash of the interpreter or a power cut skips the clean-up, and the dot-file
    then stays beside the results for good. Only names of that exact form are touched, so call it where no
    other process is writing into ``folder`` (a batch's output folder, which its one driver owns). Returns the
    paths removed."""
    removed = []
    for path in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        if path.is_file() and _TEMPORARY.match(path.name):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the finished file into place."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)
