"""CIFAR-style ResNet-18 (He et al. 2016) and PreAct-ResNet-18 (He et al. 2016b), with a width multiplier.

The CIFAR variant: a 3x3 stem with no max-pool, four stages of two blocks, global average pooling.
``width`` is the base channel count (64 in the papers; 16 is the CPU size used by this project's benchmarks).
"""

from __future__ import annotations

from torch import Tensor, nn

from onp.models.registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    """ResNet for small images.

    Args:
        block: ``BasicBlock`` or ``PreActBlock``.
        num_blocks: blocks per stage.
        num_classes: logits.
        in_channels: image channels (default 3).
        width: channels of the first stage (default 64); stages use width x (1, 2, 4, 8).
        final_norm: pre-activation only: a BatchNorm and ReLU after the last stage (He et al.); BackdoorBench's
            PreActResNet18 has neither.

    Shapes:
        input (B, in_channels, H, W), normalized; output (B, num_classes).
    """

    def __init__(self, block: type[nn.Module], num_blocks: list[int], num_classes: int = 10, in_channels: int = 3,
                 width: int = 64, final_norm: bool = True) -> None:
        super().__init__()
        self.preact = block is PreActBlock
        self.final_norm = self.preact and final_norm
        self.in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.Identity() if self.preact else nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._make_layer(block, width, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], 2)
        self.bn_final = nn.BatchNorm2d(8 * width) if self.final_norm else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * width, num_classes)

    def _make_layer(self, block: type[nn.Module], planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        if not self.preact:
            out = self.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.final_norm:
            out = self.relu(self.bn_final(out))
        return self.avgpool(out).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int = 3, width: int = 64) -> ResNet:
    """ResNet-18, CIFAR variant (He et al. 2016, "Deep Residual Learning for Image Recognition")."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, width)


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int, in_channels: int = 3, width: int = 64) -> ResNet:
    """PreAct-ResNet-18 (He et al. 2016, "Identity Mappings in Deep Residual Networks")."""
    return ResNet(PreActBlock, [2, 2, 2, 2], num_classes, in_channels, width)


@register_model("preactresnet18")
def preactresnet18(num_classes: int, in_channels: int = 3, width: int = 64) -> ResNet:
    """BackdoorBench's PreActResNet18 (Wu et al. 2022, ``models/preact_resnet.py``): the same blocks as
    ``preact_resnet18`` without the BatchNorm and ReLU after the last stage, with the same state-dict names, so
    the weights in its ``attack_result.pt`` load as they are."""
    return ResNet(PreActBlock, [2, 2, 2, 2], num_classes, in_channels, width, final_norm=False)
