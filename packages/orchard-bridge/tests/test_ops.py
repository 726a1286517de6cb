"""Step 6 in-process: attention() dispatch, the custom op (opcheck, gradcheck) and the counters, with a Python kernel."""

from __future__ import annotations

import orchard_bridge
import pytest
import torch
import torch.nn.functional as F
from orchard_bridge import ops


def qkv(b=2, h=4, s=16, d=16, kv_heads=None, dtype=torch.float32, grad=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, s, d, generator=gen, dtype=dtype)
    k = torch.randn(b, kv_heads or h, s, d, generator=gen, dtype=dtype)
    v = torch.randn(b, kv_heads or h, s, d, generator=gen, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


@pytest.fixture(autouse=True)
def _clean_state():
    ops.deactivate()
    ops.reset_call_counts()
    yield
    ops.deactivate()
    ops.reset_call_counts()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [None, 1, 2])
def test_fallback_is_sdpa_itself(causal, kv_heads):
    q, k, v = qkv(kv_heads=kv_heads)
    out = orchard_bridge.attention(q, k, v, causal=causal, scale=0.3)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=0.3, enable_gqa=kv_heads is not None)
    assert torch.equal(out, ref)
    assert orchard_bridge.call_counts() == {"kernel": 0, "fallback": 1, "fallback_reasons": {"no kernel enabled": 1}}
    orchard_bridge.reset_call_counts()
    assert orchard_bridge.call_counts()["fallback"] == 0


def test_fallback_with_dropout_keeps_sdpa_semantics():
    q, k, v = qkv(grad=False)
    torch.manual_seed(3)
    out = orchard_bridge.attention(q, k, v, causal=False, dropout_p=0.5)
    torch.manual_seed(3)
    ref = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    assert torch.equal(out, ref)


def test_kernel_path_matches_sdpa_and_counts(python_kernel):
    q, k, v = qkv(kv_heads=2)
    out = orchard_bridge.attention(q, k, v, causal=True)
    out.sum().backward()
    counts = orchard_bridge.call_counts()
    assert counts["kernel"] == 1 and counts["fallback"] == 0
    assert python_kernel.calls == {"forward": 1, "backward": 1}
    q2, k2, v2 = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, enable_gqa=True)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    for a, b in zip((q, k, v), (q2, k2, v2), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: (qkv(d=12), {}), "head_dim not a multiple of 8"),
        (lambda: (qkv(), {"dropout_p": 0.1}), "dropout"),
    ],
)
def test_unsupported_calls_fall_back_with_a_reason(python_kernel, make, reason):
    (q, k, v), extra = make()
    orchard_bridge.attention(q, k, v, causal=False, **extra)
    reasons = orchard_bridge.call_counts()["fallback_reasons"]
    assert len(reasons) == 1 and next(iter(reasons)).startswith(reason)
    assert python_kernel.calls["forward"] == 0


def test_mixed_dtypes_are_not_for_the_kernel(python_kernel):
    q, k, v = qkv(grad=False)
    assert ops.unsupported_reason(q, k.double(), v, causal=False) == "dtype torch.float32"
    assert ops.unsupported_reason(q, k, v, causal=False) is None


def test_causal_with_different_lengths_falls_back(python_kernel):
    q, _, _ = qkv(s=4)
    _, k, v = qkv(s=9)
    orchard_bridge.attention(q, k, v, causal=True)
    assert "causal with query and key lengths that differ" in orchard_bridge.call_counts()["fallback_reasons"]


def test_inference_only_kernel_is_used_without_gradients_only(make_python_kernel):
    kernel = make_python_kernel(has_backward=False)
    ops.activate(kernel, "cpu", training=True, inference=True)  # training is refused: no backward op
    q, k, v = qkv()
    orchard_bridge.attention(q, k, v, causal=False)
    with torch.no_grad():
        orchard_bridge.attention(q, k, v, causal=False)
    counts = orchard_bridge.call_counts()
    assert counts["kernel"] == 1 and counts["fallback_reasons"] == {"kernel not proven for training": 1}


def test_kernel_on_another_device_is_not_used(make_python_kernel):
    ops.activate(make_python_kernel(), "mps", training=True, inference=True)
    q, k, v = qkv()
    orchard_bridge.attention(q, k, v, causal=False)
    assert orchard_bridge.call_counts()["fallback_reasons"] == {"tensors on cpu, kernel on mps": 1}


def test_op_without_a_kernel_says_what_to_do():
    q, k, v = qkv(grad=False)
    with pytest.raises(RuntimeError, match="no Orchard kernel enabled; call orchard_bridge.enable"):
        ops.flash_attention(q, k, v, 0.25, False)


@pytest.mark.parametrize("causal", [False, True])
def test_opcheck(python_kernel, causal):
    q, k, v = qkv(b=1, h=2, s=7, d=8)
    torch.library.opcheck(ops.flash_attention, (q, k, v, 0.3, causal))
    g = torch.randn(1, 2, 7, 8)
    torch.library.opcheck(ops.flash_attention_backward, (g, q.detach(), k.detach(), v.detach(), torch.ones_like(g), 0.3, causal))


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(python_kernel, causal):
    q, k, v = qkv(b=1, h=1, s=5, d=8, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: orchard_bridge.attention(q, k, v, causal=causal), (q, k, v))
    assert orchard_bridge.call_counts()["fallback"] == 0


def test_compile_sees_one_op(python_kernel):
    from torch._dynamo.testing import CompileCounterWithBackend

    backend = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda q, k, v: orchard_bridge.attention(q, k, v, causal=True), backend=backend, fullgraph=True)
    q, k, v = qkv(b=1, h=2, s=8, d=8)
    out = fn(q, k, v)
    out.sum().backward()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert backend.frame_count == 1
    assert python_kernel.calls["backward"] == 1
