"""Step 7: the ``orchard`` attention implementation for transformers (imported lazily, only here).

``register_transformers()`` adds ``"orchard"`` to transformers' ``AttentionInterface`` (and its mask interface, with
the SDPA mask builder, so padding masks are built exactly as for ``"sdpa"``). Per call, the function uses the kernel
when ``orchard_bridge.attention`` may (no mask, no softcap/position bias, a supported shape) and otherwise hands the
call, unchanged, to transformers' own ``sdpa_attention_forward``. Nothing in torch or transformers is patched.
"""

from __future__ import annotations

from typing import Any

import torch

from orchard_bridge import ops

NAME = "orchard"
# Keyword arguments that change the attention's semantics beyond what the kernel does.
_SEMANTIC_KWARGS = ("softcap", "position_bias", "s_aux", "sinks")


def orchard_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Same signature and result as ``transformers.integrations.sdpa_attention.sdpa_attention_forward``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_length = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = bool(q_length > 1 and attention_mask is None and causal)
    if attention_mask is not None:
        reason = "attention mask"
    elif any(kwargs.get(name) is not None for name in _SEMANTIC_KWARGS) or kwargs.get("output_attentions"):
        reason = "softcap/position bias/sinks/output_attentions"
    else:
        reason = ops.unsupported_reason(query, key, value, causal=causal, dropout_p=dropout)
    if reason is not None:
        ops.count_fallback(reason)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    out = ops.attention(query, key, value, causal=causal, dropout_p=dropout, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register_transformers() -> str:
    """Register ``"orchard"`` with transformers (idempotent); returns the name to pass as ``attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    if AttentionInterface._global_mapping.get(NAME) is not orchard_attention_forward:
        AttentionInterface.register(NAME, orchard_attention_forward)
    if ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(NAME) is not sdpa_mask:
        AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
