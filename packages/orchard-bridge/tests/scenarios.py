"""Scenarios that load a fixture library, each run in a fresh process by the tests (see conftest.py).

Usage: ``python scenarios.py library '{"repo": ..., "cache_dir": ..., "checks": [...]}'``. Prints one JSON line: the
BridgeStatus as a dict plus the result of every requested check. Numerical comparisons happen here, where the
tensors live; the tests assert on the numbers.
"""

from __future__ import annotations

import json
import sys
import tempfile

import orchard_bridge
import torch
import torch.nn.functional as F
from orchard_bridge import ops
from orchard_bridge.load import registered_schemas


def _max_diff(a, b) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


def _qkv(*shape, kv_heads=None, dtype=torch.float32, grad=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b, h, s, d = shape
    kvh = kv_heads or h
    q = torch.randn(b, h, s, d, generator=gen, dtype=dtype)
    k = torch.randn(b, kvh, s, d, generator=gen, dtype=dtype)
    v = torch.randn(b, kvh, s, d, generator=gen, dtype=dtype)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def check_attention(grad: bool) -> dict:
    ops.reset_call_counts()
    q, k, v = _qkv(2, 4, 16, 16, grad=grad)
    with torch.set_grad_enabled(grad):
        out = orchard_bridge.attention(q, k, v, causal=True)
    counts = ops.call_counts()
    qr, kr, vr = (t.detach().clone().requires_grad_(grad) for t in (q, k, v))
    with torch.set_grad_enabled(grad):
        ref = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True)
    result = {"counts": counts, "out_diff": _max_diff(out, ref)}
    if grad:
        g = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), g)
        want = torch.autograd.grad(ref, (qr, kr, vr), g)
        result["grad_diff"] = max(_max_diff(a, b) for a, b in zip(got, want, strict=True))
    return result


def check_mqa() -> dict:
    ops.reset_call_counts()
    q, k, v = _qkv(2, 4, 16, 8, kv_heads=1)
    out = orchard_bridge.attention(q, k, v, causal=True)
    counts = ops.call_counts()
    qr, kr, vr = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qr, kr, vr, is_causal=True, enable_gqa=True)
    got = torch.autograd.grad(out.sum(), (q, k, v))
    want = torch.autograd.grad(ref.sum(), (qr, kr, vr))
    return {"counts": counts, "out_diff": _max_diff(out, ref),
            "grad_diff": max(_max_diff(a, b) for a, b in zip(got, want, strict=True))}


def check_gradcheck() -> dict:
    ops.reset_call_counts()
    results = {}
    for causal in (False, True):
        q, k, v = _qkv(1, 2, 5, 8, dtype=torch.float64)
        results[f"causal={causal}"] = torch.autograd.gradcheck(
            lambda q, k, v, c=causal: orchard_bridge.attention(q, k, v, causal=c), (q, k, v), raise_exception=False
        )
    return {"passed": results, "counts": ops.call_counts()}


def check_opcheck() -> dict:
    failures = {}
    for causal in (False, True):
        q, k, v = _qkv(2, 2, 9, 16)
        report = torch.library.opcheck(ops.flash_attention, (q, k, v, 0.25, causal))
        failures.update({f"{name} causal={causal}": r for name, r in report.items() if r != "SUCCESS"})
    return {"failures": failures}


def check_fallbacks() -> dict:
    ops.reset_call_counts()
    q, k, v = _qkv(1, 2, 8, 12)  # head_dim 12: not a multiple of 8
    orchard_bridge.attention(q, k, v, causal=False)
    q, k, v = _qkv(1, 2, 8, 16)
    orchard_bridge.attention(q, k, v, causal=False, dropout_p=0.5)
    return ops.call_counts()


def _tiny_model(arch: str, attn: str, folder: str):
    """Build the tiny model once (seeded), save it, and load it back with ``attn_implementation=attn``."""
    import transformers

    if arch == "gpt_bigcode":
        config = transformers.GPTBigCodeConfig(
            vocab_size=96, n_positions=64, n_embd=64, n_layer=2, n_head=4, multi_query=True,
            attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        )
        cls = transformers.GPTBigCodeForCausalLM
    else:
        config = transformers.Starcoder2Config(
            vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, attention_dropout=0.0, residual_dropout=0.0,
            embedding_dropout=0.0, sliding_window=None, bos_token_id=0, eos_token_id=0,
        )
        cls = transformers.Starcoder2ForCausalLM
    import os

    path = os.path.join(folder, arch)
    if not os.path.isdir(path):
        torch.manual_seed(0)
        cls(config).save_pretrained(path)
    return cls.from_pretrained(path, attn_implementation=attn)


def check_model(arch: str) -> dict:
    orchard_bridge.register_transformers()
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for attn in ("sdpa", "orchard"):
            model = _tiny_model(arch, attn, folder)
            model.train()
            ops.reset_call_counts()
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            results[attn] = {
                "loss": float(out.loss.detach()),
                "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
                "counts": ops.call_counts(),
                "impl": model.config._attn_implementation,
            }
    grads_s, grads_o = results["sdpa"].pop("grads"), results["orchard"].pop("grads")
    return {
        **results,
        "loss_diff": abs(results["sdpa"]["loss"] - results["orchard"]["loss"]),
        "grad_diff": max(_max_diff(grads_s[n], grads_o[n]) for n in grads_s),
        "same_params": sorted(grads_s) == sorted(grads_o),
    }


def scenario_library(args: dict) -> dict:
    kwargs = {k: args[k] for k in ("repo_root", "library", "cache_dir", "metal_backend") if args.get(k) is not None}
    status = orchard_bridge.enable(args.get("device", "cpu"), mode=args.get("mode", "auto"), **kwargs)
    result = {"status": status.to_dict(), "schemas": registered_schemas()}
    checks = args.get("checks", [])
    if "attention_grad" in checks:
        result["attention_grad"] = check_attention(grad=True)
    if "attention_nograd" in checks:
        result["attention_nograd"] = check_attention(grad=False)
    if "mqa" in checks:
        result["mqa"] = check_mqa()
    if "gradcheck" in checks:
        result["gradcheck"] = check_gradcheck()
    if "opcheck" in checks:
        result["opcheck"] = check_opcheck()
    if "fallbacks" in checks:
        result["fallbacks"] = check_fallbacks()
    if "gpt_bigcode" in checks:
        result["gpt_bigcode"] = check_model("gpt_bigcode")
    if "starcoder2" in checks:
        result["starcoder2"] = check_model("starcoder2")
    if "enable_again" in checks:
        again = orchard_bridge.enable(args.get("device", "cpu"), **kwargs)
        result["enable_again"] = again.to_dict()
    if "require" in checks:
        try:
            orchard_bridge.enable(args.get("device", "cpu"), mode="require", **kwargs)
            result["require"] = "ok"
        except orchard_bridge.OrchardError as exc:
            result["require"] = f"OrchardError: {exc}"
    return result


if __name__ == "__main__":
    name, raw = sys.argv[1], sys.argv[2]
    out = {"library": scenario_library}[name](json.loads(raw))
    print(json.dumps(out, default=str))
