"""The probe child: real loads and self-tests, a real signal, a real malformed file, a timeout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.probe import CRASH_HOOK, ProbeResult, probe
from tests.artifacts import CompiledArtifacts

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("target", "variant"), [("x86_64-avx2", "int8"), ("arm64-cortex-a72", "tflite-fp32")])
def test_a_good_artifact_passes_with_its_memory_measured(digits_artifacts: CompiledArtifacts, target, variant):
    entry = digits_artifacts.variant(target, variant)
    result = probe(digits_artifacts.artifact(target, variant), entry["runtime"], digits_artifacts.selftest_npz(target),
                   variant, entry["selftest_atol"], threads=1)
    assert result.ok, result.reason
    assert result.reason is None and result.selftest_max_abs is not None
    assert 0 < result.rss_delta_bytes < result.peak_rss_bytes
    assert result.runtime_rss_bytes > 0  # importing the runtime library, measured apart
    assert result.load_ms > 0 and result.latency_ms is not None and result.latency_ms > 0
    assert result.wall_ms >= result.load_ms


def test_a_malformed_model_is_refused_with_the_runtimes_reason(digits_artifacts: CompiledArtifacts, tmp_path: Path):
    src = digits_artifacts.artifact("x86_64-avx2", "int8")
    bad = tmp_path / src.name
    bad.write_bytes(src.read_bytes()[:1000])
    result = probe(bad, "onnxruntime", digits_artifacts.selftest_npz("x86_64-avx2"), "int8", 0.5)
    assert not result.ok
    assert result.reason is not None and result.reason.startswith("onnxruntime ")
    assert "cannot load digits_cnn.int8.onnx" in result.reason and "re-fetch" in result.reason


def test_a_crash_in_the_child_is_a_rejection_not_an_agent_crash(digits_artifacts: CompiledArtifacts,
                                                                monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(CRASH_HOOK, "1")  # the child aborts right after loading
    result = probe(digits_artifacts.artifact("x86_64-avx2", "fp32"), "onnxruntime")
    assert not result.ok
    assert result.reason is not None
    assert "onnxruntime crashed loading digits_cnn.fp32.onnx: killed by SIGABRT" in result.reason
    assert "do not deploy" in result.reason


def test_a_hanging_load_times_out(digits_artifacts: CompiledArtifacts):
    result = probe(digits_artifacts.artifact("x86_64-avx2", "fp32"), "onnxruntime", timeout=0.01)
    assert not result.ok and "did not finish within 0.01 s" in (result.reason or "")


def test_a_failed_selftest_still_reports_memory(digits_artifacts: CompiledArtifacts):
    target = "x86_64-avx2"
    # The int8 artifact against the fp32 recording with a tiny tolerance: loads, then fails.
    result = probe(digits_artifacts.artifact(target, "int8"), "onnxruntime", digits_artifacts.selftest_npz(target),
                   "fp32", 1e-7)
    assert not result.ok and "differs by" in (result.reason or "")
    assert result.rss_delta_bytes > 0 and result.latency_ms is None


def test_wrong_runtime_for_the_file(digits_artifacts: CompiledArtifacts):
    result = probe(digits_artifacts.artifact("arm64-cortex-a72", "tflite-fp32"), "onnxruntime")
    assert not result.ok and "cannot load digits_cnn.fp32.tflite" in (result.reason or "")


def test_selftest_needs_variant_and_atol(tmp_path: Path):
    with pytest.raises(ValueError, match="variant name and its atol"):
        probe(tmp_path / "m.onnx", "onnxruntime", tmp_path / "selftest.npz")


def test_the_child_writes_one_json_object_and_nothing_else(digits_artifacts: CompiledArtifacts):
    # What the parent parses: run the child by hand, as the agent does.
    path = digits_artifacts.artifact("arm64-cortex-a72", "tflite-fp32")
    out = subprocess.run([sys.executable, "-m", "edge_agent.probe", str(path), "litert", "--runs", "2"],
                         capture_output=True, check=True, cwd=ROOT)
    doc = json.loads(out.stdout)
    assert ProbeResult(**doc).ok
    assert b"XNNPACK" not in out.stdout  # LiteRT's native chatter goes to stderr


def test_result_serializes():
    result = ProbeResult(False, "why", 0, 0, 0.0, None)
    assert result.to_dict()["reason"] == "why"
