#!/usr/bin/env bash
# One-time setup on a fresh machine with Python 3.10+ and git:
# installs the pinned task runners (invoke, nox) for this user, then runs `invoke bootstrap`.
# Usage: ./INSTALL.sh [extra bootstrap flags, e.g. --python python3.11 --dry-run]
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
INVOKE_VERSION="3.0.3"
NOX_VERSION="2026.10.20"

command -v git >/dev/null || { echo "INSTALL.sh: git is required; install it first" >&2; exit 1; }
command -v "$PYTHON" >/dev/null || { echo "INSTALL.sh: $PYTHON not found; set PYTHON=/path/to/python3" >&2; exit 1; }

if ! "$PYTHON" -m invoke --version 2>/dev/null | grep -q "$INVOKE_VERSION" \
   || ! "$PYTHON" -m nox --version 2>&1 | grep -q "$NOX_VERSION"; then
  "$PYTHON" -m pip install --user -q "invoke==$INVOKE_VERSION" "nox==$NOX_VERSION" 2>/dev/null \
    || "$PYTHON" -m pip install -q "invoke==$INVOKE_VERSION" "nox==$NOX_VERSION"
fi
exec "$PYTHON" -m invoke bootstrap --repo . "$@"
