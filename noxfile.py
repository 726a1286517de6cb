"""Test sessions for the StarCoder fine-tuning monorepo; each runs in its own virtualenv.

`nox -s regression` is the README's test command and what CI runs. Torch sessions use
Python 3.11 unless STARCODER_TORCH_PYTHON says otherwise; the torch-free device-backend
tests also run on every other installed interpreter among 3.10-3.13.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
TORCH_PYTHON = os.environ.get("STARCODER_TORCH_PYTHON", "3.11")
OTHER_PYTHONS = [v for v in ("3.10", "3.11", "3.12", "3.13") if v != TORCH_PYTHON]
CONSTRAINTS = ROOT / "packages" / "constraints.txt"
PACKAGES = {
    "device_backend": "packages/device-backend",
    "orchard_bridge": "packages/orchard-bridge",
    "starcoder_trainer": "packages/trainer",
}

nox.options.default_venv_backend = "virtualenv"  # pip, so the machine's pip configuration (local torch wheel) holds
nox.options.error_on_missing_interpreters = False  # a missing 3.10/3.12/3.13 is skipped, also under CI=true
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "regression"]


@nox.session(python=TORCH_PYTHON)
def integration(session: nox.Session) -> None:
    """Device detection and the Orchard bridge (the old test_metal_cuda_integration)."""
    _install(session, "device_backend", "orchard_bridge")
    _pytest(session, "packages/device-backend/tests", "packages/orchard-bridge/tests")


@nox.session(python=TORCH_PYTHON)
def mps_smoke(session: nox.Session) -> None:
    """One training step on the best device with the bridge (asserts MPS on Apple Silicon)."""
    _install(session, *PACKAGES)
    _pytest(session, "packages/trainer/tests/test_mps_smoke.py")


@nox.session(python=TORCH_PYTHON)
def one_step(session: nox.Session) -> None:
    """One optimizer step from a config on a temp git repo; checkpoint reloads in plain transformers."""
    _install(session, *PACKAGES)
    _pytest(session, "packages/trainer/tests/test_one_step.py")


@nox.session(python=TORCH_PYTHON)
def regression(session: nox.Session) -> None:
    """Every test of every package and the repository checks; then the torch-free and package-install checks."""
    _install(session, *PACKAGES)
    _pytest(session, "tests", *(f"{path}/tests" for path in PACKAGES.values()))
    for version in OTHER_PYTHONS:  # notify() queues one parametrization per call
        session.notify(f"device_backend_compat-{version}")
    session.notify("packages")
    session.notify("lint")


@nox.session(python=OTHER_PYTHONS)
def device_backend_compat(session: nox.Session) -> None:
    """The torch-free device-backend tests on the other interpreters (no torch installed)."""
    _install(session, "device_backend")
    _pytest(session, "packages/device-backend/tests", workers="0")


@nox.session(python=TORCH_PYTHON)
def packages(session: nox.Session) -> None:
    """Build each wheel, install each alone in a fresh venv, import it, run its entry point's --help."""
    session.install("-c", str(CONSTRAINTS), "build", "virtualenv")
    dist = Path(session.create_tmp()) / "dist"
    session.run("python", "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), *PACKAGES.values())
    session.run("python", str(ROOT / "tests" / "check_packages.py"), "--dist", str(dist), "--constraints", str(CONSTRAINTS))


@nox.session(python=TORCH_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install("-c", str(CONSTRAINTS), "ruff")
    session.run("ruff", "check", "--line-length", "120", ".", *session.posargs)


@nox.session(python=TORCH_PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Every packages/*/benchmarks/bench_*.py; JSON records under runs/bench/ (slow, off by default)."""
    _install(session, *PACKAGES, extras="bench")
    out = ROOT / "runs" / "bench"
    scripts = sorted(ROOT.glob("packages/*/benchmarks/bench_*.py"))
    wanted = set(session.posargs)
    for script in scripts:
        if not wanted or script.stem in wanted:
            session.run("python", str(script), "--out", str(out))


# -- helpers ---------------------------------------------------------------------------------------


def _install(session: nox.Session, *names: str, extras: str = "test") -> None:
    """Install the named packages editable with their extras (siblings editable too, never from an index)."""
    session.env["REPO_ROOT"] = str(ROOT)
    args = ["-c", str(CONSTRAINTS), "invoke"]  # the repository tests drive tasks.py
    if "device_backend" not in names or len(names) > 1:
        args.append("torch")  # pinned by the constraints file
    for name, folder in PACKAGES.items():  # dependency order: siblings come from this checkout
        if name in names:
            args += ["-e", f"{folder}[{_extras_for(name, extras)}]"]
    session.install(*args)
    session.run("python", str(ROOT / "tests" / "check_packages.py"), "--editable-only", *names, silent=True)


def _extras_for(name: str, extras: str) -> str:
    if extras == "bench":
        return "test,bench" if name == "starcoder_trainer" else "test"
    return extras


def _pytest(session: nox.Session, *paths: str, workers: str = "auto") -> None:
    """pytest over the given paths from the root; posargs replace the default worker count."""
    args = session.posargs or ["-n", workers]
    session.run("python", "-m", "pytest", "--import-mode=importlib", "-p", "no:cacheprovider", "-ra", *args, *paths)
