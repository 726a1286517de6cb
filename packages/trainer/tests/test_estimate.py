"""The memory estimator's arithmetic: parameter counts against real models, bytes per component by hand,
saved activations against what autograd keeps (saved_tensors_hooks), and the fit verdict / advice."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from starcoder_trainer import estimate as E
from starcoder_trainer.estimate import EstimateError, LoraSpec, ModelShape, estimate

GPT = {"model_type": "gpt_bigcode", "vocab_size": 256, "n_positions": 32, "n_embd": 64, "n_layer": 3, "n_head": 4}
SC2 = {
    "model_type": "starcoder2", "vocab_size": 256, "max_position_embeddings": 32, "hidden_size": 64,
    "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
}


def _model(cfg: dict, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {k: v for k, v in {**cfg, **extra}.items() if k != "model_type"}
    config = AutoConfig.for_model(cfg["model_type"], bos_token_id=0, eos_token_id=0, **kw)
    torch.manual_seed(0)
    return config, AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


@pytest.mark.parametrize(
    ("cfg", "extra"),
    [
        (GPT, {}),
        (GPT, {"multi_query": False}),
        (GPT, {"n_inner": 100, "tie_word_embeddings": False}),
        (SC2, {}),
        (SC2, {"use_bias": False, "num_key_value_heads": 4}),
        (SC2, {"tie_word_embeddings": False}),
    ],
)
def test_parameter_count_equals_the_real_model(cfg, extra):
    config, model = _model(cfg, **extra)
    shape = ModelShape.from_config(config)
    assert shape.parameter_count() == sum(p.numel() for p in model.parameters())
    assert ModelShape.from_config({**cfg, **extra}).parameter_count() == shape.parameter_count()  # config.json


@pytest.mark.parametrize("cfg", [GPT, SC2])
def test_lora_parameter_count_equals_peft(cfg):
    peft = pytest.importorskip("peft", reason="LoRA needs peft (starcoder-trainer[lora])")
    config, model = _model(cfg)
    shape = ModelShape.from_config(config)
    spec = LoraSpec(r=4)
    targets = list(E.LORA_TARGETS[shape.model_type])
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    assert spec.parameter_count(shape) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_bytes_per_component_by_hand():
    shape = ModelShape.from_config(GPT)
    n = shape.parameter_count()
    # 256*64 (wte) + 32*64 (wpe) + 3 blocks + 2*64 (ln_f); a block: 4*64 LayerNorm + linears with bias.
    block = 4 * 64 + (64 * 96 + 96) + (64 * 64 + 64) + (64 * 256 + 256) + (256 * 64 + 64)
    assert n == 256 * 64 + 32 * 64 + 3 * block + 2 * 64
    full = estimate(shape, batch_size=2, seq_len=32)
    assert (full.weights, full.gradients, full.optimizer) == (4 * n, 4 * n, 8 * n)
    assert full.loss_head == 3 * 4 * 2 * 32 * 256  # float32 log-probs, their gradient and the logits' gradient
    # The CPU flash kernel has no dropout: GPTBigCode's default attn_pdrop 0.1 takes the math path.
    assert full.attention_path == "math"
    scores = 2 * 4 * 32 * 32 * 4  # B*H*S*S float32
    assert full.attention == 3 * 3 * scores + 2 * scores  # 3 kept per block (3 blocks) + 2 transient

    lora = estimate(shape, batch_size=2, seq_len=32, lora=LoraSpec(r=4))
    n_lora = 3 * 4 * ((64 + 96) + (64 + 64) + (64 + 256) + (256 + 64))
    assert lora.trainable == n_lora
    assert (lora.weights, lora.gradients, lora.optimizer) == (4 * (n + n_lora), 4 * n_lora, 8 * n_lora)

    sharded = estimate(shape, batch_size=2, seq_len=32, world_size=2, strategy="fsdp")
    assert (sharded.weights, sharded.gradients, sharded.optimizer) == (2 * n, 2 * n, 4 * n)

    bf16 = estimate(shape, batch_size=2, seq_len=32, dtype="bfloat16", device_type="cuda")
    linear = 3 * (64 * 96 + 64 * 64 + 64 * 256 + 256 * 64) + 256 * 64
    assert bf16.weights == 4 * n + 2 * linear  # float32 masters + autocast's bfloat16 copies
    assert bf16.attention_path == "fused" and bf16.attention == 0

    nodrop = ModelShape.from_config({**GPT, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0})
    assert estimate(nodrop, batch_size=2, seq_len=32).attention_path == "fused"


def test_checkpointing_keeps_one_input_per_block():
    shape = ModelShape.from_config({**GPT, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0})
    off = estimate(shape, batch_size=2, seq_len=32)
    on = estimate(shape, batch_size=2, seq_len=32, gradient_checkpointing=True)
    tokens, d = 64, 64
    block = (off.activations - tokens * (8 + 2 * d * 4 + 8)) // 3  # the part outside the blocks is shared
    assert on.activations == 3 * tokens * d * 4 + block + tokens * (8 + 2 * d * 4 + 8)
    assert on.activations_if_checkpointing == off.activations
    assert on.peak < off.peak


def _saved_bytes(model, batch, seq, vocab) -> int:
    """Bytes of the non-parameter tensors autograd keeps for backward, each storage once."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    x = torch.randint(0, vocab, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=x, labels=x)
    return sum(seen.values())


