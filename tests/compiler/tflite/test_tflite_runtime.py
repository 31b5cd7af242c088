"""The artifacts also run in tflite-runtime 2.14, the frozen (2023) package older devices have.

tflite-runtime needs numpy<2 and ships wheels for CPython 3.8-3.11 only, so it cannot share the
project's environment: the test builds a side venv from PyPI once (cached in pytest's cache
folder) and runs the digits CNN's fp32, fp16 and int8 .tflite files there in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import onnx
import pytest

from compiler.fidelity import run
from compiler.tflite.qdq import strip_qdq

TFLITE_RUNTIME = "tflite-runtime==2.14.0"
# Writes one .npy of outputs per artifact; runs inside the side venv (numpy<2, no edgectl).
RUNNER = """
import sys, numpy as np
from tflite_runtime.interpreter import Interpreter
x = np.load(sys.argv[1])
for model, out in zip(sys.argv[2::2], sys.argv[3::2]):
    it = Interpreter(model_path=model)
    d = it.get_input_details()[0]
    it.resize_tensor_input(d["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(d["index"], x)
    it.invoke()
    np.save(out, it.get_tensor(it.get_output_details()[0]["index"]))
"""


def _side_venv(root: Path) -> Path:
    python = root / "bin" / "python"
    done = root / "installed.json"
    if done.is_file() and python.is_file() and json.loads(done.read_text()) == [TFLITE_RUNTIME, "numpy<2"]:
        return python
    if sys.version_info >= (3, 12):
        pytest.fail(f"{TFLITE_RUNTIME} has wheels for CPython ≤ 3.11; this is {sys.version.split()[0]}")
    venv.EnvBuilder(clear=True, with_pip=True).create(root)
    subprocess.run([str(python), "-m", "pip", "install", "-q", TFLITE_RUNTIME, "numpy<2"], check=True)
    done.write_text(json.dumps([TFLITE_RUNTIME, "numpy<2"]))
    return python


@pytest.fixture(scope="session")
def tflite_runtime_python(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = request.config.cache
    root = cache.mkdir("tflite-runtime-2.14-venv") if cache is not None else tmp_path_factory.mktemp("trvenv")
    return _side_venv(Path(root))


@pytest.mark.slow
def test_digits_artifacts_run_in_tflite_runtime_2_14_like_in_litert(
    tflite_runtime_python: Path, digits_cnn, tmp_path: Path
) -> None:
    from compiler.pipeline import CompileOptions, compile_model
    from edgectl.targets import load_target

    options = CompileOptions(targets=(load_target("arm64-cortex-a76"),), out_dir=tmp_path / "out",
                             calibration=digits_cnn.calibration, eval_data=digits_cnn.eval, labels=digits_cnn.labels)
    result = compile_model(digits_cnn.onnx_path, options)
    assert result.exit_code == 0, result.to_dict()
    folder = tmp_path / "out" / "arm64-cortex-a76"
    files = {r.variant: folder / r.file for r in result.rows if r.file and r.format == "tflite"}
    assert set(files) == {"tflite-fp32", "tflite-fp16", "tflite-int8"}
    with np.load(digits_cnn.eval) as npz:
        x = npz["input"]
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "run_tflite_runtime.py"
    script.write_text(RUNNER)
    outs = {name: tmp_path / f"{name}.npy" for name in files}
    args = [str(a) for name in files for a in (files[name], outs[name])]
    proc = subprocess.run([str(tflite_runtime_python), str(script), str(tmp_path / "x.npy"), *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((folder / "manifest.json").read_text())
    _, plan = strip_qdq(onnx.load(str(folder / "digits_cnn.int8.onnx")))
    scale = plan.activations[manifest["model"]["outputs"][0]["name"]].scale
    for name, path in files.items():
        litert = run(path, {"input": x}).values[0]
        old = np.load(outs[name])
        agreement = float((old.argmax(1) == litert.argmax(1)).mean())
        print(f"{name}: tflite-runtime 2.14 vs LiteRT on {len(x)} digits: top-1 agreement {agreement:.2%}, "
              f"max abs difference {np.abs(old - litert).max():.3g}")
        if name == "tflite-int8":
            # 2.14 runs int8 on its builtin kernels, LiteRT on XNNPACK: rounding may differ by one step.
            assert np.abs(old - litert).max() <= scale * 1.0001 and agreement >= 0.99
        else:
            np.testing.assert_allclose(old, litert, rtol=1e-5, atol=1e-5)
