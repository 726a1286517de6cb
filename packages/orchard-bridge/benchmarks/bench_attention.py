"""Benchmark: ``orchard_bridge.attention()`` through its SDPA fallback vs a direct SDPA call.

Forward + backward, fp32, B=4 H=8 S=512 D=64, causal, on the CPU (and on CUDA when present). Repetitions are
interleaved (the order alternates each round) and the figure is the median of the per-round ratios, so a busy machine
slows both sides alike. Target: the fallback costs at most 5% more than SDPA itself.

    python packages/orchard-bridge/benchmarks/bench_attention.py --out runs/bench

writes ``<out>/attention.json`` (relative ``--out`` is taken from $REPO_ROOT when set, else the current folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import orchard_bridge
import torch
import torch.nn.functional as F
from orchard_bridge import ops

TARGET = 1.05
SHAPE = (4, 8, 512, 64)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _step(fn, q, k, v, grad) -> None:
    out = fn(q, k, v)
    out.backward(grad)
    q.grad = k.grad = v.grad = None


def measure(device: str, rounds: int, warmup: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    q, k, v, grad = (torch.randn(*SHAPE, generator=gen).to(device) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def ours(q, k, v):
        return orchard_bridge.attention(q, k, v, causal=True)

    ops.deactivate()  # the fallback path: no kernel enabled
    ops.reset_call_counts()
    for _ in range(warmup):
        _step(sdpa, q, k, v, grad)
        _step(ours, q, k, v, grad)
    base, mine, ratios = [], [], []
    for i in range(rounds):
        order = (("base", sdpa), ("ours", ours)) if i % 2 == 0 else (("ours", ours), ("base", sdpa))
        times = {}
        for name, fn in order:
            _sync(device)
            start = time.perf_counter()
            _step(fn, q, k, v, grad)
            _sync(device)
            times[name] = time.perf_counter() - start
        base.append(times["base"])
        mine.append(times["ours"])
        ratios.append(times["ours"] / times["base"])
    counts = ops.call_counts()
    assert counts["kernel"] == 0 and counts["fallback"] == rounds + warmup, counts
    ratio = statistics.median(ratios)
    return {
        "device": device,
        "baseline": {"what": "F.scaled_dot_product_attention fwd+bwd", "median_ms": statistics.median(base) * 1e3,
                     "min_ms": min(base) * 1e3},
        "ours": {"what": "orchard_bridge.attention fwd+bwd (SDPA fallback)", "median_ms": statistics.median(mine) * 1e3,
                 "min_ms": min(mine) * 1e3},
        "ratio": ratio,
        "rounds": rounds,
        "pass": ratio <= TARGET,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench", help="folder for attention.json")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds per device")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", action="append", help="cpu, cuda (repeatable); default: cpu, and cuda if present")
    args = parser.parse_args(argv)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    results = [measure(d, args.rounds, args.warmup) for d in devices]
    cpu = next((r for r in results if r["device"] == "cpu"), results[0])
    record = {
        "name": "attention",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "shape": {"batch": SHAPE[0], "heads": SHAPE[1], "seq": SHAPE[2], "head_dim": SHAPE[3], "dtype": "float32",
                  "causal": True},
        "baseline": cpu["baseline"],
        "ours": cpu["ours"],
        "ratio": cpu["ratio"],
        "target": f"ratio (ours / baseline, median of interleaved rounds) <= {TARGET}",
        "pass": all(r["pass"] for r in results),
        "devices": results,
    }
    out = Path(args.out)
    if not out.is_absolute() and os.environ.get("REPO_ROOT"):
        out = Path(os.environ["REPO_ROOT"]) / out
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention.json").write_text(json.dumps(record, indent=2) + "\n")
    for r in results:
        print(
            f"attention fallback vs SDPA on {r['device']} (B,H,S,D={SHAPE}, fp32, fwd+bwd, {r['rounds']} rounds): "
            f"SDPA {r['baseline']['median_ms']:.2f} ms, attention() {r['ours']['median_ms']:.2f} ms, "
            f"median ratio {r['ratio']:.3f} (target <= {TARGET}) -> {'PASS' if r['pass'] else 'FAIL'}"
        )
    print(f"wrote {out / 'attention.json'}")
    return 0 if record["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
