"""starcoder-sample: complete a prompt with a trained checkpoint.

    python -m starcoder_trainer.sample --checkpoint PATH --prompt "def " [--max-new-tokens 64]

PATH is a checkpoint-<step> folder, a run folder (its newest verified checkpoint),
``auto`` (the newest verified checkpoint under the config's output.dir) or any
folder ``save_pretrained`` wrote. LoRA checkpoints load their base model through peft.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="starcoder-sample", description="Generate a completion from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, run folder, or auto")
    p.add_argument("--prompt", default="def ", help="text to complete (default: 'def ')")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: 64)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | mps | cuda | cuda:N (default: auto)")
    p.add_argument("--repo", help="repository root, for --checkpoint auto and relative paths")
    return p


def resolve_checkpoint(spec: str, repo: str | None = None) -> Path:
    """The folder to load: a save_pretrained folder as is, else the newest verified checkpoint in/under it."""
    from starcoder_trainer.checkpoint import CheckpointError, find_resume

    if spec == "auto":
        from device_backend import find_repo_root

        from starcoder_trainer.config import load_config

        root = find_repo_root(repo)
        config = root / "config.yaml"
        cfg = load_config(config if config.is_file() else None, root=root)
        point = find_resume("auto", cfg.path(cfg.output.dir), cfg.output.run)
        if point.path is None:
            raise CheckpointError(f"no verified checkpoint under {cfg.path(cfg.output.dir)}; train first")
        return point.path
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists() and repo:
        path = Path(repo) / path
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    point = find_resume(str(path), path.parent)
    assert point.path is not None  # find_resume raises for an explicit path without a usable checkpoint
    return point.path


def load_for_generation(path: Path, device: str):
    """(model, tokenizer) from a checkpoint folder, on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if (path / "adapter_config.json").is_file():
        try:
            from peft import AutoPeftModelForCausalLM
        except ImportError as exc:
            raise SystemExit("this is a LoRA checkpoint: pip install 'starcoder-trainer[lora]'") from exc
        model = AutoPeftModelForCausalLM.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    return model.to(device).eval(), tokenizer


def generate(model, tokenizer, prompt: str, *, max_new_tokens: int, temperature: float, top_k: int) -> str:
    import torch

    enc = tokenizer(prompt, return_tensors="pt").to(model.device)
    sampling = temperature > 0
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_k=top_k if sampling else None,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0][enc["input_ids"].shape[1] :], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import device_backend

    device_backend.configure_environment(mps_fallback=True)
    import torch

    from starcoder_trainer.checkpoint import CheckpointError

    try:
        path = resolve_checkpoint(args.checkpoint, args.repo)
        choice = device_backend.setup(args.device)
    except (CheckpointError, device_backend.DeviceUnavailableError) as exc:
        print(f"starcoder-sample: {exc}", file=sys.stderr)
        return 1
    torch.manual_seed(args.seed)
    model, tokenizer = load_for_generation(path, choice.device)
    print(f"# {path} on {choice.device}", file=sys.stderr)
    text = generate(
        model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k,
    )
    print(args.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
