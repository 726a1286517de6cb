"""Turn :class:`~device_backend.Facts` into a :class:`Choice`: a pure function, no torch, no I/O.

``auto`` tries mps, then cuda, then cpu. Every device not chosen gets a :class:`Reason` with a fix.
A device that was asked for by name and cannot be used raises :class:`DeviceUnavailableError`;
there is no silent fallback to the CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from device_backend.facts import CudaDevice, Facts, version_tuple

REQUEST_ALIASES = {"metal": "mps", "gpu": "auto", "": "auto", "none": "auto"}
DTYPES = ("float32", "bfloat16", "float16")

PIP_TORCH_MAC = "pip install --upgrade torch (the PyPI wheel for macOS arm64 includes MPS)"
PIP_TORCH_CUDA = (
    "install a CUDA build of torch, e.g. pip install torch --index-url https://download.pytorch.org/whl/cu128 "
    "(pick the CUDA version your driver supports; nvidia-smi shows it)"
)


@dataclass
class Reason:
    """Why ``device`` was not chosen (or not usable), and what would change that."""

    device: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.device}: {self.reason} Fix: {self.fix}"


@dataclass
class Choice:
    """The decision: which device, which dtype, which attention candidates, how much memory, and why."""

    device: str  # "cpu", "mps", "cuda:0"
    device_type: str  # "cpu", "mps", "cuda"
    dtype: str  # "float32", "bfloat16", "float16"
    use_grad_scaler: bool
    attention_candidates: list[str]  # in order of preference; orchard_bridge decides whether "orchard" is usable
    memory_budget_bytes: int | None
    reasons: list[Reason] = field(default_factory=list)  # one per device not chosen
    facts: Facts = field(default_factory=Facts)
    request: str = "auto"
    memory_budget_source: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def torch_dtype(self):
        """The dtype as a ``torch.dtype`` (imports torch)."""
        import torch

        return getattr(torch, self.dtype)

    @property
    def torch_device(self):
        """The device as a ``torch.device`` (imports torch)."""
        import torch

        return torch.device(self.device)

    def reason_for(self, device_type: str) -> Reason | None:
        """The reason recorded for ``device_type`` ("mps", "cuda", "cpu"), if it was not chosen."""
        return next((r for r in self.reasons if r.device.split(":")[0] == device_type), None)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["facts"] = self.facts.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choice:
        values = dict(data)
        values["reasons"] = [Reason(**r) for r in values.get("reasons", [])]
        values["facts"] = Facts.from_dict(values.get("facts", {}))
        return cls(**values)


class DeviceUnavailableError(RuntimeError):
    """A device was requested by name and cannot be used here."""

    def __init__(self, request: str, reason: str, fix: str, available: list[str]):
        self.request = request
        self.reason = reason
        self.fix = fix
        self.available = available
        super().__init__(
            f"device {request!r} was requested but is not available: {reason} Fix: {fix.rstrip('.')}. "
            f"Available here: {', '.join(available)}."
        )


def parse_request(request: str | None) -> tuple[str, int | None]:
    """``"auto" | "cpu" | "mps" | "cuda" | "cuda:N"`` (also ``"metal"``) -> (kind, cuda index or None)."""
    text = REQUEST_ALIASES.get(str(request or "").strip().lower(), str(request or "").strip().lower())
    if text in ("auto", "cpu", "mps", "cuda"):
        return text, None
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise ValueError(f"unknown device request {request!r}; use one of: auto, cpu, mps, cuda, cuda:N")


# ---------------------------------------------------------------------------------------------------
# the decision


def choose(facts: Facts, request: str = "auto", *, memory_fraction: float | None = None) -> Choice:
    """Pick the device for ``request`` from ``facts``; raise :class:`DeviceUnavailableError` if it cannot be used."""
    kind, index = parse_request(request)
    if memory_fraction is not None and not 0.0 < float(memory_fraction) <= 1.0:
        raise ValueError(
            f"memory_fraction={memory_fraction!r} is outside (0, 1]; use e.g. 0.8 "
            "(0 would mean 'no limit', which can take the whole system down)"
        )
    mps = mps_status(facts)
    cuda_index, cuda = cuda_status(facts, index)
    available = [name for name, status in (("mps", mps), (f"cuda:{cuda_index}", cuda)) if status is None]
    available.append("cpu")

    if kind == "mps" and mps is not None:
        raise DeviceUnavailableError(request, mps.reason, mps.fix, available)
    if kind == "cuda" and cuda is not None:
        raise DeviceUnavailableError(request, cuda.reason, cuda.fix, available)

    if kind == "auto":
        device = available[0]
    elif kind == "cuda":
        device = f"cuda:{cuda_index}"
    else:
        device = kind
    device_type = device.split(":")[0]

    reasons: list[Reason] = []
    for name, status in (("mps", mps), ("cuda", cuda)):
        if name == device_type:
            continue
        if status is not None:
            reasons.append(status)
        else:
            label = "mps" if name == "mps" else f"cuda:{cuda_index}"
            reasons.append(
                Reason(label, f"available, but {device} was chosen (request {request!r}).", f"pass --device {label}.")
            )
    if device_type != "cpu":
        reasons.append(
            Reason("cpu", f"not chosen: {device} is available and preferred.", "pass --device cpu to force the CPU.")
        )

    dtype, scaler = _dtype(facts, device_type, cuda_index)
    budget, source = _memory_budget(facts, device_type, cuda_index, memory_fraction)
    return Choice(
        device=device,
        device_type=device_type,
        dtype=dtype,
        use_grad_scaler=scaler,
        attention_candidates=["orchard", "sdpa"] if device_type == "mps" else ["sdpa"],
        memory_budget_bytes=budget,
        reasons=reasons,
        facts=facts,
        request=str(request),
        memory_budget_source=source,
        warnings=_warnings(facts, device_type),
    )


def min_macos_for_mps(torch_version: str | None) -> tuple[int, int]:
    """Oldest macOS on which this torch release's MPS backend runs.

    12.3 up to torch 2.4; 13.0 from torch 2.5; 14.0 from torch 2.8 (MPS dropped macOS 13).
    """
    version = version_tuple(torch_version)
    if version >= (2, 8):
        return (14, 0)
    if version >= (2, 5):
        return (13, 0)
    return (12, 3)


def mps_status(facts: Facts) -> Reason | None:
    """None when MPS is usable, else the reason it is not (checked in the order a user would fix things)."""

    def no(reason: str, fix: str) -> Reason:
        return Reason("mps", reason, fix)

    if facts.os != "Darwin":
        return no(
            f"MPS exists only on macOS with Apple Silicon; this machine runs {facts.os or 'an unknown OS'}.",
            "use cuda or cpu here; run on a Mac with an M-series chip for MPS.",
        )
    if not facts.torch_installed:
        return _torch_missing("mps", facts)
    if facts.rosetta:
        return no(
            f"this Python is an x86_64 process translated by Rosetta 2 on Apple Silicon ({facts.cpu_name or 'arm64'}); "
            "torch in an x86_64 Python cannot use the Apple GPU.",
            "install an arm64 (native) Python, e.g. the python.org universal2 installer, Homebrew in /opt/homebrew "
            "or `uv python install`, recreate the virtualenv with it and reinstall torch; "
            "`python -c 'import platform; print(platform.machine())'` must print arm64.",
        )
    if facts.machine_arch != "arm64":
        return no(
            f"this Mac has an {facts.machine_arch or 'Intel'} processor; torch's MPS backend needs Apple Silicon "
            "(M1 or newer).",
            "use cpu on this Mac, or run on an Apple Silicon Mac.",
        )
    needed = min_macos_for_mps(facts.torch_version)
    have = version_tuple(facts.os_version)
    if have and have < needed:
        return no(
            f"macOS {facts.os_version} is older than torch {facts.torch_version}'s MPS backend needs "
            f"(macOS {needed[0]}.{needed[1]} or newer).",
            f"update macOS to {needed[0]}.{needed[1]} or newer (System Settings > General > Software Update), "
            "or install an older torch that supports this macOS.",
        )
    if not facts.mps_built:
        return no(
            f"torch {facts.torch_version} was built without MPS support.",
            f"{PIP_TORCH_MAC}; a conda or source build must be configured with USE_MPS=1.",
        )
    explain = _subprocess_note(facts, "mps")
    hints = f" Environment hints: {'; '.join(facts.virtualization)}." if facts.virtualization else ""
    if not facts.mps_available:
        detail = f" ({facts.mps_error})" if facts.mps_error else ""
        return no(
            f"torch reports MPS unavailable (uncached torch._C._mps_is_available() is False{detail}) "
            f"although torch has MPS and macOS {facts.os_version} is recent enough.{hints}{explain}",
            "run on the Mac itself, not in a virtual machine, container, sandbox or CI runner without GPU access; "
            "check that `python -c \"import torch; print(torch.ones(1, device='mps'))\"` works in a plain terminal.",
        )
    if facts.mps_allocation_ok is False:
        return no(
            "MPS reports available but allocating a tensor on it failed"
            f" ({facts.mps_allocation_error or 'no error text'}).{hints}{explain}",
            "run natively on macOS with GPU access (virtual machines, sandboxes and CI runners often expose a "
            "Metal device that cannot run compute work); close other GPU-heavy apps and retry.",
        )
    return None


def cuda_status(facts: Facts, index: int | None = None) -> tuple[int, Reason | None]:
    """(chosen CUDA index, None) when usable, else (index, reason). ``index=None`` means "first usable"."""

    def no(reason: str, fix: str, at: int = 0) -> tuple[int, Reason]:
        return at, Reason("cuda" if index is None else f"cuda:{index}", reason, fix)

    if not facts.torch_installed:
        return 0, _torch_missing("cuda", facts)
    if not facts.cuda_built:
        if facts.os == "Darwin":
            return no(
                f"torch {facts.torch_version} for macOS has no CUDA support (NVIDIA GPUs are not supported on macOS).",
                "use mps or cpu on a Mac.",
            )
        build = "a CPU-only build" if not facts.hip_version else "not built for CUDA"
        return no(f"torch {facts.torch_version} is {build} (torch.version.cuda is None).", PIP_TORCH_CUDA)
    visible = facts.env.get("CUDA_VISIBLE_DEVICES")
    count = facts.cuda_device_count or 0
    explain = _subprocess_note(facts, "cuda")
    if count == 0:
        detail = f" ({facts.cuda_error})" if facts.cuda_error else ""
        if visible is not None and hides_all_gpus(visible):
            return no(
                f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU, so torch sees none{detail}.{explain}",
                "unset CUDA_VISIBLE_DEVICES or set it to the GPU indices to use, e.g. CUDA_VISIBLE_DEVICES=0.",
            )
        if not facts.nvidia_driver or (facts.cuda_error and "driver" in facts.cuda_error.lower()):
            return no(
                f"no NVIDIA driver was found (no /proc/driver/nvidia/version, no nvidia-smi){detail}.{explain}",
                "install the NVIDIA driver for this GPU (then `nvidia-smi` lists it); on a machine without an "
                "NVIDIA GPU use cpu (or mps on a Mac).",
            )
        scope = f" with CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        return no(
            f"the NVIDIA driver is present ({facts.nvidia_driver}) but CUDA reports no device{scope}{detail}.{explain}",
            f"check `nvidia-smi`; the driver must support CUDA {facts.cuda_version} (torch's build) or newer, "
            "and CUDA_VISIBLE_DEVICES must name existing GPUs.",
        )
    devices = facts.cuda_devices or [CudaDevice(i, "unknown GPU", (0, 0), 0) for i in range(count)]
    if index is None:  # under torchrun, each rank starts from its own GPU (LOCAL_RANK)
        local = local_rank(facts)
        candidates = sorted(devices, key=lambda d: d.index != local)
    else:
        candidates = [d for d in devices if d.index == index]
    if not candidates:
        return no(
            f"cuda:{index} was requested but torch sees {count} CUDA device(s) (cuda:0..cuda:{count - 1}).",
            f"use an index below {count}, or check CUDA_VISIBLE_DEVICES ({visible!r}).",
            at=index or 0,
        )
    for device in candidates:
        if facts.hip_version or arch_supported(device.capability, facts.cuda_arch_list):  # ROCm: gfx archs
            return device.index, None
    device = candidates[0]
    major, minor = device.capability
    return no(
        f"GPU {device.index} ({device.name}) has compute capability {major}.{minor} (sm_{major}{minor}), "
        f"but this torch build (CUDA {facts.cuda_version}) only has kernels for {' '.join(facts.cuda_arch_list)}.",
        f"install a torch build whose arch list includes sm_{major}{minor} (usually a newer CUDA wheel, "
        "see https://pytorch.org/get-started/locally/); `python -c 'import torch; print(torch.cuda.get_arch_list())'` "
        "shows the list.",
        at=device.index,
    )


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a GPU of ``capability`` can run this build: a cubin of the same major and lower-or-equal minor
    (``sm_XY``), an exact arch-specific cubin (``sm_XYa``), or PTX of a lower-or-equal capability (``compute_XY``).
    A list without any CUDA arch (empty, unknown) counts as supported."""
    if not any(arch.startswith(("sm_", "compute_")) for arch in arch_list):
        return True
    major, minor = capability
    have = major * 10 + minor
    for arch in arch_list:
        kind, _, number = arch.partition("_")
        specific = number.endswith(("a", "f"))
        digits = number.rstrip("af")
        if not digits.isdigit():
            continue
        code = int(digits)
        if kind == "sm":
            if specific and code == have:
                return True
            if not specific and code // 10 == major and code <= have:
                return True
        elif kind == "compute" and code <= have:
            return True
    return False


