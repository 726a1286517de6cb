"""The real trainer under torchrun: 2 CPU processes (gloo) against 1, tiny preset, through the CLI.

- DDP and FSDP runs log the same train and validation losses as one process with the same
  config (the global batch does not depend on the number of processes), within LOSS_TOL.
- A checkpoint written by 2 processes resumes in 1 (``--resume auto``) and reaches the same losses.
- LoRA with dropout on 2 processes: per-rank random streams, saved, so 2 processes resume exactly.
- The FSDP checkpoint is a plain transformers model equal to the single-process one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

LOSS_TOL = 1e-5  # float sums in another order (per-rank micro-batches, all-reduce)
STEPS = ["train.max_steps=4", "train.save_every=2", "train.eval_every=2", "train.keep_last=3"]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def _train(repo: Path, overrides: list[str], run: str, nproc: int = 1, *extra: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env.update(OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    args = [a for o in [*overrides, *STEPS, f"output.run={run}"] for a in ("--set", o)]
    cmd = [*launcher, "-m", "starcoder_trainer", "--repo", str(repo), *args, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    lines = (repo / "runs" / run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _losses(metrics: list[dict], after: int = 0) -> dict[tuple[int, str], float]:
    return {(m["step"], k): m[k] for m in metrics for k in ("loss", "val_loss") if k in m and m["step"] > after}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key, value in a.items():
        assert abs(value - b[key]) <= LOSS_TOL * max(1.0, abs(b[key])), (key, value, b[key])


def _resume(repo: Path, overrides: list[str], source: str, run: str, nproc: int = 1) -> list[dict]:
    """Copy ``source``'s run without its last checkpoint, then continue it in ``nproc`` processes."""
    shutil.copytree(repo / "runs" / source, repo / "runs" / run)
    shutil.rmtree(repo / "runs" / run / "checkpoint-4")
    return _train(repo, overrides, run, nproc, "--resume", "auto")


@pytest.fixture
def single(git_repo, tiny_overrides):
    return _train(git_repo, tiny_overrides, "one")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(git_repo, tiny_overrides, single, strategy):
    two = _train(git_repo, [*tiny_overrides, f"train.strategy={strategy}"], strategy, 2)
    _assert_same(_losses(two), _losses(single))
    for step in (2, 4):
        assert (git_repo / "runs" / strategy / f"checkpoint-{step}" / "model.safetensors").is_file()

    resumed = _resume(git_repo, tiny_overrides, strategy, f"{strategy}-resumed")
    _assert_same(_losses(resumed, after=2), _losses(single, after=2))

    from transformers import AutoModelForCausalLM

    ours = AutoModelForCausalLM.from_pretrained(git_repo / "runs" / strategy / "checkpoint-4").state_dict()
    ref = AutoModelForCausalLM.from_pretrained(git_repo / "runs" / "one" / "checkpoint-4").state_dict()
    assert ours.keys() == ref.keys()
    assert all(torch.allclose(ours[k], ref[k], atol=1e-4) for k in ref)


def test_lora_with_dropout_on_two_processes_draws_per_rank_masks_and_resumes_exactly(git_repo, tiny_overrides):
    """LoRA under DDP with dropout: each rank its own random stream, all of them in the checkpoint.

    With one seed for every rank, the ranks would drop the same positions (correlated noise);
    with only rank 0's state saved, a 2-process resume would draw other masks than the
    uninterrupted run and its losses would drift.
    """
    overrides = [*tiny_overrides, "train.strategy=ddp", "model.tiny.dropout=0.1", "model.lora.enabled=true"]
    full = _train(git_repo, overrides, "lora", 2)
    state = torch.load(git_repo / "runs" / "lora" / "checkpoint-2" / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 1
    assert not torch.equal(state["rng"]["torch_cpu"], state["rng_ranks"][0]["torch_cpu"])
    assert (git_repo / "runs" / "lora" / "checkpoint-4" / "adapter_model.safetensors").is_file()

    resumed = _resume(git_repo, overrides, "lora", "lora-resumed", 2)
    _assert_same(_losses(resumed, after=2), _losses(full, after=2))
