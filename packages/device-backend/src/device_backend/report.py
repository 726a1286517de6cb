"""A readable report of a :class:`~device_backend.Choice` (what ``python -m device_backend`` prints)."""

from __future__ import annotations

import textwrap

from device_backend._version import __version__
from device_backend.decision import Choice


def human_bytes(count: int | None) -> str:
    if count is None:
        return "unknown"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{count} B"


def format_report(choice: Choice) -> str:
    f = choice.facts
    torch = (
        f"torch {f.torch_version} (MPS built: {'yes' if f.mps_built else 'no'}, "
        f"CUDA: {f.cuda_version or 'none'}{', ROCm ' + f.hip_version if f.hip_version else ''})"
        if f.torch_installed
        else f"torch not installed ({f.torch_error})"
    )
    arch = f.python_arch + (" under Rosetta 2" if f.rosetta else "")
    lines = [
        f"device-backend {__version__}",
        f"  device        : {choice.device}   (request: {choice.request})",
        f"  dtype         : {choice.dtype}   grad scaler: {'yes' if choice.use_grad_scaler else 'no'}",
        f"  attention     : {', '.join(choice.attention_candidates)}   (in order of preference)",
        f"  memory budget : {human_bytes(choice.memory_budget_bytes)}   ({choice.memory_budget_source})",
        f"  system        : {f.os} {f.os_version}, hardware {f.machine_arch}, Python {f.python_version} ({arch})",
        (
            f"  cpu           : {f.cpu_name or 'unknown'}, RAM {human_bytes(f.system_memory_total)} "
            f"({human_bytes(f.system_memory_available)} available)"
        ),
        f"  torch         : {torch}",
    ]
    if f.mps_device_name:
        lines.append(f"  mps device    : {f.mps_device_name}")
    for device in f.cuda_devices:
        major, minor = device.capability
        free = f", {human_bytes(device.free_memory)} free" if device.free_memory is not None else ""
        lines.append(
            f"  cuda:{device.index:<9}: {device.name}, sm_{major}{minor}, {human_bytes(device.total_memory)}{free}"
        )
    if f.nvidia_driver:
        lines.append(f"  nvidia driver : {f.nvidia_driver}")
    if f.virtualization:
        lines.append(f"  environment   : {'; '.join(f.virtualization)}")
    shown_env = {k: v for k, v in f.env.items() if k.startswith(("PYTORCH_", "CUDA_VISIBLE", "TOKENIZERS"))}
    if shown_env:
        lines.append(f"  variables     : {' '.join(f'{k}={v}' for k, v in sorted(shown_env.items()))}")
    took = f"{f.probe_seconds:.2f} s" if f.probe_seconds is not None else "?"
    if f.torch_import_seconds:
        took += f" (importing torch: {f.torch_import_seconds:.2f} s)"
    lines.append(f"  probe         : {took} in this {f.probed_in}")
    if choice.reasons:
        lines.append("Not chosen:")
        for reason in choice.reasons:
            lines.extend(_wrapped(f"{reason.device:<6}", reason.reason))
            lines.extend(_wrapped("   fix", reason.fix))
    notes = choice.warnings + [f"probe: {e}" for e in f.probe_errors]
    if notes:
        lines.append("Warnings:")
        for note in notes:
            lines.extend(_wrapped("  !", note))
    return "\n".join(lines)


def _wrapped(label: str, text: str, width: int = 100) -> list[str]:
    return textwrap.wrap(text, width=width, initial_indent=f"  {label} : ", subsequent_indent=" " * (len(label) + 5))