def local_rank(facts: Facts) -> int:
    """``LOCAL_RANK`` as recorded in the facts (set by torchrun), else 0."""
    text = facts.env.get("LOCAL_RANK", "0").strip()
    return int(text) if text.isdigit() else 0


def hides_all_gpus(visible: str) -> bool:
    entries = [e.strip() for e in visible.split(",")]
    first = entries[0] if entries else ""
    return first == "" or first.lower() in ("none", "nodevfiles", "void") or first.startswith("-")


def _torch_missing(device: str, facts: Facts) -> Reason:
    return Reason(
        device,
        f"torch is not installed or failed to import ({facts.torch_error or 'no module named torch'}).",
        "install torch into this environment: pip install torch (see HARDWARE.md for the right build).",
    )


def _subprocess_note(facts: Facts, device_type: str) -> str:
    check = facts.subprocess_check
    if not check:
        return ""
    if check.get("error"):
        return f" A check in a fresh process could not run ({check['error']})."
    works = check.get(f"{device_type}_usable")
    if works:
        return (
            f" A fresh Python process CAN use {device_type}, so something in this process (an earlier torch "
            "initialisation, a fork, an environment change after startup) broke it; restart the process and call "
            "device_backend.setup() before other code touches torch."
        )
    return f" A fresh Python process agrees: {device_type} is unavailable."


