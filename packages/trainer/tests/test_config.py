"""config.yaml loading: every problem at once with its key path, overrides, the root config."""

from __future__ import annotations

from pathlib import Path

import pytest
from starcoder_trainer.config import Config, ConfigError, load_config

ROOT_CONFIG = Path(__file__).resolve().parents[3] / "config.yaml"


def _problems(tmp_path: Path, text: str, overrides: list[str] | None = None) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides or [])
    return err.value.problems


def test_the_repository_config_is_valid_and_documented():
    cfg = load_config(ROOT_CONFIG, [])
    assert cfg.model.name == "tiny-starcoder" and not cfg.model.lora.enabled
    assert cfg.root == ROOT_CONFIG.parent
    assert cfg.data.seq_len <= cfg.model.tiny.n_positions
    # a comment on every key line: the file documents itself
    for line in ROOT_CONFIG.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            assert "#" in line, f"config.yaml line without a comment: {line!r}"
    # every path in it is relative
    for value in (cfg.output.dir, cfg.data.cache_dir, cfg.orchard.cache_dir, cfg.repo.metal_backend, cfg.data.repo):
        assert not Path(value).is_absolute()


def test_all_problems_are_reported_at_once_with_key_paths(tmp_path):
    problems = _problems(
        tmp_path,
        "train:\n  lr: fast\n  max_steps: -3\n  batch_size: 2.5\n  betas: [0.9]\n"
        "model:\n  lora:\n    alpah: 4\n  tiny:\n    n_embd: 100\n    n_head: 3\n"
        "device:\n  request: tpu\n"
        "data:\n  seq_len: 0\n"
        "outptu:\n  dir: x\n",
    )
    text = "\n".join(problems)
    assert "train.lr: expected a positive number, got 'fast'" in text
    assert "train.max_steps: expected a positive integer, got -3" in text
    assert "train.batch_size: expected a positive integer, got 2.5" in text
    assert "train.betas: expected two numbers" in text
    assert "model.lora.alpah: unknown key (did you mean 'alpha'?)" in text
    assert "model.tiny.n_embd: expected a multiple of n_head (3), got 100" in text
    assert "device.request: expected auto, cpu, mps, cuda or cuda:N, got 'tpu'" in text
    assert "outptu: unknown key (did you mean 'output'?)" in text
    assert any(p.startswith("data.seq_len") for p in problems)
    assert len(problems) >= 9


def test_a_negative_lr_says_positive(tmp_path):
    assert _problems(tmp_path, "train:\n  lr: -1\n") == ["train.lr: expected a positive number, got -1.0"]


def test_overrides_use_yaml_scalars_and_are_checked(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  max_steps: 10\n", encoding="utf-8")
    cfg = load_config(
        path,
        ["train.max_steps=50", "train.lr=1e-4", "train.progress=false", "output.run=null",
         "model.lora.target_modules=[c_attn, c_proj]", "orchard.mode=off"],
    )
    assert cfg.train.max_steps == 50 and cfg.train.lr == 1e-4 and cfg.train.progress is False
    assert cfg.output.run is None and cfg.model.lora.target_modules == ["c_attn", "c_proj"]
    assert cfg.orchard.mode == "off"  # YAML reads a bare off as false; the loader takes the word back
    problems = _problems(tmp_path, "", ["train.max_steps=lots", "train.nope=1", "justakey", "train.lr=0.1", "train.lr.x=1"])
    assert "train.max_steps: expected a positive integer, got 'lots'" in problems
    assert any(p.startswith("train.nope: unknown key") for p in problems)
    assert any("--set 'justakey': expected key.path=value" in p for p in problems)
    assert "--set train.lr.x: train.lr is a value, not a section" in problems


def test_cross_checks_and_sections(tmp_path):
    problems = _problems(tmp_path, "data:\n  seq_len: 512\nmodel:\n  tiny:\n    n_positions: 256\n")
    assert any("data.seq_len: expected at most model.tiny.n_positions (256), got 512" in p for p in problems)
    assert _problems(tmp_path, "train: 3\n") == ["train: expected a mapping (section), got 3"]
    assert "expected a mapping of sections" in str(_problems(tmp_path, "- a\n- b\n"))
    assert "not valid YAML" in str(_problems(tmp_path, "train: [\n"))


def test_defaults_paths_and_round_trip(tmp_path):
    cfg = load_config(None, [], root=tmp_path)
    assert isinstance(cfg, Config) and cfg.root == tmp_path.resolve()
    assert cfg.path("runs") == tmp_path.resolve() / "runs"
    assert cfg.path("/abs/x") == Path("/abs/x")
    assert "root" not in cfg.to_dict()
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml(), encoding="utf-8")
    assert load_config(again, []).to_dict() == cfg.to_dict()


def test_error_message_lists_every_problem(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: fast\n  max_steps: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path, [])
    message = str(err.value)
    assert "2 problem(s)" in message and "train.lr" in message and "train.max_steps" in message
