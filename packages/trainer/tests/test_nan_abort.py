"""A non-finite loss skips the step; K in a row abort with a clear error; the last checkpoint stays intact."""

from __future__ import annotations

import pytest
import torch
from starcoder_trainer import checkpoint as ckpt
from starcoder_trainer.recipe import NonFiniteLossError, Recipe


class PoisonedRecipe(Recipe):
    """The loss turns NaN at the given (1-based) optimizer steps."""

    poisoned: frozenset[int] = frozenset()

    def _loss_step(self, batch):
        loss = super()._loss_step(batch)
        return loss * float("nan") if self.step + 1 in self.poisoned else loss


def test_one_bad_step_is_skipped_and_training_goes_on(tiny_config, quiet_log):
    r = PoisonedRecipe(tiny_config("train.max_steps=3", "train.max_bad_steps=2"), log=quiet_log).setup()
    r.poisoned = {2}
    r.train(stop_at=1)
    after_1 = {k: v.clone() for k, v in r.model.state_dict().items()}
    r._stop_signal = None
    summary = r.train(stop_at=2)
    assert summary.skipped_steps == 1 and r.step == 2
    assert any("step 2: non-finite loss" in line for line in quiet_log.lines)
    assert all(torch.equal(v, after_1[k]) for k, v in r.model.state_dict().items())  # no update from step 2
    r._stop_signal = None
    summary = r.train()
    assert summary.steps == 3 and summary.skipped_steps == 0
    assert not all(torch.equal(v, after_1[k]) for k, v in r.model.state_dict().items())
    assert all(torch.isfinite(p).all() for p in r.model.parameters())


def test_k_bad_steps_in_a_row_abort_and_keep_the_last_good_checkpoint(tiny_config, quiet_log):
    r = PoisonedRecipe(
        tiny_config("train.max_steps=10", "train.save_every=2", "train.max_bad_steps=3"), log=quiet_log
    ).setup()
    r.poisoned = {3, 4, 5}
    with pytest.raises(NonFiniteLossError) as err:
        r.train()
    r.cleanup()
    message = str(err.value)
    assert "3 steps in a row" in message and "steps 3..5" in message
    assert "checkpoint-2" in message and "Lower train.lr" in message
    assert [p.name for p in ckpt.list_checkpoints(r.run_dir)] == ["checkpoint-2"]
    assert ckpt.verify(r.run_dir / "checkpoint-2") is None
    state = ckpt.load_state(r.run_dir / "checkpoint-2")
    assert state["step"] == 2
