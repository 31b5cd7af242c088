"""Bad input: one line naming the problem and the fix, exit 2, the output folder untouched."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgectl.cli import app

runner = CliRunner()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous_output(digits_cnn, tmp_path) -> Path:
    """An output folder holding an earlier good compile: a failed compile must not touch it."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["compile", str(digits_cnn.onnx_path), "-c", str(digits_cnn.calibration),
                                 "-t", "arm64-cortex-a72", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _bad_cases(digits_cnn, tmp: Path) -> dict[str, tuple[list[str], str]]:
    text = tmp / "notes.onnx"
    text.write_text("this is not a model")
    truncated = tmp / "truncated.onnx"
    truncated.write_bytes(digits_cnn.onnx_path.read_bytes()[:700])
    wrong_name = tmp / "wrong_name.npz"
    with np.load(digits_cnn.calibration) as c:
        x = c[c.files[0]]
    np.savez(wrong_name, pixels=x)
    wrong_shape = tmp / "wrong_shape.npz"
    np.savez(wrong_shape, **{"input": x[:, :, :4]})
    calib = ["-c", str(digits_cnn.calibration)]
    model = str(digits_cnn.onnx_path)
    return {
        "not a model": ([str(text), *calib, "-t", "arm64-cortex-a72"], "notes.onnx"),
        "truncated": ([str(truncated), *calib, "-t", "arm64-cortex-a72"], "truncated.onnx"),
        "missing model": ([str(tmp / "nope.onnx"), *calib, "-t", "arm64-cortex-a72"], "nope.onnx"),
        "unknown target": ([model, *calib, "-t", "sparc-v9"], "sparc-v9"),
        "no target": ([model, *calib], "--all-targets"),
        "wrong input name": ([model, "-c", str(wrong_name), "-t", "arm64-cortex-a72"], "pixels"),
        "wrong shape": ([model, "-c", str(wrong_shape), "-t", "arm64-cortex-a72"], "axis"),
        "no calibration": ([model, "-t", "arm64-cortex-a72"], "--calibration"),
        "bad method": ([model, *calib, "-t", "arm64-cortex-a72", "--calibration-method", "magic"], "minmax"),
        "bad key": ([model, *calib, "-t", "arm64-cortex-a72", "--sign-key", str(text)], "keys generate"),
    }


CASES = ["not a model", "truncated", "missing model", "unknown target", "no target", "wrong input name",
         "wrong shape", "no calibration", "bad method", "bad key"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_leaves_output_alone(case, digits_cnn, previous_output, tmp_path):
    args, mention = _bad_cases(digits_cnn, tmp_path)[case]
    before = tree(previous_output)
    result = runner.invoke(app, ["compile", *args, "--out", str(previous_output)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and mention in lines[0], result.stderr
    assert tree(previous_output) == before


def test_unwritable_output_is_exit_2(digits_cnn, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["compile", str(digits_cnn.onnx_path), "-c", str(digits_cnn.calibration),
                                 "-t", "arm64-cortex-a72", "--out", str(blocker / "out")])
    assert result.exit_code == 2 and "--out" in result.stderr


def test_new_output_folder_is_not_left_behind_on_failure(digits_cnn, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 1, 8, 8), np.float32) * np.nan)
    result = runner.invoke(app, ["compile", str(digits_cnn.onnx_path), "-c", str(bad), "-t", "arm64-cortex-a72",
                                 "--out", str(tmp_path / "fresh")])
    assert result.exit_code == 2
    assert not (tmp_path / "fresh").exists()


def test_json_errors_still_exit_2(digits_cnn, tmp_path):
    result = runner.invoke(app, ["compile", str(digits_cnn.onnx_path), "-t", "nope", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout or "x")


def test_model_that_onnxruntime_cannot_run_is_exit_2(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    # Valid to the checker, but 4 values cannot be reshaped into rows of 3 at run time.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["R", "C"])],
        initializer=[numpy_helper.from_array(np.array([3, -1], np.int64), "shape")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "bad.onnx"))
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((8, 4), dtype=np.float32))
    result = runner.invoke(app, ["compile", str(tmp_path / "bad.onnx"), "-c", str(tmp_path / "c.npy"),
                                 "-t", "arm64-cortex-a72", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    # Progress lines come first; the error is one line at the end, with no traceback.
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "cannot be reshaped" in last and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
