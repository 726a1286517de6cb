"""Model sources: a local folder (safetensors), a hub id offline (clear error), LoRA targets per architecture."""

from __future__ import annotations

import pytest
import torch
from starcoder_trainer.model import (
    LORA_TARGETS,
    ModelLoadError,
    apply_lora,
    build_model,
)
from starcoder_trainer.recipe import Recipe


def _save_tiny_model(folder, vocab_texts):
    from starcoder_trainer.tokenizer import train_tokenizer
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    tok = train_tokenizer(vocab_texts, 400)
    config = GPTBigCodeConfig(
        vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=1, n_head=4, bos_token_id=0, eos_token_id=0
    )
    GPTBigCodeForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


def test_a_local_folder_model_trains_one_step(git_repo, tiny_config, quiet_log):
    texts = [p.read_text() for p in git_repo.rglob("*.py")]
    tok = _save_tiny_model(git_repo / "models" / "mine", texts)  # untracked: not part of the training data
    r = Recipe(tiny_config("model.name=models/mine", "train.max_steps=1"), log=quiet_log).setup()
    assert r.model.config.n_layer == 1 and len(r.tokenizer) == len(tok)
    before = r.model.transformer.h[0].attn.c_attn.weight.detach().clone()
    summary = r.train()
    r.cleanup()
    assert summary.steps == 1 and not torch.equal(before, r.model.transformer.h[0].attn.c_attn.weight)


def test_an_unreachable_hub_id_names_the_problem(tiny_config, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    cfg = tiny_config("model.name=bigcode/no-such-model-for-tests")
    from starcoder_trainer.model import load_tokenizer

    with pytest.raises(ModelLoadError, match="bigcode/no-such-model-for-tests"):
        load_tokenizer(cfg, cfg.model.name)
    with pytest.raises(ModelLoadError, match="safetensors"):
        build_model(cfg, tokenizer=None, attn_implementation="sdpa")


def test_lora_targets_for_starcoder2(tiny_config):
    pytest.importorskip("peft", reason="LoRA needs peft (pip install 'starcoder-trainer[lora]')")
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    model = Starcoder2ForCausalLM(
        Starcoder2Config(
            vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64,
        )
    )
    peft_model = apply_lora(tiny_config("model.lora.enabled=true"), model)
    adapted = {n.split(".")[-4] for n, p in peft_model.named_parameters() if p.requires_grad and "lora_A" in n}
    assert adapted == set(LORA_TARGETS["starcoder2"])
    assert all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)
