"""A/B a change to a generator v2 training stage before adopting it: short runs from the same weights, scored alike.

Every arm starts from the latest checkpoint of ``--from`` (fresh Adam moments), runs ``--steps`` steps of
``--stage``'s recipe with the arm's overrides (``key=value`` of :class:`StageConfig`, parsed as JSON where they
parse, so ``mapping_lr_scale=100``, ``image_loss=l2`` or ``batch=8 steps=40`` for equal wall time) on the same
sample stream, and is scored by the training script's ``evaluate`` on the first ``--heads`` held-out heads × 6
views. The arms' checkpoints go to a scratch
folder (``--scratch``), never into the stage checkpoints. ::

    python bench/ab_generator_stage.py --from joint3 --stage joint3 --steps 150 \\
        --arm base --arm mapping mapping_lr_scale=100
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a plain script from anywhere

from scripts.pack.train_generator_v2 import (  # noqa: E402
    DEFAULT_WORK,
    STAGES,
    StageConfig,
    evaluate,
    finish_for_inference,
    load_stage_generator,
    run_stage,
)


def parse_overrides(pairs: list[str]) -> dict:
    known = {f.name for f in fields(StageConfig)}
    out = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        if key not in known:
            raise SystemExit(f"unknown StageConfig field {key!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


SCORES = ("psnr", "psnr_raw", "psnr_eyes", "psnr_mouth", "mask_iou")


def score_stage(stage: str, work: Path, heads: int) -> dict[str, float]:
    """The training script's held-out means of ``stage``'s latest checkpoint in ``work``."""
    mean = evaluate(finish_for_inference(load_stage_generator(stage, work)), heads=heads)["mean"]
    return {k: round(mean[k], 3) for k in SCORES}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="source", required=True, help="stage whose latest checkpoint every arm starts from")
    p.add_argument("--stage", required=True, choices=sorted(STAGES), help="recipe the arms vary")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--arm", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seed", type=int, default=None, help="sample stream (default: the recipe's)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--scratch", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    scratch = a.scratch or Path(tempfile.mkdtemp(prefix="ab_generator_"))
    source = a.work / a.source
    results = {"start": score_stage(a.source, a.work, a.heads)}
    print(json.dumps({"arm": "start", **results["start"]}), flush=True)
    for name, *pairs in a.arm:
        work = scratch / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / a.source).symlink_to(source.resolve(), target_is_directory=True)
        settings = {"steps": a.steps, "lr_final_fraction": 1.0, **parse_overrides(pairs)}  # an arm may set steps
        config = replace(STAGES[a.stage], name=f"ab_{name}", init=a.source, save_every=10**9, **settings)
        if a.seed is not None:
            config = replace(config, seed=a.seed)
        t0 = time.perf_counter()
        run_stage(config, work, minutes=10**6, threads=a.threads)
        seconds = time.perf_counter() - t0
        results[name] = {**score_stage(config.name, work, a.heads), "seconds": round(seconds, 1), "overrides": pairs}
        print(json.dumps({"arm": name, **results[name]}), flush=True)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
