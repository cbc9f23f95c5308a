"""SIG (Barni et al. 2019, "A New Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning")."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from onp.attacks import register_attack
from onp.attacks.base import Attack


@register_attack
class SIG(Attack):
    """Clean-label: a horizontal sinusoid ``delta * sin(2 pi j f / W)`` added to target-class images only.

    Defaults from the paper: ``delta = 20/255`` and ``f = 6``, the same signal at training and test time.
    The poison rate is a fraction of the whole training set, so on CIFAR-10 at most 0.1 (the target class).

    Args:
        delta: amplitude in [0, 1] units (default 20/255).
        frequency: cycles across the image width (default 6).
    """

    name = "sig"
    clean_label = True
    supports_all_to_all = False

    def __init__(self, *args: Any, delta: float = 20 / 255, frequency: float = 6, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.delta = delta
        self.frequency = frequency
        w = self.image_shape[2]
        col = torch.arange(w, dtype=torch.float32)
        self.signal = delta * torch.sin(2 * math.pi * col * frequency / w)  # (W,)

    def apply(self, x: Tensor) -> Tensor:
        return (x + self.signal.to(x.device)).clamp(0, 1)

    def params(self) -> dict[str, Any]:
        return {"delta": self.delta, "frequency": self.frequency}
