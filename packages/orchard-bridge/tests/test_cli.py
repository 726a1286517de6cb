"""Step 8: ``orchard-bridge`` report (text and JSON) and ``orchard-bridge build``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from orchard_bridge.__main__ import main
from orchard_bridge.build import BuildError, build, plan
from orchard_bridge.fileinfo import Host

MAC_ARM = Host("Darwin", "arm64")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    for name in ("REPO_ROOT", "ORCHARD_DYLIB_PATH", "ORCHARD_REPO_PATH"):
        monkeypatch.delenv(name, raising=False)


def test_report_text_lists_candidates_and_the_active_path(fake_repo, capsys):
    assert main(["--repo", str(fake_repo), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("orchard-bridge: no usable Orchard library (3 candidates:")
    assert "candidates (search order):" in out
    assert f"[missing] {fake_repo}/metal-backend/experimental/kernel_lib/flashattn/libflash_attn.dylib" in out
    assert f"[missing] {fake_repo}/.cache/orchard-build/libflash_attn.dylib" in out
    assert "attention     training: sdpa   inference: sdpa" in out


def test_report_json_and_subcommand_form(fake_repo, tmp_path, capsys, monkeypatch):
    text = tmp_path / "libflash_attn.dylib"
    text.write_text("not a library")
    monkeypatch.setenv("ORCHARD_DYLIB_PATH", str(text))
    assert main(["report", "--json", "--repo", str(fake_repo), "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["candidates"][0] == {
        "source": "ORCHARD_DYLIB_PATH", "path": str(text), "outcome": "refused",
        "detail": "not a shared library (it is a text file)",
    }
    assert data["attn_implementation"] == {"training": "sdpa", "inference": "sdpa"}
    assert data["device"] == "cpu" and data["repo_root"] == str(fake_repo)


def test_report_mode_require_exits_1_with_the_reason(fake_repo, capsys):
    assert main(["--repo", str(fake_repo), "--device", "cpu", "--mode", "require"]) == 1
    assert "required but not enabled for training: no usable Orchard library" in capsys.readouterr().err


def test_module_entry_point_runs(fake_repo):
    proc = subprocess.run(
        [sys.executable, "-m", "orchard_bridge", "--json", "--device", "cpu", "--mode", "off", "--repo", str(fake_repo)],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(proc.stdout)["reason"] == "disabled in config"


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the refusal off macOS")
def test_build_off_macos_says_why(fake_repo, capsys):
    assert main(["build", "--repo", str(fake_repo)]) == 1
    err = capsys.readouterr().err
    assert "cannot build: the Metal kernels build only on macOS (this host is Linux" in err


def test_build_needs_apple_silicon_and_the_submodule(fake_repo):
    with pytest.raises(BuildError, match="need Apple Silicon"):
        plan(fake_repo, host=Host("Darwin", "x86_64"))
    with pytest.raises(BuildError, match="submodule is not checked out.*git submodule update --init metal-backend"):
        plan(fake_repo, host=MAC_ARM, which=lambda _: "/usr/bin/cmake")
    (fake_repo / "metal-backend" / "README.md").write_text("checked out, but no sources")
    with pytest.raises(BuildError, match="no CMakeLists.txt"):
        plan(fake_repo, host=MAC_ARM, which=lambda _: "/usr/bin/cmake")
    (fake_repo / "metal-backend" / "CMakeLists.txt").write_text("project(orchard)\n")
    with pytest.raises(BuildError, match="cmake not found"):
        plan(fake_repo, host=MAC_ARM, which=lambda _: None)


def test_build_runs_cmake_into_the_local_build_folder(fake_repo):
    src = fake_repo / "metal-backend" / "experimental" / "orchard_ops"
    src.mkdir(parents=True)
    (src / "CMakeLists.txt").write_text("project(orchard_ops)\n")
    out = fake_repo / ".cache" / "orchard-build"
    ran = []

    def fake_run(cmd):
        ran.append(cmd)
        if cmd[1] == "--build":  # what CMake would leave behind
            (out / "cmake" / "lib").mkdir(parents=True, exist_ok=True)
            (out / "cmake" / "lib" / "libflash_attn.dylib").write_bytes(b"built")

    target = build(fake_repo, host=MAC_ARM, which=lambda _: "/opt/cmake", run=fake_run)
    assert target == out / "libflash_attn.dylib" and target.read_bytes() == b"built"
    assert ran[0][:5] == ["/opt/cmake", "-S", str(src), "-B", str(out / "cmake")]
    assert any(arg.startswith("-DCMAKE_PREFIX_PATH=") for arg in ran[0])
    assert ran[1][:3] == ["/opt/cmake", "--build", str(out / "cmake")]


def test_build_that_leaves_no_library_says_so(fake_repo):
    (fake_repo / "metal-backend" / "CMakeLists.txt").write_text("project(orchard)\n")
    with pytest.raises(BuildError, match="left no"):
        build(fake_repo, host=MAC_ARM, which=lambda _: "/opt/cmake", run=lambda cmd: None)