def _dtype(facts: Facts, device_type: str, cuda_index: int) -> tuple[str, bool]:
    if device_type == "mps":
        recent_os = version_tuple(facts.os_version) >= (14, 0)
        recent_torch = version_tuple(facts.torch_version) >= (2, 3)
        bf16 = recent_os and facts.mps_bf16_ok is not False and (facts.mps_bf16_ok or recent_torch)
        return ("bfloat16" if bf16 else "float32"), False  # no fp16 + GradScaler on MPS
    if device_type == "cuda":
        device = next((d for d in facts.cuda_devices if d.index == cuda_index), None)
        if facts.hip_version or (device is not None and device.capability >= (8, 0)):
            return "bfloat16", False
        return "float16", True
    return "float32", False


def _memory_budget(
    facts: Facts, device_type: str, cuda_index: int, fraction: float | None
) -> tuple[int | None, str]:
    if device_type == "mps":
        base, source = facts.mps_recommended_max_memory, "torch.mps.recommended_max_memory()"
    elif device_type == "cuda":
        device = next((d for d in facts.cuda_devices if d.index == cuda_index), None)
        if device is not None and device.free_memory is not None:
            base, source = device.free_memory, "torch.cuda.mem_get_info() free memory"
        elif device is not None and device.total_memory:
            base, source = device.total_memory, "total device memory (free memory not measured)"
        else:
            base, source = None, "unknown"
    else:
        base, source = facts.system_memory_available, "available system RAM"
    if base is None:
        return None, "unknown"
    if fraction is not None:
        return int(base * float(fraction)), f"{source} x {float(fraction):g}"
    return int(base), source


def _warnings(facts: Facts, device_type: str) -> list[str]:
    notes = [n for n in [watermark_warning(facts.env)] if n]
    if facts.mps_cached_available is False and facts.mps_available:
        notes.append(
            "torch.backends.mps.is_available() cached False earlier in this process while MPS works now; "
            "setup() clears that cache so other libraries see the truth."
        )
    if device_type == "mps" and facts.env.get("PYTORCH_ENABLE_MPS_FALLBACK") != "1":
        notes.append(
            "PYTORCH_ENABLE_MPS_FALLBACK is not 1: an operator MPS lacks will raise instead of running on the CPU; "
            "call device_backend.configure_environment() before importing torch."
        )
    return notes


def watermark_warning(env) -> str | None:
    """The warning for ``PYTORCH_MPS_HIGH_WATERMARK_RATIO`` set to zero in ``env``, else None."""
    ratio = env.get("PYTORCH_MPS_HIGH_WATERMARK_RATIO")
    if ratio is None or not _is_zero(ratio):
        return None
    return (
        "PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 removes MPS's memory limit and can freeze the whole Mac; "
        "unset it (use memory_fraction instead)."
    )


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0.0
    except ValueError:
        return False
