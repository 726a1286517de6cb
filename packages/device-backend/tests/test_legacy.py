"""The old DeviceBackend API on top of setup() (fact profiles injected through probe_fn)."""

from __future__ import annotations

import importlib.util

import pytest
from device_backend import BackendConfig, DeviceBackend, DeviceUnavailableError, get_device_backend
from device_backend.profiles import apple_m2_macos14, cuda_t4, linux_cpu_only, torch_missing

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
OPTIONS = {"subprocess_probe": False, "apply": False}


def test_metal_backend_properties():
    backend = DeviceBackend(probe_fn=apple_m2_macos14, **OPTIONS)
    assert backend.is_metal and not backend.is_cuda
    assert backend.device_type == "metal"
    assert backend.attention_backend == "metal"
    assert backend.supports_bf16 is True
    assert backend.max_vram_gb == pytest.approx(apple_m2_macos14().mps_recommended_max_memory / 1e9)
    assert backend.get_model_config_overrides() == {"torch_dtype": "bfloat16"}
    config = backend.config
    assert isinstance(config, BackendConfig)
    assert (config.device, config.device_type, config.platform_name) == ("mps", "metal", "Darwin")


def test_cuda_t4_backend_properties():
    backend = get_device_backend(probe_fn=cuda_t4, **OPTIONS)
    assert backend.is_cuda and backend.device_type == "cuda" and backend.attention_backend == "sdpa"
    assert backend.supports_bf16 is False
    assert backend.get_model_config_overrides()["torch_dtype"] == "float16"


def test_forced_cpu_and_summary(caplog):
    backend = DeviceBackend(force_device="cpu", verbose=True, probe_fn=apple_m2_macos14, **OPTIONS)
    with caplog.at_level("INFO", logger="device_backend"):
        backend.setup()
    assert backend.device_type == "cpu" and backend.attention_backend == "native"
    assert backend.max_vram_gb == 0.0 and not backend.is_metal
    assert "device        : cpu" in caplog.text and "available, but cpu was chosen" in caplog.text


def test_forcing_an_unavailable_device_raises_instead_of_falling_back():
    with pytest.raises(DeviceUnavailableError, match="CPU-only build"):
        DeviceBackend(force_device="cuda", probe_fn=linux_cpu_only, **OPTIONS).setup()


def test_device_is_a_string_without_torch():
    assert DeviceBackend(probe_fn=torch_missing, **OPTIONS).device == "cpu"


def test_properties_run_setup_lazily():
    calls = []

    def probe():
        calls.append(1)
        return linux_cpu_only()

    backend = DeviceBackend(probe_fn=probe, **OPTIONS)
    assert calls == []
    assert backend.device_type == "cpu" and backend.is_cuda is False
    assert calls == [1]


@needs_torch
def test_device_is_a_torch_device():
    import torch

    assert DeviceBackend(probe_fn=apple_m2_macos14, **OPTIONS).device == torch.device("mps")
    assert DeviceBackend(force_device="cpu").device == torch.device("cpu")
