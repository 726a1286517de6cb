"""Stop-and-resume reproduces the uninterrupted run bitwise on CPU."""

from __future__ import annotations

import torch
from starcoder_trainer import checkpoint as ckpt
from starcoder_trainer.recipe import Recipe, read_metrics

# dropout on, so the resumed run must also restore the RNG states to match
OVERRIDES = ("train.max_steps=5", "model.tiny.dropout=0.1", "train.grad_accum_steps=2", "train.eval_every=2")


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def _val(run_dir):
    return [(r["step"], r["val_loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]


def test_stop_and_resume_matches_the_uninterrupted_run_bitwise(tiny_config, quiet_log):
    full = Recipe(tiny_config(*OVERRIDES, "output.run=full"), log=quiet_log).setup()
    full.train()
    full.cleanup()

    first = Recipe(tiny_config(*OVERRIDES, "output.run=parts"), log=quiet_log).setup()
    summary = first.train(stop_at=3)
    first.cleanup()
    assert summary.steps == 3 and summary.stopped_by == "stop_at=3"
    assert ckpt.step_of(summary.checkpoint) == 3

    second = Recipe(tiny_config(*OVERRIDES, "output.run=parts"), resume="auto", log=quiet_log).setup()
    assert second.resume_from == first.run_dir / "checkpoint-3" and second.step == 3
    second.train()
    second.cleanup()

    assert _losses(first.run_dir) == _losses(full.run_dir)  # float equality: bitwise
    assert len(_losses(full.run_dir)) == 5
    assert _val(first.run_dir) == _val(full.run_dir)
    a, b = full.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_from_an_explicit_checkpoint_and_a_run_folder(tiny_config, quiet_log):
    r = Recipe(tiny_config("train.max_steps=2", "train.save_every=1"), log=quiet_log).setup()
    r.train()
    r.cleanup()
    assert [p.name for p in ckpt.list_checkpoints(r.run_dir)] == ["checkpoint-1", "checkpoint-2"]
    again = Recipe(tiny_config("train.max_steps=3"), resume=str(r.run_dir / "checkpoint-1"), log=quiet_log).setup()
    assert again.step == 1
    from_run = Recipe(tiny_config("train.max_steps=3"), resume=str(r.run_dir), log=quiet_log).setup()
    assert from_run.step == 2


def test_a_fresh_start_refuses_a_run_folder_that_holds_checkpoints(tiny_config, quiet_log):
    import pytest

    r = Recipe(tiny_config("train.max_steps=1"), log=quiet_log).setup()
    r.train()
    r.cleanup()
    with pytest.raises(ckpt.CheckpointError, match="--resume auto"):
        Recipe(tiny_config("train.max_steps=1"), log=quiet_log).setup()


def test_a_stopped_run_times_its_steps_not_its_checkpoint(tiny_config, quiet_log, monkeypatch):
    """tokens/s of a stopped run: the checkpoint written at the stop is host work, off the clock (counted once)."""
    import time

    r = Recipe(tiny_config("train.max_steps=5", "train.save_every=0", "train.eval_every=0"), log=quiet_log).setup()
    save = r.save

    def slow_save():
        time.sleep(1.0)
        return save()

    monkeypatch.setattr(r, "save", slow_save)
    summary = r.train(stop_at=2)
    r.cleanup()
    assert summary.stopped_by == "stop_at=2"
    assert 0 < summary.train_seconds < 1.0  # two tiny steps; the 1 s save is not in it
