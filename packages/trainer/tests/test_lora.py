"""LoRA on the tiny preset: only adapters train, adapter checkpoints resume, merged export loads plainly."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft", reason="LoRA needs peft (pip install 'starcoder-trainer[lora]')")

from starcoder_trainer import checkpoint as ckpt
from starcoder_trainer.model import LORA_TARGETS
from starcoder_trainer.recipe import BASE_MODEL_DIR, Recipe

LORA = ("model.lora.enabled=true", "model.lora.r=4", "model.lora.dropout=0.0", "train.lr=0.01")


def test_lora_step_trains_only_adapters_and_exports_a_merged_model(tiny_config, quiet_log):
    r = Recipe(tiny_config(*LORA, "train.max_steps=2", "model.lora.merge_on_export=true"), log=quiet_log).setup()
    named = dict(r.model.named_parameters())
    trainable = {k for k, p in named.items() if p.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    assert {k.split(".")[-4] for k in trainable if "lora_A" in k} == set(LORA_TARGETS["gpt_bigcode"])
    before = {k: v.detach().clone() for k, v in named.items()}

    summary = r.train()
    r.cleanup()

    changed = {k for k, p in r.model.named_parameters() if not torch.equal(p, before[k])}
    assert changed and changed <= trainable  # frozen base weights did not move
    path = r.run_dir / "checkpoint-2"
    assert summary.checkpoint == str(path) and ckpt.verify(path) is None
    assert (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
    assert not (path / "model.safetensors").exists()
    assert (r.run_dir / BASE_MODEL_DIR / "model.safetensors").is_file()

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(summary.extra["merged"]).eval()
    ids = torch.tensor([[5, 17, 42, 99, 120, 7]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, r.model.eval()(ids).logits, rtol=1e-4, atol=1e-5)


def test_lora_run_resumes_from_its_adapter_checkpoint(tiny_config, quiet_log):
    first = Recipe(tiny_config(*LORA, "train.max_steps=3"), log=quiet_log).setup()
    first.train(stop_at=1)
    first.cleanup()
    adapters = {k: v.clone() for k, v in first.model.named_parameters() if v.requires_grad}
    again = Recipe(tiny_config(*LORA, "train.max_steps=3"), resume="auto", log=quiet_log).setup()
    assert again.step == 1
    resumed = {k: v for k, v in again.model.named_parameters() if v.requires_grad}
    assert resumed.keys() == adapters.keys()
    assert all(torch.equal(resumed[k].cpu(), adapters[k]) for k in adapters)
    assert again.train().steps == 3
