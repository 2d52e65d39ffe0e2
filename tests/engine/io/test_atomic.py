"""Atomic output (engine/io/atomic.py): whole files or none, and no temporaries left behind a killed run."""

from __future__ import annotations

import pytest

from engine.io.atomic import atomic_path, remove_stale_temporaries, write_json


def killed_mid_write(dest, suffix=None):
    """The temporary a process leaves when it is killed inside ``atomic_path`` (its clean-up never runs)."""
    tmp = atomic_path(dest, suffix).__enter__()
    tmp.write_bytes(b"half a file")
    return tmp


def test_a_failed_write_leaves_the_old_result_and_no_temporary(tmp_path):
    dest = write_json(tmp_path / "report.json", {"ok": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("disk full")
    assert dest.read_text() == '{\n  "ok": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_stale_temporaries_of_a_killed_run_are_removed_and_nothing_else(tmp_path):
    stale = [killed_mid_write(tmp_path / "report.json"), killed_mid_write(tmp_path / "head0.glb"),
             killed_mid_write(tmp_path / "scan.v2.npz"), killed_mid_write(tmp_path / "plane", suffix=".tmp")]
    assert all(p.name.startswith(".") and p.is_file() for p in stale)
    kept = ["report.json", ".report.json", ".hidden", ".config.toml", ".report.json.bak", ".report.json.ABCDEFGH.json"]
    for name in kept:
        (tmp_path / name).write_text("user file")
    (tmp_path / "sub").mkdir()
    nested = killed_mid_write(tmp_path / "sub" / "x.json")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(kept)
    assert nested.exists()  # subfolders are not swept
    assert remove_stale_temporaries(tmp_path / "missing") == []
