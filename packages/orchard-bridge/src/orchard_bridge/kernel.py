"""The loaded ops behind one calling convention, whatever the ABI.

``forward(q, k, v, scale, causal) -> (out, dropout_mask)`` and ``backward(grad_out, q, k, v, dropout_mask, scale,
causal) -> (dq, dk, dv)``, always at dropout 0: the upstream kernel applies dropout to the attention *output*, not to
the probabilities as SDPA does, so calls with dropout go to SDPA instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from orchard_bridge.abi import Abi
from orchard_bridge.load import NAMESPACE


@dataclass
class Kernel:
    abi: Abi

    def _ops(self):
        return getattr(torch.ops, NAMESPACE)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool):
        ops = self._ops()
        if self.abi.name == "v1":
            return ops._flash_attn_fwd(q, k, v, float(scale), bool(causal)), q.new_empty(0)
        out, mask = ops._flash_attn_fwd(q, k, v, float(scale), 0.0, bool(causal))
        return out, mask

    def backward(self, grad_out, q, k, v, mask, scale: float, causal: bool):
        if not self.abi.has_backward:
            raise RuntimeError(
                f"the loaded Orchard library (ABI {self.abi.name}) has no backward op; "
                "orchard_bridge routes calls that need gradients to SDPA, so this is a bug in the caller"
            )
        return self._ops()._flash_attn_bwd_dropout(grad_out, q, k, v, mask, float(scale), 0.0, bool(causal))
