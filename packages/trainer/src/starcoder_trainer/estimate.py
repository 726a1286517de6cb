"""Will it fit? Peak training memory predicted from the model config alone (no weights loaded).

Pure arithmetic over a :class:`ModelShape` (read from a ``config.json`` or the tiny preset):

- weights: every parameter in the parameter dtype (the loop keeps float32 master weights), plus the
  low-precision copies autocast caches for the forward pass;
- gradients and optimizer state (AdamW: two float32 moments) for the trainable parameters only
  (all of them, or the LoRA adapters), divided over the processes under FSDP;
- activations autograd keeps for the backward pass, counted tensor by tensor for transformers'
  GPTBigCode and Starcoder2 blocks with SDPA (measured with ``saved_tensors_hooks``: see the tests),
  with gradient checkpointing (one input per block, one block recomputed at a time) or without;
- attention workspace: SDPA's fused kernels (flash / memory-efficient; on the CPU whenever attention
  dropout is 0) keep O(S) per head; the math path (CPU with attention dropout, MPS) materialises
  B*H*S*S scores, probabilities and dropout mask per block;
- the loss head: float32 logits, log-probabilities and their gradients, B*S*vocab each.

The peak is the larger of "backward starts" (weights, optimizer state, every saved activation, the
loss head's transients) and "optimizer step" (weights, optimizer state, all gradients). Calibrated
against measured CPU peaks in ``benchmarks/bench_estimate.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from starcoder_trainer.config import LORA_TARGETS

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# On the CPU, glibc keeps freed large blocks in its heap once its dynamic mmap threshold has grown:
# the process RSS measured 23-72% above what torch holds (benchmarks/bench_estimate.py --malloc-default;
# most cases 23-43%, LoRA with adapter dropout 72%).
# The fit check on the CPU allows for it; MALLOC_MMAP_THRESHOLD_=65536 removes most of it.
CPU_MALLOC_SLACK = 0.4


class EstimateError(ValueError):
    """The model config cannot be read or describes an architecture the estimator does not know."""


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder that decide its memory (from a transformers config)."""

    model_type: str  # "gpt_bigcode" | "starcoder2"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int  # 1 for multi-query GPTBigCode, num_heads for multi-head, else GQA groups
    intermediate_size: int
    max_positions: int
    tie_word_embeddings: bool = True
    bias: bool = True
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    embd_dropout: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """From a transformers config object or a ``config.json`` dict (GPTBigCode or Starcoder2)."""
        c = config if isinstance(config, dict) else config.to_dict()
        kind = c.get("model_type")
        if kind == "gpt_bigcode":
            d, heads = c.get("n_embd", 768), c.get("n_head", 12)
            return cls(
                model_type=kind,
                vocab_size=c.get("vocab_size", 50257),
                hidden_size=d,
                num_layers=c.get("n_layer", 12),
                num_heads=heads,
                num_kv_heads=1 if c.get("multi_query", True) else heads,
                intermediate_size=c.get("n_inner") or 4 * d,
                max_positions=c.get("n_positions", 1024),
                tie_word_embeddings=c.get("tie_word_embeddings", True),
                attn_dropout=c.get("attn_pdrop", 0.1),
                resid_dropout=c.get("resid_pdrop", 0.1),
                embd_dropout=c.get("embd_pdrop", 0.1),
            )
        if kind == "starcoder2":
            heads = c.get("num_attention_heads", 24)
            return cls(
                model_type=kind,
                vocab_size=c.get("vocab_size", 49152),
                hidden_size=c.get("hidden_size", 3072),
                num_layers=c.get("num_hidden_layers", 30),
                num_heads=heads,
                num_kv_heads=c.get("num_key_value_heads") or heads,
                intermediate_size=c.get("intermediate_size", 12288),
                max_positions=c.get("max_position_embeddings", 4096),
                tie_word_embeddings=c.get("tie_word_embeddings", True),
                bias=c.get("use_bias", True),
                attn_dropout=c.get("attention_dropout", 0.0),
                resid_dropout=c.get("residual_dropout", 0.0),
                embd_dropout=c.get("embedding_dropout", 0.0),
            )
        raise EstimateError(
            f"model_type {kind!r}: the estimator knows gpt_bigcode (StarCoder) and starcoder2; "
            "use one of those or read the figures with care"
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer in one block, by the module name LoRA targets."""
        d, i, kv = self.hidden_size, self.intermediate_size, self.kv_dim
        if self.model_type == "gpt_bigcode":
            return {"attn.c_attn": (d, d + 2 * kv), "attn.c_proj": (d, d), "mlp.c_fc": (d, i), "mlp.c_proj": (i, d)}
        return {
            "self_attn.q_proj": (d, d),
            "self_attn.k_proj": (d, kv),
            "self_attn.v_proj": (d, kv),
            "self_attn.o_proj": (d, d),
            "mlp.c_fc": (d, i),
            "mlp.c_proj": (i, d),
        }

    def parameter_count(self) -> int:
        """Parameters of the ``*ForCausalLM`` model (tied head counted once), as ``sum(p.numel())``."""
        d, v = self.hidden_size, self.vocab_size
        bias = 1 if self.bias else 0
        per_block = 4 * d  # two LayerNorms (weight and bias)
        per_block += sum(fan_in * fan_out + bias * fan_out for fan_in, fan_out in self.linears().values())
        total = v * d + self.num_layers * per_block + 2 * d  # embeddings, blocks, final LayerNorm
        if self.model_type == "gpt_bigcode":
            total += self.max_positions * d  # learned positions (wpe)
        if not self.tie_word_embeddings:
            total += v * d
        return total


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters: rank, dropout and the module names they wrap (peft's target_modules)."""

    r: int = 8
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: per architecture

    def targets(self, shape: ModelShape) -> dict[str, tuple[int, int]]:
        names = self.target_modules or LORA_TARGETS.get(shape.model_type, ())
        return {full: io for full, io in shape.linears().items() if full.split(".")[-1] in names or full in names}

    def parameter_count(self, shape: ModelShape) -> int:
        per_block = sum(self.r * (fan_in + fan_out) for fan_in, fan_out in self.targets(shape).values())
        return shape.num_layers * per_block


# --------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    """Predicted peak memory of one training process, by component (bytes), against a budget."""

    model: str
    parameters: int
    trainable: int
    batch_size: int  # micro-batch of this process
    seq_len: int
    dtype: str  # compute dtype (autocast); master weights stay float32
    lora: bool
    gradient_checkpointing: bool
    attention_path: str  # "fused" | "math"
    weights: int
    gradients: int
    optimizer: int
    activations: int  # saved for backward (excluding the attention scores and the loss head)
    activations_if_checkpointing: int  # the same with the other gradient checkpointing setting
    attention: int  # math-path scores kept for backward plus one block's transient scores
    loss_head: int  # logits, log-probabilities and their gradients
    peak: int
    budget: int | None = None
    budget_source: str = ""
    world_size: int = 1
    strategy: str = "none"
    allocator_slack: float = 0.0  # share added for the allocator's retained memory (CPU: glibc)
    suggestions: list[str] = field(default_factory=list)

    @property
    def peak_with_slack(self) -> int:
        """The peak plus the allocator's retained memory: what the budget is checked against."""
        return int(self.peak * (1 + self.allocator_slack))

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.peak_with_slack <= self.budget

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["fits"] = self.fits
        data["peak_with_slack"] = self.peak_with_slack
        return data

    def format(self) -> str:
        """A table a person reads before starting a run."""
        other = "on" if not self.gradient_checkpointing else "off"
        mode = f"LoRA ({self.trainable / 1e6:.2f} M trainable)" if self.lora else "full fine-tuning"
        lines = [
            f"memory estimate: {self.model}, {self.parameters / 1e6:.1f} M parameters, {mode}",
            f"  micro-batch {self.batch_size} x {self.seq_len} tokens, {self.dtype}, attention {self.attention_path}, "
            f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}"
            + (f", {self.strategy} over {self.world_size} processes" if self.world_size > 1 else ""),
            f"  weights               {_gib(self.weights)}",
            f"  gradients             {_gib(self.gradients)}",
            f"  optimizer state       {_gib(self.optimizer)}",
            f"  activations           {_gib(self.activations)}   "
            + f"(checkpointing {other}: {_gib(self.activations_if_checkpointing).strip()})",
            f"  attention workspace   {_gib(self.attention)}",
            f"  logits and loss       {_gib(self.loss_head)}",
            f"  predicted peak        {_gib(self.peak)}",
        ]
        if self.allocator_slack:
            lines.append(
                f"  with malloc's slack   {_gib(self.peak_with_slack)}   (+{self.allocator_slack:.0%}: freed memory "
                "glibc keeps; MALLOC_MMAP_THRESHOLD_=65536 returns it)"
            )
        if self.budget is None:
            lines.append("  budget                unknown (the device backend could not measure free memory)")
        else:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"  budget                {_gib(self.budget)}   ({self.budget_source}): {verdict}")
        if self.suggestions:
            lines.append("  to make it fit:" if self.fits is False else "  options:")
            lines += [f"    - {s}" for s in self.suggestions]
        return "\n".join(lines)


