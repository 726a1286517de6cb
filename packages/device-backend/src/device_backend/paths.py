"""Where the repository root is, and how relative paths resolve against it.

The root is, in order: an explicit value (the ``--repo`` flag), the ``REPO_ROOT``
environment variable, or the nearest parent folder holding both ``config.yaml``
and ``.gitmodules``. Nothing here names a machine's absolute path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

MARKERS = ("config.yaml", ".gitmodules")


class RepoRootError(RuntimeError):
    """The repository root could not be determined or does not exist."""


def find_repo_root(
    explicit: str | os.PathLike[str] | None = None,
    *,
    start: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Return the repository root: ``explicit``, else ``$REPO_ROOT``, else discovery from ``start``."""
    env = os.environ if env is None else env
    for source, value in (("--repo", explicit), ("REPO_ROOT", env.get("REPO_ROOT"))):
        if value:
            root = Path(value).expanduser().resolve()
            if not root.is_dir():
                raise RepoRootError(f"{source}={value!s}: not a folder; pass the repository checkout's path")
            return root
    here = Path(start or Path.cwd()).expanduser().resolve()
    for folder in (here, *here.parents):
        if all((folder / marker).exists() for marker in MARKERS):
            return folder
    raise RepoRootError(
        f"no repository root found above {here} (looked for a folder with {' and '.join(MARKERS)}); "
        "pass --repo PATH or set REPO_ROOT"
    )


def resolve_path(root: str | os.PathLike[str], value: str | os.PathLike[str]) -> Path:
    """Resolve a config path: ``~`` expanded, absolute kept, relative taken from ``root``."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(root) / path
