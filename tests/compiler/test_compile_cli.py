"""`edgectl compile` end to end on a real trained CNN: gate, outputs, signatures, bad input."""

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from edgectl.cli import app
from edgectl.hashing import sha256_file
from edgectl.manifest import verify_dir
from edgectl.signing import load_public_key, write_keypair

runner = CliRunner()
TARGETS = ["x86_64-avx2", "x86_64-avx512-vnni", "arm64-cortex-a72", "arm64-cortex-a76", "jetson-orin-cpu"]


def compile_args(model, out: Path, *extra: str) -> list[str]:
    return [
        "compile", str(model.onnx_path), "--calibration", str(model.calibration), "--eval", str(model.eval),
        "--labels", str(model.labels), "--out", str(out), *extra,
    ]


def invoke(args: list[str]):
    result = runner.invoke(app, args)
    return result, (json.loads(result.stdout) if "--json" in args and result.stdout.strip() else None)


@pytest.fixture(scope="module")
def compiled(digits_cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled") / "out"
    key = tmp_path_factory.mktemp("keys") / "signer"
    write_keypair(key)
    before = (sha256_file(digits_cnn.onnx_path), os.stat(digits_cnn.onnx_path).st_mtime_ns)
    result, report = invoke(compile_args(digits_cnn, out, "--all-targets", "--sign-key", str(key), "--json"))
    assert result.exit_code == 0, result.output
    return out, key, report, before


def test_every_target_gets_a_signed_verified_folder(compiled):
    out, key, report, _ = compiled
    assert sorted(report["targets_written"]) == sorted(TARGETS)
    for name in TARGETS:
        manifest = verify_dir(out / name, load_public_key(key.with_name("signer.pub")))
        assert manifest["target"]["name"] == name
        assert {v["precision"] for v in manifest["variants"]} == set(manifest["target"]["precisions"])


def test_input_model_is_never_modified(compiled, digits_cnn):
    assert compiled[3] == (sha256_file(digits_cnn.onnx_path), os.stat(digits_cnn.onnx_path).st_mtime_ns)


def test_manifest_records_provenance(compiled, digits_cnn):
    manifest = json.loads((compiled[0] / "arm64-cortex-a76" / "manifest.json").read_text())
    assert manifest["model"]["source_sha256"] == sha256_file(digits_cnn.onnx_path)
    assert manifest["calibration"]["random"] is False
    assert len(manifest["calibration"]["sha256"]) == 64
    assert manifest["evaluation"]["labelled"] is True
    assert {"onnx", "onnxruntime", "numpy", "python", "edgectl"} <= set(manifest["toolchain"])
    int8 = next(v for v in manifest["variants"] if v["precision"] == "int8")
    assert int8["quantization"]["activation_type"] == "int8" and int8["quantization"]["per_channel"]  # ARM: s8s8
    assert int8["fidelity"]["latency_p50_ms"] > 0


def test_int8_is_small_and_faithful(compiled):
    rows = [r for r in compiled[2]["variants"] if r["precision"] == "int8"]  # ONNX and TFLite (LiteRT targets)
    assert len([r for r in rows if r["format"] == "onnx"]) == len(TARGETS)
    assert len([r for r in rows if r["format"] == "tflite"]) == 2
    for row in rows:
        assert row["emitted"], row
        assert row["size_ratio"] < 0.35
        fid = row["fidelity"]
        assert fid["top1_agreement"] >= 0.99
        assert fid["reference_accuracy"] - fid["accuracy"] <= 0.01


def test_identical_schemes_share_bytes_and_others_differ(compiled):
    out = compiled[0]
    digest = {t: sha256_file(out / t / "digits_cnn.int8.onnx") for t in TARGETS}
    assert digest["arm64-cortex-a72"] == digest["arm64-cortex-a76"] == digest["jetson-orin-cpu"]
    assert len({digest["arm64-cortex-a72"], digest["x86_64-avx2"], digest["x86_64-avx512-vnni"]}) == 3


def test_selftest_pair_reproduces_on_the_artifact(compiled):
    folder = compiled[0] / "jetson-orin-cpu"
    manifest = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / "selftest.npz") as pair:
        for variant in manifest["variants"]:
            sess = ort.InferenceSession(str(folder / variant["file"]), providers=["CPUExecutionProvider"])
            feeds = {i.name: pair[f"input.{i.name}"] for i in sess.get_inputs()}
            for out_meta, value in zip(sess.get_outputs(), sess.run(None, feeds), strict=True):
                expected = pair[f"output.{variant['variant']}.{out_meta.name}"]
                np.testing.assert_allclose(value, expected, atol=variant["selftest_atol"])


