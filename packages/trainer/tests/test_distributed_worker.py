"""A minimal training loop over DistContext, run by the distributed tests (and bench_distributed).

Not a test module by itself (it defines no tests): the tests launch it with
``python`` (one process) or ``torchrun`` (several) and read what it writes.

    python test_distributed_worker.py SPEC.json
    torchrun --standalone --nproc-per-node 2 test_distributed_worker.py SPEC.json

SPEC keys: out (folder), strategy, steps, batch (global micro-batch), accum,
seq, blocks, layers, width, heads, vocab, save_at (step or null), resume (checkpoint file or null),
threads (torch threads per process). It writes losses.json (with tokens/s from the second step on).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def build_model(spec: dict):
    import torch
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    torch.manual_seed(0)
    config = GPTBigCodeConfig(
        vocab_size=spec.get("vocab", 128),
        n_positions=spec.get("seq", 32),
        n_embd=spec.get("width", 64),
        n_layer=spec.get("layers", 2),
        n_head=spec.get("heads", 4),
        multi_query=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPTBigCodeForCausalLM._from_config(config, attn_implementation="sdpa")


def make_blocks(spec: dict):
    import torch

    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, spec.get("vocab", 128), (spec.get("blocks", 64), spec.get("seq", 32)), generator=gen)


def main(spec_path: str) -> int:
    import torch
    from starcoder_trainer.distributed import init_distributed

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    torch.set_num_threads(spec.get("threads", 1))
    ctx = init_distributed(spec.get("strategy"), "cpu")
    try:
        model = ctx.wrap(build_model(spec))
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.get("lr", 3e-3), weight_decay=0.01)
        blocks = make_blocks(spec)
        batch, accum = spec.get("batch", 4), spec.get("accum", 2)
        per_rank = ctx.per_rank_batch(batch)
        start = 0
        if spec.get("resume"):
            ckpt = torch.load(spec["resume"], weights_only=True)
            ctx.load_model_state(model, ckpt["model"])
            ctx.load_optimizer_state(model, optimizer, ckpt["optimizer"])
            start = ckpt["step"]

        # The data order every process agrees on; this rank reads a strided shard of it.
        order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(2))
        mine = order[list(ctx.shard(len(order)))]
        losses, tokens, t0 = [], 0, time.perf_counter()
        timed_tokens, timed_from = 0, None  # tokens/s from the second step on (the first warms up)
        for step in range(start, spec["steps"]):
            if step == start + 1:
                timed_from = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(accum):
                j = (step * accum + micro) % (len(mine) // per_rank)
                x = blocks[mine[j * per_rank : (j + 1) * per_rank]]
                with ctx.no_sync(model, sync=micro == accum - 1):
                    loss = model(input_ids=x, labels=x).loss / accum
                    loss.backward()
                step_loss += float(loss.detach())
                tokens += x.numel() * ctx.world_size
                timed_tokens += x.numel() * ctx.world_size if timed_from is not None else 0
            ctx.clip_grad_norm_(model, 1.0)
            optimizer.step()
            losses.append(ctx.all_reduce_mean(step_loss))
            if spec.get("save_at") == step + 1:
                state = {
                    "model": ctx.model_state_for_save(model),
                    "optimizer": ctx.optimizer_state_for_save(model, optimizer),
                    "step": step + 1,
                }
                if ctx.is_main:
                    torch.save(state, out / "checkpoint.pt")
                ctx.barrier()
        elapsed = time.perf_counter() - t0
        timed = time.perf_counter() - timed_from if timed_from is not None else None

        full = ctx.model_state_for_save(model)
        if ctx.is_main:
            torch.save(full, out / "final.pt")
            (out / "losses.json").write_text(
                json.dumps(
                    {
                        "losses": losses,
                        "tokens": tokens,
                        "seconds": elapsed,
                        "world": ctx.world_size,
                        "tokens_per_s": timed_tokens / timed if timed else None,
                    }
                )
            )
        if ctx.strategy != "fsdp":  # every rank's own copy, to compare bitwise
            local = {k: v.detach().cpu() for k, v in ctx.unwrap(model).state_dict().items()}
            torch.save(local, out / f"rank{ctx.rank}.pt")
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from starcoder_trainer.distributed import exit_process

        exit_process(code)  # gloo's worker threads against interpreter finalization: see its docstring
    sys.exit(code)
