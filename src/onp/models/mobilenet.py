"""MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride 1 in the stem and the second stage."""

from __future__ import annotations

from torch import Tensor, nn

from onp.models.registry import register_model

# (expansion, out_channels, num_blocks, stride), CIFAR strides
_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        planes = expansion * in_planes
        self.use_res = stride == 1 and in_planes == out_planes
        self.conv = nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU6(inplace=False),
            nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False), nn.BatchNorm2d(planes),
            nn.ReLU6(inplace=False),
            nn.Conv2d(planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return out + x if self.use_res else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for small images.

    Args:
        num_classes: logits.
        in_channels: image channels.
        width: channels of the stem (32 in the paper); every layer scales with ``width / 32``.

    Shapes:
        input (B, in_channels, H, W); output (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        scale = width / 32

        def ch(c: int) -> int:
            return max(8, int(round(c * scale)))

        self.stem = nn.Sequential(nn.Conv2d(in_channels, ch(32), 3, 1, 1, bias=False), nn.BatchNorm2d(ch(32)),
                                  nn.ReLU6(inplace=False))
        blocks: list[nn.Module] = []
        c = ch(32)
        for t, out, n, s in _CFG:
            for i in range(n):
                blocks.append(InvertedResidual(c, ch(out), t, s if i == 0 else 1))
                c = ch(out)
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(c, ch(1280), 1, bias=False), nn.BatchNorm2d(ch(1280)),
                                  nn.ReLU6(inplace=False))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(ch(1280), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.avgpool(self.head(self.blocks(self.stem(x)))).flatten(1))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int, in_channels: int = 3, width: int = 32) -> MobileNetV2:
    """MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks")."""
    return MobileNetV2(num_classes, in_channels, width)
