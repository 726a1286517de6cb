"""starcoder-train and starcoder-sample command lines (in-process: main(argv))."""

from __future__ import annotations

import pytest
from starcoder_trainer import __main__ as cli
from starcoder_trainer import sample


def _args(repo, overrides, *extra):
    out = ["--repo", str(repo)]
    for item in overrides:
        out += ["--set", item]
    return [*out, *extra]


def test_check_config_prints_the_resolved_config(git_repo, tiny_overrides, capsys):
    assert cli.main(_args(git_repo, tiny_overrides, "--check-config", "--device", "cpu")) == 0
    out = capsys.readouterr().out
    assert "# config OK" in out and "n_embd: 64" in out and "request: cpu" in out


def test_config_errors_exit_2_with_every_problem(git_repo, capsys):
    (git_repo / "config.yaml").write_text("train:\n  lr: fast\n  max_stepz: 3\n", encoding="utf-8")
    assert cli.main(["--repo", str(git_repo), "--set", "train.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: expected a positive number, got 'fast'" in err
    assert "train.max_stepz: unknown key (did you mean 'max_steps'?)" in err
    assert "train.batch_size: expected a positive integer, got 0" in err


def test_a_missing_repo_root_exits_2(tmp_path, capsys):
    assert cli.main(["--repo", str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_train_then_sample_from_the_checkpoint(git_repo, tiny_overrides, capsys):
    assert cli.main(_args(git_repo, tiny_overrides)) == 0
    out = capsys.readouterr().out
    assert "train loss" in out and "val loss" in out and "tokens/s" in out
    run = git_repo / "runs" / "t"
    assert (run / "checkpoint-2").is_dir() and (run / "summary.json").is_file()

    assert sample.main(["--checkpoint", str(run), "--prompt", "def ", "--max-new-tokens", "8", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("def ") and len(text) > len("def ")
    # auto: the newest verified checkpoint under the config's output.dir of --repo
    (git_repo / "config.yaml").write_text("output:\n  dir: runs\n", encoding="utf-8")
    assert sample.main(["--checkpoint", "auto", "--repo", str(git_repo), "--max-new-tokens", "4",
                        "--temperature", "0", "--device", "cpu"]) == 0


def test_sample_reports_a_missing_checkpoint(tmp_path, capsys):
    assert sample.main(["--checkpoint", str(tmp_path / "none"), "--device", "cpu"]) == 1
    assert "no such folder" in capsys.readouterr().err


def test_estimate_hook(git_repo, tiny_overrides, capsys):
    estimate = pytest.importorskip("starcoder_trainer.estimate", reason="the estimator (issue 6) is not installed")
    if not hasattr(estimate, "main_estimate"):
        pytest.skip("starcoder_trainer.estimate has no main_estimate yet")
    assert cli.main(_args(git_repo, tiny_overrides, "--estimate")) in (0, 1)


class _Exited(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


@pytest.mark.parametrize(
    ("world", "failure", "code", "stderr_has"),
    [
        (2, None, 0, None),
        (2, "data", 1, "starcoder-train: error: no files"),
        (2, "bug", 1, "RuntimeError: boom"),  # the traceback, which finalization would have printed
        (1, None, 0, None),
    ],
)
def test_a_multi_process_run_ends_through_exit_process(monkeypatch, git_repo, tiny_overrides, capsys,
                                                       world, failure, code, stderr_has):
    """After collectives the CLI ends with exit_process(code) (gloo threads vs finalization); one process returns."""
    from types import SimpleNamespace

    from starcoder_trainer import distributed, recipe
    from starcoder_trainer.data import DataError

    events = []

    class FakeRecipe:
        def __init__(self, cfg, resume=None):
            self.dist = SimpleNamespace(distributed=world > 1, is_main=True)

        def setup(self):
            events.append("setup")

        def train(self):
            if failure == "data":
                raise DataError("no files")
            if failure == "bug":
                raise RuntimeError("boom")
            return SimpleNamespace(format=lambda: "the summary", checkpoint=None)

        def cleanup(self):
            events.append("cleanup")

    def fake_exit(value):
        events.append(("exit", value))
        raise _Exited(value)

    monkeypatch.setattr(recipe, "Recipe", FakeRecipe)
    monkeypatch.setattr(distributed, "exit_process", fake_exit)
    if world > 1:
        with pytest.raises(_Exited) as exited:
            cli.main(_args(git_repo, tiny_overrides))
        assert exited.value.code == code
        assert events == ["setup", "cleanup", ("exit", code)]
    else:
        assert cli.main(_args(git_repo, tiny_overrides)) == code
        assert events == ["setup", "cleanup"]
    captured = capsys.readouterr()
    if failure is None:
        assert "the summary" in captured.out
    if stderr_has:
        assert stderr_has in captured.err
