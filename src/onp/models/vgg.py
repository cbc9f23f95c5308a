"""VGG-16 with BatchNorm (Simonyan and Zisserman 2015), CIFAR variant, with a width multiplier."""

from __future__ import annotations

from torch import Tensor, nn

from onp.models.registry import register_model

_CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG-16-BN for small images: 13 conv-BN-ReLU layers, five max-pools, then a classifier with one hidden
    linear layer (so the network has hidden linear units, like the ImageNet VGG).

    Args:
        num_classes: logits.
        in_channels: image channels.
        width: channels of the first block (64 in the paper); the others scale with it.
        hidden: hidden units of the classifier (default: 8 x width).

    Shapes:
        input (B, in_channels, H, W) with H, W >= 1 (pools that would go below 1x1 are skipped by the
        adaptive pooling); output (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 64, hidden: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in _CFG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = int(v) * width // 64
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=False)]
                c = out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        hidden = hidden or 8 * width
        self.classifier = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=False), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int, in_channels: int = 3, width: int = 64) -> VGG:
    """VGG-16-BN (Simonyan and Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
    Recognition"; BatchNorm from Ioffe and Szegedy 2015)."""
    return VGG(num_classes, in_channels, width)
