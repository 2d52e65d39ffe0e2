"""Benchmark the batch on Ray (engine/app/farm.py): wall time with 1 and 2 workers on this machine, against the
local batch, and the terms of the model T(N) ≈ T_build + T_start + T_load + ceil(items / N) · t_item.

Run ``python bench/bench_farm.py`` (``--help`` for options; a small batch by default: 4 procedural scans, few
stylization and inversion steps). It builds the stylized generator once (``T_build``, the driver's job in every
configuration; cached, so the runs below reuse it), then runs the same batch into fresh output folders:

* ``local``: :func:`engine.app.batch.run_batch` in this process, one torch thread (the per-item baseline);
* ``ray N``: a private local Ray instance with N CPUs and one CPU per item (so N items at once), timed from
  ``ray.init`` to the end of the batch: ``T_start`` (starting Ray), then the batch, whose first items also pay
  ``T_load`` (each worker process imports the engine and loads the models once).

It prints a table and the fitted terms, checks that every configuration wrote byte-identical glb files
(``SOURCE_DATE_EPOCH`` is set for that), and records what else the machine was running (load average, the
busiest processes, and each run's share of idle CPU from /proc/stat), because on a shared 2-core machine that
decides the numbers as much as N does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere
ROOT = Path(__file__).resolve().parents[1]


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat (Linux; zeros elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def idle_share(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    """The machine's idle CPU share between two :func:`cpu_jiffies` readings: ~0 means every core was busy (with
    this run or with others'), so more workers could not have run any faster."""
    total = after[1] - before[1]
    return None if total <= 0 else 1.0 - (after[0] - before[0]) / total


