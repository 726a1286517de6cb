"""Benchmark: training tokens/s in 1 process against 2 processes (torchrun, gloo, DDP) on this machine.

Same model, data, global batch and steps in both runs (the tiny-but-real preset: GPTBigCode 4 layers,
256 wide, 8 heads, vocab 8192, seq 256, global batch 8, float32), through the trainer's DistContext
(tests/test_distributed_worker.py). The single process gets as many torch threads as the two
processes have together, so the comparison is "all cores, one way or the other" (a 1-thread
single process is recorded too). Tokens/s are counted from the second optimizer step on; other
work on the machine moves these figures, so compare them within one run.

On a 2-core machine two processes mostly pay for gradient all-reduce and halve the matmul size, so
the target is only that DDP keeps >= 0.6x the single-process rate (the point of DDP here is
correctness and multi-GPU / multi-node scaling, which a CPU laptop cannot show).

    python packages/trainer/benchmarks/bench_distributed.py --out runs/bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKER = Path(__file__).resolve().parents[1] / "tests" / "test_distributed_worker.py"
MODEL = {"layers": 4, "width": 256, "heads": 8, "vocab": 8192, "seq": 256, "blocks": 64}
TARGET = 0.6


def run(nproc: int, steps: int, strategy: str, threads_total: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            **MODEL, "out": tmp, "strategy": strategy, "steps": steps, "batch": 8, "accum": 1,
            "threads": max(1, threads_total // nproc), "lr": 1e-3,
        }
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        if nproc == 1:
            cmd = [sys.executable, str(WORKER), str(Path(tmp) / "spec.json")]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   str(WORKER), str(Path(tmp) / "spec.json")]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS=str(spec["threads"]))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
        return json.loads((Path(tmp) / "losses.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench", help="folder for distributed.json")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="torch threads in all")
    args = parser.parse_args(argv)

    one = run(1, args.steps, "none", args.threads)
    one_thread = run(1, args.steps, "none", 1)
    ddp = run(2, args.steps, "ddp", args.threads)
    fsdp = run(2, args.steps, "fsdp", args.threads)
    best = max(one["tokens_per_s"], one_thread["tokens_per_s"])  # the fairer single-process figure
    ratio = ddp["tokens_per_s"] / best
    loss_gap = max(abs(a - b) for a, b in zip(one["losses"], ddp["losses"]))
    record = {
        "name": "distributed",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "model": MODEL | {"global_batch": 8, "steps": args.steps, "threads_total": args.threads},
        "baseline": {"what": "1 process tokens/s, the better of all threads and 1 thread", "tokens_per_s": best,
                     "all_threads_tokens_per_s": one["tokens_per_s"],
                     "one_thread_tokens_per_s": one_thread["tokens_per_s"]},
        "ours": {"what": "2 processes (DDP, gloo) tokens/s", "tokens_per_s": ddp["tokens_per_s"],
                 "fsdp_tokens_per_s": fsdp["tokens_per_s"]},
        "ratio": ratio,
        "max_loss_gap_1_vs_2": loss_gap,
        "target": f"DDP 2 processes >= {TARGET}x one process on this machine; losses equal within 1e-5",
        "pass": ratio >= TARGET and loss_gap <= 1e-5,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(record, indent=2))
    print(f"1 process      {one['tokens_per_s']:8.0f} tokens/s  ({args.threads} threads)")
    print(f"1 process      {one_thread['tokens_per_s']:8.0f} tokens/s  (1 thread)")
    print(f"2 x DDP        {ddp['tokens_per_s']:8.0f} tokens/s  ({ratio:.2f}x the better single process)")
    print(f"2 x FSDP       {fsdp['tokens_per_s']:8.0f} tokens/s  ({fsdp['tokens_per_s'] / best:.2f}x)")
    print(f"largest loss gap 1 vs 2 processes: {loss_gap:.2e}; {'PASS' if record['pass'] else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
