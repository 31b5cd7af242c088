"""Read a ``.tflite`` file back and count what runs in it: operators by name, and the float ones.

An int8 model's float islands show up as DEQUANTIZE → float op → QUANTIZE; ``float_ops`` lists the
operators (other than QUANTIZE / DEQUANTIZE) that write a float32 tensor.

    .venv/bin/python -m compiler.tflite.summary model.int8.tflite [more.tflite ...]

    >>> s = summarize(Path("model.int8.tflite").read_bytes())
    >>> s.counts["DEQUANTIZE"], s.float_ops
    (2, ['HARD_SWISH'])
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import tflite

OP_NAMES = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_QDQ = ("QUANTIZE", "DEQUANTIZE")


@dataclass(frozen=True)
class Summary:
    """The operators of a model's first subgraph, in order, and which of them compute in float."""

    ops: list[str]
    float_ops: list[str]  # not QUANTIZE / DEQUANTIZE, with a float32 output

    @property
    def counts(self) -> Counter[str]:
        return Counter(self.ops)

    def line(self) -> str:
        c = self.counts
        floats = Counter(self.float_ops)
        detail = ", ".join(f"{name} {n}" for name, n in sorted(floats.items())) or "none"
        return (f"{len(self.ops)} ops, QUANTIZE {c['QUANTIZE']}, DEQUANTIZE {c['DEQUANTIZE']}, "
                f"float ops {len(self.float_ops)} ({detail})")


def summarize(data: bytes) -> Summary:
    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    ops, floats = [], []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = OP_NAMES[codes[op.OpcodeIndex()]]
        ops.append(name)
        outputs = op.OutputsAsNumpy()
        if name not in _QDQ and any(graph.Tensors(int(t)).Type() == tflite.TensorType.FLOAT32 for t in outputs):
            floats.append(name)
    return Summary(ops, floats)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    for path in parser.parse_args().files:
        print(f"{path}: {summarize(path.read_bytes()).line()}")


if __name__ == "__main__":
    main()
