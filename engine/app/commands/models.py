"""``python -m engine models download KEY --out MODELS`` / ``models list --out MODELS``: the model manager.

Downloads happen only here, when asked (see :mod:`engine.app.models`). KEY: sd15, realistic-vision-v5.1,
controlnet-canny, controlnet-depth, lpips-alex, depth-anything-v2-base; ``all`` (Stable Diffusion 1.5 and both
ControlNets) or ``paper`` (what the paper's recipe uses). ``HF_ENDPOINT`` (or ``--endpoint``) points at a
mirror. ``list`` shows each model's role, state and licence.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..models import DEFAULT_KEYS, MODEL_SPECS, PAPER_KEYS, download_model, read_manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("download", "list"))
    p.add_argument("key", nargs="?", choices=sorted(MODEL_SPECS) + ["all", "paper"],
                   help="which model (download); all = Stable Diffusion 1.5 and both ControlNets; paper = what the "
                        "paper's recipe uses (Realistic Vision V5.1, both ControlNets, LPIPS-Alex, Depth Anything V2)")
    p.add_argument("--out", required=True, help="the models folder (one sub-folder per model, models.json)")
    p.add_argument("--revision", help="branch, tag or commit (default: the recorded commit, else main)")
    p.add_argument("--update", action="store_true", help="resolve main again instead of the recorded commit")
    p.add_argument("--repo", help="another repository id with the same layout (a fine-tune, a mirror)")
    p.add_argument("--endpoint", help="hub endpoint (default: HF_ENDPOINT or huggingface.co)")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        manifest = read_manifest(Path(args.out))
        for key, spec in MODEL_SPECS.items():
            entry = manifest.get(key)
            state = f"{entry['repo_id']}@{entry['revision'][:12]} ({entry['downloaded']})" if entry else "not downloaded"
            print(json.dumps({"key": key, "role": spec.role, "repo": spec.repo_id, "state": state,
                              "licence": spec.licence, "attribution": spec.attribution}))
        return 0
    if not args.key:
        from ...errors import ConfigError

        raise ConfigError(f"models download needs a model: one of {', '.join(MODEL_SPECS)}")
    keys = list({"all": DEFAULT_KEYS, "paper": PAPER_KEYS}.get(args.key, (args.key,)))
    if len(keys) > 1 and (args.repo or args.revision):
        from ...errors import ConfigError

        raise ConfigError("--repo and --revision name one repository; download the models one by one")
    for key in keys:
        download_model(key, args.out, revision=args.revision, update=args.update, repo_id=args.repo,
                       endpoint=args.endpoint)
    return 0
