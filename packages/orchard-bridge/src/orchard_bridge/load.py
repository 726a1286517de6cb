"""Step 3: load a checked library with ``torch.ops.load_library``, keeping the loader's own words."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

NAMESPACE = "flash_attn_mps"
_REBUILD = "built against another torch/Python; rebuild with `invoke orchard.build`"

# Libraries this process has loaded, by resolved path -> sha256. A library stays loaded until the process ends, and
# two libraries cannot both register the flash_attn_mps namespace in one process.
_loaded: dict[str, str] = {}


@dataclass
class LoadResult:
    ok: bool
    message: str
    loader_error: str | None = None


def registered_schemas(namespace: str = NAMESPACE) -> list[str]:
    """Schemas of every op registered in ``namespace`` in this process, as text."""
    prefix = f"{namespace}::"
    return sorted(str(s) for s in torch._C._jit_get_all_schemas() if s.name.startswith(prefix))


def explain_load_error(text: str) -> str:
    """Turn a loader error into a message that says what is wrong and what to do."""
    if re.search(r"undefined symbol|Symbol not found|symbol lookup error", text):
        return f"{_REBUILD} (loader: {text.strip()})"
    if "Only a single TORCH_LIBRARY can be used to register the namespace" in text:
        return (
            f"another library already registered the {NAMESPACE} ops in this process; a library cannot be unloaded, "
            f"so restart the process to load this one (loader: {text.strip()})"
        )
    if re.search(r"wrong ELF class|mach-o file, but is an incompatible architecture|incompatible architecture", text):
        return f"built for another architecture (loader: {text.strip()})"
    return f"the loader refused it: {text.strip()}"


def load_library(path: str | os.PathLike[str], sha256: str) -> LoadResult:
    """Load ``path`` into this process (once); errors are caught and explained, never raised."""
    resolved = os.path.realpath(path)
    if _loaded.get(resolved) == sha256:
        return LoadResult(True, "already loaded in this process")
    if resolved in _loaded:
        return LoadResult(False, "a different version of this file is already loaded in this process; restart it")
    if _loaded:
        other = next(iter(_loaded))
        return LoadResult(False, f"another Orchard library is already loaded in this process ({other}); restart it")
    try:
        torch.ops.load_library(resolved)
    except (OSError, RuntimeError) as exc:
        # torch wraps the dynamic loader's error ("Could not load this library: PATH"); its words are in the cause.
        text = f"{exc}: {exc.__cause__}" if exc.__cause__ is not None else str(exc)
        return LoadResult(False, explain_load_error(text), loader_error=f"{type(exc).__name__}: {text}")
    _loaded[resolved] = sha256
    return LoadResult(True, "loaded")
