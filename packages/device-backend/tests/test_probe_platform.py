"""The torch-free parts of the probe: this machine's platform facts, torch missing, macOS sysctl handling."""

from __future__ import annotations

import platform
import sys

from device_backend import probe, probing
from device_backend.facts import Facts


def test_probe_without_torch_reports_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    facts = probe()
    assert facts.torch_installed is False
    assert facts.torch_error.startswith("ImportError") or facts.torch_error.startswith("ModuleNotFoundError")
    assert facts.os == platform.system() and facts.python_version == platform.python_version()
    assert facts.probe_seconds is not None and facts.probe_errors == []


def test_probe_records_torch_variables(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setenv("PYTORCH_MPS_HIGH_WATERMARK_RATIO", "0.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    env = probe().env
    assert env["PYTORCH_MPS_HIGH_WATERMARK_RATIO"] == "0.0" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert "UNRELATED_SECRET" not in env


def test_macos_probe_detects_rosetta_and_vm(monkeypatch):
    sysctl = {"sysctl.proc_translated": 1, "hw.optional.arm64": None, "kern.hv_vmm_present": 1, "hw.memsize": 2**34}
    monkeypatch.setattr(probing, "_sysctl_int", sysctl.get)
    monkeypatch.setattr(probing, "_sysctl_str", lambda name: "Apple M1 Pro")
    monkeypatch.setattr(probing, "_macos_available_memory", lambda: 2**33)
    monkeypatch.setattr(probing.platform, "mac_ver", lambda: ("14.4.1", ("", "", ""), "x86_64"))
    facts = Facts(python_arch="x86_64", machine_arch="x86_64")
    probing._probe_macos(facts)
    assert facts.rosetta is True and facts.machine_arch == "arm64" and facts.python_arch == "x86_64"
    assert facts.os_version == "14.4.1" and facts.cpu_name == "Apple M1 Pro"
    assert facts.virtualization == ["virtual machine (kern.hv_vmm_present=1)"]
    assert (facts.system_memory_total, facts.system_memory_available) == (2**34, 2**33)


def test_macos_probe_native_and_intel(monkeypatch):
    monkeypatch.setattr(probing, "_sysctl_str", lambda name: None)
    monkeypatch.setattr(probing, "_macos_available_memory", lambda: None)
    monkeypatch.setattr(probing.platform, "mac_ver", lambda: ("15.1", ("", "", ""), "arm64"))
    native = {"sysctl.proc_translated": 0, "hw.optional.arm64": 1}
    monkeypatch.setattr(probing, "_sysctl_int", native.get)
    facts = Facts(python_arch="arm64", machine_arch="arm64")
    probing._probe_macos(facts)
    assert facts.rosetta is False and facts.machine_arch == "arm64" and facts.virtualization == []
    monkeypatch.setattr(probing, "_sysctl_int", {}.get)  # an Intel Mac has neither key
    facts = Facts(python_arch="x86_64", machine_arch="x86_64")
    probing._probe_macos(facts)
    assert facts.rosetta is False and facts.machine_arch == "x86_64"
