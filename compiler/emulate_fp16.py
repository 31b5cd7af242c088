"""Run an fp16 ONNX model with the arithmetic of an ARMv8.2 core (half-precision vector FMA).

On x86, onnxruntime has no fp16 Conv/Gemm kernels: it casts and computes those nodes in fp32,
so this host's output of an fp16 artifact is close to fp32. On a core with fp16 vector
arithmetic (``asimdhp``: Raspberry Pi 5, Jetson Orin) MLAS runs them in half precision and keeps
the running sums in fp16 registers (``core/mlas/lib/halfgemm_kernel_neon_fp16.cpp``, read in a
stored copy of microsoft/onnxruntime: ``vfmaq_f16`` accumulators), so every step of a K-long dot
product rounds to 11 significant bits. Such a device's output is further from this host's than
the artifact's own error vs fp32 says, and a self-test tolerance built from that error alone
fails on it. This module predicts how far, so the tolerance can include it::

    dev = half_arithmetic_deviation(Path("m.fp16.onnx"), eval_data)
    dev.max_abs      # largest |emulated ARMv8.2 output - this host's onnxruntime output|
    dev.samples      # how many eval samples it ran (a budget of multiply-adds decides)

What is emulated: Conv (any group, 1-D/2-D, explicit or SAME/VALID pads), Gemm and MatMul with
fp16 operands, as one fused multiply-add per K step in K order, starting from the bias (MLAS
adds C into the first panel). Every other node runs in ``onnx.reference`` in fp32 and its result
is rounded to fp16, as it is stored on the device. It is a model of the rounding, not a replica:
MLAS blocks K and orders packed panels its own way. Measured for the digits CNN, 300 eval
samples, ``qemu-aarch64 -cpu cortex-a76`` with onnxruntime 1.32 (``edgectl compile ... -t
arm64-cortex-a76 --verify-on arm64``, layers exposed as outputs):

    layer           device vs this host    this emulation vs device
    conv1 (K=9)     0.0024                 0 (bit-exact)
    conv2 (K=144)   0.033                  0.0039
    fc1 (K=512)     0.22                   0.063
    logits (K=32)   0.102                  0.047  (emulation vs host: 0.109)

Per sample the emulation's deviation from the host tracks the device's. Digits, max over the
first 2 / 16 / 64 samples: 0.031 / 0.086 / 0.109 emulated, 0.031 / 0.094 / 0.102 on the device.
MNIST CNN, first 256 samples: mean of the per-sample max 0.04187 emulated, 0.04189 on the device;
max 0.146 emulated, 0.116 on the device (0.199 over all 1,000: the tail the factor 2 of the
self-test tolerance covers).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from compiler.data import TensorSet, sample_count, take
from compiler.emulate import im2col_nhwc

F16, F32 = np.float16, np.float32
# Multiply-adds the emulation may spend (numpy does ~1e8 a second here: a few seconds); always at
# least ``min_samples`` (the self-test's samples), at most ``max_samples``.
MAX_MACS = 4e8
MAX_SAMPLES = 256


class _Count:
    macs = 0


def half_dot(a: np.ndarray, b: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
    """``a (..., M, K) @ b (..., K, N)`` accumulated in fp16, one rounding per multiply-add, K in
    order, from ``init`` (broadcast to the result; the bias) or zero. Leading dims broadcast."""
    a32, b32 = a.astype(F32), b.astype(F32)
    shape = (*np.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
    acc = np.zeros(shape, F16) if init is None else np.broadcast_to(init.astype(F16), shape).copy()
    wide, prod = np.empty(shape, F32), np.empty(shape, F32)
    for k in range(a.shape[-1]):
        # An fp16 product is exact in fp32, so this is fl16(acc + a*b): one FMA's rounding.
        np.multiply(a32[..., :, k : k + 1], b32[..., k : k + 1, :], out=prod)
        np.add(acc, prod, out=wide)
        np.copyto(acc, wide, casting="same_kind")
    _Count.macs += int(np.prod(shape)) * a.shape[-1]
    return acc


def _same_pads(size: int, kernel: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + (kernel - 1) * dilation + 1 - size)
    small = total // 2
    return (small, total - small) if upper else (total - small, small)


def half_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, attrs: dict[str, Any]) -> np.ndarray:
    """NCHW (or NCL) fp16 convolution through ``half_dot``: im2col in (kh, kw, c) order per group."""
    one_d = x.ndim == 3
    if one_d:
        x, w = x[:, :, None, :], w[:, :, None, :]
    if x.ndim != 4:
        raise ValueError(f"Conv over {x.ndim - 2} spatial dims is not emulated")
    n, _, h, wd = x.shape
    m, cg, kh, kw = w.shape
    groups = int(attrs.get("group") or 1)
    strides = list(attrs.get("strides") or [1] * (2 - one_d))
    dilations = list(attrs.get("dilations") or [1] * (2 - one_d))
    pads = list(attrs.get("pads") or [0] * (4 - 2 * one_d))
    if one_d:
        strides, dilations, pads = [1, *strides], [1, *dilations], [0, pads[0], 0, pads[1]]
    auto = attrs.get("auto_pad") or "NOTSET"
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        pads = [0, 0, 0, 0]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        top, bottom = _same_pads(h, kh, strides[0], dilations[0], auto == "SAME_UPPER")
        left, right = _same_pads(wd, kw, strides[1], dilations[1], auto == "SAME_UPPER")
        pads = [top, left, bottom, right]
    cols, (n, oh, ow) = im2col_nhwc(x, 0, (kh, kw), {"strides": strides, "pads": pads, "dilations": dilations})
    mg = m // groups
    rows = cols.reshape(-1, kh * kw, groups, cg).transpose(2, 0, 1, 3).reshape(groups, -1, kh * kw * cg)
    filt = w.reshape(groups, mg, cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(groups, kh * kw * cg, mg)
    init = None if b is None else b.reshape(groups, 1, mg)
    y = half_dot(rows, filt, init).transpose(1, 0, 2).reshape(n, oh, ow, m).transpose(0, 3, 1, 2)
    return y[:, :, 0, :] if one_d else y


def _half_gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, alpha: float | None = None,
               beta: float | None = None, transA: int | None = None, transB: int | None = None) -> np.ndarray:
    a, b = (a.T if transA else a), (b.T if transB else b)
    alpha, beta = (1.0 if alpha is None else alpha), (1.0 if beta is None else beta)
    if alpha == 1.0 and beta == 1.0:
        return half_dot(a, b, c)
    y = (half_dot(a, b).astype(F32) * alpha).astype(F16)
    return y if c is None else (y.astype(F32) + beta * c.astype(F32)).astype(F16)


def _half_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    y = half_dot(a[None, :] if a.ndim == 1 else a, b[:, None] if b.ndim == 1 else b)
    return y[..., 0, :] if a.ndim == 1 else y[..., 0] if b.ndim == 1 else y


HALF_KERNELS: dict[str, Callable[..., np.ndarray]] = {
    "Conv": lambda x, w, b=None, **attrs: half_conv(x, w, b, attrs),
    "Gemm": _half_gemm,
    "MatMul": _half_matmul,
}
# Casts keep their own semantics (their point is the dtype change).
_UNTOUCHED = frozenset({"Cast", "CastLike"})


def _emulating(base: type[OpRun], op_type: str) -> type[OpRun]:
    """``base`` (onnx.reference's kernel) with fp16 operands computed as the device would: the
    accumulating ops through ``HALF_KERNELS``, every other op in fp32 and rounded to fp16 (as an
    fp16 kernel with fp32 internals, or onnxruntime's inserted casts around an fp32 one, gives it;
    numpy's own fp16 math would overflow in exp() where the device does not)."""

    def _run(self: OpRun, *args: Any, **attrs: Any) -> tuple[Any, ...]:
        if not any(isinstance(a, np.ndarray) and a.dtype == F16 for a in args):
            return base._run(self, *args, **attrs)
        if op_type in HALF_KERNELS:
            return (HALF_KERNELS[op_type](*args, **attrs),)
        wide = [a.astype(F32) if isinstance(a, np.ndarray) and a.dtype == F16 else a for a in args]
        out = base._run(self, *wide, **attrs)
        return tuple(o.astype(F16) if isinstance(o, np.ndarray) and o.dtype == F32 else o for o in out)

    return type(op_type, (base,), {"_run": _run})


def half_evaluator(model: onnx.ModelProto) -> ReferenceEvaluator:
    """``onnx.reference`` over ``model`` with each node's kernel (the version onnx.reference picked
    for it) replaced by its emulating twin; fp32 nodes keep the reference arithmetic."""
    evaluator = ReferenceEvaluator(model)
    twins: dict[type[OpRun], type[OpRun]] = {}
    for node in evaluator.rt_nodes_:
        base = type(node)
        if node.op_type not in _UNTOUCHED and isinstance(node, OpRun):
            node.__class__ = twins.setdefault(base, _emulating(base, node.op_type))
    return evaluator


@dataclass(frozen=True)
class HalfDeviation:
    max_abs: float  # largest |emulated - this host's onnxruntime| over every float output
    samples: int
    macs_per_sample: int


def half_arithmetic_deviation(path: Path, data: TensorSet, *, min_samples: int = 2, max_samples: int = MAX_SAMPLES,
                              max_macs: float = MAX_MACS) -> HalfDeviation:
    """How far an ARMv8.2 device's output of the fp16 artifact at ``path`` is predicted to be from
    this host's: the first samples of ``data`` (``min_samples`` at least, more while the budget of
    multiply-adds lasts), one batch at a time in the model's batch size."""
    from compiler.fidelity import run

    model = onnx.load(str(path))
    first = model.graph.input[0].type.tensor_type.shape.dim
    batch = first[0].dim_value if first and first[0].dim_value > 0 else 1
    evaluator = half_evaluator(model)
    names = [o.name for o in model.graph.output]
    available = sample_count(data) - sample_count(data) % batch
    limit = min(available, -(-max_samples // batch) * batch)
    # This host's outputs of every row the loop may reach, in one onnxruntime session.
    host_all = run(path, take(data, slice(0, limit))).values
    worst, done, per_sample = 0.0, 0, 0
    while done < limit:
        if done >= min_samples and per_sample and (done + batch) * per_sample > max_macs:
            break
        feed = take(data, slice(done, done + batch))
        _Count.macs = 0
        with np.errstate(over="ignore", invalid="ignore"):  # onnx.reference's Sigmoid on large |x|
            emulated = evaluator.run(None, feed)
        per_sample = max(per_sample, _Count.macs // batch)
        host = [v[done : done + batch] for v in host_all]
        for name, got, ref in zip(names, emulated, host, strict=True):
            if ref.dtype.kind == "f":
                gap = float(np.abs(np.asarray(got, np.float64) - ref.astype(np.float64)).max())
                if not np.isfinite(gap):
                    raise ValueError(f"output {name!r} is not finite under fp16 emulation")
                worst = max(worst, gap)
            elif not np.array_equal(got, ref):
                raise ValueError(f"output {name!r} ({ref.dtype}) differs under fp16 emulation")
        done += batch
    return HalfDeviation(worst, done, per_sample)


_CACHE: dict[tuple[str, str, int, int, float], HalfDeviation] = {}


def cached_half_arithmetic_deviation(path: Path, data: TensorSet, *, min_samples: int = 2) -> HalfDeviation:
    """``half_arithmetic_deviation`` once per artifact content and data in this process: the targets
    of one compile that share an fp16 artifact (Pi 5, Orin) share its emulation."""
    from edgectl.hashing import sha256_file

    digest = hashlib.sha256()
    for name in sorted(data):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(data[name][:MAX_SAMPLES]).tobytes())
    cache_key = (sha256_file(path), digest.hexdigest(), min_samples, MAX_SAMPLES, MAX_MACS)
    if cache_key not in _CACHE:
        _CACHE[cache_key] = half_arithmetic_deviation(path, data, min_samples=min_samples)
    return _CACHE[cache_key]
