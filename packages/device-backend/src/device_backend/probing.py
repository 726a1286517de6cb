"""Gather :class:`~device_backend.Facts` about this machine. torch is imported here, inside functions only.

The MPS check avoids ``torch.backends.mps.is_available()``: that function is wrapped in
``functools.lru_cache``, so once it has answered ``False`` (say, because it ran while the process
was still starting up) every later call in the process repeats that answer. The probe calls the
uncached ``torch._C._mps_is_available()`` instead and confirms with a real allocation on the device.
Note that torch's C++ side keeps its Metal device in a process-wide singleton, so only a fresh
process can fully re-check; :func:`device_backend.setup` does that once, to explain a failure.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from device_backend.decision import local_rank
from device_backend.facts import CudaDevice, Facts

ENV_PREFIXES = ("PYTORCH_", "CUDA_", "HIP_", "ROCR_", "MPS_")
ENV_NAMES = ("TOKENIZERS_PARALLELISM", "LOCAL_RANK", "CI", "GITHUB_ACTIONS", "APP_SANDBOX_CONTAINER_ID")
CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "CIRCLECI", "TF_BUILD", "JENKINS_URL")


def probe() -> Facts:
    """Look at the machine and the installed torch; never raises, never caches, never picks a device.

    Side effects: imports torch (if installed), and on an accelerator makes one tiny tensor to prove it
    works (and, on CUDA, measures free memory of the local device, which creates a CUDA context there).
    """
    started = time.perf_counter()
    facts = Facts()
    _probe_platform(facts)
    _probe_torch(facts)
    facts.probe_seconds = round(time.perf_counter() - started, 4)
    return facts


# ---------------------------------------------------------------------------------------------------
# operating system, interpreter, memory


def _probe_platform(facts: Facts) -> None:
    facts.os = platform.system()
    facts.python_arch = platform.machine()
    facts.machine_arch = facts.python_arch
    facts.python_version = platform.python_version()
    facts.env = {
        key: value for key, value in os.environ.items() if key.startswith(ENV_PREFIXES) or key in ENV_NAMES
    }
    try:
        if facts.os == "Darwin":
            _probe_macos(facts)
        elif facts.os == "Linux":
            _probe_linux(facts)
        else:
            facts.os_version = platform.release()
    except Exception as exc:  # noqa: BLE001 - a probe reports failures, it does not raise
        facts.probe_errors.append(f"platform: {type(exc).__name__}: {exc}")
    ci = [name for name in CI_VARIABLES if os.environ.get(name)]
    if ci:
        facts.virtualization.append(f"CI runner ({', '.join(ci)} set)")


def _probe_macos(facts: Facts) -> None:
    facts.os_version = platform.mac_ver()[0]
    translated = _sysctl_int("sysctl.proc_translated")
    facts.rosetta = translated == 1
    if translated == 1 or _sysctl_int("hw.optional.arm64") == 1:
        facts.machine_arch = "arm64"
    facts.cpu_name = _sysctl_str("machdep.cpu.brand_string")
    if _sysctl_int("kern.hv_vmm_present") == 1:
        facts.virtualization.append("virtual machine (kern.hv_vmm_present=1)")
    if os.environ.get("APP_SANDBOX_CONTAINER_ID"):
        facts.virtualization.append("macOS App Sandbox (APP_SANDBOX_CONTAINER_ID set)")
    facts.system_memory_total = _sysctl_int("hw.memsize")
    facts.system_memory_available = _macos_available_memory()


def _probe_linux(facts: Facts) -> None:
    facts.os_version = platform.release()
    cpuinfo = _read("/proc/cpuinfo")
    for line in cpuinfo.splitlines():
        if line.startswith("model name") and ":" in line:
            facts.cpu_name = line.split(":", 1)[1].strip()
            break
    if " hypervisor" in cpuinfo:
        facts.virtualization.append("virtual machine (hypervisor flag in /proc/cpuinfo)")
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        facts.virtualization.append("container (/.dockerenv or /run/.containerenv)")
    meminfo = {}
    for line in _read("/proc/meminfo").splitlines():
        name, _, rest = line.partition(":")
        value = rest.strip().split(" ")[0]
        if value.isdigit():
            meminfo[name] = int(value) * 1024
    facts.system_memory_total = meminfo.get("MemTotal")
    facts.system_memory_available = meminfo.get("MemAvailable", meminfo.get("MemFree"))
    driver = _read("/proc/driver/nvidia/version").splitlines()
    if driver:
        facts.nvidia_driver = driver[0].strip()


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _sysctl_raw(name: str) -> bytes | None:
    """sysctlbyname through ctypes (no subprocess); None when the key does not exist."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    size = ctypes.c_size_t(0)
    if libc.sysctlbyname(name.encode(), None, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
        return None
    buffer = ctypes.create_string_buffer(size.value)
    if libc.sysctlbyname(name.encode(), buffer, ctypes.byref(size), None, ctypes.c_size_t(0)) != 0:
        return None
    return buffer.raw[: size.value]


def _sysctl_int(name: str) -> int | None:
    raw = _sysctl_raw(name)
    return int.from_bytes(raw, sys.byteorder) if raw else None


def _sysctl_str(name: str) -> str | None:
    raw = _sysctl_raw(name)
    return raw.rstrip(b"\0").decode(errors="replace") if raw else None


def _macos_available_memory() -> int | None:
    import re
    import subprocess

    try:
        text = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    page = re.search(r"page size of (\d+) bytes", text)
    counts = dict(re.findall(r"Pages (free|inactive|speculative|purgeable):\s+(\d+)", text))
    if not page or not counts:
        return None
    return int(page.group(1)) * sum(int(v) for v in counts.values())


def _driver_from_smi() -> str | None:
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines()
    return f"NVIDIA driver {lines[0].strip()} (nvidia-smi)" if out.returncode == 0 and lines else None


# ---------------------------------------------------------------------------------------------------
# torch


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _probe_torch(facts: Facts) -> None:
    facts.torch_imported_before_probe = "torch" in sys.modules
    started = time.perf_counter()
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a probe reports failures, it does not raise
        facts.torch_error = _error(exc)
        if facts.nvidia_driver is None and facts.os == "Windows":
            facts.nvidia_driver = _driver_from_smi()
        return
    facts.torch_import_seconds = round(time.perf_counter() - started, 4)
    facts.torch_installed = True
    facts.torch_version = str(torch.__version__)
    facts.cuda_version = getattr(torch.version, "cuda", None)
    facts.hip_version = getattr(torch.version, "hip", None)
    for name, step in (("mps", _probe_mps), ("cuda", _probe_cuda)):
        try:
            step(torch, facts)
        except Exception as exc:  # noqa: BLE001 - a probe reports failures, it does not raise
            facts.probe_errors.append(f"{name}: {_error(exc)}")


def _probe_mps(torch, facts: Facts) -> None:
    facts.mps_built = bool(getattr(torch._C, "_has_mps", False))
    cached = getattr(getattr(torch.backends, "mps", None), "is_available", None)
    if cached is not None and hasattr(cached, "cache_info") and cached.cache_info().currsize:
        facts.mps_cached_available = bool(cached())  # a cache hit: reads the stored answer, changes nothing
    if not facts.mps_built:
        return
    try:
        facts.mps_available = bool(torch._C._mps_is_available())  # uncached, unlike torch.backends.mps
    except Exception as exc:  # noqa: BLE001 - a probe reports failures, it does not raise
        facts.mps_available = False
        facts.mps_error = _error(exc)
    if not facts.mps_available:
        return
    try:
        probe_tensor = torch.arange(4, dtype=torch.float32, device="mps")
        facts.mps_allocation_ok = float((probe_tensor * 2).sum().cpu()) == 12.0
        if not facts.mps_allocation_ok:
            facts.mps_allocation_error = "a small computation on mps returned a wrong result"
    except Exception as exc:  # noqa: BLE001 - a probe reports failures, it does not raise
        facts.mps_allocation_ok = False
        facts.mps_allocation_error = _error(exc)
        return
    try:
        half = torch.ones(4, dtype=torch.bfloat16, device="mps")
        facts.mps_bf16_ok = float((half + half).sum().float().cpu()) == 8.0
    except Exception:  # noqa: BLE001 - any failure means no bf16 on this device
        facts.mps_bf16_ok = False
    mps = getattr(torch, "mps", None)
    if mps is not None and hasattr(mps, "recommended_max_memory"):
        facts.mps_recommended_max_memory = int(mps.recommended_max_memory())
    if hasattr(torch._C, "_mps_get_name"):
        facts.mps_device_name = str(torch._C._mps_get_name())


def _probe_cuda(torch, facts: Facts) -> None:
    facts.cuda_built = bool(torch.cuda._is_compiled())
    if facts.nvidia_driver is None and facts.os != "Darwin" and (facts.cuda_built or facts.os == "Windows"):
        facts.nvidia_driver = _driver_from_smi()
    if not facts.cuda_built:
        return
    facts.cuda_arch_list = list(torch.cuda.get_arch_list())
    facts.cuda_device_count = int(torch._C._cuda_getDeviceCount())  # uncached, unlike torch.cuda.device_count
    if facts.cuda_device_count == 0:
        try:
            torch.cuda.init()  # nothing can use CUDA here anyway; this only fetches the error text
        except Exception as exc:  # noqa: BLE001 - a probe reports failures, it does not raise
            facts.cuda_error = _error(exc)
        return
    local = local_rank(facts)
    if local >= facts.cuda_device_count:  # one GPU per process through CUDA_VISIBLE_DEVICES
        local = 0
    for index in range(facts.cuda_device_count):
        props = torch.cuda.get_device_properties(index)
        device = CudaDevice(
            index=index,
            name=str(props.name),
            capability=(int(props.major), int(props.minor)),
            total_memory=int(props.total_memory),
        )
        if index == local:
            try:
                free, _total = torch.cuda.mem_get_info(index)
                device.free_memory = int(free)
            except Exception as exc:  # noqa: BLE001 - a probe reports failures, it does not raise
                facts.cuda_error = _error(exc)
        facts.cuda_devices.append(device)


# ---------------------------------------------------------------------------------------------------
# a fresh process


SUBPROCESS_CODE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from device_backend.probing import probe
facts = probe()
facts.probed_in = "subprocess"
print("DEVICE_BACKEND_FACTS=" + json.dumps(facts.to_dict()))
"""


def probe_in_subprocess(timeout_s: float = 120.0) -> Facts:
    """Run :func:`probe` in a fresh Python process (same interpreter, same environment) and return its facts.

    Raises ``RuntimeError`` naming the failure when the child does not answer.
    """
    import json
    import subprocess

    package_parent = str(Path(__file__).resolve().parent.parent)
    try:
        done = subprocess.run(
            [sys.executable, "-c", SUBPROCESS_CODE, package_parent],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"subprocess probe did not answer within {timeout_s:.0f} s") from exc
    for line in done.stdout.splitlines():
        if line.startswith("DEVICE_BACKEND_FACTS="):
            return Facts.from_dict(json.loads(line.split("=", 1)[1]))
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"subprocess probe failed (exit {done.returncode}): {' | '.join(tail)}")
