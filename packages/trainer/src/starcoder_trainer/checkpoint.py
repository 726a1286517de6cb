"""Checkpoints: written whole or not at all, verified before a resume trusts them.

Layout of one checkpoint, ``<output.dir>/<run>/checkpoint-<step>/``::

    model.safetensors, config.json, ...   save_pretrained (adapter files only under LoRA)
    tokenizer.json, ...                   the tokenizer
    training_state.pt                     optimizer, scheduler, step, data position, RNG states
    train_config.yaml                     the resolved config of the run
    manifest.json                         sha256 of every other file (written last)

It is written into ``.tmp-checkpoint-<step>-<pid>/`` in the same folder and renamed
when complete, so a crash mid-write leaves only a temporary folder, which resume
ignores and the next save removes. ``training_state.pt`` holds only tensors and plain
Python values: it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from orchard_bridge.fileinfo import sha256_of  # stdlib-only; the one sha256-of-a-file helper

PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
MANIFEST = "manifest.json"
STATE_FILE = "training_state.pt"
CONFIG_FILE = "train_config.yaml"
FORMAT = 1
_STEP = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint asked for explicitly is missing or does not verify."""


@dataclass
class ResumePoint:
    """The checkpoint a run continues from, and the ones passed over on the way."""

    path: Path | None
    skipped: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path | None:
        return self.path.parent if self.path else None


# --------------------------------------------------------------------------- writing


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model,
    tokenizer,
    state: dict[str, Any],
    model_state: dict[str, Any] | None = None,
    config_yaml: str,
    keep_last: int,
) -> Path:
    """Write checkpoint-<step> atomically (temp folder + rename), then prune to the last ``keep_last``.

    ``model_state`` is a full state dict to write instead of ``model.state_dict()``
    (what a sharded model gathers onto the main process).
    """
    run_dir = Path(run_dir)
    final = run_dir / f"{PREFIX}{step}"
    if final.exists() and verify(final) is None:
        return final
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_temp(run_dir)
    tmp = run_dir / f"{TMP_PREFIX}{step}-{os.getpid()}"
    tmp.mkdir()
    model.save_pretrained(tmp, state_dict=model_state)  # model_state: gathered from every rank (DDP/FSDP)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / STATE_FILE)
    (tmp / CONFIG_FILE).write_text(config_yaml, encoding="utf-8")
    manifest = {"format": FORMAT, "step": step, "created": time.time(), "files": _hash_tree(tmp)}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    _fsync_dir(tmp)
    if final.exists():  # an earlier, unverifiable write of the same step
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    prune(run_dir, keep_last)
    return final


def prune(run_dir: Path, keep_last: int) -> list[Path]:
    """Remove complete checkpoints older than the newest ``keep_last``; return what was removed."""
    complete = [p for p in list_checkpoints(run_dir) if (p / MANIFEST).is_file()]
    removed = complete[:-keep_last] if keep_last > 0 else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def clean_temp(run_dir: Path) -> list[Path]:
    """Remove leftover temporary folders of interrupted writes."""
    leftovers = sorted(Path(run_dir).glob(f"{TMP_PREFIX}*")) if Path(run_dir).is_dir() else []
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


# --------------------------------------------------------------------------- reading


def list_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-<step> folders of a run, oldest step first (temporary folders excluded)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _STEP.match(p.name)]
    return sorted(found, key=step_of)


def step_of(path: Path) -> int:
    m = _STEP.match(Path(path).name)
    return int(m.group(1)) if m else -1


def verify(path: Path) -> str | None:
    """None when the checkpoint is complete and every file matches its manifest, else why not."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest.json (incomplete write)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files: dict[str, str] = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"manifest.json unreadable ({exc})"
    if STATE_FILE not in files:
        return f"manifest lists no {STATE_FILE}"
    for rel, digest in files.items():
        target = path / rel
        if not target.is_file():
            return f"{rel} is missing"
        if sha256_of(target) != digest:
            return f"{rel} does not match its sha256 in manifest.json"
    return None


def find_resume(spec: str | os.PathLike[str] | None, output_dir: Path, run: str | None = None) -> ResumePoint:
    """The checkpoint to resume from.

    ``spec`` is None (fresh start), ``"auto"`` (newest verified checkpoint under
    ``output_dir``, in run ``run`` when it is set), a run folder (its newest verified
    checkpoint) or one checkpoint folder (must verify). Corrupt checkpoints met on the
    way are listed in ``skipped``; an explicit path that yields nothing raises.
    """
    if spec is None:
        return ResumePoint(None)
    output_dir = Path(output_dir)
    if str(spec) == "auto":
        if run:
            candidates = list_checkpoints(output_dir / run)
        else:
            runs = [d for d in output_dir.iterdir() if d.is_dir()] if output_dir.is_dir() else []
            candidates = [c for d in runs for c in list_checkpoints(d)]
        return _first_verified(candidates)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"--resume {spec}: no such folder; pass a checkpoint-<step> folder, a run folder or auto")
    if _STEP.match(path.name) or (path / MANIFEST).exists():
        problem = verify(path)
        if problem:
            raise CheckpointError(f"--resume {spec}: {problem}; pick another checkpoint or --resume auto")
        return ResumePoint(path)
    point = _first_verified(list_checkpoints(path))
    if point.path is None:
        detail = "; ".join(point.skipped) or "it holds no checkpoint-<step> folder"
        raise CheckpointError(f"--resume {spec}: no usable checkpoint ({detail})")
    return point


def load_state(path: Path) -> dict[str, Any]:
    """training_state.pt of a checkpoint (tensors and plain values only)."""
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Random states of Python, torch CPU, CUDA (every device) and MPS."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch_cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        state["torch_mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() captured (device states only where that device exists)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        cuda_states = state["torch_cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if "torch_mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["torch_mps"])


# --------------------------------------------------------------------------- helpers


def _first_verified(candidates: list[Path]) -> ResumePoint:
    skipped = []
    for path in sorted(candidates, key=_newness, reverse=True):
        problem = verify(path)
        if problem is None:
            return ResumePoint(path, skipped)
        skipped.append(f"{path}: {problem}; skipped")
    return ResumePoint(None, skipped)


def _newness(path: Path) -> tuple[float, int]:
    try:
        created = float(json.loads((path / MANIFEST).read_text(encoding="utf-8"))["created"])
    except (OSError, ValueError, KeyError, TypeError):
        created = path.stat().st_mtime
    return created, step_of(path)


def _hash_tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): sha256_of(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
