"""tasks.py behaviour on temporary trees: root resolution, tidy-docs, offline submodule, launch script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from invoke import Context, Exit

SPRAWL = ["COMMANDS.md", "FIXES_METAL.md", "DELIVERY_NOTES.txt", "README_OLD.md", "OPTIMIZATION.md",
          "git-pipeline-guide.md", "TOP_0_01_PERCENT_GUIDE.md"]
KEEP = ["README.md", "START_HERE.md", "QUICKSTART.md", "HARDWARE-OPTIMIZED.md", "config.yaml", "INSTALL.sh",
        "notes.md"]


@pytest.fixture
def old_checkout(tmp_path):
    for name in SPRAWL + KEEP:
        (tmp_path / name).write_text(f"content of {name}\n")
    return tmp_path


def test_tidy_docs_dry_run_moves_nothing(tasks_module, old_checkout, capsys):
    tasks_module.tidy_docs(Context(), path=str(old_checkout))
    out = capsys.readouterr().out
    assert all((old_checkout / n).exists() for n in SPRAWL + KEEP)
    assert all(f"would move {n}" in out for n in SPRAWL)
    assert f"{len(SPRAWL)} file(s) would move" in out


def test_tidy_docs_apply_moves_into_backup_and_keeps_the_rest(tasks_module, old_checkout, tmp_path_factory):
    backup = tmp_path_factory.mktemp("backup")
    tasks_module.tidy_docs(Context(), path=str(old_checkout), apply=True, backup=str(backup))
    for name in SPRAWL:
        assert not (old_checkout / name).exists()
        assert (backup / name).read_text() == f"content of {name}\n"  # moved, never deleted
    assert all((old_checkout / n).exists() for n in KEEP)


def test_tidy_docs_default_backup_is_inside_the_checkout(tasks_module, old_checkout):
    tasks_module.tidy_docs(Context(), path=str(old_checkout), apply=True)
    moved = list((old_checkout / ".docs-backup").glob("*/COMMANDS.md"))
    assert len(moved) == 1 and moved[0].read_text() == "content of COMMANDS.md\n"


def test_tidy_docs_refuses_to_overwrite_a_backup(tasks_module, old_checkout, tmp_path_factory):
    backup = tmp_path_factory.mktemp("backup")
    (backup / "COMMANDS.md").write_text("older backup\n")
    with pytest.raises(Exit, match="exists already"):
        tasks_module.tidy_docs(Context(), path=str(old_checkout), apply=True, backup=str(backup))
    assert (backup / "COMMANDS.md").read_text() == "older backup\n"
    assert (old_checkout / "COMMANDS.md").exists()


def test_root_from_flag_env_and_discovery(tasks_module, tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("{}\n")
    (tmp_path / ".gitmodules").write_text("")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.delenv("REPO_ROOT", raising=False)
    monkeypatch.chdir(deep)
    assert tasks_module._root(None) == tmp_path.resolve()
    monkeypatch.setenv("REPO_ROOT", str(other))
    assert tasks_module._root(None) == other.resolve()
    assert tasks_module._root(str(deep)) == deep.resolve()  # --repo wins over REPO_ROOT
    with pytest.raises(Exit, match="not a folder"):
        tasks_module._root(str(tmp_path / "missing"))


def test_no_root_found_says_how_to_fix(tasks_module, tmp_path, monkeypatch):
    monkeypatch.delenv("REPO_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exit, match="pass --repo PATH or set REPO_ROOT"):
        tasks_module._root(None)


@pytest.fixture
def repo_with_unreachable_submodule(tmp_path, git):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "config.yaml").write_text("{}\n")
    (repo / ".gitmodules").write_text(
        '[submodule "metal-backend"]\n\tpath = metal-backend\n\turl = file:///nonexistent/orchard.git\n'
    )
    git(repo, "update-index", "--add", "--cacheinfo", "160000,9ad5cf0031641c8eee11d499cd180a9d7bb307a6,metal-backend")
    git(repo, "add", "config.yaml", ".gitmodules")
    git(repo, "commit", "-qm", "init")
    return repo


def test_offline_submodule_prints_one_clear_line_and_carries_on(tasks_module, repo_with_unreachable_submodule, capsys):
    assert tasks_module.submodule_sync(Context(), repo=str(repo_with_unreachable_submodule)) is False
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "could not fetch the Metal kernels" in lines[0]
    assert "Metal kernels stay off" in lines[0] and "invoke submodule.sync" in lines[0]


def test_submodule_status_reports_pin(tasks_module, repo_with_unreachable_submodule, capsys):
    tasks_module.submodule_status(Context(), repo=str(repo_with_unreachable_submodule))
    assert "pinned 9ad5cf0031641c8eee11d499cd180a9d7bb307a6; checked out not checked out" in capsys.readouterr().out


def test_bootstrap_dry_run_changes_nothing(tasks_module, repo_with_unreachable_submodule, capsys):
    repo = repo_with_unreachable_submodule
    for folder in tasks_module.PACKAGE_DIRS:
        (repo / folder).mkdir(parents=True)
        (repo / folder / "pyproject.toml").write_text("[project]\nname='x'\n")
    (repo / "packages" / "constraints.txt").write_text("torch==2.13.0\n")
    before = sorted(p.relative_to(repo) for p in repo.rglob("*") if ".git" not in p.parts)
    tasks_module.bootstrap(Context(), repo=str(repo), dry_run=True)
    out = capsys.readouterr().out
    assert "would run: git" in out and "submodule update --init --recursive" in out
    assert "-m venv" in out and "pip install" in out and "torch" in out
    assert "dry run: nothing was changed" in out
    assert sorted(p.relative_to(repo) for p in repo.rglob("*") if ".git" not in p.parts) == before


def test_run_starcoder_exports_repo_root_and_uses_the_venv(root, tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(root / "run_starcoder.sh", checkout / "run_starcoder.sh")
    fake = checkout / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "REPO_ROOT=$REPO_ROOT"\necho "ARGS=$*"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "REPO_ROOT"}
    out = subprocess.run(["bash", str(checkout / "run_starcoder.sh"), "--set", "train.max_steps=5"],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert f"REPO_ROOT={checkout}" in out
    assert "ARGS=-m starcoder_trainer --set train.max_steps=5" in out


def test_run_starcoder_without_venv_says_what_to_do(root, tmp_path):
    shutil.copy(root / "run_starcoder.sh", tmp_path / "run_starcoder.sh")
    proc = subprocess.run(["bash", str(tmp_path / "run_starcoder.sh")], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "REPO_ROOT"}, check=False)
    assert proc.returncode != 0 and "run ./INSTALL.sh" in proc.stderr


def test_invoke_lists_the_documented_tasks(root):
    out = subprocess.run([sys.executable, "-m", "invoke", "--list"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    for name in ("bootstrap", "doctor", "train", "estimate", "sample", "tidy-docs", "submodule.sync",
                 "submodule.status", "orchard.build", "orchard.status"):
        assert name in out, f"invoke --list lacks {name}"