@pytest.mark.parametrize(
    ("cfg", "extra", "lora"),
    [
        (GPT, {"attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}, False),  # fused attention
        (GPT, {}, False),  # dropout 0.1: math path with B*H*S*S scores
        (GPT, {"multi_query": False, "attn_pdrop": 0.0, "resid_pdrop": 0.0, "embd_pdrop": 0.0}, False),
        (SC2, {}, False),
        (GPT, {}, True),
        (SC2, {}, True),
    ],
)
def test_saved_activations_match_what_autograd_keeps(cfg, extra, lora):
    config, model = _model(cfg, **extra)
    spec = None
    if lora:
        peft = pytest.importorskip("peft", reason="LoRA needs peft (starcoder-trainer[lora])")
        spec = LoraSpec(r=8, dropout=0.05)
        targets = list(E.LORA_TARGETS[config.model_type])
        model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets))
    model.train()
    shape = ModelShape.from_config(config)
    batch, seq = 2, 32
    est = estimate(shape, batch_size=batch, seq_len=seq, lora=spec)
    math_path = est.attention_path == "math"
    kept_scores, _ = E._attention_bytes(shape, batch, seq, "float32", math_path)
    predicted = est.activations + shape.num_layers * kept_scores + 4 * batch * seq * shape.vocab_size
    measured = _saved_bytes(model, batch, seq, shape.vocab_size)
    assert predicted == pytest.approx(measured, rel=0.03)


def test_does_not_fit_says_what_to_change():
    shape = ModelShape.from_config({**GPT, "n_layer": 8, "n_embd": 256, "n_positions": 512, "vocab_size": 8192})
    roomy = estimate(shape, batch_size=8, seq_len=512, budget=64 * E.GIB, budget_source="test")
    assert roomy.fits is True and roomy.suggestions == []
    tight = estimate(shape, batch_size=8, seq_len=512, budget=roomy.peak // 3, budget_source="test")
    assert tight.fits is False
    text = tight.format()
    assert "does NOT fit" in text and "gradient_checkpointing: true" in text
    assert any("train.batch_size" in s and "grad_accum_steps: " in s for s in tight.suggestions)
    assert any("lora.enabled: true" in s for s in tight.suggestions)
    assert json.loads(json.dumps(tight.to_dict()))["fits"] is False
    # On the CPU the check allows for glibc's retained memory; on CUDA the plain peak counts.
    edge = estimate(shape, batch_size=8, seq_len=512, budget=roomy.peak + 1)
    assert edge.fits is False and edge.peak_with_slack > edge.peak
    assert estimate(shape, batch_size=8, seq_len=512, budget=roomy.peak + 1, device_type="cuda").fits is True


def test_unknown_architecture_and_bad_settings_are_refused():
    with pytest.raises(EstimateError, match="gpt_bigcode"):
        ModelShape.from_config({"model_type": "bert"})
    shape = ModelShape.from_config(GPT)
    with pytest.raises(EstimateError, match="dtype"):
        estimate(shape, batch_size=1, seq_len=8, dtype="int8")
    with pytest.raises(EstimateError, match="positive"):
        estimate(shape, batch_size=0, seq_len=8)


def _config(name="tiny-starcoder", **train):
    tiny = SimpleNamespace(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=64, dropout=0.1)
    lora = SimpleNamespace(enabled=False, r=8, dropout=0.05, target_modules=None)
    model = SimpleNamespace(
        name=name, is_preset=name == "tiny-starcoder", tiny=tiny, lora=lora, gradient_checkpointing=False,
        revision=None, trust_remote_code=False,
    )
    t = SimpleNamespace(batch_size=4, grad_accum_steps=1, strategy="auto", refuse_if_over_budget=False)
    t.__dict__.update(train)
    return SimpleNamespace(
        model=model, train=t, data=SimpleNamespace(seq_len=64),
        device=SimpleNamespace(request="cpu", memory_fraction=None), root=None,
    )


def _choice(budget):
    return SimpleNamespace(dtype="float32", device_type="cpu", memory_budget_bytes=budget, memory_budget_source="fake")


def test_main_estimate_reads_a_folder_config_and_returns_the_verdict(tmp_path, monkeypatch, capsys):
    import device_backend

    (tmp_path / "sc2").mkdir()
    (tmp_path / "sc2" / "config.json").write_text(json.dumps(SC2))
    monkeypatch.setattr(device_backend, "setup", lambda *a, **k: _choice(10 * E.GIB), raising=False)
    assert E.main_estimate(_config("sc2"), tmp_path) == 0
    out = capsys.readouterr().out
    assert "memory estimate: sc2" in out and "fits" in out and "with LoRA" in out

    monkeypatch.setattr(device_backend, "setup", lambda *a, **k: _choice(1024), raising=False)
    assert E.main_estimate(_config(), tmp_path) == 1
    assert "does NOT fit" in capsys.readouterr().out

    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert E.main_estimate(_config("bert"), tmp_path) == 2


def test_preflight_warns_or_refuses():
    logged = []
    result = E.preflight(_config(), _choice(1024), log=logged.append)
    assert result.fits is False and logged[0].startswith("WARNING memory estimate")
    with pytest.raises(MemoryError, match="refuse_if_over_budget"):
        E.preflight(_config(refuse_if_over_budget=True), _choice(1024), log=logged.append)
    logged.clear()
    assert E.preflight(_config(), _choice(64 * E.GIB), log=logged.append).fits is True
    assert "predicted peak" in logged[0]


def test_several_processes_split_the_batch_and_share_the_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    one = E.from_config(_config(), _choice(8 * E.GIB), world_size=1)
    two = E.from_config(_config(strategy="fsdp"), _choice(8 * E.GIB), world_size=2)
    assert (one.batch_size, two.batch_size) == (4, 2)  # train.batch_size is the global micro-batch
    assert two.strategy == "fsdp" and two.weights == one.weights // 2
    assert two.budget == 4 * E.GIB and "2 processes" in two.budget_source  # two processes share the RAM
    ddp = E.from_config(_config(), _choice(8 * E.GIB), world_size=2)
    assert ddp.strategy == "ddp" and ddp.weights == one.weights
