"""python -m device_backend: report, --json, --require, --device (probe replaced by fact profiles)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from device_backend import probing
from device_backend.__main__ import main
from device_backend.profiles import apple_m2_macos14, linux_cpu_only


@pytest.fixture
def machine(monkeypatch):
    def use(profile):
        monkeypatch.setattr(probing, "probe", profile)

    return use


def test_report_lists_choice_and_every_reason(machine, capsys):
    machine(linux_cpu_only)
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "device        : cpu" in out and "dtype         : float32" in out
    assert "mps    : MPS exists only on macOS" in out
    assert "cuda   : torch 2.13.0+cpu is a CPU-only build" in out
    assert "fix :" in out


def test_json(machine, capsys):
    machine(apple_m2_macos14)
    assert main(["--json", "--no-subprocess"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["device"], data["dtype"], data["attention_candidates"]) == ("mps", "bfloat16", ["orchard", "sdpa"])
    assert data["facts"]["mps_allocation_ok"] is True


def test_require_not_met_exits_1_with_reason(machine, capsys):
    machine(linux_cpu_only)
    assert main(["--require", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "--require cuda not met: torch 2.13.0+cpu is a CPU-only build" in err and "Fix:" in err


def test_require_met(machine):
    machine(apple_m2_macos14)
    assert main(["--require", "mps"]) == 0


def test_unavailable_device_exits_2(machine, capsys):
    machine(linux_cpu_only)
    assert main(["--device", "mps"]) == 2
    assert "'mps' was requested but is not available" in capsys.readouterr().err
    assert main(["--device", "tpu"]) == 2
    assert "unknown device request 'tpu'" in capsys.readouterr().err


def test_module_runs_as_a_program():
    done = subprocess.run(
        [sys.executable, "-m", "device_backend", "--json", "--device", "cpu"],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["device"] == "cpu" and data["facts"]["probed_in"] == "process"


def test_a_zero_watermark_is_reported_once(machine, monkeypatch, capsys):
    """configure_environment() and the choice both see the variable; the report names it one time."""
    monkeypatch.setenv("PYTORCH_MPS_HIGH_WATERMARK_RATIO", "0")

    def profile():
        facts = apple_m2_macos14()
        facts.env = {**facts.env, "PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0"}
        return facts

    machine(profile)
    assert main(["--json", "--no-subprocess"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert sum("PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0" in w for w in warnings) == 1
