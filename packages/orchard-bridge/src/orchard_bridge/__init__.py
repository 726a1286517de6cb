"""Find, load, identify and numerically prove the Apple-Metal-Orchard FlashAttention kernels; SDPA otherwise.

``enable()`` decides once per process; ``attention()`` dispatches per call; ``register_transformers()`` makes the
``attn_implementation="orchard"`` name available to transformers models.

Names load on first use (PEP 562, as in ``device_backend``), so ``import orchard_bridge`` (and
``orchard-bridge --help``) does not import torch.
"""

from __future__ import annotations

from orchard_bridge._version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing

_LAZY = {
    "Abi": "abi",
    "identify": "abi",
    "BridgeStatus": "bridge",
    "LibraryInfo": "bridge",
    "OrchardError": "bridge",
    "enable": "bridge",
    "ConformanceResult": "conformance",
    "FileCheck": "fileinfo",
    "Host": "fileinfo",
    "check_file": "fileinfo",
    "register_transformers": "hf",
    "Candidate": "locate",
    "candidate_paths": "locate",
    "attention": "ops",
    "call_counts": "ops",
    "reset_call_counts": "ops",
}

__all__ = [
    "Abi",
    "BridgeStatus",
    "Candidate",
    "ConformanceResult",
    "FileCheck",
    "Host",
    "LibraryInfo",
    "OrchardError",
    "__version__",
    "attention",
    "call_counts",
    "candidate_paths",
    "check_file",
    "enable",
    "identify",
    "register_transformers",
    "reset_call_counts",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'orchard_bridge' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"orchard_bridge.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs; not executed
    from orchard_bridge.abi import Abi, identify
    from orchard_bridge.bridge import BridgeStatus, LibraryInfo, OrchardError, enable
    from orchard_bridge.conformance import ConformanceResult
    from orchard_bridge.fileinfo import FileCheck, Host, check_file
    from orchard_bridge.hf import register_transformers
    from orchard_bridge.locate import Candidate, candidate_paths
    from orchard_bridge.ops import attention, call_counts, reset_call_counts
