"""Step 1: where the kernel library may lie, in search order.

1. ``ORCHARD_DYLIB_PATH`` (a file), then ``orchard.library`` from config.yaml (passed in by the caller);
2. ``ORCHARD_REPO_PATH`` (an Orchard checkout elsewhere), both layouts;
3. the repository root's ``metal-backend/`` submodule, both layouts;
4. the local build folder that ``orchard-bridge build`` (``invoke orchard.build``) writes.

Every candidate is kept with its outcome so that the report can show what was tried.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device_backend.paths import resolve_path

LIBRARY_NAME = "libflash_attn.dylib"
# Relative to an Orchard checkout: the later layout (built locally with CMake from experimental/orchard_ops/) first,
# then the prebuilt library of the pinned commit.
LAYOUTS = (
    f"experimental/kernel_lib/flashattn/{LIBRARY_NAME}",
    f"kernel_lib/flashattn/{LIBRARY_NAME}",
)
SUBMODULE_DIR = "metal-backend"
BUILD_DIR = ".cache/orchard-build"


@dataclass
class Candidate:
    """One place the library was looked for, and what came of it."""

    source: str  # where the path came from: ORCHARD_DYLIB_PATH, config orchard.library, metal-backend, ...
    path: str
    outcome: str = "pending"  # missing | refused | load-failed | unknown-abi | loaded | not-tried
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        text = f"[{self.outcome}] {self.path} ({self.source})"
        return f"{text}: {self.detail}" if self.detail else text


def build_dir(repo_root: str | os.PathLike[str]) -> Path:
    """The local build folder: ``<repo root>/.cache/orchard-build``."""
    return Path(repo_root) / BUILD_DIR


def submodule_dir(repo_root: str | os.PathLike[str], metal_backend: str | os.PathLike[str] | None = None) -> Path:
    """The Orchard submodule folder: ``metal_backend`` (config ``repo.metal_backend``) under the repository root."""
    return resolve_path(repo_root, metal_backend or SUBMODULE_DIR)


def candidate_paths(
    repo_root: str | os.PathLike[str] | None,
    *,
    library: str | os.PathLike[str] | None = None,
    metal_backend: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Candidate]:
    """Every place to look, in order, without touching the file system.

    ``library``: config ``orchard.library``; ``metal_backend``: config ``repo.metal_backend`` (default
    ``metal-backend``); both relative to ``repo_root`` unless absolute.
    """
    env = os.environ if env is None else env
    found: list[Candidate] = []

    def add(source: str, path: Path) -> None:
        if all(c.path != str(path) for c in found):
            found.append(Candidate(source, str(path)))

    if env.get("ORCHARD_DYLIB_PATH"):
        add("ORCHARD_DYLIB_PATH", Path(env["ORCHARD_DYLIB_PATH"]).expanduser())
    if library:
        path = resolve_path(repo_root, library) if repo_root is not None else Path(library).expanduser()
        add("config orchard.library", path)
    if env.get("ORCHARD_REPO_PATH"):
        checkout = Path(env["ORCHARD_REPO_PATH"]).expanduser()
        for layout in LAYOUTS:
            add("ORCHARD_REPO_PATH", checkout / layout)
    if repo_root is not None:
        submodule = submodule_dir(repo_root, metal_backend)
        for layout in LAYOUTS:
            add(f"{metal_backend or SUBMODULE_DIR}/ submodule", submodule / layout)
        add("local build (orchard-bridge build)", build_dir(repo_root) / LIBRARY_NAME)
    return found
