"""starcoder-train: fine-tune per config.yaml (default: the tiny preset on this repository's own code).

    starcoder-train [--repo ROOT] [--config FILE] [--set key.path=value ...]
                    [--resume auto|PATH] [--device auto|cpu|mps|cuda|cuda:N]
                    [--estimate | --check-config]

Exit status: 0 done (also after SIGINT/SIGTERM wrote a checkpoint), 1 the run failed
(message says why and what to change), 2 the config or the command line is wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="starcoder-train",
        description="Fine-tune a StarCoder-family model on a git repository's code (MPS, CUDA or CPU).",
    )
    p.add_argument("--repo", help="repository root (default: $REPO_ROOT, else the nearest folder with config.yaml)")
    p.add_argument("--config", help="config file (default: <root>/config.yaml; built-in defaults if absent)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.max_steps=50 (repeatable; YAML scalar syntax)",
    )
    p.add_argument("--resume", metavar="auto|PATH", help="continue from the newest verified checkpoint or PATH")
    p.add_argument("--device", help="auto | cpu | mps | cuda | cuda:N (same as --set device.request=...)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--estimate", action="store_true", help="print the memory estimate for the config and exit")
    mode.add_argument("--check-config", action="store_true", help="validate the config, print it resolved, and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings from the tokenizer pool

    from device_backend import RepoRootError, find_repo_root

    try:
        root = find_repo_root(args.repo)
    except RepoRootError as exc:
        print(f"starcoder-train: {exc}", file=sys.stderr)
        return 2
    config_path = Path(args.config).expanduser() if args.config else root / "config.yaml"
    if args.config and not config_path.is_absolute() and not config_path.exists():
        config_path = root / config_path
    overrides = list(args.overrides) + ([f"device.request={args.device}"] if args.device else [])

    # Environment first (before torch is imported): MPS fallback for ops the MPS backend lacks.
    import device_backend

    device_backend.configure_environment(mps_fallback=_peek_mps_fallback(config_path, overrides))

    from starcoder_trainer.config import ConfigError, load_config

    try:
        cfg = load_config(config_path if config_path.is_file() else None, overrides, root=root)
    except ConfigError as exc:
        print(f"starcoder-train: {exc}", file=sys.stderr)
        return 2
    if not config_path.is_file():
        print(f"starcoder-train: {config_path} not found; using the built-in defaults", file=sys.stderr)

    if args.check_config:
        print(f"# config OK: {config_path} (root {root})")
        print(cfg.to_yaml(), end="")
        return 0
    if args.estimate:
        return _estimate(cfg, root)
    return _train(cfg, args.resume)


def _train(cfg, resume: str | None) -> int:
    from device_backend import DeviceUnavailableError

    from starcoder_trainer.checkpoint import CheckpointError
    from starcoder_trainer.data import DataError
    from starcoder_trainer.model import ModelLoadError
    from starcoder_trainer.recipe import NonFiniteLossError, Recipe

    # MemoryError: the pre-flight estimate refused (train.refuse_if_over_budget) or the device ran out
    known: tuple[type[BaseException], ...] = (
        CheckpointError, ModelLoadError, NonFiniteLossError, MemoryError, DeviceUnavailableError, DataError
    )

    recipe = Recipe(cfg, resume=resume)
    try:
        code = _run(recipe, known)
    except BaseException:
        if not _ran_collectives(recipe):
            raise
        traceback.print_exc()  # exit_process skips the finalization that would print it
        code = 1
    if _ran_collectives(recipe):
        from starcoder_trainer.distributed import exit_process

        exit_process(code)
    return code


def _ran_collectives(recipe) -> bool:
    dist = getattr(recipe, "dist", None)
    return dist is not None and dist.distributed


def _run(recipe, known: tuple[type[BaseException], ...]) -> int:
    try:
        recipe.setup()
        summary = recipe.train()
    except known as exc:
        print(f"starcoder-train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("starcoder-train: interrupted before a checkpoint could be written", file=sys.stderr)
        return 130
    finally:
        recipe.cleanup()
    if recipe.dist.is_main:
        print("\n" + summary.format())
        if summary.checkpoint:
            print(
                f"\nnext: python -m starcoder_trainer.sample --checkpoint {summary.checkpoint} --prompt 'def '"
            )
    return 0


def _estimate(cfg, root: Path) -> int:
    from starcoder_trainer.estimate import main_estimate

    return main_estimate(cfg, root)


def _peek_mps_fallback(config_path: Path, overrides: list[str]) -> bool:
    """device.mps_fallback read before torch is imported (full validation comes after)."""
    value = True
    try:
        import yaml

        raw = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
        if isinstance(raw, dict) and isinstance(raw.get("device"), dict):
            value = raw["device"].get("mps_fallback", True)
        for item in overrides:
            key, _, v = item.partition("=")
            if key.strip() == "device.mps_fallback":
                value = yaml.safe_load(v)
    except (OSError, ValueError, AttributeError):  # the real loader reports any problem with its key path
        return True
    return value if isinstance(value, bool) else True


if __name__ == "__main__":
    sys.exit(main())
