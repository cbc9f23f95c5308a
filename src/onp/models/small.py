"""A small CNN for quick runs (the digits demo, tests): two conv-BN-ReLU blocks and a hidden linear layer."""

from __future__ import annotations

from torch import Tensor, nn

from onp.models.registry import register_model


class SmallCNN(nn.Module):
    """conv(w)-BN-ReLU, conv(2w)-BN-ReLU, max-pool, conv(2w)-BN-ReLU, global pool, linear(4w)-ReLU, linear.

    Args:
        num_classes: logits.
        in_channels: image channels.
        width: channels of the first conv (default 16).

    Shapes:
        input (B, in_channels, H, W) with H, W >= 2; output (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=False),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=False),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Linear(2 * w, 4 * w), nn.ReLU(inplace=False), nn.Linear(4 * w, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 3, width: int = 16) -> SmallCNN:
    """A small CNN (this project's own, for tests and the offline demo)."""
    return SmallCNN(num_classes, in_channels, width)
