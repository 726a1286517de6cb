#!/usr/bin/env bash
# Run the trainer from this checkout's .venv with REPO_ROOT exported.
# Usage: ./run_starcoder.sh [starcoder-train args], e.g. ./run_starcoder.sh --set train.max_steps=50
set -euo pipefail
REPO_ROOT="${REPO_ROOT:-$(cd "$(dirname "$0")" && pwd)}"
export REPO_ROOT
PY="$REPO_ROOT/.venv/bin/python"
[ -x "$PY" ] || { echo "run_starcoder.sh: $PY missing; run ./INSTALL.sh (or invoke bootstrap --repo .) first" >&2; exit 1; }
exec "$PY" -m starcoder_trainer "$@"
