"""choose() against hand-made fact profiles: device, dtype and the reason text for each machine."""

from __future__ import annotations

import json

import pytest
from device_backend import Choice, DeviceUnavailableError, Facts, arch_supported, choose, parse_request
from device_backend.facts import CudaDevice, version_tuple
from device_backend.profiles import GIB, PROFILES

# name -> (device, dtype, grad scaler, {device type not chosen: [substrings its reason must contain]})
EXPECTED = {
    "apple_m2_macos14": ("mps", "bfloat16", False, {"cuda": ["macOS has no CUDA"], "cpu": ["mps is available"]}),
    "apple_m1_macos13": ("mps", "float32", False, {"cuda": ["no CUDA"]}),
    "rosetta_x86_python": ("cpu", "float32", False, {"mps": ["Rosetta 2", "x86_64", "install an arm64"]}),
    "macos_12_2": ("cpu", "float32", False, {"mps": ["macOS 12.2 is older", "12.3 or newer", "update macOS"]}),
    "torch_without_mps": ("cpu", "float32", False, {"mps": ["built without MPS", "pip install"]}),
    "mps_allocation_fails": (
        "cpu",
        "float32",
        False,
        {"mps": ["reports available but allocating a tensor on it failed", "virtual machine", "run natively"]},
    ),
    "cuda_a100": ("cuda:0", "bfloat16", False, {"mps": ["only on macOS"], "cpu": ["cuda:0 is available"]}),
    "cuda_t4": ("cuda:0", "float16", True, {"mps": ["only on macOS"]}),
    "cuda_arch_missing": (
        "cpu",
        "float32",
        False,
        {"cuda": ["compute capability 12.0", "sm_120", "sm_90", "arch list includes sm_120"]},
    ),
    "cuda_visible_devices_empty": ("cpu", "float32", False, {"cuda": ["CUDA_VISIBLE_DEVICES=''", "hides every GPU"]}),
    "cuda_no_driver": ("cpu", "float32", False, {"cuda": ["no NVIDIA driver", "install the NVIDIA driver"]}),
    "linux_cpu_only": ("cpu", "float32", False, {"cuda": ["CPU-only build", "--index-url"], "mps": ["Linux"]}),
    "torch_missing": ("cpu", "float32", False, {"cuda": ["torch is not installed", "pip install torch"]}),
}


