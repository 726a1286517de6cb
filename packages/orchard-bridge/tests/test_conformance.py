"""Steps 4-5 in-process: ABI identification from schema text, conformance verdicts and their cache."""

from __future__ import annotations

import json

import pytest
import torch
from orchard_bridge.abi import identify
from orchard_bridge.conformance import CHECK_VERSION, ConformanceCache, ConformanceResult, run_conformance

V1 = "flash_attn_mps::_flash_attn_fwd(Tensor q, Tensor k, Tensor v, float scale, bool causal) -> Tensor"
V2_FWD = ("flash_attn_mps::_flash_attn_fwd(Tensor q, Tensor k, Tensor v, float scale, float dropout_p, bool causal)"
          " -> (Tensor, Tensor)")
V2_BWD = ("flash_attn_mps::_flash_attn_bwd_dropout(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor dropout_mask,"
          " float scale, float dropout_p, bool causal) -> (Tensor, Tensor, Tensor)")


def test_identify_v1_v2_by_types_not_names():
    assert identify([V1]).name == "v1" and not identify([V1]).has_backward
    v2 = identify([V2_FWD, V2_BWD])
    assert v2.name == "v2" and v2.has_backward and v2.known
    renamed = identify([V2_FWD.replace("dropout_p", "p"), V2_BWD.replace("grad_out", "dout")])
    assert renamed.name == "v2" and renamed.has_backward


def test_identify_v2_without_backward_is_forward_only():
    abi = identify([V2_FWD])
    assert abi.name == "v2" and not abi.has_backward and "no flash_attn_mps::_flash_attn_bwd_dropout op" in abi.detail
    odd = identify([V2_FWD, V2_BWD.replace("-> (Tensor, Tensor, Tensor)", "-> Tensor")])
    assert not odd.has_backward and "unexpected backward schema" in odd.detail


def test_identify_unknown_and_empty():
    schema = "flash_attn_mps::_flash_attn_fwd(Tensor q, Tensor k, Tensor v, Tensor attn_mask) -> Tensor"
    unknown = identify([schema])
    assert unknown.name == "unknown" and not unknown.known and schema in unknown.detail
    other = identify(["flash_attn_mps::other(Tensor x) -> Tensor"])
    assert other.name == "unknown" and "flash_attn_mps::other(Tensor x) -> Tensor" in other.detail
    empty = identify([])
    assert empty.name == "unknown" and "registered no ops" in empty.detail


def test_correct_kernel_passes(make_python_kernel):
    result = run_conformance(make_python_kernel(), "cpu")
    assert result.forward_ok and result.backward_ok and result.cases == 8
    assert result.forward_max_error < 1e-5 and result.backward_max_error < 1e-4


def test_scaled_gradient_defect_fails_backward_with_its_size(make_python_kernel):
    result = run_conformance(make_python_kernel(defect=True), "cpu")
    assert result.forward_ok and not result.backward_ok
    assert result.backward_max_error > 0.1
    assert "gradient max error" in result.backward_error


def test_forward_only_kernel_has_no_backward_verdict(make_python_kernel):
    result = run_conformance(make_python_kernel(has_backward=False), "cpu")
    assert result.forward_ok and not result.backward_ok and not result.backward_tested
    assert result.backward_max_error is None and "ABI v1" in result.backward_error


def test_kernel_that_raises_fails_with_its_words(make_python_kernel):
    kernel = make_python_kernel()

    def broken(*_args):
        raise RuntimeError("Could not run 'flash_attn_mps::_flash_attn_fwd' with arguments from the 'CPU' backend")

    kernel.forward = broken
    result = run_conformance(kernel, "cpu")
    assert not result.forward_ok and not result.backward_ok
    assert "forward raised RuntimeError: Could not run" in result.forward_error
    assert result.backward_max_error is None and result.backward_error == "not run: the forward failed"


def test_wrong_forward_fails(make_python_kernel):
    kernel = make_python_kernel()
    good = kernel.forward
    kernel.forward = lambda q, k, v, scale, causal: (good(q, k, v, scale, causal)[0] * 1.01, torch.ones(1))
    result = run_conformance(kernel, "cpu")
    assert not result.forward_ok and result.forward_max_error > 1e-3


def test_cache_round_trip_and_key(tmp_path):
    cache = ConformanceCache(tmp_path / "c")
    key = cache.key("ab" * 32, "cpu")
    assert key == {"sha256": "ab" * 32, "torch": torch.__version__, "device": "cpu", "check_version": CHECK_VERSION}
    assert cache.get(key) is None
    result = ConformanceResult(device="cpu", forward_ok=True, backward_ok=False, forward_max_error=1e-7,
                               backward_max_error=float("inf"), backward_error="boom", cases=8)
    path = cache.put(key, result)
    got = cache.get(key)
    assert got.cached and got.forward_ok and not got.backward_ok and got.backward_max_error == float("inf")
    assert json.loads(path.read_text())["key"] == key
    for other in (cache.key("cd" * 32, "cpu"), cache.key("ab" * 32, "mps"), {**key, "torch": "0.0.1"}):
        assert cache.get(other) is None
    path.write_text("{not json")
    assert cache.get(key) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unusable_device_fails_both_with_the_reason(make_python_kernel):
    result = run_conformance(make_python_kernel(), "cuda:0")
    assert not result.forward_ok and not result.backward_ok
    assert result.forward_error.startswith("the SDPA reference cannot run on cuda:0")
