"""Shared fixtures: C++ fixture libraries (built once, cached), a fake repository, and a fresh-process runner.

Design: a native library stays loaded until its process ends, and two libraries cannot both register the
``flash_attn_mps`` namespace in one process. So every test that *loads* a fixture library runs its scenario in a
fresh Python process (``run_scenario``: ``tests/scenarios.py <name>``, which prints JSON for the test to assert on);
tests whose files are refused before loading run in-process and also assert that nothing was registered.

The fixture libraries are compiled with ``torch.utils.cpp_extension.load`` in a subprocess (so the build does not
load them here) into ``$ORCHARD_TEST_BUILD_DIR`` or ``<repo>/.cache/orchard-test-build``, one folder per torch version
and variant; a later run finds them up to date and builds nothing. cpp_extension holds a file lock per build folder,
so pytest-xdist workers building the same variant wait for each other instead of clashing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fixtures" / "flash_attn_cpu.cpp"
SCENARIOS = HERE / "scenarios.py"
VARIANTS = ("v2_good", "v2_scaled", "v1", "unknown")
# Variables that would make a test depend on the machine it runs on.
_HERMETIC_DROP = ("REPO_ROOT", "ORCHARD_DYLIB_PATH", "ORCHARD_REPO_PATH")


def _build_root() -> Path:
    base = os.environ.get("ORCHARD_TEST_BUILD_DIR")
    if base:
        root = Path(base)
    else:
        repo = HERE.parents[2]  # packages/orchard-bridge/tests -> repository root
        root = repo / ".cache" / "orchard-test-build"
    return root / f"torch-{torch.__version__.replace('+', '_')}"


def _built_path(variant: str) -> tuple[Path, bool]:
    """Where the variant's library lies, and whether it is newer than its source."""
    built = _build_root() / variant / f"orchard_fixture_{variant}.so"
    return built, built.is_file() and built.stat().st_mtime > SOURCE.stat().st_mtime


def _start_build(variant: str) -> subprocess.Popen:
    folder = _build_root() / variant
    folder.mkdir(parents=True, exist_ok=True)
    name = f"orchard_fixture_{variant}"
    code = textwrap.dedent(
        f"""
        from torch.utils.cpp_extension import load
        print(load(name={name!r}, sources=[{str(SOURCE)!r}], build_directory={str(folder)!r},
                   extra_cflags=["-O1", "-DORCHARD_FIXTURE_{variant.upper()}"], is_python_module=False))
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="session")
def fixture_library():
    """``fixture_library("v2_good") -> Path`` of the compiled library.

    The first call starts the builds of every stale variant at once (each in its own process, so they use all
    cores), then waits for the one asked for.
    """
    built: dict[str, Path] = {}
    running: dict[str, subprocess.Popen] = {}

    def get(variant: str) -> Path:
        assert variant in VARIANTS, variant
        if variant in built:
            return built[variant]
        if not running:
            for name in VARIANTS:
                path, fresh = _built_path(name)
                if fresh:
                    built[name] = path
                else:
                    running[name] = _start_build(name)
        if variant not in built:
            proc = running.pop(variant)
            out, err = proc.communicate()
            if proc.returncode != 0:
                pytest.fail(f"building the {variant} fixture library failed:\n{out}\n{err}")
            built[variant] = Path(out.strip().splitlines()[-1])
            assert built[variant].is_file(), out
        return built[variant]

    yield get
    for proc in running.values():  # builds nobody asked for: let them finish (they are cached for next time)
        proc.communicate()


def make_repo(root: Path) -> Path:
    """An empty repository root at ``root`` (config.yaml + .gitmodules + an empty metal-backend/)."""
    (root / "metal-backend").mkdir(parents=True)
    (root / "config.yaml").write_text("orchard:\n  mode: auto\n")
    (root / ".gitmodules").write_text('[submodule "metal-backend"]\n\tpath = metal-backend\n')
    return root


@pytest.fixture
def fake_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture(scope="session")
def repo_factory(tmp_path_factory):
    """``repo_factory() -> Path``: a new fake repository (for module-scoped scenarios that run once)."""
    return lambda: make_repo(tmp_path_factory.mktemp("scenario") / "repo")


def place(src: Path, dest: Path, mode: int = 0o644) -> Path:
    """Copy ``src`` to ``dest`` (parents created) with ``mode``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)
    return dest


@pytest.fixture
def place_file():
    """``place_file(src, dest, mode=0o644) -> dest``."""
    return place


@pytest.fixture(scope="session")
def place_file_session():
    return place


class PythonKernel:
    """A v2-contract kernel written with torch ops, for in-process tests of the op plumbing (no library needed).

    ``defect=True`` reproduces the upstream backward defect (an elementwise scaled copy of grad_out).
    """

    def __init__(self, *, has_backward: bool = True, defect: bool = False):
        from orchard_bridge.abi import Abi

        self.abi = Abi("v2" if has_backward else "v1", has_backward, [], "python test kernel")
        self.defect = defect
        self.calls = {"forward": 0, "backward": 0}

    def forward(self, q, k, v, scale, causal):
        self.calls["forward"] += 1
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
        return out, torch.ones_like(out)

    def backward(self, grad_out, q, k, v, mask, scale, causal):
        self.calls["backward"] += 1
        if self.defect:
            return grad_out * scale, grad_out * scale, grad_out * scale
        # Explicit formulas: a custom op's implementation runs below autograd, so no autograd.grad here.
        grad_out = grad_out * mask
        scores = q @ k.transpose(-2, -1) * scale
        if causal:
            scores = scores.masked_fill(torch.ones_like(scores, dtype=torch.bool).triu(1), float("-inf"))
        p = scores.softmax(-1)
        dv = p.transpose(-2, -1) @ grad_out
        dp = grad_out @ v.transpose(-2, -1)
        ds = p * (dp - (dp * p).sum(-1, keepdim=True))
        return ds @ k * scale, ds.transpose(-2, -1) @ q * scale, dv


@pytest.fixture
def python_kernel():
    """Activate a PythonKernel on the CPU for ``attention()``; deactivated and counters reset afterwards."""
    from orchard_bridge import ops

    kernel = PythonKernel()
    ops.reset_call_counts()
    ops.activate(kernel, "cpu", training=True, inference=True)
    yield kernel
    ops.deactivate()
    ops.reset_call_counts()


@pytest.fixture
def make_python_kernel():
    return PythonKernel


@pytest.fixture(scope="session")
def hermetic_env() -> dict[str, str]:
    """The process environment without REPO_ROOT / ORCHARD_* (pass as ``env=`` to enable())."""
    return {k: v for k, v in os.environ.items() if k not in _HERMETIC_DROP}


@pytest.fixture(scope="session")
def run_scenario(hermetic_env):
    """Run ``scenarios.py NAME`` in a fresh process with ``extra_env``; return its JSON result."""

    def run(name: str, *, extra_env: dict[str, str] | None = None, timeout: int = 300, **args) -> dict:
        env = {**hermetic_env, **(extra_env or {})}
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.run(
            [sys.executable, str(SCENARIOS), name, json.dumps(args)],
            capture_output=True, text=True, env=env, timeout=timeout, check=False,
        )
        if proc.returncode != 0:
            pytest.fail(f"scenario {name} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run
