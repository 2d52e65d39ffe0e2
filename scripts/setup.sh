#!/usr/bin/env bash
# Create .venv with the pinned engine + test requirements, and the pinned Khronos glTF validator (npm) that
# the Blender export tests use. Idempotent; reaches PyPI and the npm registry only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

# glTF validator: npm ci from the committed lock file, skipped when the pinned version is already there.
VALIDATOR=tools/gltf-validator
if command -v npm >/dev/null 2>&1; then
  if ! grep -qs '"version": "2.0.0-dev.3.10"' "$VALIDATOR/node_modules/gltf-validator/package.json"; then
    (cd "$VALIDATOR" && npm ci --no-audit --no-fund --loglevel=error)
  fi
else
  echo "setup.sh: npm not found; the glTF validator test will be skipped (apt-get install nodejs npm)" >&2
fi
