"""Benchmark the procedural head world: renders per second per style and resolution, and scan export time.

Run ``python bench/bench_world.py`` (``--help`` for options). Each measurement renders ``--batch`` random
identities from random training cameras (yaw ±180°, pitch ±30°, as a 360° dataset would) once to warm up
and then ``--repeats`` times, reporting the median heads per second. The training-data targets are
≥ 20 heads/s at 64² and ≥ 5 heads/s at 128² on two CPU cores.

With ``--threads 1,2`` it also shows how the numbers depend on torch's intra-op threads: on a machine
whose cores are busy with other work, two threads can be much *slower* than one (each parallel kernel waits
for the descheduled second thread), so measure on a quiet machine or compare both.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere

from engine.generator.camera import CameraConfig, sample_cameras  # noqa: E402
from engine.world import STYLES, export_scan, render_heads, sample_identities  # noqa: E402
from engine.world.scan import ScanExport  # noqa: E402

TARGETS = {64: 20.0, 128: 5.0}


def heads_per_second(batch: int, resolution: int, style: str, repeats: int, device: str, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    ids = sample_identities(batch, gen).to(device)
    cams = sample_cameras(
        batch, (-math.pi, math.pi), (-math.pi / 6, math.pi / 6), gen, CameraConfig(pivot=(0.0, 0.0, 0.0))
    ).c.to(device)
    render_heads(ids, cams, resolution, style, background="gradient")  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        render_heads(ids, cams, resolution, style, background="gradient")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def scan_seconds(resolution: int) -> float:
    ids = sample_identities(1, torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        export_scan(ids[0], Path(folder) / "scan", ScanExport(resolution=resolution))
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="64,128")
    parser.add_argument("--styles", default=",".join(STYLES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="2", help="comma-separated torch intra-op thread counts to try")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scan-resolution", type=int, default=112)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    results = []
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for resolution in [int(r) for r in args.resolutions.split(",")]:
            for style in args.styles.split(","):
                rate = heads_per_second(args.batch, resolution, style, args.repeats, args.device)
                target = TARGETS.get(resolution)
                verdict = "" if target is None else ("  ok" if rate >= target else f"  BELOW target {target:g}")
                print(f"threads={threads} {resolution:4d}² {style:8s} {rate:7.1f} heads/s{verdict}", flush=True)
                results.append({"threads": threads, "resolution": resolution, "style": style, "heads_per_s": rate})
        seconds = scan_seconds(args.scan_resolution)
        print(f"threads={threads} scan export at {args.scan_resolution}³: {seconds:.2f} s", flush=True)
        results.append({"threads": threads, "scan_resolution": args.scan_resolution, "scan_s": seconds})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
