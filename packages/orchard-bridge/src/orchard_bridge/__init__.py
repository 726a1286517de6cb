"""Find, load, identify and numerically prove the Apple-Metal-Orchard FlashAttention kernels; SDPA otherwise.

``enable()`` decides once per process; ``attention()`` dispatches per call; ``register_transformers()`` makes the
``attn_implementation="orchard"`` name available to transformers models.
"""

from orchard_bridge._version import __version__
from orchard_bridge.abi import Abi, identify
from orchard_bridge.bridge import BridgeStatus, LibraryInfo, OrchardError, enable
from orchard_bridge.conformance import ConformanceResult
from orchard_bridge.fileinfo import FileCheck, Host, check_file
from orchard_bridge.hf import register_transformers
from orchard_bridge.locate import Candidate, candidate_paths
from orchard_bridge.ops import attention, call_counts, reset_call_counts

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
