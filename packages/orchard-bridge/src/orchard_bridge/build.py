"""``orchard-bridge build``: build the kernel library from the submodule sources with CMake (macOS on Apple Silicon).

The result goes to ``<repo root>/.cache/orchard-build/libflash_attn.dylib``, the last place the search looks.
Elsewhere it stops with a message saying why it cannot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from orchard_bridge.fileinfo import Host
from orchard_bridge.locate import LIBRARY_NAME, SUBMODULE_DIR, build_dir, submodule_dir

# Where the CMake project lies inside the submodule, most specific first.
SOURCE_DIRS = ("experimental/orchard_ops", "orchard_ops", ".")


class BuildError(RuntimeError):
    """The library cannot be built here; the message says why and what to do."""


def source_dir(repo_root: Path, metal_backend: str | os.PathLike[str] | None = None) -> Path:
    submodule = submodule_dir(repo_root, metal_backend)
    if not submodule.is_dir() or not any(submodule.iterdir()):
        raise BuildError(
            f"the Orchard submodule is not checked out ({submodule} is missing or empty); "
            f"run `git submodule update --init {metal_backend or SUBMODULE_DIR}` (needs access to github.com)"
        )
    for rel in SOURCE_DIRS:
        if (submodule / rel / "CMakeLists.txt").is_file():
            return submodule / rel
    raise BuildError(f"no CMakeLists.txt in {SUBMODULE_DIR}/ ({', '.join(SOURCE_DIRS)}); is the pinned commit checked out?")


def plan(
    repo_root: str | os.PathLike[str],
    *,
    metal_backend: str | os.PathLike[str] | None = None,
    host: Host | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> list[list[str]]:
    """The commands that build the library, after checking that this machine can; raises BuildError otherwise."""
    host = host or Host.current()
    if host.system != "Darwin":
        raise BuildError(f"the Metal kernels build only on macOS (this host is {host}); training here uses SDPA")
    if host.machine != "arm64":
        raise BuildError(f"the Metal kernels need Apple Silicon (this host is {host}); training here uses SDPA")
    root = Path(repo_root)
    src = source_dir(root, metal_backend)
    cmake = which("cmake")
    if cmake is None:
        raise BuildError("cmake not found on PATH; install it (`brew install cmake` or `pip install cmake`)")
    import torch.utils

    out = build_dir(root)
    tree = out / "cmake"
    return [
        [cmake, "-S", str(src), "-B", str(tree), "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}", f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out}"],
        [cmake, "--build", str(tree), "--config", "Release", "-j"],
    ]


def build(
    repo_root: str | os.PathLike[str],
    *,
    metal_backend: str | os.PathLike[str] | None = None,
    host: Host | None = None,
    which: Callable[[str], str | None] = shutil.which,
    run: Callable[[Sequence[str]], object] = lambda cmd: subprocess.run(cmd, check=True),
) -> Path:
    """Build and return the path of the library in the local build folder."""
    commands = plan(repo_root, metal_backend=metal_backend, host=host, which=which)
    for cmd in commands:
        print("+ " + " ".join(cmd), flush=True)
        try:
            run(cmd)
        except subprocess.CalledProcessError as exc:
            raise BuildError(f"`{' '.join(cmd)}` failed with exit status {exc.returncode}; see its output above") from exc
    out = build_dir(repo_root)
    target = out / LIBRARY_NAME
    if not target.is_file():
        built = sorted(p for p in out.rglob("*flash_attn*.dylib") if p != target)
        if not built:
            raise BuildError(f"CMake finished but left no *flash_attn*.dylib under {out}")
        shutil.copy2(built[0], target)
    return target
