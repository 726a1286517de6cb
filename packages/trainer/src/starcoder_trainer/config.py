"""config.yaml as typed dataclasses: one documented place for every setting.

``load_config(path, overrides)`` reads the YAML file, applies ``--set key.path=value``
overrides (values parsed with YAML's scalar rules), checks every key and value, and
raises one ``ConfigError`` listing every problem with its key path::

    train.lr: expected a positive number, got 'fast'
    model.lora.rank: unknown key (did you mean 'r'?)

Paths stay as written (relative to the repository root) so that the copy saved next
to a checkpoint is portable; ``Config.path(value)`` resolves one against the root.
The ``device`` and ``orchard`` sections are read here and handed as plain arguments
to device_backend and orchard_bridge, which never read this file.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from starcoder_trainer.data import DataConfig

TINY_PRESET = "tiny-starcoder"
# Linear layers LoRA adapts by default, per transformers model_type (the trainer and the memory estimate).
LORA_TARGETS: dict[str, list[str]] = {
    "gpt_bigcode": ["c_attn", "c_proj", "c_fc"],
    "starcoder2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


class ConfigError(ValueError):
    """One or more problems in config.yaml or the --set overrides (all listed at once)."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


# --------------------------------------------------------------------------- sections


@dataclass
class RepoConfig:
    """Where things live inside the repository (relative to its root)."""

    metal_backend: str = "metal-backend"
    """Folder of the Apple-Metal-Orchard submodule (read by the orchard bridge)."""


@dataclass
class DeviceConfig:
    """Which accelerator to use (handed to device_backend.setup)."""

    request: str = "auto"
    """auto | cpu | mps | cuda | cuda:N. auto picks MPS, then CUDA, then CPU."""
    mps_fallback: bool = True
    """Set PYTORCH_ENABLE_MPS_FALLBACK=1 so ops MPS lacks run on the CPU instead of failing."""
    memory_fraction: float | None = None
    """Share of the device memory training may plan for (0 < f <= 1); null: the backend's default."""

    def problems(self, at: str) -> list[str]:
        out = []
        r = self.request
        if not (r in ("auto", "cpu", "mps", "cuda") or (r.startswith("cuda:") and r[5:].isdigit())):
            out.append(f"{at}.request: expected auto, cpu, mps, cuda or cuda:N, got {r!r}")
        if self.memory_fraction is not None and not 0 < self.memory_fraction <= 1:
            out.append(f"{at}.memory_fraction: expected a number in (0, 1] or null, got {self.memory_fraction!r}")
        return out


@dataclass
class OrchardConfig:
    """Apple-Metal-Orchard attention kernels (handed to orchard_bridge.enable)."""

    mode: str = "auto"
    """auto: use the kernel only where it loads and passes its conformance check; off: never; require: fail if not."""
    library: str | None = None
    """Explicit path of libflash_attn.dylib; null: look inside repo.metal_backend."""
    cache_dir: str = ".cache/orchard"
    """Where the bridge caches its conformance verdicts."""

    def problems(self, at: str) -> list[str]:
        return [] if self.mode in ("auto", "off", "require") else [
            f"{at}.mode: expected auto, off or require, got {self.mode!r}"
        ]


@dataclass
class TinyConfig:
    """Sizes of the ``tiny-starcoder`` preset (a GPTBigCode model trained from scratch)."""

    n_layer: int = 2
    """Transformer blocks."""
    n_embd: int = 128
    """Hidden width; a multiple of n_head."""
    n_head: int = 4
    """Attention heads (multi-query attention, as in StarCoder)."""
    vocab_size: int = 2048
    """Size of the byte-level BPE vocabulary trained on the training split."""
    n_positions: int = 256
    """Longest sequence the model accepts; at least data.seq_len."""
    dropout: float = 0.0
    """Dropout on embeddings, attention and residuals (0 is usual for short from-scratch runs)."""

    def problems(self, at: str) -> list[str]:
        sizes = {k: v for k, v in vars(self).items() if k != "dropout"}
        out = [f"{at}.{k}: expected a positive integer, got {v!r}" for k, v in sizes.items() if v <= 0]
        if not 0 <= self.dropout < 1:
            out.append(f"{at}.dropout: expected a number in [0, 1), got {self.dropout!r}")
        if self.n_embd > 0 and self.n_head > 0 and self.n_embd % self.n_head:
            out.append(f"{at}.n_embd: expected a multiple of n_head ({self.n_head}), got {self.n_embd}")
        if self.vocab_size < 300:
            out.append(f"{at}.vocab_size: expected at least 300 (256 bytes + special tokens), got {self.vocab_size}")
        return out


