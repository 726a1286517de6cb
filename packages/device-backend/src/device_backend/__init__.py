"""Device detection for the StarCoder trainer (torch imported lazily, never at import time)."""

from device_backend._version import __version__
from device_backend.paths import RepoRootError, find_repo_root, resolve_path

__all__ = ["RepoRootError", "__version__", "find_repo_root", "resolve_path"]
