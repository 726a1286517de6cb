"""What the machine is: a plain, JSON-serialisable record gathered by :func:`device_backend.probe`.

Facts hold observations only, never decisions. :func:`device_backend.choose` turns them into a
:class:`~device_backend.Choice`. Tests build ``Facts`` by hand (fact profiles) to exercise every
decision without the hardware.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1


@dataclass
class CudaDevice:
    """One CUDA device as torch sees it (index is the torch index, after ``CUDA_VISIBLE_DEVICES``)."""

    index: int
    name: str
    capability: tuple[int, int]
    total_memory: int
    free_memory: int | None = None  # measured for the local device only (a CUDA context costs memory)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CudaDevice:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["capability"] = tuple(values.get("capability", (0, 0)))
        return cls(**values)


@dataclass
class Facts:
    """Everything the probe found out. ``None`` means "not checked / not applicable"."""

    schema: int = SCHEMA_VERSION
    # operating system and interpreter
    os: str = ""  # platform.system(): "Darwin", "Linux", "Windows"
    os_version: str = ""  # macOS product version ("14.4.1"), else the kernel release
    machine_arch: str = ""  # hardware architecture ("arm64" on Apple Silicon even under Rosetta)
    python_arch: str = ""  # architecture of this Python process ("x86_64" under Rosetta)
    python_version: str = ""
    rosetta: bool | None = None  # sysctl.proc_translated on macOS; None elsewhere
    cpu_name: str | None = None  # "Apple M2 Pro", "Intel(R) Xeon(R) ..."
    virtualization: list[str] = field(default_factory=list)  # VM / container / sandbox / CI hints
    system_memory_total: int | None = None
    system_memory_available: int | None = None
    env: dict[str, str] = field(default_factory=dict)  # PYTORCH_*, CUDA_VISIBLE_DEVICES, ...
    # torch build
    torch_installed: bool = False
    torch_version: str | None = None
    torch_error: str | None = None  # why ``import torch`` failed
    torch_imported_before_probe: bool = False
    mps_built: bool = False
    cuda_built: bool = False
    cuda_version: str | None = None  # torch.version.cuda
    hip_version: str | None = None  # torch.version.hip (ROCm builds use the cuda device type)
    cuda_arch_list: list[str] = field(default_factory=list)  # torch.cuda.get_arch_list()
    # MPS
    mps_available: bool | None = None  # uncached torch._C._mps_is_available()
    mps_cached_available: bool | None = None  # torch.backends.mps.is_available()'s cached answer, if any
    mps_error: str | None = None
    mps_allocation_ok: bool | None = None  # a real tensor made and read back on "mps"
    mps_allocation_error: str | None = None
    mps_bf16_ok: bool | None = None  # a bfloat16 tensor made and read back on "mps"
    mps_recommended_max_memory: int | None = None
    mps_device_name: str | None = None
    # CUDA
    nvidia_driver: str | None = None  # driver version text when a driver was found
    cuda_device_count: int | None = None  # uncached torch._C._cuda_getDeviceCount()
    cuda_error: str | None = None  # e.g. "Found no NVIDIA driver on your system"
    cuda_devices: list[CudaDevice] = field(default_factory=list)
    # bookkeeping
    probed_in: str = "process"  # "process" or "subprocess"
    probe_seconds: float | None = None
    torch_import_seconds: float | None = None  # part of probe_seconds; near 0 when torch was already imported
    probe_errors: list[str] = field(default_factory=list)
    subprocess_check: dict[str, Any] | None = None  # a fresh process's view, used only to explain

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        data = asdict(self)
        for device in data["cuda_devices"]:
            device["capability"] = list(device["capability"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Facts:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["cuda_devices"] = [CudaDevice.from_dict(d) for d in values.get("cuda_devices", [])]
        return cls(**values)


def version_tuple(text: str | None) -> tuple[int, ...]:
    """Leading numeric parts of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``, ``"14.4.1"`` -> ``(14, 4, 1)``."""
    parts: list[int] = []
    for piece in (text or "").replace("+", ".").replace("-", ".").split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)
