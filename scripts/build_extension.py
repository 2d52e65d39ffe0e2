#!/usr/bin/env python3
"""Build the installable extension zip (``dist/head_stylizer-<version>.zip``) with Blender's own tool.

Blender ships its extension command line (``blender_ext.py``: ``validate``, ``build``) inside its bundled
scripts; the ``bpy`` wheel carries the same file, so the zip is built exactly as ``blender --command
extension build`` would, honouring ``[build] paths_exclude_pattern`` of ``blender_manifest.toml``. The zip
holds the extension (``__init__.py``, ``operators/``, ``panels/``, ``bridge/``) and the ``engine/`` package with the
embedded model pack, which the extension runs out of process.

Usage::

    .venv/bin/python scripts/build_extension.py                 # validate + build into dist/
    .venv/bin/python scripts/build_extension.py --validate-only
    .venv/bin/python scripts/build_extension.py --blender /path/to/blender   # use a Blender binary instead
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACK_FOLDER = "engine/pack/embedded-v1"


def find_extension_cli() -> Path:
    """``blender_ext.py`` inside the installed ``bpy`` module (``bpy/<version>/scripts/addons_core/…``)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.origin:
        raise SystemExit("error: the bpy module is not installed (pip install -r requirements-dev.txt), "
                         "or pass --blender /path/to/blender")
    candidates = sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not candidates:
        raise SystemExit(f"error: no blender_ext.py inside {Path(spec.origin).parent}")
    return candidates[-1]


def extension_command(blender: str | None) -> list[str]:
    """Command prefix that takes ``validate``/``build`` and their arguments."""
    if blender:
        return [blender, "--factory-startup", "--command", "extension"]
    return [sys.executable, str(find_extension_cli())]


def run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:3])} … failed with status {done.returncode}")


def check_zip(path: Path) -> dict[str, int]:
    """Count what went in, and make sure the parts the extension cannot work without are there."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    required = ["blender_manifest.toml", "__init__.py", "operators/__init__.py", "panels/__init__.py",
                "bridge/__init__.py", "engine/__main__.py"]
    missing = [n for n in required if n not in names]
    if missing:
        raise SystemExit(f"error: {path} lacks {missing}")
    leaked = [n for n in names if n.startswith(("tests/", ".venv/", "bench/", "tools/")) or "__pycache__" in n]
    if leaked:
        raise SystemExit(f"error: {path} contains files that must not ship: {leaked[:5]}")
    return {"files": len(names), "pack_files": sum(n.startswith(PACK_FOLDER + "/") for n in names)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=str(REPO_ROOT / "dist"))
    parser.add_argument("--blender", help="a Blender binary to use instead of the bpy module's copy of the CLI")
    parser.add_argument("--validate-only", action="store_true")
    args = parser.parse_args(argv)

    cli = extension_command(args.blender)
    run(cli + ["validate", str(REPO_ROOT)])
    if args.validate_only:
        return 0
    output = Path(args.output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    run(cli + ["build", "--source-dir", str(REPO_ROOT), "--output-dir", str(output)])
    zips = sorted(output.glob("head_stylizer-*.zip"), key=lambda p: p.stat().st_mtime)
    if not zips:
        raise SystemExit(f"error: no zip was written to {output}")
    counts = check_zip(zips[-1])
    if not (REPO_ROOT / PACK_FOLDER).is_dir():
        print(f"warning: {PACK_FOLDER} is missing: the zip has no embedded model pack", file=sys.stderr)
    size_mb = zips[-1].stat().st_size / 2**20
    print(f"built {zips[-1]} ({size_mb:.1f} MiB, {counts['files']} files, {counts['pack_files']} pack files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