def estimate(
    shape: ModelShape,
    *,
    batch_size: int,
    seq_len: int,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    lora: LoraSpec | None = None,
    optimizer: str = "adamw",
    grad_accum_steps: int = 1,
    device_type: str = "cpu",
    attention: str = "auto",
    world_size: int = 1,
    strategy: str = "none",
    budget: int | None = None,
    budget_source: str = "",
    model_name: str = "",
    suggest: bool = True,
) -> Estimate:
    """Predict the peak memory of one training process (see the module docstring for the model)."""
    settings = {k: v for k, v in locals().items() if k != "shape"}
    if dtype not in DTYPE_BYTES:
        raise EstimateError(f"dtype {dtype!r}: expected one of {', '.join(DTYPE_BYTES)}")
    if batch_size < 1 or seq_len < 1:
        raise EstimateError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    if optimizer not in ("adamw", "sgd"):
        raise EstimateError(f"optimizer {optimizer!r}: expected adamw or sgd")
    n_params = shape.parameter_count()
    n_lora = lora.parameter_count(shape) if lora else 0
    trainable = n_lora if lora else n_params
    shard = world_size if strategy == "fsdp" and world_size > 1 else 1

    # Weights: float32 masters (+ adapters); autocast caches a low-precision copy of each linear weight.
    weights = 4 * (n_params + n_lora) // shard
    if dtype != "float32":
        linear_weights = shape.num_layers * sum(a * b for a, b in shape.linears().values()) + shape.vocab_size * (
            shape.hidden_size
        )
        weights += DTYPE_BYTES[dtype] * linear_weights
    gradients = 4 * trainable // shard
    optimizer_bytes = (8 if optimizer == "adamw" else 4) * trainable // shard

    tokens = batch_size * seq_len
    math_path = _math_attention(shape, device_type, attention)
    saved, saved_ckpt_peak, block = _activation_bytes(shape, batch_size, seq_len, dtype, lora, math_path)
    attn_saved, attn_transient = _attention_bytes(shape, batch_size, seq_len, dtype, math_path)
    act_full = saved
    act_ckpt = saved_ckpt_peak
    attention_bytes = (attn_saved * (1 if gradient_checkpointing else shape.num_layers)) + attn_transient
    # Loss head: float32 log-probabilities saved, plus logits (forward) / two gradients (backward).
    loss_head = 3 * 4 * tokens * shape.vocab_size
    if dtype != "float32":
        loss_head += DTYPE_BYTES[dtype] * tokens * shape.vocab_size  # the low-precision logits before .float()
    activations = act_ckpt if gradient_checkpointing else act_full
    other = act_full if gradient_checkpointing else act_ckpt

    # Peak: backward starting (gradients exist already when accumulating) vs the optimizer step.
    largest = shape.vocab_size * shape.hidden_size if not lora else 0  # the (tied) embedding's gradient
    held_grads = gradients if grad_accum_steps > 1 else 4 * largest // shard
    if gradient_checkpointing:
        # The loss head's backward ends before the last block is recomputed: the two do not overlap.
        backward = activations - block + max(loss_head, block + attention_bytes) + held_grads
    else:
        backward = activations + attention_bytes + loss_head + held_grads
    step = gradients + (4 * largest // shard if optimizer == "adamw" else 0)  # one parameter's update temporaries
    peak = weights + optimizer_bytes + max(backward, step)

    result = Estimate(
        model=model_name or shape.model_type,
        parameters=n_params,
        trainable=trainable,
        batch_size=batch_size,
        seq_len=seq_len,
        dtype=dtype,
        lora=lora is not None,
        gradient_checkpointing=gradient_checkpointing,
        attention_path="math" if math_path else "fused",
        weights=weights,
        gradients=gradients,
        optimizer=optimizer_bytes,
        activations=activations,
        activations_if_checkpointing=other,
        attention=attention_bytes,
        loss_head=loss_head,
        peak=peak,
        budget=budget,
        budget_source=budget_source,
        world_size=world_size,
        strategy=strategy,
        allocator_slack=CPU_MALLOC_SLACK if device_type == "cpu" else 0.0,
    )
    if suggest and budget is not None:
        result.suggestions = _suggestions(
            result,
            shape,
            {**settings, "suggest": False},
        )
    return result


def _math_attention(shape: ModelShape, device_type: str, attention: str) -> bool:
    """Whether SDPA takes the math path (B*H*S*S scores kept) in training."""
    if attention in ("math", "eager"):
        return True
    if attention in ("fused", "flash", "orchard"):
        return False
    if device_type == "cpu":
        return shape.attn_dropout > 0  # the CPU flash kernel has no dropout
    return device_type == "mps"  # MPS SDPA materialises the scores; CUDA kernels take dropout


def _activation_bytes(shape, batch, seq, dtype, lora, math_path) -> tuple[int, int, int]:
    """(saved without checkpointing, peak saved with checkpointing, one block), scores and loss head excluded.

    Counted per token, tensor by tensor, as autograd keeps them for transformers' blocks.
    """
    b = DTYPE_BYTES[dtype]
    d, i, kv, h = shape.hidden_size, shape.intermediate_size, shape.kv_dim, shape.num_heads
    tokens = batch * seq
    noise = 1 if shape.resid_dropout > 0 else 0  # dropout keeps a full-size mask (float) on the CPU path

    # Tensors every block keeps whatever is trained (elements per token).
    always = d + d  # block input (LayerNorm 1), residual after attention (LayerNorm 2)
    always += i  # GELU input
    if math_path:
        always += 3 * d  # query, key and value expanded to every head
    elif shape.model_type == "gpt_bigcode":
        always += (d + 2 * kv) + 2 * kv + d  # fused qkv (query is a view), key/value copies, output
    else:
        always += d + 2 * kv + d  # rotated query and key, value, output
    always += 2 * noise * d  # residual dropout masks (attention and MLP)
    stats = 4 * 4  # mean and rstd of two LayerNorms, float32
    lse = 4 * h if not math_path else 0  # log-sum-exp per head, float32

    # Inputs kept only for the weight gradients of the linear layers.
    # (On the math path the attention output is a fresh copy only the output projection keeps.)
    linear_inputs = {"ln1": d, "attn_out": d if math_path else 0, "ln2": d, "gelu_out": i}
    if lora is None:
        for_weights = sum(linear_inputs.values())
        adapters = 0
    else:
        for_weights = 0
        adapters = 0
        for fan_in, _fan_out in lora.targets(shape).values():
            adapters += lora.r + (2 * fan_in if lora.dropout > 0 else fan_in)
    per_token_block = (always + for_weights + adapters) * b + stats + lse
    block = per_token_block * tokens
    # Around the blocks: token ids, embedding dropout mask, final LayerNorm input and output.
    around = tokens * (8 + (noise * d * b) + 2 * d * b + 8)
    saved = shape.num_layers * block + around
    if lora is not None:
        # The first block's input needs no gradient (frozen embeddings): its LayerNorm keeps nothing and
        # the adapters reading that LayerNorm keep no dropout mask.
        first = {"attn.c_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}
        masks = sum(fan_in for name, (fan_in, _) in lora.targets(shape).items() if name in first)
        saved -= tokens * ((d + (masks if lora.dropout > 0 else 0)) * b + 8)
    checkpointed = shape.num_layers * tokens * d * b + block + around
    return saved, checkpointed, block


def _attention_bytes(shape, batch, seq, dtype, math_path) -> tuple[int, int]:
    """(scores kept per block for backward, transient scores of the block being computed)."""
    if not math_path:
        return 0, 0
    b = DTYPE_BYTES[dtype]
    scores = batch * shape.num_heads * seq * seq * b
    kept = 3 if shape.attn_dropout > 0 else 1  # probabilities, dropout mask, dropped probabilities
    return kept * scores, 2 * scores


def _suggestions(result: Estimate, shape: ModelShape, kw: dict) -> list[str]:
    """What to change, each with its predicted peak, cheapest first."""
    if result.fits:
        return []
    out = []

    def peak(**change) -> int:
        return estimate(shape, **{**kw, **change}).peak_with_slack

    def line(text, p):
        mark = "fits" if p <= kw["budget"] else "still over"
        return f"{text}: {_gib(p).strip()} ({mark})"

    if not kw["gradient_checkpointing"]:
        out.append(line("set model.gradient_checkpointing: true", peak(gradient_checkpointing=True)))
    batch = kw["batch_size"]
    while batch > 1:
        batch //= 2
        p = peak(batch_size=batch)
        if p <= kw["budget"] or batch == 1:
            factor = kw["batch_size"] // batch
            out.append(
                line(
                    f"set train.batch_size: {batch} and train.grad_accum_steps: {kw['grad_accum_steps'] * factor} "
                    "(same tokens per step)",
                    p,
                )
            )
            break
    if kw["lora"] is None:
        out.append(line("set model.lora.enabled: true (adapters only)", peak(lora=LoraSpec())))
    if kw["dtype"] == "float32" and kw["device_type"] in ("cuda", "mps"):
        out.append(line("train in bfloat16 (the device backend picks it where supported)", peak(dtype="bfloat16")))
    if kw["world_size"] > 1 and kw["strategy"] != "fsdp":
        out.append(line("set train.strategy: fsdp (shard weights, gradients and optimizer state)", peak(strategy="fsdp")))
    both = peak(gradient_checkpointing=True, lora=kw["lora"] or LoraSpec(), batch_size=1)
    out.append(line("all of gradient checkpointing, LoRA and micro-batch 1", both))
    return out


def _gib(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / GIB:8.2f} GiB" if n >= GIB / 10 else f"{n / 1024**2:8.1f} MiB"


# --------------------------------------------------------------------------- from the trainer's config


def shape_for(config, repo_root: str | os.PathLike[str] | None = None) -> ModelShape:
    """The model's shape for a trainer Config: the tiny preset, a local folder's config.json, or a hub id."""
    model = config.model
    if model.is_preset:
        from starcoder_trainer.model import preset_config  # the very config the trainer builds

        class _Vocab:  # what preset_config reads from the tokenizer trained later
            eos_token_id = pad_token_id = 0

            def __len__(self) -> int:
                return model.tiny.vocab_size

        return ModelShape.from_config(preset_config(model, _Vocab()))
    name = str(model.name)
    folder = Path(name).expanduser()
    if not folder.is_absolute() and repo_root is not None:
        folder = Path(repo_root) / folder
    if (folder / "config.json").is_file():
        try:
            return ModelShape.from_config(json.loads((folder / "config.json").read_text()))
        except json.JSONDecodeError as exc:
            raise EstimateError(f"{folder / 'config.json'}: not valid JSON ({exc})") from exc
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(name, revision=model.revision, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise EstimateError(
            f"model.name={name}: cannot read its config.json ({exc}). Point model.name at a folder holding "
            "config.json, or allow the download of that one small file"
        ) from exc
    return ModelShape.from_config(cfg)


def from_config(
    config, choice=None, *, repo_root=None, world_size: int | None = None, shape: ModelShape | None = None
) -> Estimate:
    """The estimate for a trainer Config and a device_backend Choice (``None``: no budget, CPU, float32).

    ``shape`` is the model's (``shape_for(config, repo_root)`` when not given).
    """
    if shape is None:
        shape = shape_for(config, repo_root)
    lora_cfg = config.model.lora
    lora = None
    if lora_cfg.enabled:
        targets = tuple(lora_cfg.target_modules) if lora_cfg.target_modules else None
        lora = LoraSpec(r=lora_cfg.r, dropout=lora_cfg.dropout, target_modules=targets)
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1") or 1)
    strategy = config.train.strategy if world > 1 else "none"
    strategy = "ddp" if strategy == "auto" else strategy
    budget = getattr(choice, "memory_budget_bytes", None)
    source = getattr(choice, "memory_budget_source", "")
    device_type = getattr(choice, "device_type", "cpu")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) or world
    if budget is not None and device_type == "cpu" and local > 1:
        budget, source = budget // local, f"{source} / {local} processes on this machine"
    return estimate(
        shape,
        batch_size=max(1, -(-config.train.batch_size // world)),  # train.batch_size is split over the processes
        seq_len=config.data.seq_len,
        dtype=getattr(choice, "dtype", "float32"),
        gradient_checkpointing=config.model.gradient_checkpointing,
        lora=lora,
        grad_accum_steps=config.train.grad_accum_steps,
        device_type=device_type,
        world_size=world,
        strategy=strategy,
        budget=budget,
        budget_source=source,
        model_name=str(config.model.name),
    )


def main_estimate(config, repo_root) -> int:
    """``starcoder-train --estimate``: print the estimate (and the other setting's); 0 fits, 1 does not, 2 error."""
    import sys

    try:
        from device_backend import setup

        choice = setup(config.device.request, memory_fraction=config.device.memory_fraction, apply=False)
    except Exception as exc:  # noqa: BLE001 - the estimate still helps without a budget; say why
        print(f"device backend: {exc}; estimating without a budget", file=sys.stderr)
        choice = None
    try:
        shape = shape_for(config, repo_root)  # read once: the LoRA line below reuses it
        result = from_config(config, choice, repo_root=repo_root, shape=shape)
    except EstimateError as exc:
        print(f"starcoder-train --estimate: {exc}", file=sys.stderr)
        return 2
    print(result.format())
    if not result.lora:
        lora = estimate(shape, **_same(result, lora=LoraSpec(r=config.model.lora.r)))
        print(f"  with LoRA (r={config.model.lora.r}): predicted peak {_gib(lora.peak).strip()}")
    return 1 if result.fits is False else 0


def _same(result: Estimate, **change) -> dict:
    base = {
        "batch_size": result.batch_size,
        "seq_len": result.seq_len,
        "dtype": result.dtype,
        "gradient_checkpointing": result.gradient_checkpointing,
        "world_size": result.world_size,
        "strategy": result.strategy,
        "budget": result.budget,
        "suggest": False,
        "attention": "math" if result.attention_path == "math" else "fused",
    }
    return {**base, **change}


def preflight(config, choice, *, log=print) -> Estimate | None:
    """Before the first step: warn when the estimate exceeds the budget, or refuse (train.refuse_if_over_budget)."""
    try:
        result = from_config(config, choice, repo_root=getattr(config, "root", None))
    except EstimateError as exc:
        log(f"memory estimate skipped: {exc}")
        return None
    if result.fits is False:
        message = (
            f"memory estimate: predicted peak {_gib(result.peak_with_slack).strip()} exceeds the budget "
            f"{_gib(result.budget).strip()} ({result.budget_source}).\n" + result.format()
        )
        if config.train.refuse_if_over_budget:
            raise MemoryError(message + "\nset train.refuse_if_over_budget: false to try anyway")
        log("WARNING " + message)
    else:
        log(f"memory estimate: predicted peak {_gib(result.peak).strip()}"
            + (f" of {_gib(result.budget).strip()} available" if result.budget else ""))
    return result


__all__ = [
    "Estimate",
    "EstimateError",
    "LoraSpec",
    "ModelShape",
    "estimate",
    "from_config",
    "main_estimate",
    "preflight",
    "shape_for",
]
