"""``enable()``: locate, check, load, identify and prove the kernel, then tell ``attention()`` what it may use."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from device_backend.paths import resolve_path

from orchard_bridge import ops
from orchard_bridge.abi import Abi, identify
from orchard_bridge.conformance import ConformanceCache, ConformanceResult, run_conformance
from orchard_bridge.fileinfo import FileCheck, Host, check_file
from orchard_bridge.kernel import Kernel
from orchard_bridge.load import load_library
from orchard_bridge.locate import Candidate, candidate_paths

log = logging.getLogger("orchard_bridge")
MODES = ("auto", "off", "require")
CACHE_DIR = ".cache/orchard"


class OrchardError(RuntimeError):
    """The Orchard kernel was required (mode="require") but is not proven for training; the message says why."""


@dataclass
class LibraryInfo:
    path: str
    sha256: str | None
    format: str
    size: int | None = None


@dataclass
class BridgeStatus:
    """What ``enable()`` found and decided. ``reason`` says why in one sentence."""

    training_enabled: bool
    inference_enabled: bool
    reason: str
    mode: str = "auto"
    device: str | None = None
    torch_version: str = torch.__version__
    repo_root: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    library: LibraryInfo | None = None
    abi: Abi | None = None
    conformance: ConformanceResult | None = None
    cache_file: str | None = None

    def attn_implementation(self, training: bool = True) -> str:
        """``"orchard"`` when the kernel is enabled for this use, else ``"sdpa"``."""
        enabled = self.training_enabled if training else self.inference_enabled
        return "orchard" if enabled else "sdpa"

    @property
    def chosen(self) -> str | None:
        return self.library.path if self.library else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["attn_implementation"] = {"training": self.attn_implementation(True), "inference": self.attn_implementation(False)}
        return data


def default_device() -> str:
    """The device ``device_backend.setup()`` picks for this machine (asked not to change any process setting)."""
    from device_backend import setup

    return str(setup("auto", apply=False).device)


def enable(
    device: str | None = None,
    *,
    repo_root: str | os.PathLike[str] | None = None,
    library: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    mode: str = "auto",
    metal_backend: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    host: Host | None = None,
) -> BridgeStatus:
    """Find, check, load, identify and prove the Orchard kernel, and enable it for what passed.

    ``device``: where the kernel's ops run ("mps" upstream; None asks ``device_backend``). ``library``: the config's
    ``orchard.library``; ``metal_backend``: the config's ``repo.metal_backend`` (both relative to the repository
    root). ``cache_dir``: the conformance cache (default ``<repo root>/.cache/orchard``). ``mode``: "auto" uses the
    kernel where proven, "off" never, "require" raises :class:`OrchardError` unless it is proven for training.
    ``env``/``host`` are injectable facts (default: ``os.environ`` and this machine).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: use one of {', '.join(MODES)}")
    if mode == "off":
        ops.deactivate()
        return BridgeStatus(False, False, "disabled in config", mode=mode, device=device)
    device = str(device) if device is not None else default_device()
    root = _repo_root(repo_root, env)
    status = BridgeStatus(False, False, "", mode=mode, device=device, repo_root=str(root) if root else None)
    status.candidates = candidate_paths(root, library=library, metal_backend=metal_backend, env=env)
    kernel = _find_and_load(status, host or Host.current())
    if kernel is not None:
        _prove(status, kernel, device, _cache_dir(cache_dir, root))
    ops.activate(kernel, torch.device(device).type, training=status.training_enabled, inference=status.inference_enabled)
    log.info("orchard_bridge: %s", status.reason)
    if mode == "require" and not status.training_enabled:
        raise OrchardError(f"the Orchard kernel is required but not enabled for training: {status.reason}")
    return status


def _repo_root(explicit, env) -> Path | None:
    from device_backend.paths import RepoRootError, find_repo_root

    try:
        return find_repo_root(explicit, env=env)
    except RepoRootError as exc:
        log.info("orchard_bridge: %s; searching ORCHARD_* paths only", exc)
        return None


def _cache_dir(value: str | os.PathLike[str] | None, root: Path | None) -> Path:
    """``value`` (relative to the repository root, like every config path), else ``<root>/.cache/orchard``."""
    if value is not None:
        return resolve_path(root, value) if root is not None else Path(value).expanduser()
    return root / CACHE_DIR if root is not None else Path(tempfile.gettempdir()) / "orchard-bridge-cache"


def _find_and_load(status: BridgeStatus, host: Host) -> Kernel | None:
    """Walk the candidates in order; the first that passes the file check, loads and has a known ABI wins."""
    kernel: Kernel | None = None
    for cand in status.candidates:
        if kernel is not None or status.abi is not None:
            cand.outcome, cand.detail = "not-tried", "an earlier candidate was loaded"
            continue
        check: FileCheck = check_file(cand.path, host)
        if check.message == "missing":
            cand.outcome = "missing"
            continue
        if not check.ok:
            cand.outcome, cand.detail = "refused", check.message
            continue
        loaded = load_library(cand.path, check.sha256 or "")
        if not loaded.ok:
            cand.outcome, cand.detail = "load-failed", loaded.message
            continue
        status.library = LibraryInfo(cand.path, check.sha256, check.format.describe() if check.format else "?", check.size)
        status.abi = identify()
        if not status.abi.known:
            cand.outcome, cand.detail = "unknown-abi", f"refused: {status.abi.detail}"
            continue
        cand.outcome, cand.detail = "loaded", f"ABI {status.abi.name}: {status.abi.detail}"
        kernel = Kernel(status.abi)
    if kernel is None:
        if status.abi is not None and not status.abi.known:
            status.reason = f"library {status.library.path} refused, {status.abi.detail}; using SDPA"
        else:
            tried = "; ".join(f"{c.path}: {c.outcome}{' (' + c.detail + ')' if c.detail else ''}" for c in status.candidates)
            status.reason = f"no usable Orchard library ({len(status.candidates)} candidates: {tried}); using SDPA"
    return kernel


def _prove(status: BridgeStatus, kernel: Kernel, device: str, cache_dir: str | os.PathLike[str]) -> None:
    cache = ConformanceCache(cache_dir)
    key = cache.key(status.library.sha256 or "", device)
    result = cache.get(key)
    if result is None:
        result = run_conformance(kernel, device)
        try:
            status.cache_file = str(cache.put(key, result))
        except OSError as exc:
            log.warning("orchard_bridge: cannot write the conformance cache in %s: %s", cache_dir, exc)
    else:
        status.cache_file = str(cache.path_for(key))
    status.conformance = result
    status.inference_enabled = result.forward_ok
    status.training_enabled = result.forward_ok and result.backward_ok
    abi = f"ABI {kernel.abi.name}"
    where = f"on {device}{' (cached)' if result.cached else ''}"
    if status.training_enabled:
        status.reason = (
            f"Orchard kernel enabled for training and inference: {abi} passed forward and backward conformance "
            f"{where} (max error forward {result.forward_max_error:.2g}, backward {result.backward_max_error:.2g})"
        )
    elif status.inference_enabled:
        if kernel.abi.has_backward:
            why = f"backward failed conformance {where}: {result.backward_error}"
        else:
            why = f"{abi} has no backward op ({kernel.abi.detail})"
        status.reason = (
            f"Orchard kernel enabled for inference only; training uses SDPA because {why} "
            f"(forward max error {result.forward_max_error:.2g})"
        )
    else:
        status.reason = f"Orchard kernel not used: forward failed conformance {where}: {result.forward_error}; using SDPA"