def machine_load() -> dict:
    """Load average and the busiest other processes right now (what shares the CPUs with the benchmark)."""
    top = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True).stdout.splitlines()
    mine = str(os.getpid())
    busy = [line.strip()[:140] for line in top[1:8] if mine not in line and "ps -eo" not in line]
    return {"loadavg": os.getloadavg(), "cpus": os.cpu_count(), "busiest": busy[:5]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to run (default 1 2)")
    p.add_argument("--style", default="zombie")
    p.add_argument("--steps", type=int, default=4, help="stylization steps (paid once, by the driver)")
    p.add_argument("--inversion-steps", type=int, default=10)
    p.add_argument("--mesh-resolution", type=int, default=64)
    p.add_argument("--texture-size", type=int, default=512)
    p.add_argument("--object-store-mb", type=int, default=200)
    p.add_argument("--skip-local", action="store_true", help="no local baseline run")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args(argv)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1700000000")  # same provenance date in every run: comparable bytes
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # for Ray's worker processes
    torch.set_num_threads(1)

    from engine.app.batch import BatchSettings, collect_inputs, load_engine_models, run_batch
    from engine.app.farm import FarmConfig, engine_worker_models, farm_session, run_farm_batch
    from engine.world import ScanExport, export_scan, sample_identities

    quiet = lambda *a, **k: None  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="bench_farm_"))
    ids = sample_identities(args.scans, torch.Generator().manual_seed(args.seed))
    for i in range(args.scans):
        export_scan(ids[i : i + 1], work / "scans" / f"scan{i:02d}", ScanExport(resolution=64, formats=(".ply",)))
    inputs = collect_inputs(work / "scans")
    settings = BatchSettings(style_preset=args.style, steps=args.steps, inversion_steps=args.inversion_steps,
                             mesh_resolution=args.mesh_resolution, texture_size=args.texture_size, framing="heuristic",
                             device="cpu", cache_dir=str(work / "cache")).validate()
    load_before = machine_load()

    start = time.perf_counter()
    models = load_engine_models(settings, None, quiet)  # stylizes once (cached for every run below)
    t_build = time.perf_counter() - start
    runs: list[dict] = []

    if not args.skip_local:
        start, jiffies = time.perf_counter(), cpu_jiffies()
        report = run_batch(inputs, work / "local", models, consent=True, on_event=quiet)
        wall = time.perf_counter() - start
        runs.append({"config": "local (1 thread)", "workers": 1, "wall_s": wall, "idle": idle_share(jiffies, cpu_jiffies()),
                     "item_s": [round(i.seconds, 2) for i in report.items], "out": str(work / "local")})

    for n in args.workers:
        farm = FarmConfig(local_cpus=n, cpus_per_item=1, object_store_mb=args.object_store_mb)
        first_done: list[float] = []
        start, jiffies = time.perf_counter(), cpu_jiffies()
        with farm_session(farm) as ray:
            t_start = time.perf_counter() - start
            recipe = engine_worker_models(ray, settings, models, farm)
            on_event = lambda event, **f: first_done.append(time.perf_counter()) if event == "item" and f.get("status") == "done" else None  # noqa: E731
            batch_start = time.perf_counter()
            report = run_farm_batch(inputs, work / f"ray{n}", models, recipe, consent=True, farm=farm, on_event=on_event)
            wall = time.perf_counter() - start
        assert report.counts()["done"] == len(inputs), report.to_dict()
        runs.append({"config": f"ray, {n} worker{'s' if n > 1 else ''}", "workers": n, "wall_s": wall, "start_s": t_start,
                     "idle": idle_share(jiffies, cpu_jiffies()),
                     "first_item_s": (first_done[0] - batch_start) if first_done else None,
                     "item_s": [round(i.seconds, 2) for i in report.items], "out": str(work / f"ray{n}")})

    reference = runs[0]["out"]
    for run in runs:
        run["glb_identical_to_first"] = all((Path(run["out"]) / p.name).read_bytes() == p.read_bytes()
                                            for p in Path(reference).glob("*.glb"))
    t_item = statistics.median(s for run in runs for s in run["item_s"])
    ray_runs = [r for r in runs if "start_s" in r]
    t_start = statistics.median(r["start_s"] for r in ray_runs) if ray_runs else 0.0
    # T_load: what the first item took beyond one item's own work (worker start, imports, model load)
    t_load = statistics.median(r["first_item_s"] - t_item for r in ray_runs if r["first_item_s"]) if ray_runs else 0.0
    base = next((r["wall_s"] for r in runs if r["workers"] == 1 and "start_s" in r), runs[0]["wall_s"])
    print(f"\n{len(inputs)} items; T_build (stylized generator, once, in the driver) = {t_build:.1f} s; "
          f"median t_item = {t_item:.1f} s; T_start (Ray) = {t_start:.1f} s; T_load (worker first item) = {t_load:.1f} s")
    print("| configuration | wall (s) | speed-up vs 1 Ray worker | model: T_start + T_load + ceil(items/N)·t_item (s) "
          "| item times (s) | machine idle | glb identical |")
    print("|---|---:|---:|---:|---|---:|---|")
    for run in runs:
        n = run["workers"]
        model = (t_start + t_load if "start_s" in run else 0.0) + math.ceil(len(inputs) / n) * t_item
        run["model_s"] = model
        idle = "?" if run["idle"] is None else f"{run['idle'] * 100:.0f} %"
        items = ", ".join(f"{s:.0f}" for s in run["item_s"])
        print(f"| {run['config']} | {run['wall_s']:.1f} | {base / run['wall_s']:.2f}× | {model:.1f} | {items} | {idle} "
              f"| {run['glb_identical_to_first']} |")
    load_after = machine_load()
    print(f"\nmachine: {load_before['cpus']} CPUs; load average before {load_before['loadavg']}, after {load_after['loadavg']}")
    for line in load_before["busiest"]:
        print(f"  busy before: {line}")
    for line in load_after["busiest"]:
        print(f"  busy after:  {line}")
    if args.json:
        Path(args.json).write_text(json.dumps({"items": len(inputs), "t_build_s": t_build, "t_item_s": t_item, "t_start_s": t_start,
                                               "t_load_s": t_load, "runs": runs, "load_before": load_before,
                                               "load_after": load_after}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
