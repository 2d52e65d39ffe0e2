"""Fake ``python -m engine batch``: checks consent like the real one, emits the batch protocol for every views
folder (or, with ``--mode mesh``, every glb of ``--in``) and writes a placeholder glb + sidecar, logging its
argv to $FAKE_BATCH_ARGV_LOG."""

import json
import os
import sys
from pathlib import Path


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv):
    if os.environ.get("FAKE_BATCH_ARGV_LOG"):
        Path(os.environ["FAKE_BATCH_ARGV_LOG"]).write_text(json.dumps(argv))
    if not argv or argv[0] != "batch":
        print("error: the fake engine only knows 'batch'", file=sys.stderr)
        return 2
    if "--i-have-consent" not in argv:
        print("error: refusing to run: a batch needs the subjects' consent", file=sys.stderr)
        return 2
    out = Path(argv[argv.index("--out") + 1])
    if "--mode" in argv and argv[argv.index("--mode") + 1] == "mesh":  # head mode: one glb per scan
        folders = sorted(Path(argv[argv.index("--in") + 1]).glob("*.glb"))
        folders = [f.with_suffix("") for f in folders]
    else:
        views = Path(argv[argv.index("--views") + 1])
        folders = sorted(p for p in views.iterdir() if (p / "cameras.json").is_file())
    emit("stage", stage="batch", message=f"{len(folders)} inputs")
    for i, folder in enumerate(folders):
        emit("item", index=i, total=len(folders), input=str(folder), status="started")
        pngs = sorted(folder.glob("*.png"))
        (out / f"{folder.name}.glb").write_bytes(b"glTF")
        (out / f"{folder.name}.json").write_text(json.dumps({"status": "done", "views": [p.name for p in pngs]}))
        emit("item", index=i, total=len(folders), input=str(folder), status="done", output=f"{folder.name}.glb")
    emit("done", result=str(out / "report.json"), done=len(folders), skipped=0, failed=0, cancelled=0)
    return 0


sys.exit(main(sys.argv[1:]))
