"""A stand-in for ``python -m engine head`` that speaks the JSON-line protocol without any model.

Used by the Blender tests so that they exercise the extension (process, events, import, cancel) in
seconds. It copies a real ``head.npz`` (made by the test from ``engine.world.head_mesh``) given in
``FAKE_ENGINE_MESH`` and writes ``head.json`` and before/after view PNGs like the real command.
Behaviour knobs (environment): ``FAKE_ENGINE_STEP_SECONDS`` (sleep per step), ``FAKE_ENGINE_FAIL``
(exit 2 with an "error:" line), ``FAKE_ENGINE_IGNORE_CANCEL`` (never look at the cancel file, so the
caller must terminate it), ``FAKE_ENGINE_ARGV_LOG`` (write the received argv as JSON).

Head mode (``--mesh FILE``): the real engine's reader and normalisation (run in a child Python with the
repository on its path, since this package shadows ``engine``) read the exported mesh; the "stylized" head
handed back is that normalised mesh itself, and ``head.json`` carries its real ``scan_to_world`` — so a test
can check that the extension puts the result exactly where its source is.
"""

import argparse
import json
import os
import shutil
import sys
import time
import zlib
import struct


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def tiny_png(path, rgb):
    """An 8×8 solid-colour PNG (no Pillow needed)."""
    raw = b"".join(b"\x00" + bytes(rgb) * 8 for _ in range(8))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    with open(path, "wb") as fh:
        fh.write(data)


REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
_NORMALISE = """
import json, sys
from engine.heads.scans import load_scan
from engine.mesh import write_npz
scan = load_scan(sys.argv[1])
write_npz(scan.mesh, sys.argv[2])
print(json.dumps({"scan_to_world": scan.scan_to_world.tolist(), "textured": scan.mesh.texture is not None,
                  "up_axis_used": scan.up_axis, "units_used": scan.units}))
"""


def normalise_like_the_engine(mesh_path, npz_path):
    """The real engine's load_scan on the exported mesh; the normalised mesh is written to ``npz_path``."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    done = subprocess.run([sys.executable, "-c", _NORMALISE, mesh_path, npz_path], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT)
    if done.returncode != 0:
        print(f"error: {mesh_path}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'unreadable'}",
              file=sys.stderr)
        raise SystemExit(2)
    normalization = json.loads(done.stdout.strip().splitlines()[-1])
    return {"source": os.path.basename(mesh_path), "normalization": normalization}


def main(argv):
    if not argv or argv[0] != "head":
        print("error: only 'head' is faked", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--cancel-file")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--style-preset")
    p.add_argument("--prompt", default="")
    p.add_argument("--mesh")
    args, _unknown = p.parse_known_args(argv[1:])
    if os.environ.get("FAKE_ENGINE_ARGV_LOG"):
        with open(os.environ["FAKE_ENGINE_ARGV_LOG"], "w") as fh:
            json.dump(argv, fh)
    if os.environ.get("FAKE_ENGINE_FAIL"):
        print(f"error: {os.environ['FAKE_ENGINE_FAIL']}", file=sys.stderr)
        return 2
    delay = float(os.environ.get("FAKE_ENGINE_STEP_SECONDS", "0"))
    ignore_cancel = bool(os.environ.get("FAKE_ENGINE_IGNORE_CANCEL"))
    emit("stage", stage="load", message="checking models")
    print("loading models", file=sys.stderr, flush=True)
    emit("stage", stage="stylize", message="stylizing")
    for step in range(1, args.steps + 1):
        time.sleep(delay)
        if not ignore_cancel and args.cancel_file and os.path.exists(args.cancel_file):
            os.remove(args.cancel_file)
            emit("cancelled", stage="stylize", step=step)
            return 0
        emit("progress", stage="stylize", step=step, total=args.steps, fraction=step / args.steps, loss=1.0 / step)
    out = args.out
    os.makedirs(os.path.join(out, "views"), exist_ok=True)
    emit("stage", stage="mesh", message="marching cubes")
    mesh_record = None
    if args.mesh:
        mesh_record = normalise_like_the_engine(args.mesh, os.path.join(out, "head.npz"))
    else:
        shutil.copyfile(os.environ["FAKE_ENGINE_MESH"], os.path.join(out, "head.npz"))
    views = {}
    for when, colour in (("before", (200, 160, 140)), ("after", (90, 140, 80))):
        views[when] = {}
        for view in ("front", "yaw+45"):
            rel = f"views/{when}_{view}.png"
            tiny_png(os.path.join(out, rel), colour)
            views[when][view] = rel
    summary = {"mesh_npz": "head.npz", "mesh_ply": "head.ply", **views, "identity_similarity": 0.875,
               "reid_rank": 2, "reid_candidates": 9, "identity_margin": -0.0125,
               "style_score": None, "prompt": args.prompt or args.style_preset, "method": "ld",
               "generator": os.path.join(out, "generator.safetensors"), "faces": 0, "vertices": 0, "seconds": 0.1,
               "mesh": mesh_record}
    with open(os.path.join(out, "head.json"), "w") as fh:
        json.dump(summary, fh)
    emit("done", result=os.path.join(out, "head.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
