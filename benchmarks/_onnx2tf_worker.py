"""Runs inside onnx2tf's own venv (Python ≥ 3.12): converts each job, times ``onnx2tf.convert`` only.

    python _onnx2tf_worker.py job.json    # [{"onnx": ..., "out": ..., "shapes": ["x:1,3,8,8"]}]

Prints one JSON line: {"seconds", "tflite" (the float32 file) or "error"}. onnx2tf rewrites its
input file in place: the caller hands it a copy. Standard library and onnx2tf only.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import time
from pathlib import Path


def convert(job: dict[str, object]) -> dict[str, object]:
    import onnx2tf

    out = Path(str(job["out"]))
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            onnx2tf.convert(
                input_onnx_file_path=str(job["onnx"]), output_folder_path=str(out),
                tflite_backend="flatbuffer_direct", overwrite_input_shape=list(job["shapes"]),  # type: ignore[call-overload]
                copy_onnx_input_output_names_to_tflite=True, non_verbose=True,
            )
    except BaseException as exc:  # any failure (onnx2tf also calls sys.exit) is a result to report
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    seconds = time.perf_counter() - start
    found = sorted(out.glob("*_float32.tflite"))
    return {"seconds": seconds, "tflite": str(found[0])} if found else {"error": "no *_float32.tflite written"}


def main() -> None:
    # One job per process: onnx2tf keeps state between convert() calls (PP-OCR cls failed after
    # three other models in one process and converted alone). The same model is converted once,
    # untimed, first, so imports and first-call costs do not land on the timed run.
    (job,) = json.loads(Path(sys.argv[1]).read_text())
    warm = dict(job, out=str(job["out"]) + "_warm", onnx=str(job["onnx"]) + ".warm.onnx")
    shutil.copyfile(str(job["onnx"]), str(warm["onnx"]))
    shutil.copyfile(str(job["onnx"]), str(job["onnx"]) + ".pristine")
    convert(warm)
    shutil.copyfile(str(job["onnx"]) + ".pristine", str(job["onnx"]))
    print(json.dumps(convert(job)), flush=True)


if __name__ == "__main__":
    main()
