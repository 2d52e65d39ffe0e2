"""Build ``engine/heads/face_template.json``: the procedural world's mean face as 51 3-D landmarks.

Face framing (:mod:`engine.heads.face_framing`) maps the landmarks it finds on a mesh onto this template, so
the template must be measured by the same pipeline, in the generator's frame: each of ``--heads`` world
identities (their own seed stream, never the framing benchmark's) is meshed in world coordinates and seen by
the scan rasteriser from the framing's refinement views (front and ±10°); dlib's 68-point predictor places the
landmarks, the inner 51 are lifted to 3-D with each view's depth and averaged over the views — exactly what the
framing's final pass does — and each landmark's position is averaged over the heads it was found on.

    python scripts/pack/build_face_template.py            # 32 heads, about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable as a plain script from anywhere

from engine.heads.face_framing import INNER_LANDMARKS, TEMPLATE_PATH, FaceFramingConfig, face_landmarks_3d  # noqa: E402
from engine.io.atomic import write_text  # noqa: E402
from engine.world.identity import sample_identities  # noqa: E402
from engine.world.scan import head_mesh  # noqa: E402

TEMPLATE_SEED = 4242


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--seed", type=int, default=TEMPLATE_SEED)
    parser.add_argument("--out", type=Path, default=TEMPLATE_PATH)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when another job shares the cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    identities = sample_identities(args.heads, torch.Generator().manual_seed(args.seed))
    sums, counts, found = np.zeros((68, 3)), np.zeros(68), 0
    for k in range(args.heads):
        config = FaceFramingConfig()
        landmarks = face_landmarks_3d(head_mesh(identities[k : k + 1]), config, config.refine_yaws_degrees, average=True)
        print(f"head {k}: {0 if landmarks is None else len(landmarks.points)} landmarks, {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        if landmarks is None:
            print(f"head {k}: no face found", file=sys.stderr)
            continue
        found += 1
        sums[landmarks.indices] += landmarks.points
        counts[landmarks.indices] += 1
    indices = [i for i in INNER_LANDMARKS if counts[i] >= max(1, found // 2)]
    data = {
        "about": "mean 3-D positions (generator/world frame) of dlib's 68-point iBUG landmarks 17-67 on procedural "
                 "world heads, measured by engine.heads.face_framing; built by scripts/pack/build_face_template.py",
        "heads": args.heads,
        "heads_with_a_face": found,
        "seed": args.seed,
        "indices": indices,
        "points": [[round(float(v), 6) for v in sums[i] / counts[i]] for i in indices],
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_text(args.out, json.dumps(data, indent=1) + "\n")
    print(f"{args.out}: {len(indices)} landmarks from {found} of {args.heads} heads in {data['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
