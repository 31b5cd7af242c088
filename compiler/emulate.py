"""Evaluate a QDQ model with the integer arithmetic of a given x86 CPU.

onnxruntime's int8 kernels (MLAS) give different numbers on different x86 CPUs, so the
fidelity of a quantization scheme measured on our VNNI build host is not the fidelity a
device without VNNI sees. This module recomputes every quantized Conv / MatMul / Gemm from
the integer tensors of the QDQ graph the way MLAS would on the chosen ISA, and leaves every
other node to ``onnx.reference.ReferenceEvaluator``.

What MLAS does on x86-64 (read in stored copies of microsoft/onnxruntime):

- ``core/mlas/lib/x86_64/QgemmU8X8KernelAvx2.S``, ``ConvSymKernelAvx2.S`` and
  ``QgemvU8S8KernelAvx2.S``: U8S8 without VNNI is ``vpmaddubsw`` (u8 activation byte times
  s8 weight byte, two adjacent products added into an int16 lane *with saturation*), then
  ``vpmaddwd`` against a vector of ones and ``vpaddd`` into int32. The AVX-VNNI variants
  in the first two files use ``vpdpbusds``, which adds the products in int32 and cannot
  clip (the AVX-512 VNNI kernels likewise). AVX-512 without VNNI (``...Avx512Core``) uses
  the same pair instruction, so ``isa="avx2"`` stands for it too.
- ``core/mlas/lib/qgemm.h`` (``MlasGemmQuantOperation``): the kernels multiply the *raw*
  u8/s8 bytes; zero points are applied afterwards in int32 through row sums, column sums
  and ``K * zpA * zpB``. Saturation therefore depends on the stored bytes, not on
  ``a - zp``. ``QgemmU8S8KernelAvx2.S`` packs A in groups of 4 consecutive K bytes
  (zero padded) and K is stepped in blocks of 128 or 384, so the saturating pairs are
  always (k, k+1) for even k.
- ``qgemm_kernel_avx2.cpp``, ``QgemmU8U8KernelAvx2.S`` and the U8U8 macros of
  ``QgemmU8X8KernelAvx2.S``: U8U8 zero-extends both operands to int16 (``vpmovzxbw``)
  and uses ``vpmaddwd``, whose int32 pair sum cannot overflow: U8U8 is exact on AVX2.
- S8S8 never meets a ``vpmaddubsw`` kernel as such: on AMD64 ``MlasGemmQuantGetDispatch``
  (``qgemm.h``) sends it to the portable C kernel (newer trees: an AVX-VNNI-INT8 one).
  But ``core/optimizer/qdq_transformer/qdq_s8_to_u8.cc`` (run because
  ``QDQIsInt8Allowed()`` is false on non-ARM builds) rewrites int8 activation Q/DQ pairs
  to uint8 with zero point + 128 while the weights stay int8 (seen in the graph that
  onnxruntime 1.32 optimizes here: QLinearConv/QGemm with u8 inputs and s8 weights).
  An S8S8 model thus runs as U8S8 on x86 and saturates like one; we emulate that shift.
  Not emulated: ``session.qdqisint8allowed=1`` (S8S8 reaches MLAS) and the opt-in
  ``session.x64quantprecision`` (``avx2_weight_s8_to_u8.cc``: s8 weights become u8, U8U8).
- ``core/providers/cpu/quantization/qlinearconv.cc``: QLinearConv transposes the input to
  NHWC and reorders the filter to (kh, kw, c) x M before the GEMM, and the symmetric
  ConvSym path (``convsym.cpp``, ``MlasConvSymPackW``) packs 4 input channels per kernel
  position. Both give the K order (kh, kw, c), which we use for Conv pairs; padding holds
  the activation zero point, as in the im2col and indirection buffers there.

Depthwise/grouped Conv runs on other kernels (``MlasConvSymDepthwiseKernelAvx2``) and is
not emulated: such a node raises ``ValueError``, as does any other pattern we cannot follow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_21

ISAS = ("avx2", "vnni")
INT16_MIN, INT16_MAX = -32768, 32767
_DOMAIN = "edgectl.emulate"
# Bounds the int32 [rows, pairs, N] temporary of the pair emulation (~16 MB).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class LayerStats:
    """Saturation counts of one emulated Conv / MatMul / Gemm node.

    ``pairs`` counts the (output element, K pair) int16 lanes the kernel computes and
    ``clipped`` how many of them saturated.

        >>> LayerStats(node="/0/Conv", pairs=10, clipped=1).clipped_fraction
        0.1
    """

    node: str
    pairs: int
    clipped: int

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.pairs if self.pairs else 0.0


@dataclass(frozen=True)
class Emulation:
    """Outputs of an emulated run plus per-layer saturation counts.

    >>> result = emulate(model, {"x": x}, isa="avx2")  # doctest: +SKIP
    >>> result.outputs[0].shape, result.clipped_fraction  # doctest: +SKIP
    ((397, 10), 0.0026)
    """

    outputs: list[np.ndarray]
    layers: tuple[LayerStats, ...]

    @property
    def pairs(self) -> int:
        return sum(layer.pairs for layer in self.layers)

    @property
    def clipped(self) -> int:
        return sum(layer.clipped for layer in self.layers)

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.pairs if self.pairs else 0.0


# ------------------------------------------------------------------------- integer kernels


def _pad_k_even(x: np.ndarray, axis: int) -> np.ndarray:
    if x.shape[axis] % 2 == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, 1)
    return np.pad(x, widths)


def pair_saturating_dot(a: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, int]:
    """Return (a @ w as VPMADDUBSW + VPMADDWD computes it, number of clipped pairs).

    ``a`` is [M, K] uint8 values, ``w`` is [K, N] int8 values. Each pair
    a[k]*w[k] + a[k+1]*w[k+1] (k even, K zero-padded to even) is clipped to int16
    before the exact int32 sum.
    """
    a32 = _pad_k_even(a.astype(np.int32), axis=1)
    w32 = _pad_k_even(w.astype(np.int32), axis=0)
    a_even, a_odd, w_even, w_odd = a32[:, 0::2], a32[:, 1::2], w32[0::2], w32[1::2]
    rows, pairs = a_even.shape
    out = np.empty((rows, w32.shape[1]), dtype=np.int64)
    clipped = 0
    step = max(1, _CHUNK_ELEMENTS // max(1, pairs * w32.shape[1]))
    for start in range(0, rows, step):
        stop = start + step
        lanes = a_even[start:stop, :, None] * w_even + a_odd[start:stop, :, None] * w_odd
        clipped += int(np.count_nonzero((lanes > INT16_MAX) | (lanes < INT16_MIN)))
        out[start:stop] = np.clip(lanes, INT16_MIN, INT16_MAX).sum(axis=1, dtype=np.int64)
    return out, clipped


def exact_dot(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Return a @ w in exact integer arithmetic (VNNI, or U8U8 through VPMADDWD)."""
    # float64 is exact here (|sum| < 2**53) and runs on BLAS, unlike integer matmul.
    return (a.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)


