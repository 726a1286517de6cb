"""Step 7 in-process: the "orchard" attention implementation for transformers (with a Python test kernel)."""

from __future__ import annotations

import orchard_bridge
import pytest
import torch
from orchard_bridge import ops

transformers = pytest.importorskip("transformers", reason="needs transformers (the test extra)")


def tiny_gpt_bigcode(attn: str, seed: int = 0):
    config = transformers.GPTBigCodeConfig(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4, multi_query=True,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return transformers.GPTBigCodeForCausalLM(config)


def loss_and_grads(model, ids, attention_mask=None):
    model.train()
    out = model(input_ids=ids, attention_mask=attention_mask, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(autouse=True)
def _registered():
    orchard_bridge.register_transformers()
    ops.reset_call_counts()
    yield
    ops.deactivate()
    ops.reset_call_counts()


def test_register_is_idempotent_and_adds_the_mask_builder():
    from orchard_bridge.hf import orchard_attention_forward
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    assert orchard_bridge.register_transformers() == "orchard"
    assert orchard_bridge.register_transformers() == "orchard"
    assert AttentionInterface._global_mapping["orchard"] is orchard_attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["orchard"] is sdpa_mask
    # nothing else was replaced
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    assert AttentionInterface._global_mapping["sdpa"] is sdpa_attention_forward


def test_orchard_model_trains_like_sdpa_on_the_kernel(python_kernel):
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    loss_s, grads_s = loss_and_grads(tiny_gpt_bigcode("sdpa"), ids)
    ops.reset_call_counts()
    loss_o, grads_o = loss_and_grads(tiny_gpt_bigcode("orchard"), ids)
    assert ops.call_counts()["kernel"] == 2 and ops.call_counts()["fallback"] == 0  # one call per layer
    torch.testing.assert_close(loss_o, loss_s)
    assert grads_o.keys() == grads_s.keys()
    for name in grads_s:
        torch.testing.assert_close(grads_o[name], grads_s[name], msg=name)


def test_padding_mask_falls_back_to_transformers_sdpa(python_kernel):
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :4] = 0  # left padding: the kernel has no arbitrary mask
    loss_s, grads_s = loss_and_grads(tiny_gpt_bigcode("sdpa"), ids, mask)
    ops.reset_call_counts()
    loss_o, grads_o = loss_and_grads(tiny_gpt_bigcode("orchard"), ids, mask)
    assert ops.call_counts() == {"kernel": 0, "fallback": 2, "fallback_reasons": {"attention mask": 2}}
    assert torch.equal(loss_o, loss_s)
    for name in grads_s:
        assert torch.equal(grads_o[name], grads_s[name]), name


def test_orchard_without_a_kernel_is_exactly_sdpa():
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(3))
    loss_s, _ = loss_and_grads(tiny_gpt_bigcode("sdpa"), ids)
    loss_o, _ = loss_and_grads(tiny_gpt_bigcode("orchard"), ids)
    assert torch.equal(loss_o, loss_s)
    assert ops.call_counts()["fallback_reasons"] == {"no kernel enabled": 2}


def test_from_pretrained_accepts_orchard(tmp_path, python_kernel):
    tiny_gpt_bigcode("sdpa").save_pretrained(tmp_path / "m")
    model = transformers.GPTBigCodeForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="orchard")
    assert model.config._attn_implementation == "orchard"
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 6, dtype=torch.long))
    assert ops.call_counts()["kernel"] == 2


def test_generation_with_cache_decodes_through_the_fallback(python_kernel):
    model = tiny_gpt_bigcode("orchard").eval()
    ref = tiny_gpt_bigcode("sdpa").eval()
    ids = torch.randint(1, 64, (1, 5), generator=torch.Generator().manual_seed(4))
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(model.generate(ids, **kwargs), ref.generate(ids, **kwargs))
    assert ops.call_counts()["kernel"] >= 2  # prompt and decode steps (one query, no causal mask) both