@dataclass
class LoraConfig:
    """Low-rank adapters through peft (extra starcoder-trainer[lora]); only the adapters train."""

    enabled: bool = False
    """Train LoRA adapters instead of every weight."""
    r: int = 8
    """Adapter rank."""
    alpha: int = 16
    """Adapter scaling numerator (scale = alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """Module names to adapt; null: the defaults for the architecture (gpt_bigcode: c_attn, c_proj, c_fc)."""
    merge_on_export: bool = False
    """At the end, also write the base model with the adapters merged in (``<run>/merged/``)."""

    def problems(self, at: str) -> list[str]:
        out = []
        if self.r <= 0:
            out.append(f"{at}.r: expected a positive integer, got {self.r!r}")
        if self.alpha <= 0:
            out.append(f"{at}.alpha: expected a positive integer, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            out.append(f"{at}.dropout: expected a number in [0, 1), got {self.dropout!r}")
        return out


@dataclass
class ModelConfig:
    """What to fine-tune."""

    name: str = TINY_PRESET
    """``tiny-starcoder`` (preset below), a hub id (e.g. bigcode/starcoderbase-1b) or a local folder."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for a hub id; null: the default branch."""
    trust_remote_code: bool = False
    """Allow the model's own Python code from the hub; off unless you trust the source."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third slower."""
    tiny: TinyConfig = field(default_factory=TinyConfig)
    """Sizes of the tiny-starcoder preset (ignored for other models)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters."""

    @property
    def is_preset(self) -> bool:
        return self.name == TINY_PRESET

    def problems(self, at: str) -> list[str]:
        return [] if self.name.strip() else [f"{at}.name: expected {TINY_PRESET}, a hub id or a folder, got ''"]


