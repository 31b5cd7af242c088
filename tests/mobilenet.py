"""MobileNetV3-Small (Howard et al. 2019, table 2) written out by hand: torchvision does not import here.

No pretrained weights can be fetched, so the zoo builds it with seeded random weights and sets each
BatchNorm's running statistics from real photos (one pass in train mode, cumulative average), so
activations have ImageNet-like scale; the classifier is then random but deterministic.
"""

from __future__ import annotations

from typing import Any

# (kernel, expanded channels, output channels, squeeze-excite, activation, stride)
_BLOCKS = [
    (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hswish", 2), (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1),
    (5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1), (5, 288, 96, True, "hswish", 2),
    (5, 576, 96, True, "hswish", 1), (5, 576, 96, True, "hswish", 1),
]


def _divisible(channels: float, divisor: int = 8) -> int:
    return max(divisor, int(channels + divisor / 2) // divisor * divisor)


def mobilenet_v3_small(num_classes: int = 1000) -> Any:
    """The torch module (imported lazily, like the rest of the zoo)."""
    import torch
    from torch import nn

    def act(kind: str) -> nn.Module:
        return nn.ReLU() if kind == "relu" else nn.Hardswish()

    def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int, kind: str | None) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout, momentum=None)]
        return [*layers, act(kind)] if kind else layers

    class SqueezeExcite(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            squeezed = _divisible(channels / 4)
            self.fc1, self.fc2 = nn.Conv2d(channels, squeezed, 1), nn.Conv2d(squeezed, channels, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * nn.functional.hardsigmoid(self.fc2(nn.functional.relu(self.fc1(s))))

    class Block(nn.Module):
        def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, kind: str, stride: int) -> None:
            super().__init__()
            layers = conv_bn(cin, expanded, 1, 1, 1, kind) if expanded != cin else []
            layers += conv_bn(expanded, expanded, kernel, stride, expanded, kind)
            layers += [SqueezeExcite(expanded)] if se else []
            layers += conv_bn(expanded, cout, 1, 1, 1, None)
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return x + y if self.residual else y

    layers: list[nn.Module] = conv_bn(3, 16, 3, 2, 1, "hswish")
    cin = 16
    for kernel, expanded, cout, se, kind, stride in _BLOCKS:
        layers.append(Block(cin, kernel, expanded, cout, se, kind, stride))
        cin = cout
    layers += conv_bn(cin, 576, 1, 1, 1, "hswish")
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(1024, num_classes),
    )
