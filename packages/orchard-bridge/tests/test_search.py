"""Steps 1-3 through the real search path, with files that must be refused before anything loads (in-process)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import orchard_bridge
import pytest
import torch
from orchard_bridge.load import explain_load_error, registered_schemas
from orchard_bridge.locate import candidate_paths

EXPERIMENTAL = "experimental/kernel_lib/flashattn/libflash_attn.dylib"
PINNED = "kernel_lib/flashattn/libflash_attn.dylib"


def macho_arm64() -> bytes:
    return struct.pack("<IiIIIIII", 0xFEEDFACF, 0x0100000C, 0, 6, 0, 0, 0, 0) + b"\x00" * 4096


def test_candidate_order_covers_every_source(fake_repo, tmp_path):
    env = {"ORCHARD_DYLIB_PATH": str(tmp_path / "a.dylib"), "ORCHARD_REPO_PATH": str(tmp_path / "orchard")}
    cands = candidate_paths(fake_repo, library="libs/b.dylib", env=env)
    assert [(c.source, c.path) for c in cands] == [
        ("ORCHARD_DYLIB_PATH", str(tmp_path / "a.dylib")),
        ("config orchard.library", str(fake_repo / "libs/b.dylib")),
        ("ORCHARD_REPO_PATH", str(tmp_path / "orchard" / EXPERIMENTAL)),
        ("ORCHARD_REPO_PATH", str(tmp_path / "orchard" / PINNED)),
        ("metal-backend/ submodule", str(fake_repo / "metal-backend" / EXPERIMENTAL)),
        ("metal-backend/ submodule", str(fake_repo / "metal-backend" / PINNED)),
        ("local build (orchard-bridge build)", str(fake_repo / ".cache/orchard-build/libflash_attn.dylib")),
    ]


def test_candidates_without_repo_root_and_with_a_renamed_submodule(tmp_path):
    assert candidate_paths(None, env={}) == []
    cands = candidate_paths(tmp_path, metal_backend="vendor/orchard", env={})
    assert cands[0].path == str(tmp_path / "vendor/orchard" / EXPERIMENTAL)
    same = candidate_paths(tmp_path, library=str(tmp_path / "vendor/orchard" / EXPERIMENTAL), metal_backend="vendor/orchard", env={})
    assert len(same) == len(cands)  # the same file is listed once


def test_nothing_found_uses_sdpa_and_lists_every_candidate(fake_repo, tmp_path, hermetic_env):
    env = {**hermetic_env, "ORCHARD_DYLIB_PATH": str(tmp_path / "none.dylib"), "ORCHARD_REPO_PATH": str(tmp_path / "no")}
    status = orchard_bridge.enable("cpu", repo_root=fake_repo, cache_dir=tmp_path / "cache", env=env)
    assert not status.training_enabled and not status.inference_enabled
    assert status.attn_implementation() == status.attn_implementation(training=False) == "sdpa"
    assert len(status.candidates) == 6
    assert {c.outcome for c in status.candidates} == {"missing"}
    assert status.reason.startswith("no usable Orchard library (6 candidates:")
    for cand in status.candidates:
        assert cand.path in status.reason
    assert status.library is None and status.abi is None and status.conformance is None
    assert registered_schemas() == []


def test_every_refused_file_gets_its_own_message_and_nothing_loads(fake_repo, tmp_path, hermetic_env, place_file):
    text = tmp_path / "text" / "libflash_attn.dylib"
    text.parent.mkdir()
    text.write_text("this is not a library\n")
    truncated = tmp_path / "cut" / "libflash_attn.dylib"
    truncated.parent.mkdir()
    truncated.write_bytes(Path(torch._C.__file__).read_bytes()[:4096])
    macho = fake_repo / "metal-backend" / EXPERIMENTAL
    macho.parent.mkdir(parents=True)
    macho.write_bytes(macho_arm64())
    place_file(Path(torch._C.__file__), fake_repo / "metal-backend" / PINNED, mode=0o666)

    env = {**hermetic_env, "ORCHARD_DYLIB_PATH": str(text)}
    host = orchard_bridge.Host("Linux", "x86_64")
    status = orchard_bridge.enable("cpu", repo_root=fake_repo, library=truncated, cache_dir=tmp_path / "c", env=env, host=host)

    outcomes = [(c.source, c.outcome, c.detail) for c in status.candidates]
    assert outcomes[0] == ("ORCHARD_DYLIB_PATH", "refused", "not a shared library (it is a text file)")
    assert outcomes[1][:2] == ("config orchard.library", "refused")
    assert outcomes[1][2].startswith("not a shared library (truncated:")
    assert outcomes[2][1:] == (
        "refused",
        "built for macOS arm64; Metal kernels need macOS on Apple Silicon (this host is Linux x86_64)",
    )
    assert outcomes[3][1] == "refused" and outcomes[3][2].startswith("world-writable (mode 0o666)")
    assert outcomes[4][1] == "missing"
    assert status.attn_implementation() == "sdpa" and status.library is None
    assert registered_schemas() == []


def test_mode_off_and_require(fake_repo, tmp_path, hermetic_env):
    off = orchard_bridge.enable("cpu", repo_root=fake_repo, mode="off", env=hermetic_env)
    assert off.reason == "disabled in config" and off.attn_implementation() == "sdpa" and off.candidates == []
    with pytest.raises(orchard_bridge.OrchardError, match="required but not enabled for training: no usable Orchard"):
        orchard_bridge.enable("cpu", repo_root=fake_repo, mode="require", cache_dir=tmp_path, env=hermetic_env)
    with pytest.raises(ValueError, match="use one of auto, off, require"):
        orchard_bridge.enable("cpu", repo_root=fake_repo, mode="on", env=hermetic_env)


def test_device_defaults_to_device_backend_choice(fake_repo, tmp_path, hermetic_env):
    status = orchard_bridge.enable(repo_root=fake_repo, cache_dir=tmp_path, env=hermetic_env)
    assert status.device in ("cpu", "mps") or status.device.startswith("cuda")


def test_status_to_dict_is_json_ready(fake_repo, tmp_path, hermetic_env):
    import json

    status = orchard_bridge.enable("cpu", repo_root=fake_repo, cache_dir=tmp_path, env=hermetic_env)
    data = json.loads(json.dumps(status.to_dict()))
    assert data["attn_implementation"] == {"training": "sdpa", "inference": "sdpa"}
    assert [c["outcome"] for c in data["candidates"]] == ["missing"] * 3


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler (cc) to build a library with a missing symbol")
def test_missing_symbol_is_explained_as_another_torch_build(fake_repo, tmp_path, hermetic_env):
    src = tmp_path / "missing.c"
    src.write_text("extern void _ZN5torch22symbol_of_another_buildEv(void);\n"
                   "void orchard_probe(void) { _ZN5torch22symbol_of_another_buildEv(); }\n")
    lib = tmp_path / "libflash_attn.dylib"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    env = {**hermetic_env, "ORCHARD_DYLIB_PATH": str(lib)}
    status = orchard_bridge.enable("cpu", repo_root=fake_repo, cache_dir=tmp_path / "c", env=env)
    first = status.candidates[0]
    assert first.outcome == "load-failed"
    assert first.detail.startswith("built against another torch/Python; rebuild with `invoke orchard.build`")
    assert "symbol_of_another_build" in first.detail
    assert status.attn_implementation() == "sdpa" and registered_schemas() == []


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("dlopen(x.dylib, 0x0006): Symbol not found: __ZN3c104impl", "built against another torch/Python"),
        ("x.so: undefined symbol: _ZN2at4_ops", "built against another torch/Python"),
        ("Only a single TORCH_LIBRARY can be used to register the namespace flash_attn_mps", "another library already"),
        ("x.so: wrong ELF class: ELFCLASS32", "built for another architecture"),
        ("something else", "the loader refused it: something else"),
    ],
)
def test_explain_load_error(text, start):
    assert explain_load_error(text).startswith(start)
