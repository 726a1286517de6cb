"""Invoke tasks: set up, sync the Metal kernels submodule, check the machine, train.

`invoke bootstrap --repo .` converges a checkout to a working environment; every task
takes `--repo PATH` (else $REPO_ROOT, else the nearest parent with config.yaml and
.gitmodules). Tasks orchestrate; the packages own the logic.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shlex
import shutil
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

from invoke import Collection, Context, Exit, task

HERE = Path(__file__).resolve().parent
SUBMODULE = "metal-backend"
VENV = ".venv"
PACKAGE_DIRS = ("packages/device-backend", "packages/orchard-bridge", "packages/trainer")
CONSTRAINTS = "packages/constraints.txt"
STAMP = ".bootstrap-stamp"
# The user's list of documents to retire (tidy-docs); shell-style patterns, top level of the checkout.
DOC_REMOVALS = (
    "AUDIT_AND_OPTIMIZATION.md", "COMMANDS.md", "COMPLETION_REPORT.txt", "DELIVERABLES.txt", "DELIVERY_*.txt",
    "ERRORS_FIXED_SESSION2.md", "FIXES_*.md", "FULL_COVERAGE_*.md", "IMPLEMENTATION_*.md", "INDEX_METAL_CUDA.md",
    "LONG_CONTEXT_*.md", "METAL_CUDA_INTEGRATION_SUMMARY.md", "MODEL_UPGRADE_GUIDE.md", "NEW-FILES-INDEX.md",
    "NEXT_STEPS.md", "OPTIMIZATION*.md", "PROJECT_SUMMARY.txt", "QUICK_START*.md", "README_*.md", "RUST_*.md",
    "SYSTEM_*.md", "TOP_0_01_PERCENT_GUIDE.md", "VERIFICATION_*.md", "deployment-summary.md", "file-manifest.md",
    "git-pipeline-guide.md",
)
DOC_KEEP = ("README.md", "START_HERE.md", "QUICKSTART.md", "HARDWARE-OPTIMIZED.md", "config.yaml", "INSTALL.sh")

REPO_HELP = "repository root (default: $REPO_ROOT, else the nearest parent with config.yaml and .gitmodules)"


def _paths_module():
    """device_backend.paths, loaded from this checkout (bootstrap runs before any install)."""
    spec = importlib.util.spec_from_file_location(
        "_starcoder_paths", HERE / "packages" / "device-backend" / "src" / "device_backend" / "paths.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _root(repo: str | None) -> Path:
    paths = _paths_module()
    try:
        return paths.find_repo_root(repo)
    except paths.RepoRootError as exc:
        raise Exit(str(exc)) from None


def _venv_python(root: Path) -> Path:
    return root / VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _py(c: Context, root: Path, args: list[str], **kwargs):
    """Run the project venv's python with REPO_ROOT exported."""
    python = _venv_python(root)
    if not python.exists() and not kwargs.get("dry"):
        raise Exit(f"{python} is missing: run `invoke bootstrap --repo {root}` first")
    env = {"REPO_ROOT": str(root), **kwargs.pop("env", {})}
    return c.run(shlex.join([str(python), *args]), env=env, pty=False, in_stream=False, **kwargs)


def _git(c: Context, root: Path, args: list[str], **kwargs):
    env = {"GIT_TERMINAL_PROMPT": "0"}
    return c.run(shlex.join(["git", "-C", str(root), *args]), env=env, hide=True, warn=True, in_stream=False, **kwargs)


# -- submodule -------------------------------------------------------------------------------------


def _pinned_commit(c: Context, root: Path) -> str | None:
    result = _git(c, root, ["ls-tree", "HEAD", SUBMODULE])
    parts = result.stdout.split() if result and result.ok else []
    return parts[2] if len(parts) >= 3 and parts[1] == "commit" else None


def _checked_out_commit(c: Context, root: Path) -> str | None:
    if not (root / SUBMODULE / ".git").exists():
        return None
    result = _git(c, root / SUBMODULE, ["rev-parse", "HEAD"])
    return result.stdout.strip() if result.ok else None


