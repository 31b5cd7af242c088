"""The lowerings, one module per op family; importing this package registers them all."""

from compiler.tflite.ops import conv, dense, elementwise, layout, normalization, pool, reduce, resize, shape

__all__ = ["conv", "dense", "elementwise", "layout", "normalization", "pool", "reduce", "resize", "shape"]
