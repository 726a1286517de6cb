"""Model and tokenizer: the tiny preset from scratch, a hub id / local folder, LoRA adapters.

Nothing here downloads unless ``model.name`` is a hub id that is not cached yet; tests
use the preset, whose tokenizer is trained on the run's own training split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from starcoder_trainer.config import LORA_TARGETS, Config, ModelConfig


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be built or loaded."""


def preset_config(cfg: ModelConfig, tokenizer) -> Any:
    """GPTBigCode (StarCoder's architecture) config for the tiny preset, ids from ``tokenizer``."""
    from transformers import GPTBigCodeConfig

    t = cfg.tiny
    eos = tokenizer.eos_token_id
    return GPTBigCodeConfig(
        vocab_size=len(tokenizer),
        n_positions=t.n_positions,
        n_embd=t.n_embd,
        n_layer=t.n_layer,
        n_head=t.n_head,
        multi_query=True,
        embd_pdrop=t.dropout,
        attn_pdrop=t.dropout,
        resid_pdrop=t.dropout,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        use_cache=False,
    )


def load_tokenizer(cfg: Config, source: str | Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(
            _source(cfg, source), revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model.name={source}: cannot load its tokenizer: {exc}") from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_model(cfg: Config, tokenizer, *, attn_implementation: str, source: str | Path | None = None):
    """A fresh model: the preset initialised from ``train.seed``, or weights from a hub id / folder.

    ``source`` overrides where weights come from (a checkpoint folder on resume).
    """
    from transformers import AutoModelForCausalLM, GPTBigCodeForCausalLM

    if source is None and cfg.model.is_preset:
        torch.manual_seed(cfg.train.seed)
        config = preset_config(cfg.model, tokenizer)
        model = GPTBigCodeForCausalLM._from_config(config, attn_implementation=attn_implementation)
    else:
        where = _source(cfg, source or cfg.model.name)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                where,
                revision=None if source else cfg.model.revision,
                trust_remote_code=cfg.model.trust_remote_code,
                use_safetensors=True,
                attn_implementation=attn_implementation,
                dtype=torch.float32,
            )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"model.name={where}: cannot load it with safetensors weights ({exc}). Use a hub id or a folder "
                "with model.safetensors; set model.trust_remote_code: true only for a source you trust"
            ) from exc
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    model.config.use_cache = False
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def apply_lora(cfg: Config, model, *, adapter_from: str | Path | None = None):
    """Wrap ``model`` with LoRA adapters (new, or loaded trainable from ``adapter_from``)."""
    try:
        from peft import LoraConfig, PeftModel, get_peft_model
    except ImportError as exc:
        raise ModelLoadError(
            "model.lora.enabled needs peft: pip install 'starcoder-trainer[lora]' (or set model.lora.enabled: false)"
        ) from exc
    if adapter_from is not None:
        return PeftModel.from_pretrained(model, str(adapter_from), is_trainable=True)
    lora = cfg.model.lora
    targets = lora.target_modules or LORA_TARGETS.get(model.config.model_type)
    if not targets:
        raise ModelLoadError(
            f"model.lora.target_modules: no default for model_type {model.config.model_type!r}; "
            "list the linear layer names to adapt"
        )
    peft_cfg = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(targets), task_type="CAUSAL_LM"
    )
    return get_peft_model(model, peft_cfg)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def _source(cfg: Config, value: str | Path) -> str:
    """A local folder (resolved against the root) if one exists there, else the value as a hub id."""
    text = str(value)
    local = cfg.path(text)
    if local.is_dir() or text.startswith((".", "/", "~")):
        return str(local)
    return text
