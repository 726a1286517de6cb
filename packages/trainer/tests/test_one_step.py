"""One optimizer step from a config on a temporary git repository (nox -s one_step).

Loss finite, parameters changed, a checkpoint written, and the checkpoint loaded back
with plain transformers (AutoModelForCausalLM / AutoTokenizer) giving the same logits.
"""

from __future__ import annotations

import itertools
import math

import torch
from starcoder_trainer import checkpoint as ckpt
from starcoder_trainer.recipe import Recipe, read_metrics


def test_one_step_trains_and_writes_a_loadable_checkpoint(tiny_config, quiet_log):
    cfg = tiny_config("train.max_steps=1")
    recipe = Recipe(cfg, log=quiet_log).setup()
    before = {k: v.detach().clone() for k, v in recipe.model.state_dict().items()}

    summary = recipe.train()
    recipe.cleanup()

    assert summary.steps == 1
    assert summary.last_train_loss is not None and math.isfinite(summary.last_train_loss)
    # a fresh model predicts about uniformly over the vocabulary: loss near ln(vocab)
    assert abs(summary.last_train_loss - math.log(len(recipe.tokenizer))) < 1.5
    after = recipe.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no parameter changed after one optimizer step"
    assert any("attn" in k for k in changed) and any("wte" in k for k in changed)

    path = recipe.run_dir / "checkpoint-1"
    assert summary.checkpoint == str(path)
    assert ckpt.verify(path) is None
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    state = torch.load(path / ckpt.STATE_FILE, weights_only=True)
    assert state["step"] == 1 and state["data_position"] == cfg.train.batch_size
    assert set(state["rng"]) >= {"python", "torch_cpu"}
    assert (path / ckpt.CONFIG_FILE).read_text().startswith("repo:")

    records = read_metrics(recipe.run_dir / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = tokenizer("def area(self):\n    return self.side", return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 3
    assert ids.tolist() == recipe.tokenizer("def area(self):\n    return self.side", return_tensors="pt")[
        "input_ids"
    ].tolist()
    trained = recipe.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, trained(ids).logits, rtol=0, atol=0)


def test_lr_schedule_warms_up_from_the_first_step_then_decays_to_the_floor():
    from starcoder_trainer.recipe import lr_factor

    f = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert f[0] == 0.2 and f[3] == 0.8 and f[4] == 1.0  # warm-up: 1/5 .. 4/5, then the peak
    assert all(a >= b for a, b in itertools.pairwise(f[4:]))  # cosine never rises
    assert math.isclose(f[20], 0.1) and math.isclose(f[12], 0.55)


def test_loss_plot_is_written_when_matplotlib_is_installed(tmp_path):
    import json

    import pytest

    pytest.importorskip("matplotlib", reason="loss.png needs matplotlib (pip install 'starcoder-trainer[plot]')")
    from starcoder_trainer.recipe import plot_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        "\n".join(json.dumps(r) for r in [{"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0}, {"step": 2, "val_loss": 4.2}])
    )
    out = plot_metrics(metrics, tmp_path / "loss.png")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
