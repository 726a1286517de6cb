"""Checkpoint writing and choosing: atomic writes, leftovers, corruption, pruning, state loading."""

from __future__ import annotations

import json
import os

import pytest
import torch
from starcoder_trainer import checkpoint as ckpt


class FakeModel:
    """Anything with save_pretrained: writes one weights file."""

    def __init__(self, payload: bytes = b"weights"):
        self.payload = payload

    def save_pretrained(self, folder, state_dict=None):
        (folder / "model.safetensors").write_bytes(self.payload)
        (folder / "config.json").write_text("{}")


def _save(run_dir, step, keep_last=5):
    state = {"step": step, "optimizer": {"state": {}, "param_groups": []}, "rng": ckpt.rng_state()}
    return ckpt.save_checkpoint(
        run_dir, step, model=FakeModel(), tokenizer=None, state=state, config_yaml="a: 1\n", keep_last=keep_last
    )


def test_a_checkpoint_is_complete_verified_and_its_state_loads_weights_only(tmp_path):
    path = _save(tmp_path / "run", 3)
    assert path.name == "checkpoint-3" and ckpt.verify(path) is None
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "config.json", ckpt.STATE_FILE, ckpt.CONFIG_FILE}
    state = torch.load(path / ckpt.STATE_FILE, weights_only=True)
    assert state["step"] == 3 and isinstance(state["rng"]["torch_cpu"], torch.Tensor)
    assert not list((tmp_path / "run").glob(".tmp-*"))


def test_rng_state_round_trips(tmp_path):
    import random

    saved = ckpt.rng_state()
    a = (random.random(), torch.rand(3))
    ckpt.set_rng_state(saved)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_interrupted_write_is_ignored_and_cleaned(tmp_path):
    run = tmp_path / "run"
    good = _save(run, 2)
    # a crash mid-write: a temporary folder with partial files, never renamed
    leftover = run / f"{ckpt.TMP_PREFIX}4-{os.getpid() + 1}"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    # and a checkpoint folder without manifest (e.g. copied by hand, incomplete)
    (run / "checkpoint-5").mkdir()
    point = ckpt.find_resume("auto", tmp_path)
    assert point.path == good
    assert any("checkpoint-5" in s and "no manifest" in s for s in point.skipped)
    assert ckpt.clean_temp(run) == [leftover] and not leftover.exists()
    _save(run, 6)  # the next save also cleans leftovers
    assert not list(run.glob(".tmp-*"))


def test_corrupt_newest_checkpoint_is_reported_and_skipped(tmp_path):
    run = tmp_path / "run"
    older = _save(run, 1)
    newer = _save(run, 2)
    with open(newer / "model.safetensors", "r+b") as f:
        f.write(b"X")
    point = ckpt.find_resume("auto", tmp_path)
    assert point.path == older
    assert point.skipped == [f"{newer}: model.safetensors does not match its sha256 in manifest.json; skipped"]
    with pytest.raises(ckpt.CheckpointError, match="does not match its sha256"):
        ckpt.find_resume(str(newer), tmp_path)
    (older / ckpt.STATE_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint"):
        ckpt.find_resume(str(run), tmp_path)
    assert ckpt.find_resume("auto", tmp_path).path is None


def test_keep_last_prunes_older_checkpoints(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        _save(run, step, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["checkpoint-3", "checkpoint-4"]


def test_resume_auto_picks_the_newest_across_runs_or_within_the_named_run(tmp_path):
    a = _save(tmp_path / "a", 10)
    b = _save(tmp_path / "b", 2)  # written later: newer
    assert ckpt.find_resume("auto", tmp_path).path == b
    assert ckpt.find_resume("auto", tmp_path, run="a").path == a
    assert ckpt.find_resume(None, tmp_path).path is None
    with pytest.raises(ckpt.CheckpointError, match="no such folder"):
        ckpt.find_resume(str(tmp_path / "missing"), tmp_path)
