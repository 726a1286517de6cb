"""Device detection for the StarCoder trainer (torch imported lazily, never at import time).

``probe()`` gathers :class:`Facts`, ``choose()`` (pure) turns them into a :class:`Choice` with a
:class:`Reason` for every device not chosen, ``setup()`` does both with retries and applies the
result. ``configure_environment()`` sets torch's environment variables before torch is imported.

Names load on first use (PEP 562), so ``import device_backend`` stays cheap and never imports torch.
"""

from __future__ import annotations

from device_backend._version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (it costs import time)

_LAZY = {
    "RepoRootError": "paths",
    "find_repo_root": "paths",
    "resolve_path": "paths",
    "Choice": "decision",
    "DeviceUnavailableError": "decision",
    "Reason": "decision",
    "arch_supported": "decision",
    "choose": "decision",
    "cuda_status": "decision",
    "min_macos_for_mps": "decision",
    "mps_status": "decision",
    "parse_request": "decision",
    "CudaDevice": "facts",
    "Facts": "facts",
    "BackendConfig": "legacy",
    "DeviceBackend": "legacy",
    "get_device_backend": "legacy",
    "probe": "probing",
    "probe_in_subprocess": "probing",
    "configure_environment": "runtime",
    "setup": "runtime",
    "format_report": "report",
}

__all__ = [
    "BackendConfig",
    "Choice",
    "CudaDevice",
    "DeviceBackend",
    "DeviceUnavailableError",
    "Facts",
    "Reason",
    "RepoRootError",
    "__version__",
    "arch_supported",
    "choose",
    "configure_environment",
    "cuda_status",
    "find_repo_root",
    "format_report",
    "get_device_backend",
    "min_macos_for_mps",
    "mps_status",
    "parse_request",
    "probe",
    "probe_in_subprocess",
    "resolve_path",
    "setup",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'device_backend' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f"device_backend.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # for type checkers and IDEs; not executed
    from device_backend.decision import (
        Choice,
        DeviceUnavailableError,
        Reason,
        arch_supported,
        choose,
        cuda_status,
        min_macos_for_mps,
        mps_status,
        parse_request,
    )
    from device_backend.facts import CudaDevice, Facts
    from device_backend.legacy import BackendConfig, DeviceBackend, get_device_backend
    from device_backend.paths import RepoRootError, find_repo_root, resolve_path
    from device_backend.probing import probe, probe_in_subprocess
    from device_backend.report import format_report
    from device_backend.runtime import configure_environment, setup
