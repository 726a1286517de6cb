"""Benchmark: the training loop's tokens/s against a minimal hand-written loop and transformers' Trainer.

    python packages/trainer/benchmarks/bench_loop.py --out runs/bench [--steps 10] [--rounds 1] [--default-run]

Same model (GPTBigCode preset: 4 layers, 256 wide, 8 heads, vocab 8192, 256 positions,
fp32 on the CPU), same packed blocks (seq 256, batch 8), same optimizer recipe (AdamW,
warm-up + cosine, clipping at 1.0), same number of steps, in one process:

- plain: the minimal loop a person writes by hand (forward, backward, clip, step);
- ours: ``starcoder_trainer.recipe.Recipe.train`` (timed by its own summary, which
  leaves out the end-of-run evaluation and checkpoint);
- Trainer: ``transformers.Trainer`` with logging, saving and evaluation off.

The first ``--warmup`` steps of each are not timed. With ``--rounds`` > 1 the loops run
interleaved and each keeps its best round (the machine may be shared); tokens per
CPU-second are recorded next to the wall rates, and ``--threads 1`` makes them immune
to other processes' load. Targets: ours >= 0.95x plain and >= 1.15x Trainer. (With
transformers >= 5 the Trainer defaults to fused AdamW and runs within a few percent of
the plain loop on the CPU, so the Trainer target can only be met by a loop faster than
the plain one.) ``--default-run`` also times ``starcoder-train``
with the repository's config.yaml (wall time, first/last validation loss).
Writes ``<out>/loop.json``.
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
from datetime import datetime, timezone
from pathlib import Path

SIZES = {"n_layer": 4, "n_embd": 256, "n_head": 8, "vocab_size": 8192, "n_positions": 256}
SEQ, BATCH, LR, WARMUP_LR_STEPS = 256, 8, 1e-3, 2
TARGET_VS_PLAIN, TARGET_VS_TRAINER = 0.95, 1.15


def repo_root() -> Path:
    from device_backend.paths import find_repo_root

    return Path(find_repo_root())


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    cmd = ["git", "-C", str(repo), "-c", "user.email=bench@example.com", "-c", "user.name=bench", *args]
    subprocess.run(cmd, check=True, capture_output=True, env=env)


def make_corpus(dest: Path, target_bytes: int) -> int:
    """A git repository of real Python code (transformers' model files) large enough for an 8192-token BPE."""
    import transformers

    source = Path(transformers.__file__).parent / "models"
    dest.mkdir(parents=True)
    written = 0
    for path in sorted(source.rglob("modeling_*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if max(map(len, text.splitlines() or [""])) > 1000:
            continue
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written += len(text.encode())
        if written >= target_bytes:
            break
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "corpus")
    return written


def make_recipe(corpus: Path, out_dir: Path, total_steps: int):
    from starcoder_trainer.config import load_config
    from starcoder_trainer.recipe import Recipe

    overrides = [f"model.tiny.{k}={v}" for k, v in SIZES.items()] + [
        "device.request=cpu", "orchard.mode=off", f"data.seq_len={SEQ}", "data.val_fraction=0.02",
        "data.cache_dir=''", f"train.batch_size={BATCH}", f"train.max_steps={total_steps}", f"train.lr={LR}",
        f"train.warmup_steps={WARMUP_LR_STEPS}", "train.eval_every=0", "train.eval_batches=1",
        f"train.log_every={total_steps}", "train.save_every=0", "train.progress=false",
        f"output.dir={out_dir}", "output.run=ours", "output.plot=false",
    ]
    cfg = load_config(None, overrides, root=corpus)
    return Recipe(cfg, log=lambda m: None).setup()


def fresh_model(config):
    import torch
    from transformers import GPTBigCodeForCausalLM

    torch.manual_seed(1234)
    model = GPTBigCodeForCausalLM._from_config(config, attn_implementation="sdpa")
    model.config.use_cache = False
    return model.train()


def run_ours(corpus: Path, tmp: Path, warm: int, steps: int) -> tuple[float, float]:
    """(tokens per wall second from the run's own summary, tokens per CPU second of the whole train() call)."""
    recipe = make_recipe(corpus, tmp / f"ours-{time.time_ns()}", warm + steps)
    recipe.train(stop_at=warm)
    recipe._stop_signal = None
    cpu = time.process_time()
    summary = recipe.train()  # CPU time also counts its final 1-batch evaluation and checkpoint (conservative)
    cpu = time.process_time() - cpu
    recipe.cleanup()
    return summary.tokens / summary.train_seconds, summary.tokens / cpu


def run_plain(blocks, config, warm: int, steps: int) -> tuple[float, float]:
    import functools

    import torch
    from starcoder_trainer.recipe import lr_factor

    model = fresh_model(config)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.95), fused=True)  # what Trainer uses by default too
    total = warm + steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, functools.partial(lr_factor, warmup=WARMUP_LR_STEPS, total=total, min_ratio=0.1)
    )
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(0))
    start = cpu = 0.0
    for step in range(total):
        if step == warm:
            start, cpu = time.perf_counter(), time.process_time()
        idx = order[(step * BATCH + torch.arange(BATCH)) % len(blocks)]
        batch = blocks[idx]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    float(loss.detach())
    tokens = steps * BATCH * SEQ
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)