def test_every_profile_has_an_expectation():
    assert set(EXPECTED) == set(PROFILES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_choice(name, profile):
    device, dtype, scaler, reasons = EXPECTED[name]
    choice = choose(profile(name))
    assert (choice.device, choice.dtype, choice.use_grad_scaler) == (device, dtype, scaler)
    assert choice.device_type == device.split(":")[0]
    for device_type, fragments in reasons.items():
        reason = choice.reason_for(device_type)
        assert reason is not None, f"no reason recorded for {device_type}"
        for fragment in fragments:
            assert fragment in f"{reason.reason} Fix: {reason.fix}"
    # one reason per device type not chosen, each with a fix
    assert sorted(r.device.split(":")[0] for r in choice.reasons) == sorted(
        {"mps", "cuda", "cpu"} - {choice.device_type}
    )
    assert all(r.fix for r in choice.reasons)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_requesting_an_unavailable_device_raises_with_reason(name, profile):
    facts = profile(name)
    chosen = choose(facts)
    for request in ("mps", "cuda"):
        if chosen.device_type == request:
            assert choose(facts, request).device == chosen.device
            continue
        with pytest.raises(DeviceUnavailableError) as caught:
            choose(facts, request)
        error = caught.value
        reason = chosen.reason_for(request)
        assert reason is not None
        assert reason.reason in str(error) and "Fix:" in str(error)
        assert error.available[-1] == "cpu" and "Available here: " in str(error)
        assert isinstance(error, RuntimeError)
    assert choose(facts, "cpu").device == "cpu"  # the CPU is always there


def test_attention_candidates_and_memory_budget(profile):
    mps = choose(profile("apple_m2_macos14"))
    assert mps.attention_candidates == ["orchard", "sdpa"]
    assert mps.memory_budget_bytes == mps.facts.mps_recommended_max_memory
    a100 = choose(profile("cuda_a100"), memory_fraction=0.5)
    assert a100.attention_candidates == ["sdpa"]
    assert a100.memory_budget_bytes == 39 * GIB  # half of the measured free memory
    assert "mem_get_info" in a100.memory_budget_source
    cpu = choose(profile("linux_cpu_only"))
    assert cpu.memory_budget_bytes == 20 * GIB and cpu.attention_candidates == ["sdpa"]
    for bad in (0, 0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="memory_fraction"):
            choose(profile("cuda_a100"), memory_fraction=bad)


def test_unmeasured_free_memory_falls_back_to_total(profile):
    facts = profile("cuda_a100")
    facts.cuda_devices[0].free_memory = None
    choice = choose(facts)
    assert choice.memory_budget_bytes == 80 * GIB and "total" in choice.memory_budget_source


def test_explicit_cpu_request_explains_the_available_accelerator(profile):
    choice = choose(profile("apple_m2_macos14"), "cpu")
    assert choice.device == "cpu" and choice.dtype == "float32"
    assert "available, but cpu was chosen" in choice.reason_for("mps").reason


def test_cuda_index_requests(profile):
    facts = profile("cuda_a100")
    facts.cuda_devices.append(CudaDevice(1, "NVIDIA A100-SXM4-80GB", (8, 0), 80 * GIB, None))
    facts.cuda_device_count = 2
    assert choose(facts, "cuda:1").device == "cuda:1"
    with pytest.raises(DeviceUnavailableError, match=r"cuda:3 was requested but torch sees 2 CUDA device"):
        choose(facts, "cuda:3")


def test_auto_skips_a_gpu_the_build_cannot_run(profile):
    facts = profile("cuda_arch_missing")
    facts.cuda_devices.append(CudaDevice(1, "Tesla T4", (7, 5), 15 * GIB, None))
    facts.cuda_device_count = 2
    choice = choose(facts)
    assert (choice.device, choice.dtype) == ("cuda:1", "float16")


def test_bf16_on_mps_needs_macos_14(profile):
    facts = profile("apple_m2_macos14")
    facts.os_version = "13.6"
    facts.torch_version = "2.7.1"
    assert choose(facts).dtype == "float32"
    facts = profile("apple_m2_macos14")
    facts.mps_bf16_ok = False  # the probe's bf16 allocation failed
    assert choose(facts).dtype == "float32"


def test_mps_minimum_macos_follows_the_torch_version(profile):
    facts = profile("apple_m1_macos13")
    facts.torch_version = "2.8.0"  # torch 2.8 dropped macOS 13 for MPS
    reason = choose(facts).reason_for("mps")
    assert "macOS 13.6.7 is older than torch 2.8.0" in reason.reason and "14.0" in reason.reason


def test_stuck_process_is_explained_by_the_subprocess_check(profile):
    facts = profile("apple_m2_macos14")
    facts.mps_available = False
    facts.mps_allocation_ok = None
    facts.subprocess_check = {"error": None, "mps_usable": True, "cuda_usable": False}
    choice = choose(facts)
    assert choice.device == "cpu"  # the subprocess's answer explains, it never picks
    assert "fresh Python process CAN use mps" in choice.reason_for("mps").reason


def test_warnings(profile):
    facts = profile("apple_m2_macos14")
    facts.env = {"PYTORCH_MPS_HIGH_WATERMARK_RATIO": "0.0"}
    facts.mps_cached_available = False
    notes = " ".join(choose(facts).warnings)
    assert "PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0" in notes
    assert "cached False" in notes
    assert "PYTORCH_ENABLE_MPS_FALLBACK is not 1" in notes
    assert choose(profile("apple_m2_macos14")).warnings == []


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_facts_and_choice_are_json_round_trips(name, profile):
    facts = profile(name)
    assert Facts.from_dict(json.loads(json.dumps(facts.to_dict()))) == facts
    choice = choose(facts)
    assert Choice.from_dict(json.loads(json.dumps(choice.to_dict()))) == choice


def test_from_dict_ignores_unknown_keys(profile):
    data = profile("cuda_t4").to_dict()
    data["from_a_newer_version"] = 1
    data["cuda_devices"][0]["extra"] = 2
    assert Facts.from_dict(data).cuda_devices[0].capability == (7, 5)


def test_parse_request():
    assert parse_request("auto") == ("auto", None)
    assert parse_request(None) == ("auto", None)
    assert parse_request("Metal") == ("mps", None)
    assert parse_request(" cuda:2 ") == ("cuda", 2)
    for bad in ("tpu", "cuda:x", "cuda:-1"):
        with pytest.raises(ValueError, match="use one of: auto, cpu, mps, cuda, cuda:N"):
            parse_request(bad)


@pytest.mark.parametrize(
    ("capability", "archs", "ok"),
    [
        ((8, 0), ["sm_80"], True),
        ((8, 6), ["sm_80"], True),  # same major, newer minor runs sm_80 cubins
        ((8, 0), ["sm_86"], False),
        ((9, 0), ["sm_80", "sm_86"], False),
        ((10, 0), ["sm_80", "compute_90"], True),  # PTX is JIT-compiled for newer GPUs
        ((9, 0), ["sm_90a"], True),
        ((10, 0), ["sm_90a"], False),
        ((12, 0), [], True),  # unknown list: do not refuse
    ],
)
def test_arch_supported(capability, archs, ok):
    assert arch_supported(capability, archs) is ok


def test_version_tuple():
    assert version_tuple("2.13.0+cpu") == (2, 13, 0)
    assert version_tuple("2.13.0a0+gitabc") == (2, 13, 0)
    assert version_tuple("14.4.1") == (14, 4, 1)
    assert version_tuple(None) == ()


def test_auto_under_torchrun_starts_from_the_local_rank(profile):
    facts = profile("cuda_a100")
    facts.cuda_devices.append(CudaDevice(1, "NVIDIA A100-SXM4-80GB", (8, 0), 80 * GIB, 70 * GIB))
    facts.cuda_device_count = 2
    facts.env["LOCAL_RANK"] = "1"
    choice = choose(facts)
    assert choice.device == "cuda:1" and choice.memory_budget_bytes == 70 * GIB
    facts.env["LOCAL_RANK"] = "5"  # one GPU per process: only cuda:0 visible to this rank
    assert choose(facts).device == "cuda:0"


def test_rocm_build_is_not_refused_for_its_gfx_arch_list(profile):
    facts = profile("cuda_a100")
    facts.hip_version = "6.2.41133"
    facts.cuda_version = None
    facts.cuda_arch_list = ["gfx90a", "gfx942"]
    facts.cuda_devices[0].capability = (9, 4)
    choice = choose(facts)
    assert (choice.device, choice.dtype) == ("cuda:0", "bfloat16")
