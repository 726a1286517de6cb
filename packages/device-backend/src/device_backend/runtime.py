"""The side-effecting half: set the environment before torch loads, probe with retries, apply the choice."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, MutableMapping

from device_backend.decision import (
    Choice,
    choose,
    cuda_status,
    hides_all_gpus,
    min_macos_for_mps,
    mps_status,
    parse_request,
    watermark_warning,
)
from device_backend.facts import Facts, version_tuple

log = logging.getLogger("device_backend")

ProbeFn = Callable[[], Facts]


def configure_environment(
    *,
    mps_fallback: bool = True,
    tokenizers_parallelism: bool = False,
    environ: MutableMapping[str, str] | None = None,
) -> list[str]:
    """Set ``PYTORCH_ENABLE_MPS_FALLBACK`` and ``TOKENIZERS_PARALLELISM``; call it before torch is imported.

    A value the user already exported wins over the argument (a warning says so). Returns warnings
    (also logged): torch imported already (too late for the MPS fallback to take effect), a
    ``PYTORCH_MPS_HIGH_WATERMARK_RATIO`` of 0 (no memory limit; can freeze the machine).
    ``PYTORCH_MPS_HIGH_WATERMARK_RATIO`` itself is never set here.
    """
    env = os.environ if environ is None else environ
    notes: list[str] = []
    if "torch" in sys.modules:
        notes.append(
            "torch was imported before configure_environment(): PYTORCH_ENABLE_MPS_FALLBACK is read when torch "
            "loads, so the setting may not take effect; call configure_environment() before importing torch."
        )
    wanted = {
        "PYTORCH_ENABLE_MPS_FALLBACK": "1" if mps_fallback else "0",
        "TOKENIZERS_PARALLELISM": "true" if tokenizers_parallelism else "false",
    }
    for name, value in wanted.items():
        current = env.get(name)
        if current is None:
            env[name] = value
        elif current != value:
            notes.append(f"{name}={current!r} is already set in the environment and kept (configuration asks {value!r}).")
    watermark = watermark_warning(env)
    if watermark:
        notes.append(watermark)
    for note in notes:
        log.warning(note)
    return notes


def setup(
    request: str = "auto",
    *,
    retries: int = 3,
    backoff_s: float = 0.05,
    memory_fraction: float | None = None,
    probe_fn: ProbeFn | None = None,
    subprocess_probe: bool | ProbeFn = True,
    apply: bool = True,
) -> Choice:
    """Probe (uncached, up to ``retries`` times with exponential backoff), choose, apply; return the :class:`Choice`.

    - A retry happens only while an accelerator that this torch build supports reports unavailable.
    - Then, if MPS or CUDA is built but still unusable, one probe runs in a fresh subprocess; its answer
      goes into the reason text only, never into the choice (a device this process cannot use is no use).
      ``subprocess_probe`` may be a callable returning :class:`Facts` (tests inject one).
    - ``apply``: set the per-process memory fraction (when given) on the chosen accelerator, and clear
      torch's stale ``torch.backends.mps.is_available`` cache when it disagrees with the uncached check.

    Raises :class:`~device_backend.DeviceUnavailableError` when ``request`` names a device that is unusable.
    """
    from device_backend.probing import probe, probe_in_subprocess

    kind, index = parse_request(request)  # a typo fails before any probing
    probe_fn = probe_fn or probe
    attempts = max(1, int(retries))
    facts = probe_fn()
    for attempt in range(2, attempts + 1):
        if not _worth_retrying(facts, kind, index):
            break
        delay = backoff_s * 2 ** (attempt - 2)
        log.debug("device probe %d/%d: accelerator built but unavailable; retrying in %.3f s", attempt, attempts, delay)
        time.sleep(delay)
        facts = probe_fn()
    if subprocess_probe and _worth_retrying(facts, kind, index):
        facts.subprocess_check = _explain_in_subprocess(
            subprocess_probe if callable(subprocess_probe) else probe_in_subprocess
        )
    choice = choose(facts, request, memory_fraction=memory_fraction)
    if apply and facts.torch_installed:
        _apply(choice, memory_fraction)
    log.debug("device choice: %s %s (%s)", choice.device, choice.dtype, "; ".join(map(str, choice.reasons)))
    return choice


def _worth_retrying(facts: Facts, kind: str, index: int | None) -> bool:
    """True while an accelerator this torch build supports reports unavailable for a reason that may pass.

    Configuration problems (no driver, CUDA_VISIBLE_DEVICES, arch list, Rosetta, old macOS) are not retried.
    """
    if kind == "cpu" or not facts.torch_installed:
        return False
    mps_retry = (
        facts.mps_built
        and facts.os == "Darwin"
        and not facts.rosetta
        and facts.machine_arch == "arm64"
        and version_tuple(facts.os_version) >= min_macos_for_mps(facts.torch_version)
        and (not facts.mps_available or facts.mps_allocation_ok is False)
    )
    visible = facts.env.get("CUDA_VISIBLE_DEVICES")
    cuda_retry = (
        facts.cuda_built
        and not facts.cuda_device_count
        and bool(facts.nvidia_driver)
        and not (visible is not None and hides_all_gpus(visible))
    )
    if kind == "mps":
        return mps_retry
    if kind == "cuda":
        return cuda_retry
    if mps_status(facts) is None or cuda_status(facts)[1] is None:
        return False  # auto already has an accelerator
    return mps_retry or cuda_retry


def _explain_in_subprocess(run: ProbeFn) -> dict:
    try:
        other = run()
    except Exception as exc:  # noqa: BLE001 - the explanation must not break setup()
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "error": None,
        "mps_usable": mps_status(other) is None,
        "cuda_usable": cuda_status(other)[1] is None,
        "mps_available": other.mps_available,
        "mps_allocation_ok": other.mps_allocation_ok,
        "cuda_device_count": other.cuda_device_count,
        "torch_version": other.torch_version,
    }


def _apply(choice: Choice, memory_fraction: float | None) -> None:
    facts = choice.facts
    stale_cache = facts.mps_cached_available is False and bool(facts.mps_available)
    wants_limit = memory_fraction is not None and choice.device_type in ("mps", "cuda")
    if not (stale_cache or wants_limit):
        return
    import torch

    if stale_cache:
        cached = getattr(getattr(torch.backends, "mps", None), "is_available", None)
        if cached is not None and hasattr(cached, "cache_clear"):
            cached.cache_clear()
            log.info("cleared torch.backends.mps.is_available's stale cached False (MPS works)")
    if wants_limit and choice.device_type == "mps":
        torch.mps.set_per_process_memory_fraction(float(memory_fraction))
    elif wants_limit:
        torch.cuda.set_per_process_memory_fraction(float(memory_fraction), torch.device(choice.device))
