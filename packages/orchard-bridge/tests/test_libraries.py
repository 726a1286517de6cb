"""Real libraries (the C++ fixtures, compiled for the CPU) through the real search path, each in a fresh process.

v2 correct: loads, identifies v2, passes conformance, attention() uses it, gradients match SDPA (gradcheck in
float64), opcheck passes, and tiny GPTBigCode / Starcoder2 models train identically with "orchard" and "sdpa".
v2 with the upstream backward defect: forward passes, backward fails, training stays on SDPA, the report says so.
v1: inference only. Unknown schema: refused with the schema in the message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

EXPERIMENTAL = "experimental/kernel_lib/flashattn/libflash_attn.dylib"
PINNED = "kernel_lib/flashattn/libflash_attn.dylib"
ALL_CHECKS = ["attention_grad", "attention_nograd", "mqa", "gradcheck", "opcheck", "fallbacks", "gpt_bigcode",
              "starcoder2", "enable_again", "require"]


@pytest.fixture(scope="module")
def v2_good(fixture_library, repo_factory, run_scenario, place_file_session, tmp_path_factory):
    """The correct v2 library via ORCHARD_DYLIB_PATH; default cache folder (<repo>/.cache/orchard)."""
    module_repo = repo_factory()
    lib = place_file_session(fixture_library("v2_good"), tmp_path_factory.mktemp("v2good") / "libflash_attn.dylib")
    result = run_scenario(
        "library", extra_env={"ORCHARD_DYLIB_PATH": str(lib)}, repo_root=str(module_repo), checks=ALL_CHECKS
    )
    return {"lib": lib, "repo": module_repo, **result}


def test_v2_good_is_found_identified_and_proven(v2_good):
    status = v2_good["status"]
    assert status["candidates"][0]["source"] == "ORCHARD_DYLIB_PATH"
    assert status["candidates"][0]["outcome"] == "loaded"
    assert all(c["outcome"] == "not-tried" for c in status["candidates"][1:])
    assert status["library"]["path"] == str(v2_good["lib"]) and len(status["library"]["sha256"]) == 64
    assert status["library"]["format"].startswith("ELF shared object")
    assert status["abi"]["name"] == "v2" and status["abi"]["has_backward"]
    conf = status["conformance"]
    assert conf["forward_ok"] and conf["backward_ok"] and not conf["cached"] and conf["cases"] == 8
    assert conf["forward_max_error"] < 1e-4 and conf["backward_max_error"] < 1e-3
    assert status["training_enabled"] and status["inference_enabled"]
    assert status["attn_implementation"] == {"training": "orchard", "inference": "orchard"}
    assert status["reason"].startswith("Orchard kernel enabled for training and inference: ABI v2 passed")
    assert v2_good["require"] == "ok"


def test_v2_good_attention_uses_the_kernel_and_matches_sdpa(v2_good):
    for check in ("attention_grad", "attention_nograd", "mqa"):
        res = v2_good[check]
        assert res["counts"]["kernel"] == 1 and res["counts"]["fallback"] == 0, check
        assert res["out_diff"] < 1e-5, check
    assert v2_good["attention_grad"]["grad_diff"] < 1e-4
    assert v2_good["mqa"]["grad_diff"] < 1e-4


def test_v2_good_gradcheck_and_opcheck(v2_good):
    assert v2_good["gradcheck"]["passed"] == {"causal=False": True, "causal=True": True}
    assert v2_good["gradcheck"]["counts"]["fallback"] == 0 and v2_good["gradcheck"]["counts"]["kernel"] > 0
    assert v2_good["opcheck"]["failures"] == {}


def test_v2_good_unsupported_calls_fall_back_per_call(v2_good):
    reasons = v2_good["fallbacks"]["fallback_reasons"]
    assert v2_good["fallbacks"]["kernel"] == 0
    assert any(r.startswith("head_dim not a multiple of 8") for r in reasons)
    assert any(r.startswith("dropout") for r in reasons)


@pytest.mark.parametrize("arch", ["gpt_bigcode", "starcoder2"])
def test_tiny_model_with_orchard_trains_like_sdpa(v2_good, arch):
    res = v2_good[arch]
    assert res["orchard"]["impl"] == "orchard" and res["sdpa"]["impl"] == "sdpa"
    assert res["orchard"]["counts"]["kernel"] == 2 and res["orchard"]["counts"]["fallback"] == 0  # one per layer
    assert res["same_params"]
    assert res["loss_diff"] < 1e-5
    assert res["grad_diff"] < 1e-5


def test_conformance_is_cached_within_and_across_processes(v2_good, hermetic_env):
    assert v2_good["enable_again"]["conformance"]["cached"] is True
    cache_dir = v2_good["repo"] / ".cache" / "orchard"
    assert len(list(cache_dir.glob("conformance-*.json"))) == 1
    env = {**hermetic_env, "ORCHARD_DYLIB_PATH": str(v2_good["lib"])}
    proc = subprocess.run(
        [sys.executable, "-m", "orchard_bridge", "--json", "--device", "cpu", "--repo", str(v2_good["repo"])],
        capture_output=True, text=True, env=env, check=True,
    )
    report = json.loads(proc.stdout)
    assert report["conformance"]["cached"] is True and report["training_enabled"]
    assert report["library"]["sha256"] == v2_good["status"]["library"]["sha256"]


@pytest.fixture(scope="module")
def v2_scaled(fixture_library, repo_factory, run_scenario, place_file_session, tmp_path_factory):
    """The v2 library with the upstream backward defect, in the later metal-backend/ layout."""
    module_repo = repo_factory()
    place_file_session(fixture_library("v2_scaled"), module_repo / "metal-backend" / EXPERIMENTAL)
    cache = tmp_path_factory.mktemp("cache")
    return run_scenario(
        "library", repo_root=str(module_repo), cache_dir=str(cache),
        checks=["attention_grad", "attention_nograd", "gpt_bigcode", "require"],
    )


def test_v2_backward_defect_keeps_training_on_sdpa(v2_scaled):
    status = v2_scaled["status"]
    assert status["candidates"][0]["source"] == "metal-backend/ submodule"
    assert status["candidates"][0]["outcome"] == "loaded"
    assert status["abi"]["name"] == "v2"
    conf = status["conformance"]
    assert conf["forward_ok"] and not conf["backward_ok"]
    assert conf["backward_max_error"] > 0.1  # the size of the wrong gradient, in the report
    assert not status["training_enabled"] and status["inference_enabled"]
    assert status["attn_implementation"] == {"training": "sdpa", "inference": "orchard"}
    reason = status["reason"]
    assert reason.startswith("Orchard kernel enabled for inference only; training uses SDPA because backward failed")
    assert "gradient max error" in reason
    assert v2_scaled["require"].startswith("OrchardError: the Orchard kernel is required but not enabled for training")


def test_v2_backward_defect_attention_routes_training_calls_to_sdpa(v2_scaled):
    grad = v2_scaled["attention_grad"]
    assert grad["counts"]["kernel"] == 0 and grad["counts"]["fallback_reasons"] == {"kernel not proven for training": 1}
    assert grad["out_diff"] == 0.0 and grad["grad_diff"] == 0.0  # the fallback is SDPA itself
    nograd = v2_scaled["attention_nograd"]
    assert nograd["counts"]["kernel"] == 1 and nograd["out_diff"] < 1e-5
    model = v2_scaled["gpt_bigcode"]
    assert model["orchard"]["counts"]["kernel"] == 0 and model["loss_diff"] == 0.0 and model["grad_diff"] == 0.0


@pytest.fixture(scope="module")
def v1(fixture_library, repo_factory, run_scenario, place_file_session, tmp_path_factory):
    """The forward-only v1 library in the pinned metal-backend/ layout."""
    module_repo = repo_factory()
    place_file_session(fixture_library("v1"), module_repo / "metal-backend" / PINNED)
    cache = tmp_path_factory.mktemp("cache")
    return run_scenario(
        "library", repo_root=str(module_repo), cache_dir=str(cache), checks=["attention_grad", "attention_nograd"]
    )


def test_v1_is_inference_only(v1):
    status = v1["status"]
    assert [c["outcome"] for c in status["candidates"]] == ["missing", "loaded", "not-tried"]
    assert status["abi"]["name"] == "v1" and not status["abi"]["has_backward"]
    assert status["conformance"]["forward_ok"] and not status["conformance"]["backward_tested"]
    assert status["inference_enabled"] and not status["training_enabled"]
    assert "ABI v1 has no backward op" in status["reason"]
    assert v1["attention_nograd"]["counts"]["kernel"] == 1 and v1["attention_nograd"]["out_diff"] < 1e-5
    assert v1["attention_grad"]["counts"]["kernel"] == 0 and v1["attention_grad"]["grad_diff"] == 0.0


@pytest.fixture(scope="module")
def unknown(fixture_library, repo_factory, run_scenario, place_file_session, tmp_path_factory):
    """A library with an unknown schema, in a checkout named by ORCHARD_REPO_PATH."""
    module_repo = repo_factory()
    checkout = tmp_path_factory.mktemp("orchard-checkout")
    place_file_session(fixture_library("unknown"), checkout / EXPERIMENTAL)
    cache = tmp_path_factory.mktemp("cache")
    return run_scenario(
        "library", extra_env={"ORCHARD_REPO_PATH": str(checkout)}, repo_root=str(module_repo), cache_dir=str(cache)
    )


def test_unknown_schema_is_refused_with_the_schema_in_the_message(unknown):
    status = unknown["status"]
    first = status["candidates"][0]
    assert first["source"] == "ORCHARD_REPO_PATH" and first["outcome"] == "unknown-abi"
    schema = "flash_attn_mps::_flash_attn_fwd(Tensor q, Tensor k, Tensor v, Tensor attn_mask) -> Tensor"
    assert schema in first["detail"] and schema in status["reason"]
    assert all(c["outcome"] == "not-tried" for c in status["candidates"][1:])
    assert not status["training_enabled"] and not status["inference_enabled"]
    assert status["conformance"] is None


def test_fixture_build_folder_is_reused(fixture_library):
    first = fixture_library("v2_good")
    assert fixture_library("v2_good") == first
    assert os.path.getsize(first) > 10_000
