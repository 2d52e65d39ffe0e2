"""Framing error on procedural world scans with a known transform: the extent heuristic vs face landmarks.

Each of ``--heads`` world identities (a seed stream of its own) is meshed, turned about its up axis by a random
yaw in ±``--max-yaw`` degrees and exported as a scanner would (z-up, millimetres / centimetres / metres,
origin at the base; :mod:`engine.world.scan`). It is then read back into the generator's frame twice — with
the extent heuristic alone and with face framing (:func:`engine.heads.scans.normalize_scan`) — and compared
with the head's true world position, vertex by vertex (the export keeps the vertex order):

* position error: mean vertex distance, in % of the reference head height (0.73 world units);
* yaw error: the remaining turn about the up axis, in degrees;
* scale: the remaining scale factor (1 = exact).

    python bench/bench_framing.py                 # 6 heads, about 30 s on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere

from engine.heads.face_framing import rotation_angles  # noqa: E402
from engine.heads.scans import REFERENCE_HEIGHT, ScanNormalization, normalize_scan  # noqa: E402
from engine.world.identity import sample_identities  # noqa: E402
from engine.world.scan import ScanExport, apply_transform, head_mesh, scan_transform  # noqa: E402

UNITS_CYCLE = ("mm", "cm", "m")


def framing_errors(world_vertices: np.ndarray, world_to_scan: np.ndarray, scan_to_generator: np.ndarray) -> dict:
    """Position error (% of head height), yaw error (degrees) and scale of the round trip world → scan → frame."""
    total = scan_to_generator @ world_to_scan
    moved = world_vertices @ total[:3, :3].T + total[:3, 3]
    scale = float(np.cbrt(np.linalg.det(total[:3, :3])))
    yaw, pitch, roll = rotation_angles(total[:3, :3] / scale)
    error = float(np.linalg.norm(moved - world_vertices, axis=1).mean()) / REFERENCE_HEIGHT * 100.0
    return {"position_percent": error, "yaw_degrees": yaw, "pitch_degrees": pitch, "roll_degrees": roll, "scale": scale}


def turned_world_scan(identity: torch.Tensor, yaw_degrees: float, units: str):
    """(world mesh, its scan as exported z-up in ``units`` turned by ``yaw_degrees``, the world→scan matrix)."""
    world = head_mesh(identity)
    matrix = scan_transform(world.vertices, ScanExport(units=units, up_axis="z", yaw_degrees=yaw_degrees))
    return world, apply_transform(world, matrix), matrix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--max-yaw", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    identities = sample_identities(args.heads, torch.Generator().manual_seed(args.seed))
    print("| head | turn (°) | units | heuristic: position error | yaw error | landmarks: position error | yaw error | pitch / roll | framing s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    worst = {"position_percent": 0.0, "yaw_degrees": 0.0}
    for k in range(args.heads):
        yaw = float(rng.uniform(-args.max_yaw, args.max_yaw))
        units = UNITS_CYCLE[k % len(UNITS_CYCLE)]
        world, scan, world_to_scan = turned_world_scan(identities[k : k + 1], yaw, units)
        heuristic = normalize_scan(scan, ScanNormalization(units=units, framing="heuristic"))
        start = time.perf_counter()
        framed = normalize_scan(scan, ScanNormalization(units=units, framing="landmarks"))
        seconds = time.perf_counter() - start
        w = world.vertices.astype(np.float64)
        h, f = framing_errors(w, world_to_scan, heuristic.scan_to_world), framing_errors(w, world_to_scan, framed.scan_to_world)
        worst = {"position_percent": max(worst["position_percent"], f["position_percent"]),
                 "yaw_degrees": max(worst["yaw_degrees"], abs(f["yaw_degrees"]))}
        print(f"| {k} | {yaw:+.1f} | {units} | {h['position_percent']:.2f} % | {h['yaw_degrees']:+.1f} | "
              f"{f['position_percent']:.2f} % | {f['yaw_degrees']:+.2f} | {f['pitch_degrees']:+.1f} / {f['roll_degrees']:+.1f} | {seconds:.1f} |")
    print(f"\nworst with landmarks: {worst['position_percent']:.2f} % of the head height, {worst['yaw_degrees']:.2f}° of yaw")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
