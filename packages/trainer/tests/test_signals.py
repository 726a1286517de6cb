"""SIGINT / SIGTERM: finish the step, write a checkpoint, exit cleanly; the run then resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from starcoder_trainer import checkpoint as ckpt
from starcoder_trainer.recipe import Recipe


class SelfSignalling(Recipe):
    def _loss_step(self, batch):
        if self.step == 1:  # during the second optimizer step
            os.kill(os.getpid(), signal.SIGTERM)
        return super()._loss_step(batch)


def test_sigterm_in_process_checkpoints_and_stops(tiny_config, quiet_log):
    previous = signal.getsignal(signal.SIGTERM)
    r = SelfSignalling(tiny_config("train.max_steps=50"), log=quiet_log).setup()
    summary = r.train()
    r.cleanup()
    assert summary.stopped_by == "SIGTERM" and summary.steps == 2
    assert ckpt.verify(r.run_dir / "checkpoint-2") is None
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored


def test_sigint_to_the_cli_writes_a_checkpoint_and_exits_cleanly(git_repo, tiny_overrides):
    args = [sys.executable, "-m", "starcoder_trainer", "--repo", str(git_repo)]
    for item in [*tiny_overrides, "train.max_steps=100000", "train.save_every=0"]:
        args += ["--set", item]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=git_repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = git_repo / "runs" / "t" / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if metrics.is_file() and any("loss" in json.loads(x) for x in metrics.read_text().splitlines()):
                break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped by SIGINT" in out and "--resume auto" in out
    checkpoints = ckpt.list_checkpoints(git_repo / "runs" / "t")
    assert len(checkpoints) == 1 and ckpt.verify(checkpoints[0]) is None
    step = ckpt.step_of(checkpoints[0])
    assert step >= 1
    assert ckpt.find_resume("auto", git_repo / "runs").path == checkpoints[0]
