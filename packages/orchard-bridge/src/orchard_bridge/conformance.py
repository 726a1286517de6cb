"""Step 5: prove the kernel numerically against PyTorch SDPA before a model uses it.

Forward and backward on small shapes (several batch/heads/seq/head_dim, causal and not) in float32 on the kernel's
device, compared with ``torch.nn.functional.scaled_dot_product_attention`` and its autograd gradients. A capability
passes when every case is within ``atol + rtol * |reference|`` elementwise (the ``torch.allclose`` rule). Results are
cached per (library sha256, torch version, device, check version) so a second start does not recompute.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from orchard_bridge.kernel import Kernel

CHECK_VERSION = 1  # bump when the cases or tolerances change: old cache entries then no longer match
# (batch, heads, seq, head_dim): odd sequence lengths, one head, several head sizes (all multiples of 8).
CASES = ((1, 1, 8, 8), (2, 3, 17, 16), (1, 2, 64, 32), (2, 4, 33, 64))
FORWARD_TOL = {"atol": 1e-4, "rtol": 1e-3}
BACKWARD_TOL = {"atol": 1e-3, "rtol": 1e-2}


@dataclass
class ConformanceResult:
    device: str
    forward_ok: bool = False
    backward_ok: bool = False
    forward_max_error: float | None = None  # max |kernel - SDPA| over all cases
    backward_max_error: float | None = None  # max over dq, dk, dv and all cases
    backward_tested: bool = False
    forward_error: str | None = None  # first failure, in words
    backward_error: str | None = None
    tolerances: dict[str, dict[str, float]] = field(
        default_factory=lambda: {"forward": dict(FORWARD_TOL), "backward": dict(BACKWARD_TOL)}
    )
    cases: int = 0
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformanceResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _compare(got: torch.Tensor, want: torch.Tensor, tol: dict[str, float]) -> tuple[bool, float]:
    if got.shape != want.shape:
        return False, float("inf")
    got = got.detach().to(torch.float64)
    want = want.detach().to(torch.float64)
    if not torch.isfinite(got).all():
        return False, float("inf")
    diff = (got - want).abs()
    ok = bool((diff <= tol["atol"] + tol["rtol"] * want.abs()).all())
    return ok, float(diff.max()) if diff.numel() else 0.0


def run_conformance(kernel: Kernel, device: str, *, seed: int = 0) -> ConformanceResult:
    """Run every case on ``device``; a kernel that raises fails that capability with the error text."""
    result = ConformanceResult(device=str(device), backward_tested=kernel.abi.has_backward)
    fwd_ok, bwd_ok = True, kernel.abi.has_backward
    fwd_err, bwd_err, bwd_ran = 0.0, 0.0, 0
    gen = torch.Generator().manual_seed(seed)
    for b, h, s, d in CASES:
        for causal in (False, True):
            result.cases += 1
            label = f"B={b} H={h} S={s} D={d} causal={causal}"
            scale = d**-0.5
            try:
                q, k, v, g = (torch.randn(b, h, s, d, generator=gen).to(device) for _ in range(4))
                qr, kr, vr = (t.clone().requires_grad_(True) for t in (q, k, v))
                ref = F.scaled_dot_product_attention(qr, kr, vr, is_causal=causal, scale=scale)
                ref_grads = torch.autograd.grad(ref, (qr, kr, vr), g)
            except Exception as exc:  # noqa: BLE001 - the device itself is unusable: nothing can be proven
                why = f"the SDPA reference cannot run on {device}: {type(exc).__name__}: {exc}"
                result.forward_error = result.backward_error = why
                result.forward_ok = result.backward_ok = False
                return result
            try:
                with torch.no_grad():
                    out, mask = kernel.forward(q, k, v, scale, causal)
                ok, err = _compare(out, ref, FORWARD_TOL)
            except Exception as exc:  # noqa: BLE001 - a kernel may raise anything; keep its words
                ok, err = False, float("inf")
                result.forward_error = result.forward_error or f"{label}: forward raised {type(exc).__name__}: {exc}"
                mask = None
            fwd_err = max(fwd_err, err)
            if not ok and fwd_ok:
                result.forward_error = result.forward_error or f"{label}: forward max error {err:.3g}"
            fwd_ok = fwd_ok and ok
            if not kernel.abi.has_backward or mask is None:
                bwd_ok = bwd_ok and kernel.abi.has_backward and mask is not None
                continue
            try:
                with torch.no_grad():
                    grads = kernel.backward(g, q, k, v, mask, scale, causal)
                checks = [_compare(got, want, BACKWARD_TOL) for got, want in zip(grads, ref_grads, strict=True)]
                ok, err = all(c[0] for c in checks), max(c[1] for c in checks)
            except Exception as exc:  # noqa: BLE001
                ok, err = False, float("inf")
                result.backward_error = result.backward_error or f"{label}: backward raised {type(exc).__name__}: {exc}"
            bwd_err = max(bwd_err, err)
            bwd_ran += 1
            if not ok and bwd_ok:
                result.backward_error = result.backward_error or f"{label}: gradient max error {err:.3g}"
            bwd_ok = bwd_ok and ok
    result.forward_ok, result.forward_max_error = fwd_ok, fwd_err
    if kernel.abi.has_backward:
        result.backward_ok, result.backward_max_error = bwd_ok and bwd_ran > 0, bwd_err if bwd_ran else None
        if not bwd_ran:
            result.backward_error = result.backward_error or "not run: the forward failed"
    else:
        result.backward_error = f"ABI {kernel.abi.name}: {kernel.abi.detail}"
    return result


class ConformanceCache:
    """One JSON file per (library sha256, torch version, device, check version) under ``folder``."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)

    @staticmethod
    def key(sha256: str, device: str) -> dict[str, Any]:
        return {"sha256": sha256, "torch": torch.__version__, "device": str(device), "check_version": CHECK_VERSION}

    def path_for(self, key: dict[str, Any]) -> Path:
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return self.folder / f"conformance-{name}.json"

    def get(self, key: dict[str, Any]) -> ConformanceResult | None:
        try:
            data = json.loads(self.path_for(key).read_text())
        except (OSError, ValueError):
            return None
        if data.get("key") != key:
            return None
        result = ConformanceResult.from_dict(data["result"])
        result.cached = True
        return result

    def put(self, key: dict[str, Any], result: ConformanceResult) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path_for(key)
        payload = {"key": key, "result": {**result.to_dict(), "cached": False}}
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".conformance-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, default=_json_float)
        os.replace(tmp, target)  # atomic: a concurrent reader sees the old file or the new one
        return target


def _json_float(value: Any) -> Any:
    return str(value)
