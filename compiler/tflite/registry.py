"""The op registry: one lowering per ONNX op and opset version.

    @lowering("Conv", since=11)
    def conv_11(ctx: LoweringContext, node: onnx.NodeProto) -> None: ...

``resolve`` picks the highest ``since`` that is ≤ the model's opset, like onnx's reference
implementation picks ``ArgMax_12`` over ``ArgMax_1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx

from compiler.tflite.errors import TfliteLoweringError

if TYPE_CHECKING:
    from compiler.tflite.context import LoweringContext

Lowering = Callable[["LoweringContext", onnx.NodeProto], None]

_REGISTRY: dict[str, dict[int, Lowering]] = {}


def lowering(op_type: str, *, since: int) -> Callable[[Lowering], Lowering]:
    """Register ``fn`` as the lowering of ``op_type`` for opsets ≥ ``since``."""

    def register(fn: Lowering) -> Lowering:
        versions = _REGISTRY.setdefault(op_type, {})
        assert since not in versions, f"{op_type} since {since} registered twice"
        versions[since] = fn
        return fn

    return register


def supported_ops() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def resolve(node: onnx.NodeProto, opset: int) -> Lowering:
    """The lowering for ``node`` at ``opset``, or a TfliteLoweringError naming op and node."""
    versions = _REGISTRY.get(node.op_type, {}) if node.domain in ("", "ai.onnx") else {}
    usable = [since for since in versions if since <= opset]
    if not usable:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        detail = "" if not versions else f" at opset {opset} (lowerings exist from opset {min(versions)})"
        raise TfliteLoweringError(
            f"cannot lower ONNX op '{op}' (node '{node.name or node.output[0]}'){detail}: "
            f"supported ops are {', '.join(supported_ops())}"
        )
    return versions[max(usable)]