def test_compiling_twice_gives_byte_identical_artifacts(compiled, digits_cnn, tmp_path):
    result, _ = invoke(compile_args(digits_cnn, tmp_path / "again", "--target", "x86_64-avx2", "--target", "jetson-orin-cpu"))
    assert result.exit_code == 0, result.output
    for target in ("x86_64-avx2", "jetson-orin-cpu"):
        first = json.loads((compiled[0] / target / "manifest.json").read_text())["files"]
        second = json.loads((tmp_path / "again" / target / "manifest.json").read_text())["files"]
        assert first == second


def test_verify_cli_detects_a_changed_byte(compiled, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(compiled[0] / "x86_64-avx2", folder)
    pub = str(compiled[1].with_name("signer.pub"))
    assert runner.invoke(app, ["verify", str(folder), "--key", pub]).exit_code == 0
    artifact = folder / "digits_cnn.int8.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    result = runner.invoke(app, ["verify", str(folder), "--key", pub])
    assert result.exit_code == 3 and "sha256" in result.output


def test_fallback_keeps_sensitive_nodes_in_fp32(digits_cnn, tmp_path):
    # A cosine budget the plain int8 graph misses: the gate must fall back nodes until it holds.
    base, _ = invoke(compile_args(digits_cnn, tmp_path / "base", "-t", "x86_64-avx2", "--json"))
    int8 = next(r for r in json.loads(base.stdout)["variants"] if r["precision"] == "int8")
    cos = int8["fidelity"]["outputs"]["output"]["cosine"]
    budget = str(cos + (1 - cos) * 0.5)
    strict, report = invoke(compile_args(digits_cnn, tmp_path / "s", "-t", "x86_64-avx2", "--min-cosine", budget,
                                         "--no-fallback", "--json"))
    assert strict.exit_code == 3
    rejected = next(r for r in report["variants"] if r["precision"] == "int8")
    assert not rejected["emitted"] and "cosine" in rejected["reason"]
    assert not (tmp_path / "s" / "x86_64-avx2" / "digits_cnn.int8.onnx").exists()
    fb, report = invoke(compile_args(digits_cnn, tmp_path / "f", "-t", "x86_64-avx2", "--min-cosine", budget, "--json"))
    row = next(r for r in report["variants"] if r["precision"] == "int8")
    assert fb.exit_code == 0 and row["emitted"], row
    assert row["fallback_nodes"] and row["fidelity"]["outputs"]["output"]["cosine"] >= float(budget)
    graph = onnx.load(str(tmp_path / "f" / "x86_64-avx2" / "digits_cnn.int8.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    for name in row["fallback_nodes"]:
        node = next(n for n in graph.node if n.name == name)
        weights = [producers.get(i) for i in node.input[1:2]]
        assert all(w is None or w.op_type != "DequantizeLinear" for w in weights), name


def test_unreachable_budget_rejects_and_says_why(digits_cnn, tmp_path):
    result, report = invoke(compile_args(digits_cnn, tmp_path / "o", "-t", "arm64-cortex-a72", "--max-drop", "0",
                                         "--min-cosine", "1.0000001", "--json"))
    assert result.exit_code == 3
    assert all(not r["emitted"] and r["reason"] for r in report["variants"])
    assert not (tmp_path / "o").exists()


def test_random_calibration_is_recorded(digits_cnn, tmp_path):
    result = runner.invoke(app, ["compile", str(digits_cnn.onnx_path), "--random-calibration", "-t", "arm64-cortex-a72",
                                 "--out", str(tmp_path / "o"), "--min-cosine", "0.5", "--max-drop", "100"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "arm64-cortex-a72" / "manifest.json").read_text())
    assert manifest["calibration"]["random"] is True and manifest["calibration"]["source"] == "random"


def test_eval_is_held_out_from_calibration_when_not_given(digits_cnn, tmp_path):
    result = runner.invoke(app, ["compile", str(digits_cnn.onnx_path), "-c", str(digits_cnn.calibration),
                                 "-t", "x86_64-avx512-vnni", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "o" / "x86_64-avx512-vnni" / "manifest.json").read_text())
    n = manifest["calibration"]["samples"] + manifest["evaluation"]["samples"]
    assert manifest["evaluation"]["samples"] == n // 4 and "held out" in manifest["evaluation"]["source"]


def test_litert_targets_get_a_tflite_variant_that_runs_in_litert(compiled):
    from ai_edge_litert.interpreter import Interpreter

    folder = compiled[0] / "arm64-cortex-a72"
    manifest = json.loads((folder / "manifest.json").read_text())
    tfl = next(v for v in manifest["variants"] if v["variant"] == "tflite-fp32")
    assert tfl["file"] == "digits_cnn.fp32.tflite" and tfl["runtime"] == "litert"
    assert tfl["fidelity"]["top1_agreement"] == 1.0
    assert tfl["fidelity"]["outputs"]["output"]["max_abs"] < 1e-4
    interpreter = Interpreter(model_path=str(folder / tfl["file"]))
    interpreter.allocate_tensors()
    with np.load(folder / "selftest.npz") as pair:
        x = pair["input.input"][:1]
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        np.testing.assert_allclose(got, pair["output.tflite-fp32.output"][:1], atol=tfl["selftest_atol"])
    # Targets without LiteRT get no TFLite file.
    assert not list((compiled[0] / "jetson-orin-cpu").glob("*.tflite"))


def test_litert_targets_get_int8_and_fp16_tflite_sharing_the_onnx_int8_scales(compiled):
    from compiler.fidelity import run

    folder = compiled[0] / "arm64-cortex-a76"  # precisions int8, fp16, fp32
    manifest = json.loads((folder / "manifest.json").read_text())
    variants = {v["variant"]: v for v in manifest["variants"]}
    assert {"tflite-int8", "tflite-fp16", "tflite-fp32"} <= {k for k, v in variants.items() if v["file"]}
    int8 = variants["tflite-int8"]
    assert int8["file"] == "digits_cnn.int8.tflite" and int8["runtime"] == "litert"
    shared = int8["quantization"]["shares_scales_with"]
    assert shared == {"variant": "int8", "format": "onnx", "sha256": manifest["files"]["digits_cnn.int8.onnx"]}
    assert int8["quantization"]["io"] == "float" and int8["quantization"]["activation_type"] == "int8"
    assert variants["tflite-fp16"]["quantization"]["weights"] == "float16"
    for name in ("tflite-int8", "tflite-fp16"):
        assert variants[name]["fidelity"]["top1_agreement"] >= 0.99
        with np.load(folder / "selftest.npz") as pair:
            got = run(folder / variants[name]["file"], {"input": pair["input.input"]}).values[0]
            np.testing.assert_allclose(got, pair[f"output.{name}.output"], atol=variants[name]["selftest_atol"])
    # A72 lists no fp16: it gets no tflite-fp16 either.
    a72 = json.loads((compiled[0] / "arm64-cortex-a72" / "manifest.json").read_text())
    assert {v["variant"] for v in a72["variants"]} == {"int8", "fp32", "tflite-int8", "tflite-fp32"}


def test_tflite_io_int8_gives_int8_inputs_and_outputs(digits_cnn, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    result, report = invoke(compile_args(digits_cnn, tmp_path / "o", "-t", "arm64-cortex-a72", "--tflite-io", "int8",
                                         "--json"))
    assert result.exit_code == 0, result.output
    row = next(r for r in report["variants"] if r["variant"] == "tflite-int8")
    assert row["emitted"] and row["fidelity"]["top1_agreement"] >= 0.99
    interpreter = Interpreter(model_path=str(tmp_path / "o" / "arm64-cortex-a72" / row["file"]))
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    bad, _ = invoke(compile_args(digits_cnn, tmp_path / "p", "-t", "arm64-cortex-a72", "--tflite-io", "uint8"))
    assert bad.exit_code != 0 and "--tflite-io" in bad.output


def test_tflite_int8_without_an_s8_scheme_is_skipped_and_compile_succeeds(digits_cnn, tmp_path):
    """An x86 target whose int8 scheme has uint8 activations, given LiteRT: TFLite int8 needs int8."""
    text = (Path(__file__).parents[2] / "targets" / "x86_64-avx2.toml").read_text()
    custom = tmp_path / "x86_64-litert.toml"
    custom.write_text(text.replace('name = "x86_64-avx2"', 'name = "x86_64-litert"')
                      .replace('runtimes = ["onnxruntime"]', 'runtimes = ["onnxruntime", "litert"]'))
    assert "litert" in custom.read_text()
    result, report = invoke(compile_args(digits_cnn, tmp_path / "o", "-t", str(custom), "--json"))
    assert result.exit_code == 0, result.output
    row = next(r for r in report["variants"] if r["variant"] == "tflite-int8")
    assert row["skipped"] and not row["emitted"] and "int8 activations" in row["reason"], row
    assert next(r for r in report["variants"] if r["variant"] == "tflite-fp32")["emitted"]


def test_tflite_int8_keeps_the_onnx_fallback_nodes_in_float(digits_cnn, tmp_path):
    """A tight budget makes the int8 gate keep nodes in fp32 (here the last Relu and Linear); the
    TFLite lowering reports the same nodes and runs the Linear as a float FULLY_CONNECTED after a
    DEQUANTIZE. The Relu may stay int8 (fused): on dequantized values it is exact either way."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    result, report = invoke(compile_args(digits_cnn, tmp_path / "o", "-t", "arm64-cortex-a72",
                                         "--min-cosine", "0.99998", "--json"))
    assert result.exit_code == 0, result.output
    rows = {r["variant"]: r for r in report["variants"]}
    assert rows["int8"]["fallback_nodes"], "the budget no longer forces a fallback: tighten it"
    assert rows["tflite-int8"]["emitted"] and rows["tflite-int8"]["fallback_nodes"] == rows["int8"]["fallback_nodes"]
    path = tmp_path / "o" / "arm64-cortex-a72" / rows["tflite-int8"]["file"]
    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = interpreter.get_tensor_details()
    fc = [op for op in interpreter._get_ops_details() if op["op_name"] == "FULLY_CONNECTED"]
    kinds = [{tensors[i]["dtype"].__name__ for i in (*op["inputs"], *op["outputs"]) if i >= 0} for op in fc]
    assert kinds == [{"int8", "int32"}, {"float32"}], kinds  # the first Linear int8, the fallback one float


def test_selftest_tolerance_covers_half_precision_arithmetic(compiled):
    """A device must reproduce the host's output within twice the larger of the artifact's own
    error vs fp32 and, for fp16 ONNX, the deviation of ARMv8.2's half-precision accumulation
    (emulated), which is well above the host's own error: x86 computes fp16 ONNX in fp32."""
    manifest = json.loads((compiled[0] / "arm64-cortex-a76" / "manifest.json").read_text())
    variants = {v["variant"]: v for v in manifest["variants"] if v.get("file")}
    for name, v in variants.items():
        basis = v["selftest_basis"]
        device = basis.get("fp16_arithmetic", {}).get("max_abs_vs_host", 0.0)
        assert v["selftest_atol"] == pytest.approx(max(1e-4, 2.0 * max(basis["host_error"], device)))
        assert ("fp16_arithmetic" in basis) == (name == "fp16"), name
    basis = variants["fp16"]["selftest_basis"]
    assert basis["fp16_arithmetic"]["samples"] >= 2 and "not_emulated" not in basis["fp16_arithmetic"]
    assert basis["fp16_arithmetic"]["max_abs_vs_host"] > 2 * basis["host_error"]
