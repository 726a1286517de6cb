"""setup(): retries of the uncached probe (injected), the subprocess explanation, configure_environment()."""

from __future__ import annotations

import sys

import pytest
from device_backend import DeviceUnavailableError, configure_environment, runtime, setup
from device_backend.profiles import apple_m2_macos14, cuda_t4, linux_cpu_only, rosetta_x86_python


class FlakyProbe:
    """A probe that reports MPS unavailable until attempt ``works_from`` (counting from 1)."""

    def __init__(self, works_from: int, base=apple_m2_macos14):
        self.works_from = works_from
        self.base = base
        self.calls = 0

    def __call__(self):
        self.calls += 1
        facts = self.base()
        if self.calls < self.works_from:
            facts.mps_available = False
            facts.mps_allocation_ok = None
        return facts


@pytest.fixture
def sleeps(monkeypatch):
    recorded: list[float] = []
    monkeypatch.setattr(runtime.time, "sleep", recorded.append)
    return recorded


def test_retry_finds_mps_on_the_second_attempt(sleeps):
    flaky = FlakyProbe(works_from=2)
    choice = setup("auto", probe_fn=flaky, subprocess_probe=False, apply=False)
    assert (choice.device, choice.dtype) == ("mps", "bfloat16")
    assert flaky.calls == 2
    assert sleeps == [0.05]


def test_backoff_doubles_and_retries_are_bounded(sleeps):
    flaky = FlakyProbe(works_from=99)
    choice = setup("auto", probe_fn=flaky, retries=4, backoff_s=0.1, subprocess_probe=False, apply=False)
    assert choice.device == "cpu"
    assert flaky.calls == 4
    assert sleeps == pytest.approx([0.1, 0.2, 0.4])
    assert "uncached torch._C._mps_is_available() is False" in choice.reason_for("mps").reason


def test_requested_device_still_unavailable_raises(sleeps):
    flaky = FlakyProbe(works_from=3)
    with pytest.raises(DeviceUnavailableError, match="reports MPS unavailable.*Available here: cpu"):
        setup("mps", probe_fn=flaky, retries=2, subprocess_probe=False, apply=False)
    assert flaky.calls == 2


def test_no_retry_when_nothing_can_change(sleeps):
    for base, request in ((linux_cpu_only, "auto"), (rosetta_x86_python, "auto"), (apple_m2_macos14, "cpu")):
        probe = FlakyProbe(works_from=1, base=base)
        setup(request, probe_fn=probe, subprocess_probe=False, apply=False)
        assert probe.calls == 1, base.__name__
    assert sleeps == []


def test_no_retry_when_an_accelerator_is_already_usable(sleeps):
    probe = FlakyProbe(works_from=1, base=cuda_t4)
    assert setup(probe_fn=probe, subprocess_probe=False, apply=False).device == "cuda:0"
    assert probe.calls == 1


def test_subprocess_answer_explains_but_never_picks(sleeps):
    flaky = FlakyProbe(works_from=99)
    asked = []

    def fresh_process():
        asked.append(1)
        return apple_m2_macos14()  # a fresh process can use MPS

    choice = setup("auto", probe_fn=flaky, retries=2, subprocess_probe=fresh_process, apply=False)
    assert asked == [1]
    assert choice.device == "cpu"
    assert choice.facts.subprocess_check["mps_usable"] is True
    assert "fresh Python process CAN use mps" in choice.reason_for("mps").reason


def test_subprocess_failure_is_reported_not_raised(sleeps):
    def broken():
        raise RuntimeError("subprocess probe failed (exit 1): boom")

    choice = setup("auto", probe_fn=FlakyProbe(99), retries=1, subprocess_probe=broken, apply=False)
    assert "could not run (RuntimeError: subprocess probe failed (exit 1): boom)" in choice.reason_for("mps").reason


def test_subprocess_not_run_when_the_device_works(sleeps):
    def must_not_run():
        raise AssertionError("subprocess probe ran although MPS works")

    assert setup(probe_fn=FlakyProbe(1), subprocess_probe=must_not_run, apply=False).device == "mps"


def test_bad_request_fails_before_probing():
    def must_not_run():
        raise AssertionError("probed")

    with pytest.raises(ValueError, match="unknown device request 'tpu'"):
        setup("tpu", probe_fn=must_not_run)


def test_configure_environment_sets_defaults_and_respects_the_user(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    env: dict[str, str] = {}
    assert configure_environment(environ=env) == []
    assert env == {"PYTORCH_ENABLE_MPS_FALLBACK": "1", "TOKENIZERS_PARALLELISM": "false"}

    env = {"PYTORCH_ENABLE_MPS_FALLBACK": "0"}
    notes = configure_environment(environ=env, tokenizers_parallelism=True)
    assert env == {"PYTORCH_ENABLE_MPS_FALLBACK": "0", "TOKENIZERS_PARALLELISM": "true"}
    assert len(notes) == 1 and "PYTORCH_ENABLE_MPS_FALLBACK='0' is already set" in notes[0]

    env = {}
    configure_environment(environ=env, mps_fallback=False)
    assert env["PYTORCH_ENABLE_MPS_FALLBACK"] == "0"


def test_configure_environment_warns_when_too_late_and_about_a_zero_watermark(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", object())
    env = {"PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.0"}
    notes = configure_environment(environ=env)
    assert any("torch was imported before configure_environment()" in n for n in notes)
    assert any("PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0" in n for n in notes)
    assert env["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "0.0"  # reported, never changed


def test_configure_environment_touches_os_environ_only_when_called(monkeypatch):
    import os

    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    import device_backend  # noqa: F401 - importing must not set anything

    assert "TOKENIZERS_PARALLELISM" not in os.environ
    configure_environment()
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_apply_imports_torch_only_when_it_has_work(monkeypatch):
    """With nothing to apply, setup() on profile facts must not need torch (this runs without torch too)."""
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
    choice = setup(probe_fn=apple_m2_macos14, subprocess_probe=False)
    assert choice.device == "mps"
    with pytest.raises(ImportError):
        setup(probe_fn=apple_m2_macos14, subprocess_probe=False, memory_fraction=0.5)


def test_no_retry_for_an_old_macos(sleeps):
    from device_backend.profiles import macos_12_2

    probe = FlakyProbe(works_from=1, base=macos_12_2)
    choice = setup(probe_fn=probe, subprocess_probe=lambda: pytest.fail("subprocess probe ran"), apply=False)
    assert probe.calls == 1 and choice.device == "cpu" and sleeps == []
