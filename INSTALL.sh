#!/usr/bin/env bash
# One-time setup on a fresh machine with Python 3.10+ and git:
# installs the pinned task runners (invoke, nox), then runs `invoke bootstrap --repo .`.
# Usage: ./INSTALL.sh [bootstrap flags, e.g. --python python3.11 --dry-run]
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
PINS=("invoke==3.0.3" "nox==2026.10.20")

command -v git >/dev/null || { echo "INSTALL.sh: git is required; install it first" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || { echo "INSTALL.sh: $PYTHON not found; set PYTHON=/path/to/python3" >&2; exit 1; }

have_pins() {
  "$1" -m invoke --version 2>/dev/null | grep -q "3.0.3" && "$1" -m nox --version 2>&1 | grep -q "2026.10.20"
}
if ! have_pins "$PYTHON"; then
  if ! "$PYTHON" -m pip install --user -q "${PINS[@]}" 2>/dev/null; then
    # an externally managed Python (Homebrew, Debian) refuses --user installs: use the project venv
    echo "INSTALL.sh: pip --user was refused; installing invoke and nox into .venv (activate it: source .venv/bin/activate)"
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q "${PINS[@]}"
    PYTHON=.venv/bin/python
  fi
fi
exec "$PYTHON" -m invoke bootstrap --repo . "$@"