@dataclass
class TrainConfig:
    """The optimisation recipe."""

    seed: int = 1234
    """Seed for model init, data order and dropout; the same seed gives the same run."""
    max_steps: int = 200
    """Optimizer steps to run (the end of the cosine schedule)."""
    batch_size: int = 8
    """Blocks per micro-batch (the global micro-batch: split over the processes under torchrun)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; tokens per step = batch_size * grad_accum_steps * data.seq_len."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Learning rate at the end of the cosine, as a fraction of lr."""
    warmup_steps: int = 20
    """Linear warm-up steps before the cosine decay."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to biases and norms)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW (beta1, beta2)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    eval_every: int = 50
    """Validation loss every N steps (and at the end); 0: only at the end."""
    eval_batches: int = 8
    """Validation micro-batches per evaluation (0: the whole split)."""
    log_every: int = 10
    """Write a metrics.jsonl line and refresh the progress bar's loss every N steps."""
    save_every: int = 100
    """Checkpoint every N steps (and at the end); 0: only at the end."""
    keep_last: int = 2
    """Keep the last K complete checkpoints of the run."""
    max_bad_steps: int = 5
    """Abort after this many steps in a row with a non-finite loss or gradient norm (each is skipped)."""
    strategy: str = "auto"
    """auto | ddp | fsdp: how several processes (torchrun) share the work; auto is ddp when world size > 1."""
    refuse_if_over_budget: bool = False
    """Refuse to start when the memory estimate exceeds the device budget (otherwise warn)."""
    progress: bool = True
    """Show a progress bar (loss, tokens/s, ETA)."""

    _expect: ClassVar[dict[str, str]] = {
        k: "a positive integer" for k in ("max_steps", "batch_size", "grad_accum_steps", "max_bad_steps", "keep_last")
    } | {"lr": "a positive number"}

    def problems(self, at: str) -> list[str]:
        out = []
        for k in ("max_steps", "batch_size", "grad_accum_steps", "max_bad_steps", "keep_last"):
            if getattr(self, k) <= 0:
                out.append(f"{at}.{k}: expected a positive integer, got {getattr(self, k)!r}")
        for k in ("warmup_steps", "eval_every", "eval_batches", "log_every", "save_every"):
            if getattr(self, k) < 0:
                out.append(f"{at}.{k}: expected an integer >= 0, got {getattr(self, k)!r}")
        if self.lr <= 0:
            out.append(f"{at}.lr: expected a positive number, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            out.append(f"{at}.min_lr_ratio: expected a number in [0, 1], got {self.min_lr_ratio!r}")
        if self.weight_decay < 0:
            out.append(f"{at}.weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            out.append(f"{at}.betas: expected two numbers in [0, 1), got {self.betas!r}")
        if self.grad_clip < 0:
            out.append(f"{at}.grad_clip: expected a number >= 0 (0: off), got {self.grad_clip!r}")
        if self.strategy not in ("auto", "ddp", "fsdp"):
            out.append(f"{at}.strategy: expected auto, ddp or fsdp, got {self.strategy!r}")
        return out


@dataclass
class OutputConfig:
    """Where runs are written."""

    dir: str = "runs"
    """Folder of the runs (relative to the repository root); each run is output.dir/<run>/."""
    run: str | None = None
    """Run name; null: a new timestamped name (run-YYYYmmdd-HHMMSS) per fresh start."""
    plot: bool = True
    """Write <run>/loss.png at the end when matplotlib is installed (extra starcoder-trainer[plot])."""

    def problems(self, at: str) -> list[str]:
        if self.run is not None and (not self.run.strip() or "/" in self.run or self.run.startswith(".")):
            return [f"{at}.run: expected a plain folder name or null, got {self.run!r}"]
        return []


@dataclass
class Config:
    """The whole config.yaml."""

    repo: RepoConfig = field(default_factory=RepoConfig)
    """Repository layout."""
    device: DeviceConfig = field(default_factory=DeviceConfig)
    """Accelerator choice (device_backend)."""
    orchard: OrchardConfig = field(default_factory=OrchardConfig)
    """Metal attention kernels (orchard_bridge)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to fine-tune."""
    data: DataConfig = field(default_factory=DataConfig)
    """Git repository -> packed token blocks (starcoder_trainer.data)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    output: OutputConfig = field(default_factory=OutputConfig)
    """Run outputs."""
    root: Path = field(default=Path("."), metadata={"internal": True})
    """Repository root every relative path resolves against (not a config.yaml key)."""

    def path(self, value: str | os.PathLike[str]) -> Path:
        """Resolve a config path against the repository root."""
        from device_backend import resolve_path

        return resolve_path(self.root, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (as in config.yaml), without the machine-specific root."""
        out = {}
        for f in dataclasses.fields(self):
            if not f.metadata.get("internal"):
                out[f.name] = _plain(getattr(self, f.name))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    root: str | os.PathLike[str] | None = None,
) -> Config:
    """Read config.yaml (or only defaults when ``path`` is None), apply overrides, validate once.

    ``overrides`` are ``key.path=value`` strings; values are parsed as YAML scalars
    (``50`` -> int, ``1e-4`` -> float, ``true`` -> bool, ``null`` -> None, ``[a, b]`` -> list).
    ``root`` is the repository root; by default the config file's folder.
    """
    problems: list[str] = []
    raw: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"cannot read the config file: {exc.strerror or exc}"], source) from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"expected a mapping of sections at the top, got {type(loaded).__name__}"], source)
        raw = loaded
    for item in overrides:
        problems += _apply_override(raw, item)
    cfg = _build(Config, raw, "", problems)
    cfg.root = Path(root).expanduser().resolve() if root is not None else (
        Path(path).expanduser().resolve().parent if path is not None else Path.cwd()
    )
    problems += _cross_checks(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _apply_override(raw: dict[str, Any], item: str) -> list[str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        return [f"--set {item!r}: expected key.path=value, e.g. --set train.max_steps=50"]
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    node = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            return [f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section"]
        node = child
    node[parts[-1]] = parsed
    return []


def _build(cls: type, raw: Any, at: str, problems: list[str]) -> Any:
    """Construct dataclass ``cls`` from ``raw``, recording (not raising) every problem."""
    where = at or "top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping (section), got {_show(raw)}")
        raw = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        key_at = f"{at}.{key}" if at else str(key)
        if key not in fields:
            guess = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else f" (known: {', '.join(fields)})"
            problems.append(f"{key_at}: unknown key{hint}")
            continue
        hint = hints[key]
        value = _YAML_WORDS.get((cls.__name__, key), {}).get(value, value) if isinstance(value, bool) else value
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, key_at, problems)
            continue
        ok, converted, expected = _check_type(value, hint)
        if ok:
            kwargs[key] = converted
        else:
            expected = getattr(cls, "_expect", {}).get(key, expected)
            problems.append(f"{key_at}: expected {expected}, got {_show(value)}")
    obj = cls(**kwargs)
    check = getattr(obj, "problems", None)
    if callable(check):
        problems += check(at)
    validate = getattr(obj, "validate", None)  # data.DataConfig reports "data.x: ..." itself
    if callable(validate):
        problems += list(validate())
    return obj


_EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
# YAML 1.1 reads a bare `off` as false: where "off" is a valid word, take it back.
_YAML_WORDS: dict[tuple[str, str], dict[bool, str]] = {("OrchardConfig", "mode"): {False: "off"}}


def _check_type(value: Any, hint: Any) -> tuple[bool, Any, str]:
    """(ok, converted value, expected description) for the simple types config.yaml uses."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return True, None, ""
        inner = [a for a in args if a is not type(None)]
        results = [_check_type(value, a) for a in inner]
        for ok, converted, _ in results:
            if ok:
                return True, converted, ""
        return False, None, " or ".join(r[2] for r in results) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        if not isinstance(value, (list, tuple)):
            return False, None, f"a list of {_describe(item)}"
        out = []
        for v in value:
            ok, converted, _ = _check_type(v, item)
            if not ok:
                return False, None, f"a list of {_describe(item)}"
            out.append(converted)
        return True, list(out) if origin is list else tuple(out), ""
    if hint is Any:
        return True, value, ""
    if hint is bool:
        return isinstance(value, bool), value, "true or false"
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value, "an integer"
    if hint is float:
        if isinstance(value, str) and _EXPONENT.match(value.strip()):
            value = float(value)  # PyYAML (YAML 1.1) reads 1e-4 as a string; it means a number
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else None, "a number"
    if hint is str:
        return isinstance(value, str), value, "a string"
    if hint in (Path,):
        return isinstance(value, (str, Path)), value, "a path"
    return isinstance(value, hint) if isinstance(hint, type) else True, value, _describe(hint)


def _describe(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _cross_checks(cfg: Config) -> list[str]:
    out = []
    seq_len = getattr(cfg.data, "seq_len", None)
    if cfg.model.is_preset and isinstance(seq_len, int) and seq_len > cfg.model.tiny.n_positions:
        out.append(
            f"data.seq_len: expected at most model.tiny.n_positions ({cfg.model.tiny.n_positions}), got {seq_len}; "
            "lower data.seq_len or raise model.tiny.n_positions"
        )
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.metadata.get("internal")
        }
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