def integer_gemm(a: np.ndarray, a_zp: int, w: np.ndarray, w_zp: np.ndarray, *, isa: str) -> tuple[np.ndarray, int, int]:
    """Return (sum_k (a - a_zp)(w - w_zp) as MLAS computes it on ``isa``, pairs, clipped).

    ``a`` is [M, K] uint8 or int8, ``w`` is [K, N] int8 or uint8, ``w_zp`` is [N].
    """
    if a.dtype == np.int8:
        # QDQS8ToU8Transformer: x86 runs int8 activations as uint8 with zero point + 128.
        a, a_zp = (a.astype(np.int32) + 128).astype(np.uint8), a_zp + 128
    if isa == "avx2" and w.dtype == np.int8:
        raw, clipped = pair_saturating_dot(a, w)
    else:
        raw, clipped = exact_dot(a, w), 0
    k, wzp = a.shape[1], w_zp.astype(np.int64)[None, :]
    row_sums = a.astype(np.int64).sum(axis=1)[:, None]
    col_sums = w.astype(np.int64).sum(axis=0)[None, :]
    acc = raw - wzp * row_sums - a_zp * col_sums + k * a_zp * wzp
    return acc, a.shape[0] * w.shape[1] * ((k + 1) // 2), clipped


def im2col_nhwc(
    x: np.ndarray, pad_value: int, kernel: tuple[int, int], conv: dict[str, list[int]]
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Return ([N*OH*OW, KH*KW*C] patches in (kh, kw, c) order, (N, OH, OW)) of NCHW ``x``."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, conv["strides"], conv["dilations"]
    top, left, bottom, right = conv["pads"]
    padded = np.full((n, c, h + top + bottom, w + left + right), pad_value, dtype=x.dtype)
    padded[:, :, top : top + h, left : left + w] = x
    oh = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    taps = [
        padded[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    cols = np.stack(taps, axis=1)  # [N, KH*KW, C, OH, OW]
    return cols.transpose(0, 3, 4, 1, 2).reshape(n * oh * ow, kh * kw * c), (n, oh, ow)


# ------------------------------------------------------------------------- lowerings


@dataclass(frozen=True)
class _Quantized:
    """Integer view of one DequantizeLinear: stored values, scale, zero point."""

    q: np.ndarray
    scale: np.ndarray
    zp: np.ndarray

    @property
    def scalar_zp(self) -> int:
        return int(self.zp.reshape(-1)[0])


def _per_channel(values: np.ndarray, n: int) -> np.ndarray:
    """Return per-tensor or per-channel ``values`` as an [n] vector."""
    return np.broadcast_to(values.reshape(-1), (n,))


def _quantized(q: np.ndarray, scale: np.ndarray, zp: np.ndarray | None) -> _Quantized:
    zero = np.zeros(scale.shape, dtype=q.dtype) if zp is None else zp
    return _Quantized(q=q, scale=np.asarray(scale, np.float32), zp=np.asarray(zero))


def _to_float(acc: np.ndarray, a: _Quantized, w: _Quantized, bias: np.ndarray | None) -> np.ndarray:
    scale = a.scale.reshape(()) * _per_channel(w.scale, acc.shape[-1])
    y = acc.astype(np.float32) * scale.astype(np.float32)
    return y if bias is None else y + bias.astype(np.float32)


def _run_conv(
    a: _Quantized, w: _Quantized, bias: np.ndarray | None, attrs: dict[str, Any]
) -> tuple[np.ndarray, int, int]:
    m = w.q.shape[0]
    cols, (n, oh, ow) = im2col_nhwc(a.q, a.scalar_zp, (w.q.shape[2], w.q.shape[3]), attrs)
    filt = w.q.transpose(2, 3, 1, 0).reshape(-1, m)  # (kh, kw, c) x M, as ReorderFilter
    acc, pairs, clipped = integer_gemm(cols, a.scalar_zp, filt, _per_channel(w.zp, m), isa=attrs["isa"])
    y = _to_float(acc, a, w, bias).reshape(n, oh, ow, m).transpose(0, 3, 1, 2)
    return y, pairs, clipped


def _run_matmul(
    a: _Quantized, w: _Quantized, bias: np.ndarray | None, attrs: dict[str, Any]
) -> tuple[np.ndarray, int, int]:
    weight = w.q.T if attrs.get("transB", 0) else w.q
    n, rows = weight.shape[1], a.q.reshape(-1, a.q.shape[-1])
    acc, pairs, clipped = integer_gemm(rows, a.scalar_zp, weight, _per_channel(w.zp, n), isa=attrs["isa"])
    return _to_float(acc, a, w, bias).reshape((*a.q.shape[:-1], n)), pairs, clipped


def _conv_attrs(where: str, attrs: dict[str, Any], rank: int) -> tuple[int, dict[str, Any]]:
    if rank != 4 or attrs.get("group", 1) != 1:
        raise ValueError(f"{where}: only 2-D Conv with group=1 is emulated")
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"{where}: auto_pad is not emulated; export explicit pads")
    conv = {
        "strides": attrs.get("strides", [1, 1]),
        "pads": attrs.get("pads", [0, 0, 0, 0]),
        "dilations": attrs.get("dilations", [1, 1]),
    }
    return 0, conv


def _gemm_attrs(where: str, attrs: dict[str, Any], rank: int) -> tuple[int, dict[str, Any]]:
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        raise ValueError(f"{where}: only Gemm with transA=0 and alpha=beta=1 is emulated")
    trans_b = attrs.get("transB", 0)
    return (0 if trans_b else 1), {"transB": trans_b}


def _matmul_attrs(where: str, attrs: dict[str, Any], rank: int) -> tuple[int, dict[str, Any]]:
    if rank != 2:
        raise ValueError(f"{where}: only MatMul with a 2-D constant weight is emulated")
    return 1, {}


@dataclass(frozen=True)
class _Lowering:
    """How one op type is checked (-> weight channel axis, attributes) and computed."""

    check: Callable[[str, dict[str, Any], int], tuple[int, dict[str, Any]]]
    run: Callable[..., tuple[np.ndarray, int, int]]


_LOWERINGS: dict[str, _Lowering] = {
    "Conv": _Lowering(check=_conv_attrs, run=_run_conv),
    "MatMul": _Lowering(check=_matmul_attrs, run=_run_matmul),
    "Gemm": _Lowering(check=_gemm_attrs, run=_run_matmul),
}


class IntegerOp(OpRun):
    """Reference-evaluator kernel for a quantized node rewritten by ``rewrite_for_emulation``.

    Inputs are the activation and weight DequantizeLinear inputs (q, scale, zero point)
    and the float bias; outputs are the float result and [pairs, clipped]:

        >>> ReferenceEvaluator(rewritten, new_ops=[IntegerOp])  # doctest: +SKIP
    """

    op_domain = _DOMAIN

    def _run(self, a_q, a_scale, a_zp, w_q, w_scale, w_zp, bias=None, **attrs):
        a, w = _quantized(a_q, a_scale, a_zp), _quantized(w_q, w_scale, w_zp)
        y, pairs, clipped = _LOWERINGS[attrs["op"]].run(a, w, bias, attrs)
        return y.astype(np.float32), np.array([pairs, clipped], dtype=np.int64)


class DequantizeLinear(DequantizeLinear_21):
    """DequantizeLinear for opsets 10-18, which the reference evaluator does not ship.

    Later opsets only added types and blocking, so for int8/uint8/int32 per-tensor or
    per-axis data the newer implementation is the old one:

        >>> ReferenceEvaluator(opset17_model, new_ops=[DequantizeLinear])  # doctest: +SKIP
    """

    op_domain = ""

    def _run(self, *args, axis=1, block_size=0, output_dtype=None):
        # The evaluator passes every attribute of the newest schema; output_dtype is
        # absent (None) before opset 23 and the stored scale type applies.
        return super()._run(*args, axis=axis, block_size=block_size)


# ------------------------------------------------------------------------- graph rewrite


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _weight_rank(where: str, dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> int:
    weight, scale = inits.get(dq.input[0]), inits.get(dq.input[1])
    if weight is None or scale is None or _attrs(dq).get("block_size", 0):
        raise ValueError(f"{where}: weight and its scale must be constant, not blocked")
    return len(weight.dims)


def _check_weight_axis(
    where: str, dq: onnx.NodeProto, axis: int, rank: int, inits: dict[str, onnx.TensorProto]
) -> None:
    dq_axis = _attrs(dq).get("axis", 1) % rank
    if np.prod(inits[dq.input[1]].dims, dtype=np.int64) > 1 and dq_axis != axis:
        raise ValueError(f"{where}: per-channel weight axis {dq_axis} is not output axis {axis}")


def _dq_inputs(dq: onnx.NodeProto) -> list[str]:
    # An absent zero point becomes "", which the evaluator passes as None.
    return [*dq.input, *[""] * (3 - len(dq.input))]


def _lower_node(
    node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], inits: dict[str, onnx.TensorProto], isa: str
) -> onnx.NodeProto:
    """Return the IntegerOp replacing ``node``, or ``node`` itself if it is not quantized."""
    act_dq, w_dq = (producers.get(name) for name in node.input[:2])
    if act_dq is None or w_dq is None or {act_dq.op_type, w_dq.op_type} != {"DequantizeLinear"}:
        return node  # not quantized: onnxruntime runs it in float as well
    where = f"{node.op_type} node {node.name!r}"
    act_scale = inits.get(act_dq.input[1])
    if act_scale is not None and np.prod(act_scale.dims, dtype=np.int64) > 1:
        raise ValueError(f"{where}: per-axis activation scales are not emulated")
    rank = _weight_rank(where, w_dq, inits)
    axis, attrs = _LOWERINGS[node.op_type].check(where, _attrs(node), rank)
    _check_weight_axis(where, w_dq, axis, rank, inits)
    bias = node.input[2] if len(node.input) > 2 else ""
    return helper.make_node(
        "IntegerOp",
        [*_dq_inputs(act_dq), *_dq_inputs(w_dq), bias],
        [node.output[0], f"{node.output[0]}__emulate_stats"],
        name=node.name,
        domain=_DOMAIN,
        op=node.op_type,
        isa=isa,
        **attrs,
    )


def rewrite_for_emulation(model: onnx.ModelProto, isa: str) -> onnx.ModelProto:
    """Return a copy of ``model`` whose quantized Conv/MatMul/Gemm are ``IntegerOp`` nodes."""
    if isa not in ISAS:
        raise ValueError(f"unknown isa {isa!r}; expected one of {ISAS}")
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    graph = rewritten.graph
    producers = {out: node for node in graph.node for out in node.output}
    inits = {init.name: init for init in graph.initializer}
    nodes = [_lower_node(node, producers, inits, isa) if node.op_type in _LOWERINGS else node for node in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    rewritten.opset_import.append(helper.make_opsetid(_DOMAIN, 1))
    return rewritten


def emulate(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, isa: str) -> Emulation:
    """Run ``model`` (QDQ format) as MLAS on ``isa`` would; return outputs and counts."""
    rewritten = rewrite_for_emulation(model, isa)
    emulated = [node for node in rewritten.graph.node if node.domain == _DOMAIN]
    outputs = [out.name for out in rewritten.graph.output]
    opset = next((o.version for o in rewritten.opset_import if o.domain in ("", "ai.onnx")), 0)
    new_ops: list[type[OpRun]] = [IntegerOp] + ([DequantizeLinear] if opset < 19 else [])
    evaluator = ReferenceEvaluator(rewritten, new_ops=new_ops)
    results = list(evaluator.run(outputs + [node.output[1] for node in emulated], feeds))
    layers = tuple(
        LayerStats(node=node.name, pairs=int(stats[0]), clipped=int(stats[1]))
        for node, stats in zip(emulated, results[len(outputs) :], strict=True)
    )
    return Emulation(outputs=results[: len(outputs)], layers=layers)


def run_emulated(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, isa: str) -> list[np.ndarray]:
    """Return the outputs of ``model`` computed with the integer arithmetic of ``isa``.

    ``isa`` is "avx2" (also AVX-512 without VNNI: u8 x s8 pairs saturate to int16) or
    "vnni" (exact int32 accumulation).
    """
    return emulate(model, feeds, isa=isa).outputs
