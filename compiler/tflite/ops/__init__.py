"""The lowerings, one module per op family; importing this package registers them all."""

from compiler.tflite.ops import (
    arithmetic,
    conv,
    conv_transpose,
    dense,
    elementwise,
    gather,
    layout,
    normalization,
    pool,
    reduce,
    resize,
    shape,
)

__all__ = [
    "arithmetic", "conv", "conv_transpose", "dense", "elementwise", "gather", "layout", "normalization", "pool",
    "reduce", "resize", "shape",
]
