"""The shape of the repository: top-level layout, documentation policy, no machine paths, packages."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

TOP_LEVEL = [
    "packages/device-backend", "packages/orchard-bridge", "packages/trainer", "noxfile.py", "tasks.py",
    "config.yaml", "README.md", ".gitmodules", "QUICKSTART.md", "HARDWARE.md", "INSTALL.sh", "run_starcoder.sh",
    ".gitignore", ".ci/run",
]
ALLOWED_TOP_DOCS = {"README.md", "QUICKSTART.md", "HARDWARE.md"}
PACKAGES = {"device-backend": "device_backend", "orchard-bridge": "orchard_bridge", "trainer": "starcoder_trainer"}
# a home folder of some machine: /Users/<name>/ or /home/<name>/ (not the bare words)
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:Users|home)/[A-Za-z0-9_.-]+/")


def tracked(root) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True).stdout
    return [p for p in out.split("\0") if p]


def test_top_level_layout(root):
    missing = [p for p in TOP_LEVEL if not (root / p).exists()]
    assert not missing, f"missing from the top level: {missing}"


def test_metal_backend_is_a_pinned_gitlink(root):
    out = subprocess.run(["git", "ls-files", "-s", "metal-backend"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    mode, sha = out.split()[:2]
    assert mode == "160000" and re.fullmatch(r"[0-9a-f]{40}", sha)
    gitmodules = (root / ".gitmodules").read_text()
    assert "path = metal-backend" in gitmodules and "Apple-Metal-Orchard.git" in gitmodules


def test_only_the_three_documents_at_the_top_level(root):
    docs = {p for p in tracked(root) if "/" not in p and p.lower().endswith((".md", ".txt", ".rst"))}
    assert docs == ALLOWED_TOP_DOCS, f"documents outside the policy: {sorted(docs - ALLOWED_TOP_DOCS)}"


def test_no_tracked_file_names_a_machine_path(root):
    hits = []
    for rel in tracked(root):
        path = root / rel
        if not path.is_file() or path.is_symlink():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        hits += [f"{rel}:{n}" for n, line in enumerate(text.splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not hits, f"absolute machine paths (use REPO_ROOT / --repo instead): {hits}"


def test_machine_path_pattern_catches_what_it_must():
    # built at run time so this file does not itself hold such a path
    users, home = "Users", "home"
    assert MACHINE_PATH.search(f"lib = '/{users}/ian/Apple-Metal-Orchard/x.dylib'")
    assert MACHINE_PATH.search(f"cd /{home}/runner/work")
    assert not MACHINE_PATH.search("see the home/ folder or Users/ docs")


@pytest.mark.parametrize("folder,module", sorted(PACKAGES.items()))
def test_package_frame(root, folder, module):
    pkg = root / "packages" / folder
    for part in ("pyproject.toml", "README.md", "CHANGELOG.md", "tests", f"src/{module}/__init__.py",
                 f"src/{module}/_version.py", f"src/{module}/__main__.py"):
        assert (pkg / part).exists(), f"{folder}: {part} missing"
    meta = tomllib.loads((pkg / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"]["attr"] == f"{module}._version.__version__"
    assert project["scripts"], f"{folder}: no console entry point"
    version = re.search(r'__version__ = "([^"]+)"', (pkg / f"src/{module}/_version.py").read_text()).group(1)
    assert f"## {version}" in (pkg / "CHANGELOG.md").read_text(), f"{folder}: CHANGELOG has no entry for {version}"
    for dep in project["dependencies"]:
        if dep.startswith("starcoder-"):
            assert re.fullmatch(r"starcoder-[a-z-]+>=\d+\.\d+,<\d+\.\d+", dep), f"sibling not a range: {dep}"


def test_device_backend_has_no_runtime_dependencies(root):
    meta = tomllib.loads((root / "packages/device-backend/pyproject.toml").read_text())
    assert meta["project"]["dependencies"] == []


def test_installed_versions_match_the_single_source(root):
    from importlib import metadata

    for folder, module in PACKAGES.items():
        dist = {"trainer": "starcoder-trainer"}.get(folder, f"starcoder-{folder}")
        source = (root / f"packages/{folder}/src/{module}/_version.py").read_text()
        try:
            installed = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{dist} not installed in this environment")
        assert f'"{installed}"' in source
