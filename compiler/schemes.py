"""The int8 scheme per target ISA: light on imports, so `edgectl targets show` can print it.

Why the schemes differ (onnxruntime's quantize_static docstring, "Choosing parameters for CPU
inference", and its MLAS kernels): on x86-64 without VNNI the u8×s8 kernels sum byte-pair
products in saturating int16 lanes (VPMADDUBSW), so weights keep 7 bits (reduce_range). With
VNNI the products accumulate straight into int32, so weights keep 8 bits; activations stay u8
there because onnxruntime's x86 graph optimizer fuses u8 QDQ Conv into QLinearConv but leaves
most s8 ones as float Conv between Q/DQ pairs (measured on YOLOv8n: 64 of 64 convs fused with
u8 activations, 7 of 64 with s8, and int8 was 1.5× slower than fp32). ARM's kernels take s8
activations natively (onnxruntime allows int8 QDQ on ARM): symmetric s8×s8 per-channel. tests/compiler/test_schemes.py
measures the alternatives under an emulation of the AVX2 arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgectl.targets import Target


@dataclass(frozen=True)
class QuantScheme:
    """How one int8 artifact is made; ``key`` identifies identical artifacts across targets."""

    activation: str  # "uint8" | "int8"
    weight: str  # "int8" | "uint8"
    per_channel: bool
    reduce_range: bool
    reason: str = field(compare=False)

    @property
    def key(self) -> str:
        a = "u8" if self.activation == "uint8" else "s8"
        w = "u8" if self.weight == "uint8" else "s8"
        return f"{a}{w}{'-pc' if self.per_channel else ''}{'-rr' if self.reduce_range else ''}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "qdq",
            "activation_type": self.activation,
            "weight_type": self.weight,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "reason": self.reason,
        }


def scheme_for(target: Target) -> QuantScheme:
    if target.arch == "x86_64" and not (target.has("avx512_vnni") or target.has("avx_vnni")):
        return QuantScheme(
            "uint8", "int8", per_channel=True, reduce_range=True,
            reason="x86-64 without VNNI: u8s8 pair sums saturate int16 (VPMADDUBSW); 7-bit weights cannot",
        )
    if target.arch == "x86_64":
        return QuantScheme(
            "uint8", "int8", per_channel=True, reduce_range=False,
            reason="VNNI accumulates u8*s8 in int32 (no saturation); onnxruntime fuses u8 activations into "
            "QLinearConv on x86, while s8 activations there mostly stay as float Conv between Q/DQ",
        )
    return QuantScheme(
        "int8", "int8", per_channel=True, reduce_range=False,
        reason="ARM kernels widen products before accumulating: s8s8 QDQ with per-channel weights",
    )
