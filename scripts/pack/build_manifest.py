"""Write the embedded pack's ``manifest.json``: every file's size and SHA-256, plus the training reports.

    .venv/bin/python scripts/pack/build_manifest.py [--pack engine/pack/embedded-v1] [--max-mb 40]

Run it after any training script changed a file of the pack (``scripts/pack/build_pack.sh`` does). It
refuses a pack over the size budget, and prints each model's size so the budget is visible.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine.pack import DEFAULT_PACK, load_manifest, verify_pack, write_manifest  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", default=str(DEFAULT_PACK))
    parser.add_argument("--max-mb", type=float, default=40.0)
    parser.add_argument("--notes", default="Trained on the procedural head world by scripts/pack/ (see reports).")
    args = parser.parse_args()
    root = Path(args.pack)
    path = write_manifest(root, notes=args.notes)
    manifest = load_manifest(root)
    sizes: dict[str, int] = defaultdict(int)
    for name, entry in manifest["files"].items():
        sizes[name.split("/")[0] if "/" in name else name] += entry["bytes"]
    for part, size in sorted(sizes.items()):
        print(f"{part:14s} {size / 2**20:7.2f} MiB")
    total_mb = manifest["total_bytes"] / 2**20
    print(f"{'total':14s} {total_mb:7.2f} MiB  ({len(manifest['files'])} files) → {path}")
    problems = verify_pack(root)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    if total_mb > args.max_mb:
        print(f"error: pack is {total_mb:.1f} MiB, over the {args.max_mb} MiB budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