@task(help={"repo": REPO_HELP, "dry_run": "print the git commands instead of running them"})
def submodule_sync(c, repo=None, dry_run=False):
    """Sync and initialise the metal-backend submodule (recursive) at its pinned commit."""
    root = _root(repo)
    pinned = _pinned_commit(c, root)
    if pinned and _checked_out_commit(c, root) == pinned:
        print(f"{SUBMODULE}: at the pinned commit {pinned[:12]}, nothing to do")
        return True
    for args in (["submodule", "sync", "--recursive"], ["submodule", "update", "--init", "--recursive"]):
        if dry_run:
            print("would run:", shlex.join(["git", "-C", str(root), *args]))
            continue
        result = _git(c, root, args, timeout=300)
        if not result.ok:
            lines = result.stderr.strip().splitlines() or ["git failed"]
            reason = next((ln.removeprefix("fatal: ") for ln in lines if ln.startswith("fatal:")), lines[-1])
            print(
                f"{SUBMODULE}: could not fetch the Metal kernels ({reason}); Metal kernels stay off and "
                f"attention uses PyTorch SDPA. Fetch later with `invoke submodule.sync --repo {root}`."
            )
            return False
    return True


@task(help={"repo": REPO_HELP})
def submodule_status(c, repo=None):
    """Show the pinned and the checked-out commit of metal-backend."""
    root = _root(repo)
    pinned = _pinned_commit(c, root)
    current = _checked_out_commit(c, root)
    print(f"{SUBMODULE}: pinned {pinned or 'none'}; checked out {current or 'not checked out'}")
    if pinned and current and pinned != current:
        print(f"  differs from the pin: `invoke submodule.sync --repo {root}` restores it")


# -- bootstrap -------------------------------------------------------------------------------------


def _install_stamp(root: Path, python: Path) -> str:
    digest = hashlib.sha256(str(python).encode())
    for rel in (CONSTRAINTS, *(f"{d}/pyproject.toml" for d in PACKAGE_DIRS)):
        digest.update((root / rel).read_bytes())
    return digest.hexdigest()


@task(
    help={
        "repo": REPO_HELP,
        "python": "interpreter for .venv (default: the one running invoke)",
        "dry_run": "print what would be done, change nothing",
    }
)
def bootstrap(c, repo=None, python=None, dry_run=False):
    """Converge this checkout: git, submodule, .venv with the three packages and pinned torch, status."""
    started = time.monotonic()
    root = _root(repo)
    if not c.run("git --version", hide=True, warn=True, in_stream=False).ok:
        raise Exit("git is not installed: install git and run `invoke bootstrap` again")
    if not (root / ".git").exists():
        raise Exit(f"{root} is not a git checkout: clone the repository and run bootstrap inside it")

    submodule_sync(c, repo=str(root), dry_run=dry_run)

    # .venv: created once, reused while it works
    venv_python = _venv_python(root)
    interpreter = python or sys.executable
    if not venv_python.exists():
        cmd = [interpreter, "-m", "venv", str(root / VENV)]
        print(("would run: " if dry_run else "creating .venv: ") + shlex.join(cmd))
        if not dry_run:
            c.run(shlex.join(cmd), in_stream=False)
    elif python and Path(shutil.which(python) or python).resolve() != venv_python.resolve():
        print(f".venv exists; it keeps its interpreter (remove {root / VENV} to switch to {python})")

    # packages: editable with test extras and pinned torch; skipped when nothing they depend on changed
    stamp_file = root / VENV / STAMP
    stamp = _install_stamp(root, venv_python)
    if stamp_file.exists() and stamp_file.read_text() == stamp:
        print("packages: installed and up to date")
    else:
        # invoke and nox too, so an activated .venv runs every command in the README
        args = ["-m", "pip", "install", "-q", "-c", CONSTRAINTS, "torch", "invoke", "nox"]
        for folder in PACKAGE_DIRS:
            args += ["-e", f"{folder}[test]"]
        with c.cd(str(root)):
            print(("would run: " if dry_run else "installing: ") + shlex.join([str(venv_python), *args]))
            if not dry_run:
                _py(c, root, args)
                stamp_file.write_text(stamp)

    if dry_run:
        print("dry run: nothing was changed")
        return
    _status(c, root)
    print(f"bootstrap finished in {time.monotonic() - started:.1f}s")


def _status(c: Context, root: Path) -> None:
    print("\n== device ==")
    _py(c, root, ["-m", "device_backend"], warn=True)
    print("\n== Orchard (Metal FlashAttention) ==")
    _py(c, root, ["-m", "orchard_bridge", "--repo", str(root)], warn=True)
    print(
        "\nnext:\n"
        f"  invoke train --repo {root}        # fine-tune the tiny preset on this repository\n"
        f"  invoke doctor --repo {root}       # device, kernels and config check\n"
        "  nox -s regression                 # the test suite"
    )


@task(help={"repo": REPO_HELP})
def doctor(c, repo=None):
    """Report the device choice, the Orchard kernels and the config check."""
    root = _root(repo)
    _status(c, root)
    _py(c, root, ["-m", "starcoder_trainer", "--repo", str(root), "--check-config"], warn=True)


