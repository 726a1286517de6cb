"""One training step on the best available device with the Orchard bridge (nox -s mps_smoke).

On macOS with Apple Silicon the device must be mps (the user's expected outcome);
elsewhere the step runs on whatever device was chosen and the MPS assertion is
skipped with its reason.
"""

from __future__ import annotations

import math
import platform
import sys

import pytest
import torch
from starcoder_trainer import checkpoint as ckpt
from starcoder_trainer.recipe import Recipe

ON_APPLE_SILICON = sys.platform == "darwin" and platform.machine() == "arm64"


def _mps_usable() -> bool:
    return ON_APPLE_SILICON and torch.backends.mps.is_built() and torch.backends.mps.is_available()


def test_one_step_on_the_best_device_with_the_bridge(tiny_config, quiet_log):
    cfg = tiny_config("device.request=auto", "orchard.mode=auto", "train.max_steps=1")
    r = Recipe(cfg, log=quiet_log).setup()
    summary = r.train()
    r.cleanup()
    assert summary.last_train_loss is not None and math.isfinite(summary.last_train_loss)
    assert summary.device == str(r.device) and r.device.type == r.choice.device_type
    assert summary.attention in ("orchard", "sdpa")
    assert r.bridge.attn_implementation(training=True) == summary.attention
    assert ckpt.verify(r.run_dir / "checkpoint-1") is None
    if summary.device == "cpu":
        assert r.choice.dtype == "float32"


@pytest.mark.skipif(not ON_APPLE_SILICON, reason="needs macOS on Apple Silicon (MPS)")
def test_auto_picks_mps_on_apple_silicon(tiny_config, quiet_log):
    assert _mps_usable(), "macOS on Apple Silicon but torch reports MPS unusable; see python -m device_backend"
    r = Recipe(tiny_config("device.request=auto", "orchard.mode=auto", "train.max_steps=1"), log=quiet_log).setup()
    summary = r.train()
    r.cleanup()
    assert summary.device == "mps"
    assert math.isfinite(summary.last_train_loss)
