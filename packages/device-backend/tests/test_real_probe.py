"""The real probe on this machine, and proof that the uncached MPS call is what gets re-checked."""

from __future__ import annotations

import importlib.util
import json

import pytest
from device_backend import choose, probe, probe_in_subprocess, setup

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")


def test_real_probe_reasons_are_true_on_this_machine():
    import platform

    import torch

    facts = probe()
    json.dumps(facts.to_dict())  # serialisable as probed
    assert facts.torch_installed and facts.torch_version == str(torch.__version__)
    assert facts.mps_built == torch.backends.mps.is_built()
    assert facts.cuda_built == (torch.version.cuda is not None or torch.version.hip is not None)
    assert facts.os == platform.system()
    choice = choose(facts)

    mps_works = facts.mps_built and bool(facts.mps_available) and facts.mps_allocation_ok is not False
    cuda_works = facts.cuda_built and torch.cuda.is_available()
    if mps_works or cuda_works:
        pytest.skip("this machine has a usable accelerator; the assertions below are for CPU-only machines")

    assert (choice.device, choice.dtype) == ("cpu", "float32")
    mps, cuda = choice.reason_for("mps"), choice.reason_for("cuda")
    assert mps is not None and cuda is not None
    # each reason states something that is true here
    if facts.os != "Darwin":
        assert f"this machine runs {platform.system()}" in mps.reason
    elif not torch.backends.mps.is_built():
        assert "built without MPS" in mps.reason
    if torch.version.cuda is None and torch.version.hip is None:
        assert "CPU-only build" in cuda.reason and str(torch.__version__) in cuda.reason
    else:
        assert torch.cuda.device_count() == 0 or "compute capability" in cuda.reason
    if facts.system_memory_available:
        assert choice.memory_budget_bytes == facts.system_memory_available


def test_probe_rechecks_mps_uncached_while_torchs_cached_call_stays_stale(monkeypatch):
    """torch.backends.mps.is_available() caches its first answer; the probe's call does not."""
    import torch

    answers = iter([False, True, True, True])
    calls = []

    def flaky_mps_is_available():
        calls.append(1)
        return next(answers)

    cached = torch.backends.mps.is_available
    monkeypatch.setattr(torch._C, "_mps_is_available", flaky_mps_is_available)
    monkeypatch.setattr(torch._C, "_has_mps", True)
    cached.cache_clear()
    try:
        assert cached() is False  # torch's cached call: first answer, False
        facts = probe()  # the probe asks again, uncached
        assert facts.mps_available is True
        assert facts.mps_cached_available is False  # it also records the stale cached answer
        assert cached() is False  # torch's cached call still says False...
        assert len(calls) == 2  # ...without even asking again
        if not facts.mps_allocation_ok:
            assert facts.mps_allocation_error  # no real Metal device here: the allocation check says so
    finally:
        cached.cache_clear()


def test_setup_clears_torchs_stale_mps_cache(monkeypatch):
    import torch
    from device_backend.profiles import apple_m2_macos14

    cached = torch.backends.mps.is_available
    monkeypatch.setattr(torch._C, "_mps_is_available", lambda: False)
    cached.cache_clear()
    try:
        assert cached() is False and cached.cache_info().currsize == 1
        facts = apple_m2_macos14()
        facts.mps_cached_available = False  # what the probe records in that situation
        choice = setup(probe_fn=lambda: facts, subprocess_probe=False)
        assert choice.device == "mps"
        assert cached.cache_info().currsize == 0  # the next caller asks torch again
    finally:
        cached.cache_clear()


def test_probe_in_subprocess_matches_this_process():
    here = probe()
    there = probe_in_subprocess()
    assert there.probed_in == "subprocess"
    assert (there.torch_version, there.mps_built, there.cuda_built, there.os) == (
        here.torch_version,
        here.mps_built,
        here.cuda_built,
        here.os,
    )


def test_setup_cpu_with_the_real_probe():
    import torch

    choice = setup("cpu")
    assert choice.device == "cpu" and choice.torch_dtype is torch.float32
    assert choice.torch_device == torch.device("cpu")