def run_trainer(blocks, config, warm: int, steps: int, tmp: Path) -> tuple[float, float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Timer(TrainerCallback):
        start = end = cpu_start = cpu_end = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warm:
                Timer.start, Timer.cpu_start = time.perf_counter(), time.process_time()
            elif state.global_step == warm + steps:
                Timer.end, Timer.cpu_end = time.perf_counter(), time.process_time()

    data = [{"input_ids": b, "labels": b} for b in blocks]
    args = TrainingArguments(
        output_dir=str(tmp / f"trainer-{time.time_ns()}"),
        per_device_train_batch_size=BATCH,
        max_steps=warm + steps,
        learning_rate=LR,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        warmup_steps=WARMUP_LR_STEPS,
        lr_scheduler_type="cosine",
        max_grad_norm=1.0,
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=1234,
    )
    trainer = Trainer(model=fresh_model(config), args=args, train_dataset=data, callbacks=[Timer()])
    trainer.train()
    tokens = steps * BATCH * SEQ
    return tokens / (Timer.end - Timer.start), tokens / (Timer.cpu_end - Timer.cpu_start)


def default_run(root: Path, tmp: Path) -> dict:
    """Time `starcoder-train` with the repository's config.yaml (outputs in a temporary folder)."""
    out = tmp / "default-runs"
    cmd = [sys.executable, "-m", "starcoder_trainer", "--repo", str(root), "--set", f"output.dir={out}",
           "--set", "train.progress=false"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    summaries = sorted(out.glob("*/summary.json"))
    summary = json.loads(summaries[-1].read_text()) if summaries else {}
    return {
        "command": "starcoder-train --repo ROOT (repository config.yaml)",
        "returncode": proc.returncode,
        "wall_s": round(wall, 1),
        "steps": summary.get("steps"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "first_val_loss": summary.get("first_val_loss"),
        "last_val_loss": summary.get("last_val_loss"),
        "first_train_loss": summary.get("first_train_loss"),
        "last_train_loss": summary.get("last_train_loss"),
        "device": summary.get("device"),
        "stderr_tail": proc.stderr[-800:] if proc.returncode else "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench", help="folder for loop.json")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per loop (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; best of each counts (default 1)")
    parser.add_argument("--corpus-mb", type=float, default=2.0, help="MB of code for the tokenizer and blocks")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads for all loops (0: torch's default); 1 makes CPU-second "
                        "rates immune to other processes' load")
    parser.add_argument("--default-run", action="store_true", help="also time starcoder-train with config.yaml")
    args = parser.parse_args(argv)

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    root = repo_root()
    out = Path(args.out)
    if not out.is_absolute():
        out = root / out
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "ours": [], "trainer": []}
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp_name:
        tmp = Path(tmp_name)
        corpus_bytes = make_corpus(tmp / "corpus", int(args.corpus_mb * 1e6))
        probe = make_recipe(tmp / "corpus", tmp / "probe", 1)
        blocks, config = probe.train_blocks, probe.model.config
        vocab = len(probe.tokenizer)
        probe.cleanup()
        del probe
        print(f"corpus {corpus_bytes / 1e6:.1f} MB -> {len(blocks)} blocks of {SEQ}; vocab {vocab}; "
              f"{args.steps} timed steps x {BATCH * SEQ} tokens")
        loops = {
            "plain": lambda: run_plain(blocks, config, args.warmup, args.steps),
            "ours": lambda: run_ours(tmp / "corpus", tmp, args.warmup, args.steps),
            "trainer": lambda: run_trainer(blocks, config, args.warmup, args.steps, tmp),
        }
        for r in range(args.rounds):
            for name, run in loops.items():
                runs[name].append(run())
                wall, cpu = runs[name][-1]
                print(f"round {r + 1}: {name:8s} {wall:8,.0f} tokens/s (wall)  {cpu:8,.0f} tokens per CPU-second")
        default = default_run(root, tmp) if args.default_run else None

    # best round of each (the least disturbed on a shared machine); CPU-second rates are less sensitive to
    # other processes than wall rates and are recorded next to them; pass/fail uses the wall rates
    best = {k: max(w for w, _ in v) for k, v in runs.items()}
    best_cpu = {k: max(c for _, c in v) for k, v in runs.items()}
    ratio = {"vs_plain": best["ours"] / best["plain"], "vs_trainer": best["ours"] / best["trainer"]}
    ratio_cpu = {"vs_plain": best_cpu["ours"] / best_cpu["plain"], "vs_trainer": best_cpu["ours"] / best_cpu["trainer"]}
    passed = ratio["vs_plain"] >= TARGET_VS_PLAIN and ratio["vs_trainer"] >= TARGET_VS_TRAINER
    record = {
        "name": "loop",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 (3.10 support)
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "transformers": transformers.__version__,
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "setup": {**SIZES, "vocab_actual": vocab, "seq_len": SEQ, "batch_size": BATCH, "dtype": "float32",
                  "device": "cpu", "timed_steps": args.steps, "warmup_steps": args.warmup, "rounds": args.rounds},
        "baseline": {
            "plain_tokens_per_s": best["plain"],
            "trainer_tokens_per_s": best["trainer"],
            "plain_tokens_per_cpu_s": best_cpu["plain"],
            "trainer_tokens_per_cpu_s": best_cpu["trainer"],
            "plain_rounds": runs["plain"],
            "trainer_rounds": runs["trainer"],
        },
        "ours": {"tokens_per_s": best["ours"], "tokens_per_cpu_s": best_cpu["ours"], "rounds": runs["ours"]},
        "ratio": ratio,
        "ratio_cpu_time": ratio_cpu,
        "target": {"vs_plain": TARGET_VS_PLAIN, "vs_trainer": TARGET_VS_TRAINER},
        "pass": passed,
    }
    if default is not None:
        record["default_run"] = default
    (out / "loop.json").write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"\nloop: ours {best['ours']:,.0f} tokens/s; plain {best['plain']:,.0f} ({ratio['vs_plain']:.2f}x, "
        f"target >= {TARGET_VS_PLAIN}); Trainer {best['trainer']:,.0f} ({ratio['vs_trainer']:.2f}x, "
        f"target >= {TARGET_VS_TRAINER})\n  per CPU-second: {ratio_cpu['vs_plain']:.2f}x plain, "
        f"{ratio_cpu['vs_trainer']:.2f}x Trainer; load average {record['machine']['load_avg']}"
    )
    if default is not None:
        print(f"default starcoder-train: {default['wall_s']} s wall, rc {default['returncode']}, val loss "
              f"{default['first_val_loss']} -> {default['last_val_loss']}")
    print(f"  {'PASS' if passed else 'FAIL'} -> {out / 'loop.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
