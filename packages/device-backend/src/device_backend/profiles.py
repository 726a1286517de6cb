"""Fact profiles: hand-made :class:`~device_backend.Facts` for machines the tests cannot run on.

Each function returns fresh facts, so a test may change them. Other packages' tests use these too
(e.g. to exercise the MPS path of a trainer on a Linux CI runner, with ``choose()`` or an injected
``probe_fn``). Values are typical of the named machine, not measured on one.
"""

from __future__ import annotations

from device_backend.facts import CudaDevice, Facts

GIB = 1024**3
CUDA_ARCHS_CU121 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def _mac(*, os_version: str, cpu: str, torch_version: str = "2.13.0", memory_gib: int = 16) -> Facts:
    return Facts(
        os="Darwin",
        os_version=os_version,
        machine_arch="arm64",
        python_arch="arm64",
        python_version="3.11.9",
        rosetta=False,
        cpu_name=cpu,
        system_memory_total=memory_gib * GIB,
        system_memory_available=memory_gib * GIB // 2,
        env={"PYTORCH_ENABLE_MPS_FALLBACK": "1"},
        torch_installed=True,
        torch_version=torch_version,
        mps_built=True,
        mps_available=True,
        mps_allocation_ok=True,
        mps_bf16_ok=True,
        mps_recommended_max_memory=int(memory_gib * GIB * 0.67),
        mps_device_name=cpu,
    )


def apple_m2_macos14() -> Facts:
    """Apple M2 on macOS 14.4, native arm64 Python, torch 2.13: MPS with bf16."""
    return _mac(os_version="14.4.1", cpu="Apple M2", memory_gib=24)


def apple_m1_macos13() -> Facts:
    """Apple M1 on macOS 13.6 with torch 2.7 (the last line that supports macOS 13): MPS, fp32 only."""
    facts = _mac(os_version="13.6.7", cpu="Apple M1", torch_version="2.7.1")
    facts.mps_bf16_ok = None  # not checked: bf16 on MPS needs macOS 14
    return facts


def rosetta_x86_python() -> Facts:
    """An x86_64 Python running under Rosetta 2 on an M1 (a classic Homebrew-in-/usr/local mistake)."""
    facts = _mac(os_version="14.4.1", cpu="Apple M1 Pro")
    facts.python_arch = "x86_64"
    facts.rosetta = True
    facts.torch_version = "2.2.2"  # the last x86_64 macOS wheel
    facts.mps_available = False
    facts.mps_allocation_ok = None
    facts.mps_bf16_ok = None
    facts.mps_recommended_max_memory = None
    facts.mps_device_name = None
    return facts


def macos_12_2() -> Facts:
    """macOS 12.2 on an M1 with torch 2.4: older than MPS's minimum (12.3)."""
    facts = _mac(os_version="12.2", cpu="Apple M1", torch_version="2.4.1")
    facts.mps_available = False
    facts.mps_allocation_ok = None
    facts.mps_bf16_ok = None
    facts.mps_recommended_max_memory = None
    return facts


def torch_without_mps() -> Facts:
    """A torch built without MPS (a source or conda build) on an M2, macOS 14."""
    facts = apple_m2_macos14()
    facts.torch_version = "2.13.0a0+gitabc1234"
    facts.mps_built = False
    facts.mps_available = None
    facts.mps_allocation_ok = None
    facts.mps_bf16_ok = None
    facts.mps_recommended_max_memory = None
    return facts


def mps_allocation_fails() -> Facts:
    """MPS reports available but a real allocation fails: a macOS virtual machine / CI runner."""
    facts = apple_m2_macos14()
    facts.virtualization = ["virtual machine (kern.hv_vmm_present=1)", "CI runner (CI, GITHUB_ACTIONS set)"]
    facts.mps_allocation_ok = False
    facts.mps_allocation_error = "RuntimeError: MPS backend out of memory (MPS allocated: 0 bytes, max allowed: 0 bytes)"
    facts.mps_bf16_ok = None
    facts.mps_recommended_max_memory = 0
    return facts


def _linux_cuda(devices: list[CudaDevice], *, arch_list: list[str] | None = None, cuda: str = "12.1") -> Facts:
    return Facts(
        os="Linux",
        os_version="6.8.0-45-generic",
        machine_arch="x86_64",
        python_arch="x86_64",
        python_version="3.11.9",
        cpu_name="AMD EPYC 7763 64-Core Processor",
        system_memory_total=256 * GIB,
        system_memory_available=200 * GIB,
        torch_installed=True,
        torch_version=f"2.5.1+cu{cuda.replace('.', '')}",
        cuda_built=True,
        cuda_version=cuda,
        cuda_arch_list=list(CUDA_ARCHS_CU121 if arch_list is None else arch_list),
        nvidia_driver="NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15",
        cuda_device_count=len(devices),
        cuda_devices=devices,
    )


def cuda_a100() -> Facts:
    """One NVIDIA A100 80GB (sm_80): CUDA with bf16."""
    return _linux_cuda([CudaDevice(0, "NVIDIA A100-SXM4-80GB", (8, 0), 80 * GIB, 78 * GIB)])


def cuda_t4() -> Facts:
    """One NVIDIA T4 (sm_75): CUDA with fp16 and a grad scaler."""
    return _linux_cuda([CudaDevice(0, "Tesla T4", (7, 5), 15 * GIB, 14 * GIB)])


def cuda_arch_missing() -> Facts:
    """An RTX 5090 (sm_120) with a torch built for CUDA 12.1 (kernels up to sm_90)."""
    return _linux_cuda([CudaDevice(0, "NVIDIA GeForce RTX 5090", (12, 0), 32 * GIB, 31 * GIB)])


def cuda_visible_devices_empty() -> Facts:
    """A CUDA machine where ``CUDA_VISIBLE_DEVICES=""`` hides every GPU."""
    facts = _linux_cuda([])
    facts.env = {"CUDA_VISIBLE_DEVICES": ""}
    facts.cuda_error = "RuntimeError: No CUDA GPUs are available"
    return facts


def cuda_no_driver() -> Facts:
    """A CUDA build of torch on a machine without an NVIDIA driver."""
    facts = _linux_cuda([])
    facts.nvidia_driver = None
    facts.cuda_error = "RuntimeError: Found no NVIDIA driver on your system."
    return facts


def linux_cpu_only() -> Facts:
    """Linux with the CPU-only torch wheel (like this project's CI)."""
    facts = _linux_cuda([])
    facts.torch_version = "2.13.0+cpu"
    facts.cuda_built = False
    facts.cuda_version = None
    facts.cuda_arch_list = []
    facts.cuda_device_count = None
    facts.nvidia_driver = None
    facts.system_memory_total = 24 * GIB
    facts.system_memory_available = 20 * GIB
    return facts


def torch_missing() -> Facts:
    """torch not installed at all."""
    facts = linux_cpu_only()
    facts.torch_installed = False
    facts.torch_version = None
    facts.torch_error = "ModuleNotFoundError: No module named 'torch'"
    return facts


PROFILES = {
    function.__name__: function
    for function in (
        apple_m2_macos14,
        apple_m1_macos13,
        rosetta_x86_python,
        macos_12_2,
        torch_without_mps,
        mps_allocation_fails,
        cuda_a100,
        cuda_t4,
        cuda_arch_missing,
        cuda_visible_devices_empty,
        cuda_no_driver,
        linux_cpu_only,
        torch_missing,
    )
}
