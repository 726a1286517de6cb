"""Benchmark: the memory estimator's predicted peak against the measured CPU peak, per model size.

Each case runs in a fresh subprocess: import torch and transformers, reset the peak-RSS counter
(``/proc/self/clear_refs``; where that is refused, the baseline is the peak so far), take the
baseline RSS, build a GPTBigCode from its config (the tiny preset's defaults, dropout included),
and run a few AdamW training steps as the trainer does. Measured = peak RSS (VmHWM) minus the
baseline; predicted = ``starcoder_trainer.estimate.estimate(...).peak``. Target: every case within
20%.

    python packages/trainer/benchmarks/bench_estimate.py --out runs/bench
    python packages/trainer/benchmarks/bench_estimate.py --out runs/bench --device cuda [--dtype bfloat16]

On CUDA the measured figure is ``torch.cuda.max_memory_allocated()`` (record estimate_cuda.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

TARGET = 0.20
# name, layers, width, heads, vocab, seq, batch, extra
CASES = [
    ("tiny-default", 2, 128, 4, 2048, 128, 8, {}),
    ("tiny-bench", 4, 256, 8, 8192, 256, 8, {}),
    ("small", 6, 512, 8, 16384, 256, 4, {}),
    ("medium", 8, 768, 12, 16384, 256, 2, {}),
    ("small-ckpt", 6, 512, 8, 16384, 256, 4, {"gradient_checkpointing": True}),
    ("small-lora", 6, 512, 8, 16384, 256, 4, {"lora": True}),
]
STEPS = 3
# glibc raises its mmap threshold as large blocks are freed, then serves them from a heap it rarely
# gives back: RSS then grows step after step with memory torch no longer holds. A fixed threshold makes
# every large tensor its own mapping, so RSS is what torch holds (CUDA's max_memory_allocated analogue).
MMAP_THRESHOLD = 65536


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(spec: dict) -> dict:
    import torch

    if spec.get("device") == "cuda":
        return child_cuda(spec)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    # Warm-up on a micro model: the first forward/backward imports more of transformers (and peft) and
    # starts torch's thread pools; that is process start-up, not the cost of the model being measured.
    _train(spec | {"layers": 1, "width": 32, "heads": 2, "vocab": 64, "seq": 16, "batch": 1}, steps=1)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    baseline = _status("VmRSS") if reset else _status("VmHWM")

    config, seconds = _train(spec, steps=STEPS)
    return {
        "measured": _status("VmHWM") - baseline,
        "baseline_rss": baseline,
        "hwm_reset": reset,
        "seconds": seconds,
        "config": config.to_dict(),
    }


def child_cuda(spec: dict) -> dict:
    """CUDA: measured = torch.cuda.max_memory_allocated() minus what was allocated before the model."""
    import torch

    _train(spec | {"layers": 1, "width": 32, "heads": 2, "vocab": 64, "seq": 16, "batch": 1}, steps=1)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    config, seconds = _train(spec, steps=STEPS)
    torch.cuda.synchronize()
    return {
        "measured": torch.cuda.max_memory_allocated() - baseline,
        "baseline_allocated": baseline,
        "seconds": seconds,
        "config": config.to_dict(),
    }


def _train(spec: dict, steps: int):
    """Build the model from its config and run ``steps`` AdamW steps as the trainer does."""
    import torch
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    torch.manual_seed(0)
    config = GPTBigCodeConfig(
        vocab_size=spec["vocab"], n_positions=spec["seq"], n_embd=spec["width"], n_layer=spec["layers"],
        n_head=spec["heads"], multi_query=True, use_cache=False,
    )
    model = GPTBigCodeForCausalLM._from_config(config, attn_implementation="sdpa")
    if spec.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    if spec.get("lora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["c_attn", "c_proj", "c_fc"])
        )
    device = spec.get("device", "cpu")
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randint(0, spec["vocab"], (spec["batch"], spec["seq"]), device=device)
    dtype = getattr(torch, spec.get("dtype", "float32"))
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)
    t0 = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    return config, time.perf_counter() - t0


def _measure(name: str, spec: dict, env: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True, text=True, check=False, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error", **env},
    )
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"case {name} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predict(spec: dict, config: dict) -> dict:
    from starcoder_trainer.estimate import LoraSpec, ModelShape, estimate

    est = estimate(
        ModelShape.from_config(config),
        batch_size=spec["batch"],
        seq_len=spec["seq"],
        gradient_checkpointing=bool(spec.get("gradient_checkpointing")),
        lora=LoraSpec(r=8, dropout=0.05) if spec.get("lora") else None,
        device_type=spec.get("device", "cpu"),
        dtype=spec.get("dtype", "float32"),
    )
    return est.to_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench", help="folder for estimate.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--malloc-default", action="store_true",
        help="also measure with glibc's default (dynamic) mmap threshold, recorded for information (slower)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to measure (cuda: max_memory_allocated)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype (cuda)")
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    rows = []
    wanted = {c for c in args.cases.split(",") if c}
    for name, layers, width, heads, vocab, seq, batch, extra in CASES:
        if wanted and name not in wanted:
            continue
        spec = {"layers": layers, "width": width, "heads": heads, "vocab": vocab, "seq": seq, "batch": batch, **extra}
        spec |= {"device": args.device, "dtype": args.dtype}
        got = _measure(name, spec, {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)})
        plain = _measure(name, spec, {}) if args.malloc_default and args.device == "cpu" else None
        est = predict(spec, got.pop("config"))
        error = est["peak"] / got["measured"] - 1
        row = {"case": name, **spec, **got, "predicted": est["peak"], "error": error, "estimate": est}
        if plain is not None:
            row["measured_default_malloc"] = plain["measured"]
            row["error_default_malloc"] = est["peak"] / plain["measured"] - 1
        rows.append(row)
        print(
            f"{name:13s} {est['parameters'] / 1e6:6.1f} M params  measured {got['measured'] / 2**20:8.1f} MiB  "
            f"predicted {est['peak'] / 2**20:8.1f} MiB  error {error:+6.1%}"
            + (f"   (default malloc: {plain['measured'] / 2**20:.1f} MiB, {row['error_default_malloc']:+.1%})"
               if plain else "")
        )

    worst = max(abs(r["error"]) for r in rows)
    record = {
        "name": "estimate",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "baseline": {"what": "measured peak RSS minus RSS after imports and a warm-up (fresh process per case, "
                     f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD})",
                     "bytes": {r["case"]: r["measured"] for r in rows}},
        "ours": {"what": "predicted peak", "bytes": {r["case"]: r["predicted"] for r in rows}},
        "ratio": {r["case"]: r["predicted"] / r["measured"] for r in rows},
        "target": f"|predicted / measured - 1| <= {TARGET:.0%} for every case",
        "worst_abs_error": worst,
        "pass": worst <= TARGET and len(rows) >= 3,
        "cases": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record["device"] = args.device
    if args.device == "cuda":
        record["name"] = "estimate_cuda"
        record["baseline"]["what"] = "torch.cuda.max_memory_allocated() minus allocated before the model"
    (out / f"{record['name']}.json").write_text(json.dumps(record, indent=2))
    print(f"worst error {worst:.1%} (target {TARGET:.0%}): {'PASS' if record['pass'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
