"""Step 4: tell the op ABI apart from the registered schemas, never by assuming.

- v1: ``_flash_attn_fwd(Tensor q, Tensor k, Tensor v, float scale, bool causal) -> Tensor`` (forward only);
- v2: ``_flash_attn_fwd(Tensor q, Tensor k, Tensor v, float scale, float dropout_p, bool causal) -> (Tensor, Tensor)``
  and ``_flash_attn_bwd_dropout(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor dropout_mask, float scale,
  float dropout_p, bool causal) -> (Tensor, Tensor, Tensor)``.

Schemas are compared by argument and return types (names may differ between builds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from orchard_bridge.load import NAMESPACE, registered_schemas

FWD = f"{NAMESPACE}::_flash_attn_fwd"
BWD_DROPOUT = f"{NAMESPACE}::_flash_attn_bwd_dropout"

_V1_FWD = (("Tensor", "Tensor", "Tensor", "float", "bool"), ("Tensor",))
_V2_FWD = (("Tensor", "Tensor", "Tensor", "float", "float", "bool"), ("Tensor", "Tensor"))
_V2_BWD = (("Tensor",) * 5 + ("float", "float", "bool"), ("Tensor",) * 3)


@dataclass
class Abi:
    """The identified op ABI: ``v1``, ``v2`` or ``unknown``; ``has_backward`` when a usable backward op exists."""

    name: str
    has_backward: bool
    schemas: list[str] = field(default_factory=list)
    detail: str = ""

    @property
    def known(self) -> bool:
        return self.name in ("v1", "v2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _signature(schema_text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    schema = torch._C.parse_schema(schema_text)
    return tuple(str(a.type) for a in schema.arguments), tuple(str(r.type) for r in schema.returns)


def _find(schemas: list[str], name: str) -> list[str]:
    return [s for s in schemas if s.split("(", 1)[0] in (name, *(f"{name}.{o}" for o in ("default",)))]


def identify(schemas: list[str] | None = None) -> Abi:
    """Identify the ABI from ``schemas`` (default: what is registered in the ``flash_attn_mps`` namespace now)."""
    schemas = registered_schemas() if schemas is None else sorted(schemas)
    if not schemas:
        return Abi("unknown", False, [], f"the library registered no ops in the {NAMESPACE} namespace")
    fwd = _find(schemas, FWD)
    listing = "; ".join(schemas)
    if len(fwd) != 1:
        return Abi("unknown", False, schemas, f"no single {FWD} op; registered: {listing}")
    fwd_sig = _signature(fwd[0])
    if fwd_sig == _V1_FWD:
        return Abi("v1", False, schemas, "forward only (no backward op)")
    if fwd_sig == _V2_FWD:
        bwd = _find(schemas, BWD_DROPOUT)
        if len(bwd) == 1 and _signature(bwd[0]) == _V2_BWD:
            return Abi("v2", True, schemas, "forward with dropout mask + backward")
        why = f"no {BWD_DROPOUT} op" if not bwd else f"unexpected backward schema {bwd[0]}"
        return Abi("v2", False, schemas, f"v2 forward but {why}: forward only")
    return Abi("unknown", False, schemas, f"unknown schema: {fwd[0]}")
