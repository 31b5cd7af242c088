"""The zoo's real models compiled for a LiteRT target (arm64-cortex-a76) at int8 and fp16 (slow).

tflite-int8 is held to the ONNX int8 artifact it shares its scales with, run in onnxruntime:
the two integer pipelines differ only where they round a requantization tie differently (one
LSB), and that difference then travels through the rest of the network. How far it travels
depends on the model, so each carries its own bound with the measured value and the reason:

- PP-OCR cls (trained, 1,000 text-line crops): top-1 agreement, the issue's ≥ 99.5%.
- EfficientNet-Lite0 (trained on ImageNet, 1,000 photo crops): top-1 agreement 97.1%, short of
  the issue's 99.5%. Not a lowering fault: per layer, both runtimes match exact integer
  arithmetic except at requantization near-ties (within 4e-5 of .5: 20 and 12 of the first conv's
  3.2M outputs on 8 crops), and the depthwise convs then multiply such a 1 LSB step by up to 21
  (BatchNorm-folded 3×3 kernels at ReLU6's 6/255 scale), so by the pooled features 26% of values
  differ by ≥ 1 LSB and logits by up to 5 LSB. 8% of crops have their two top ONNX int8 logits
  within 2 LSB; every one of the 29 flips is among them. Held by a 96% floor, the near-tie rule,
  and the 99.5% on the crops fp32 is confident about (top-1 probability > 50%: 202/202).
- MobileNetV3-Small (seeded weights, 32 photos): its 1000 logits sit a median 2 LSB apart
  (top-1 vs top-2 of the ONNX int8 output), so one LSB flips top-1 and top-1 agreement is not a
  meaningful gate; it is held by cosine and max LSB, and disagreements must be near-ties.
- PP-OCRv4 rec (SVTR, 48 rendered lines × 40 positions): per-position top-1; its attention runs
  int8 BATCH_MATMULs and the drift through them flips a few positions by a wide margin (the
  compile refuses its int8 for accuracy anyway; here it is forced).
- YOLOv8n (NudeNet, 32 crops): boxes and class scores share one output scale (1.25 px after
  onnxruntime's concat), so class scores are 0 or 1 LSB in both; the box rows carry the drift,
  amplified by the DFL softmax (a 1 LSB logit step of its coarse input scale moves a bin
  probability by ~1/4). Held by cosine and mean/max LSB.

The compile is told to emit int8 whatever its accuracy (``max_drop=100``, no fallback): the
question here is whether LiteRT runs the QDQ graph as onnxruntime does, not whether int8 holds.
Its own fidelity gate sees the first :data:`COMPILE_EVAL_ROWS` eval rows; tflite-int8 and ONNX
int8 (and fp32, for classifiers) then run on all of them, tflite-fp16/fp32 on those first rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import tflite

from compiler.fidelity import Budget, run
from compiler.output import write_npz
from compiler.pipeline import CompileOptions, compile_model
from compiler.tflite.qdq import strip_qdq
from edgectl.targets import load_target
from tests import zoo

TARGET = "arm64-cortex-a76"
# The gate runs six variants on the eval rows; the 1,000-row sets would take it minutes.
COMPILE_EVAL_ROWS = 64
MIN_TOP1 = 0.995  # the issue's goal: tflite-int8 picks ONNX int8's class


@dataclass(frozen=True)
class Bound:
    min_top1: float | None  # tflite-int8 vs ONNX int8, when top-1 is meaningful
    min_cosine: float
    max_lsb: float  # of the output scale
    max_mean_lsb: float
    max_float_ops: int  # operators computing in float in tflite-int8 (islands of ops ORT keeps float)
    max_fp16_error: float = 2e-2  # tflite-fp16 vs tflite-fp32, relative to the output's largest magnitude
    # The 99.5% held on the rows whose fp32 softmax gives top-1 more than this probability.
    confident: float | None = None


BOUNDS = {
    # measured: top-1 1000/1000, max 1 LSB (mean 0.002), cosine 1.0, no float op (Paddle's
    # hardsigmoid, float in the QDQ graph, gets derived int8 parameters: compiler/tflite/derive.py).
    "ppocr_cls": Bound(MIN_TOP1, 0.9999, 2.0, 0.1, 0),
    # measured (XNNPACK): top-1 971/1000, all 29 flips at margins ≤ 2 LSB (see the docstring),
    # max 5 LSB, mean 0.345 LSB, cosine 0.99956; no float op (the global average pool's MEAN and
    # its reshape take derived parameters). fp16: 9.6e-3 of the largest logit.
    # On the 202 crops fp32 gives > 50% (a committed class), top-1 agrees 202/202.
    "efficientnet_lite0": Bound(0.96, 0.999, 8.0, 0.5, 0, confident=0.5),
    # measured (XNNPACK): top-1 28/32 (all four at margins ≤ 2 LSB), max 5 LSB, mean 0.47 LSB,
    # cosine 0.9979; no float op (HardSigmoid and the SE blocks' ReduceMean → Gather, float in the
    # QDQ graph, run in int8 with derived parameters).
    "mobilenet_v3_small": Bound(None, 0.995, 8.0, 1.0, 0),
    # measured: 1913/1920 positions agree, mean 0.0005 LSB, cosine 0.9987, max 252 LSB (a flipped
    # position's probabilities); 30 float ops (LayerNorm's MEAN/SUB/SQRT/DIV, float in the QDQ
    # graph too). fp16: 4.1e-2 of the largest probability, every position's argmax kept.
    "ppocr_rec": Bound(0.99, 0.995, 256.0, 0.01, 30, max_fp16_error=6e-2),
    # measured: max 21 LSB (26 px) on one box coordinate, mean 0.20 LSB (1.1 on the box rows),
    # cosine 0.99990; 3 float ops (the anchor arithmetic Sub/Add/Mul, float in the QDQ graph; the
    # Div became an int8 MUL).
    "yolov8n_nudenet": Bound(None, 0.9995, 40.0, 0.5, 3),
}


def _float_ops(path: Path) -> int:
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    edges = {tflite.BuiltinOperator.QUANTIZE, tflite.BuiltinOperator.DEQUANTIZE}
    count = 0
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if model.OperatorCodes(op.OpcodeIndex()).BuiltinCode() in edges:
            continue
        count += any(graph.Tensors(t).Type() == tflite.TensorType.FLOAT32 for t in op.OutputsAsNumpy())
    return count


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _top1(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def _compile_eval(model: zoo.ZooModel, data: dict[str, np.ndarray], folder: Path) -> tuple[Path, Path | None]:
    """The eval file (and labels) the compile gets: the first COMPILE_EVAL_ROWS rows."""
    if len(next(iter(data.values()))) <= COMPILE_EVAL_ROWS:
        return model.eval, model.labels
    eval_path = folder / "eval_head.npz"
    write_npz(eval_path, {k: v[:COMPILE_EVAL_ROWS] for k, v in data.items()})
    if model.labels is None:
        return eval_path, None
    labels = folder / "labels_head.npy"
    np.save(labels, np.load(model.labels)[:COMPILE_EVAL_ROWS])
    return eval_path, labels


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_zoo_tflite_int8_agrees_with_onnx_int8_and_fp16_with_fp32(name: str, zoo_cache: Path, tmp_path: Path) -> None:
    model = getattr(zoo, name)(zoo_cache)
    with np.load(model.eval) as npz:
        data = {k: npz[k] for k in npz.files}
    eval_head, labels = _compile_eval(model, data, tmp_path)
    options = CompileOptions(targets=(load_target(TARGET),), out_dir=tmp_path / "out", calibration=model.calibration,
                             eval_data=eval_head, labels=labels, budget=Budget(max_drop=100.0, min_cosine=0.0),
                             fallback=False)
    result = compile_model(model.onnx_path, options)
    rows = {r.variant: r for r in result.rows}
    for variant in ("int8", "tflite-int8", "tflite-fp16", "tflite-fp32"):
        assert rows[variant].emitted, (variant, rows[variant].reason)
    folder = tmp_path / "out" / TARGET
    files = {v: folder / str(rows[v].file) for v in rows if rows[v].file}
    manifest = json.loads((folder / "manifest.json").read_text())
    want, got = run(files["int8"], data).values[0], run(files["tflite-int8"], data).values[0]
    _, plan = strip_qdq(onnx.load(str(files["int8"])))
    scale = plan.activations[manifest["model"]["outputs"][0]["name"]].scale
    lsb = np.abs(got - want) / scale
    bound = BOUNDS[name]
    cosine = _cosine(got, want)
    ranked = np.sort(want, axis=-1)
    margin = (ranked[..., -1] - ranked[..., -2]) / scale
    agree = got.argmax(-1) == want.argmax(-1)
    floats = _float_ops(files["tflite-int8"])
    classify = bound.min_top1 is not None or model.task == "classify"
    head = {k: v[:COMPILE_EVAL_ROWS] for k, v in data.items()}
    reference = run(files["fp32"], data if classify else head).values[0]  # onnxruntime, fp32
    fp16, fp32 = run(files["tflite-fp16"], head).values[0], run(files["tflite-fp32"], head).values[0]
    fp16_error = float(np.abs(fp16 - fp32).max() / np.abs(fp32).max())
    fp32_error = float(np.abs(fp32 - reference[: len(fp32)]).max() / np.abs(reference[: len(fp32)]).max())
    top1 = (f"top-1 {agree.mean():.2%} ({int(agree.sum())}/{agree.size}); vs fp32: ONNX int8 {_top1(want, reference):.2%}, "
            f"tflite-int8 {_top1(got, reference):.2%}") if classify else "top-1 -"
    print(f"{name}, {len(want)} eval samples: tflite-int8 vs ONNX int8 max {lsb.max():.2f} LSB, mean {lsb.mean():.3f}, "
          f"cosine {cosine:.6f}, {top1}, {floats} float ops; on {len(fp32)}: tflite-fp32 vs onnxruntime max rel err "
          f"{fp32_error:.1e}, tflite-fp16 vs fp32 max rel err {fp16_error:.2e}, cosine {_cosine(fp16, fp32):.7f}")
    assert cosine >= bound.min_cosine and lsb.max() <= bound.max_lsb and lsb.mean() <= bound.max_mean_lsb
    assert floats <= bound.max_float_ops
    if bound.min_top1 is not None:
        assert agree.mean() >= bound.min_top1
    if bound.confident is not None:
        shifted = np.exp(reference - reference.max(-1, keepdims=True))
        committed = shifted.max(-1) / shifted.sum(-1) > bound.confident
        print(f"{name}: on the {committed.sum()} rows fp32 gives top-1 > {bound.confident:.0%}, tflite-int8 vs "
              f"ONNX int8 top-1 {agree[committed].mean():.2%}")
        assert committed.sum() >= 0.1 * len(agree) and agree[committed].mean() >= MIN_TOP1
    if model.task == "classify":
        # A flip needs the two top logits within the LSBs the runtimes differ by.
        assert np.all(margin[~agree] <= 2 * lsb.max(axis=-1)[~agree])
    assert fp32_error < 1e-4  # fp32 on both sides: summation order only (test_models.py holds it to 1e-4 too)
    # fp16 weights: 11 significant bits, so a few 1e-3 of the output's scale after a deep network.
    assert _cosine(fp16, fp32) > 0.9999 and fp16_error < bound.max_fp16_error
    if bound.min_top1 is not None:
        assert _top1(fp16, fp32) >= 0.95
