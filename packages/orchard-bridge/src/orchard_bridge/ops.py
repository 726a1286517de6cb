"""Step 6: ``attention()``, the one entry point models call.

It sends a call to the proven kernel when the bridge enabled it for what the call needs (training when gradients are
required, else inference) and the call is one the kernel supports (its device, a floating dtype, head_dim a multiple
of 8, no dropout, no arbitrary mask); every other call goes to ``torch.nn.functional.scaled_dot_product_attention``.
The kernel path is one ``torch.library.custom_op`` (``orchard_bridge::flash_attention``) with a fake (meta) kernel and
an autograd formula, so autograd and ``torch.compile`` see one op. The SDPA path calls SDPA directly: it brings its
own autograd and adds no overhead.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from orchard_bridge.kernel import Kernel

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass
class _Active:
    kernel: Kernel | None = None
    device_type: str | None = None
    training: bool = False
    inference: bool = False


_active = _Active()
_counts: Counter[str] = Counter()
_fallback_reasons: Counter[str] = Counter()


def activate(kernel: Kernel | None, device_type: str | None, *, training: bool, inference: bool) -> None:
    """Set what ``attention()`` may use (called by ``enable()``; tests may call it with a loaded kernel)."""
    _active.kernel = kernel if (training or inference) else None
    _active.device_type = device_type
    _active.training = bool(training and kernel is not None and kernel.abi.has_backward)
    _active.inference = bool(inference and kernel is not None)


def deactivate() -> None:
    activate(None, None, training=False, inference=False)


def call_counts() -> dict[str, object]:
    """Kernel and fallback calls since the last reset, with the fallback reasons."""
    return {"kernel": _counts["kernel"], "fallback": _counts["fallback"], "fallback_reasons": dict(_fallback_reasons)}


def reset_call_counts() -> None:
    _counts.clear()
    _fallback_reasons.clear()


def count_fallback(reason: str) -> None:
    _counts["fallback"] += 1
    _fallback_reasons[reason] += 1


def unsupported_reason(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, dropout_p: float = 0.0
) -> str | None:
    """Why this call cannot use the kernel, or None when it can."""
    act = _active
    if act.kernel is None:
        return "no kernel enabled"
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if needs_grad and not act.training:
        return "kernel not proven for training"
    if q.device.type != act.device_type:
        return f"tensors on {q.device.type}, kernel on {act.device_type}"
    if q.dtype not in _SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtype {q.dtype}"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "not (batch, heads, seq, head_dim)"
    if q.shape[-1] % 8 or k.shape[-1] != q.shape[-1] or v.shape[-1] != q.shape[-1]:
        return "head_dim not a multiple of 8 (or differs between q, k, v)"
    if dropout_p > 0.0:
        return "dropout (the kernel drops the output, not the probabilities)"
    if causal and q.shape[-2] != k.shape[-2]:
        return "causal with query and key lengths that differ"
    if q.shape[1] % k.shape[1] or k.shape[1] != v.shape[1]:
        return "head counts of q, k, v do not divide"
    return None


# --- the kernel op --------------------------------------------------------------------------------------------------


@torch.library.custom_op("orchard_bridge::flash_attention", mutates_args=())
def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loaded kernel's forward: (out, dropout_mask). q, k, v: (batch, heads, seq, head_dim), same head count."""
    kernel = _require_kernel()
    out, mask = kernel.forward(q, k, v, scale, causal)
    return out, mask


@flash_attention.register_fake
def _flash_attention_fake(q, k, v, scale, causal):
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    kernel = _active.kernel
    # ABI v2 returns a dropout mask shaped like the output (upstream drops the output); ABI v1 returns none.
    mask = q.new_empty(0) if kernel is not None and kernel.abi.name == "v1" else torch.empty_like(out)
    return out, mask


def _setup_context(ctx, inputs, output):
    q, k, v, scale, causal = inputs
    _out, mask = output
    ctx.save_for_backward(q, k, v, mask)
    ctx.scale, ctx.causal = scale, causal
    ctx.mark_non_differentiable(mask)


@torch.library.custom_op("orchard_bridge::flash_attention_backward", mutates_args=())
def flash_attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
    causal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loaded kernel's backward: (dq, dk, dv). Its own op, so that traced backward graphs see it too."""
    dq, dk, dv = _require_kernel().backward(grad_out, q, k, v, mask, scale, causal)
    return dq, dk, dv


@flash_attention_backward.register_fake
def _flash_attention_backward_fake(grad_out, q, k, v, mask, scale, causal):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _backward(ctx, grad_out, _grad_mask):
    q, k, v, mask = ctx.saved_tensors
    dq, dk, dv = flash_attention_backward(grad_out.contiguous(), q, k, v, mask, ctx.scale, ctx.causal)
    return dq, dk, dv, None, None


flash_attention.register_autograd(_backward, setup_context=_setup_context)


def _require_kernel() -> Kernel:
    if _active.kernel is None:
        raise RuntimeError(
            "orchard_bridge::flash_attention called with no Orchard kernel enabled; "
            "call orchard_bridge.enable() first, or use orchard_bridge.attention(), which falls back to SDPA"
        )
    return _active.kernel


# --- the entry point ------------------------------------------------------------------------------------------------


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention over (batch, heads, seq, head_dim) tensors, on the kernel when it may be used.

    ``k``/``v`` may have fewer heads than ``q`` (multi-query / grouped-query attention) when the head counts divide.
    Same semantics as ``F.scaled_dot_product_attention(q, k, v, dropout_p=..., is_causal=causal, scale=scale)``.
    """
    reason = unsupported_reason(q, k, v, causal=causal, dropout_p=dropout_p)
    if reason is None:
        _counts["kernel"] += 1
        if k.shape[1] != q.shape[1]:  # multi-query / grouped-query: the kernel wants one k/v head per q head
            rep = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out, _mask = flash_attention(
            q.contiguous(), k.contiguous(), v.contiguous(), q.shape[-1] ** -0.5 if scale is None else scale, causal
        )
        return out
    count_fallback(reason)
    return F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale, enable_gqa=k.shape[1] != q.shape[1]
    )