# -- main job --------------------------------------------------------------------------------------


def _train_args(root: Path, config, set_, resume, device) -> list[str]:
    args = ["--repo", str(root)]
    if config:
        args += ["--config", config]
    for item in set_ or ():
        args += ["--set", item]
    if resume:
        args += ["--resume", resume]
    if device:
        args += ["--device", device]
    return args


TRAIN_HELP = {
    "repo": REPO_HELP,
    "config": "config file (default: <root>/config.yaml)",
    "set_": "override a config key, e.g. --set train.max_steps=50 (repeatable)",
    "resume": "'auto' (newest verified checkpoint) or a checkpoint folder",
    "device": "auto | cpu | mps | cuda | cuda:N",
    "nproc": "processes on this machine (torchrun --standalone); 1 = plain run",
}


@task(iterable=["set_"], help=TRAIN_HELP)
def train(c, repo=None, config=None, set_=None, resume=None, device=None, nproc=1):
    """Fine-tune per config.yaml (default: tiny preset on this repository's own code)."""
    root = _root(repo)
    args = _train_args(root, config, set_, resume, device)
    if int(nproc) > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}"]
        _py(c, root, [*launcher, "-m", "starcoder_trainer", *args])
    else:
        _py(c, root, ["-m", "starcoder_trainer", *args])


@task(iterable=["set_"], help={k: v for k, v in TRAIN_HELP.items() if k in ("repo", "config", "set_", "device")})
def estimate(c, repo=None, config=None, set_=None, device=None):
    """Predict peak memory for the resolved config against the device budget."""
    root = _root(repo)
    _py(c, root, ["-m", "starcoder_trainer", "--estimate", *_train_args(root, config, set_, None, device)])


@task(
    help={
        "repo": REPO_HELP,
        "checkpoint": "checkpoint folder (output of invoke train)",
        "prompt": "text to complete",
        "max_new_tokens": "tokens to generate",
    }
)
def sample(c, checkpoint, prompt="def ", max_new_tokens=64, repo=None):
    """Generate a completion from a checkpoint."""
    root = _root(repo)
    args = ["-m", "starcoder_trainer.sample", "--checkpoint", checkpoint, "--prompt", prompt]
    _py(c, root, [*args, "--max-new-tokens", str(max_new_tokens)])


@task(help={"repo": REPO_HELP})
def orchard_build(c, repo=None):
    """Build the Orchard kernel library from the submodule sources (macOS on Apple Silicon only)."""
    root = _root(repo)
    _py(c, root, ["-m", "orchard_bridge", "build", "--repo", str(root)])


@task(help={"repo": REPO_HELP})
def orchard_status(c, repo=None):
    """Report the Orchard kernel search, checks, conformance and the active attention path."""
    root = _root(repo)
    _py(c, root, ["-m", "orchard_bridge", "--repo", str(root)], warn=True)


# -- documents -------------------------------------------------------------------------------------


@task(
    help={
        "path": "checkout to tidy (its top-level documents)",
        "apply": "move the listed documents into the backup folder (default: dry run)",
        "backup": "backup folder (default: <path>/.docs-backup/<timestamp>)",
    }
)
def tidy_docs(c, path, apply=False, backup=None):
    """Retire the old sprawl of top-level documents: dry run by default; --apply moves, never deletes."""
    target = Path(path).expanduser().resolve()
    if not target.is_dir():
        raise Exit(f"--path {path}: not a folder")
    matches = sorted(
        p for p in target.iterdir()
        if p.is_file() and p.name not in DOC_KEEP and any(fnmatch(p.name, pat) for pat in DOC_REMOVALS)
    )
    if not matches:
        print(f"{target}: nothing to tidy")
        return
    dest = Path(backup).expanduser().resolve() if backup else target / ".docs-backup" / time.strftime("%Y%m%d-%H%M%S")
    for p in matches:
        print(f"{'moving' if apply else 'would move'} {p.name} -> {dest / p.name}")
    if not apply:
        print(f"dry run: {len(matches)} file(s) would move; run again with --apply")
        return
    dest.mkdir(parents=True, exist_ok=True)
    for p in matches:
        if (dest / p.name).exists():
            raise Exit(f"{dest / p.name} exists already; nothing more was moved (pick another --backup)")
        shutil.move(str(p), str(dest / p.name))
    print(f"moved {len(matches)} file(s) to {dest}")


ns = Collection(bootstrap, doctor, train, estimate, sample, tidy_docs)
ns.add_collection(Collection("submodule", sync=submodule_sync, status=submodule_status))
ns.add_collection(Collection("orchard", build=orchard_build, status=orchard_status))
