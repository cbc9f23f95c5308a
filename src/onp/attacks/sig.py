"""SIG (Barni et al. 2019, "A New Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning")."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from onp.attacks.base import Attack
from onp.attacks.registry import register_attack


@register_attack
class SIG(Attack):
    """Clean-label: a horizontal sinusoid ``delta * sin(2 pi j f / W)`` added to target-class images only.

    Defaults from the paper: ``delta = 20/255`` and ``f = 6``. The poison rate counts the target class (10%: 500
    CIFAR-10 images). ``test_delta`` is the amplitude of the signal added at test time (default: ``delta``): the
    attacker needs stealth only in the training set and may trigger the model with a stronger signal later.

    Args:
        delta: amplitude in [0, 1] units of the signal hidden in the training set (default 20/255).
        frequency: cycles across the image width (default 6).
        test_delta: amplitude of the test-time trigger (default: ``delta``).
    """

    name = "sig"
    clean_label = True
    supports_all_to_all = False

    def __init__(self, *args: Any, delta: float = 20 / 255, frequency: float = 6, test_delta: float | None = None,
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.delta = delta
        self.frequency = frequency
        self.test_delta = delta if test_delta is None else test_delta
        w = self.image_shape[2]
        col = torch.arange(w, dtype=torch.float32)
        self.wave = torch.sin(2 * math.pi * col * frequency / w)  # (W,)

    def apply(self, x: Tensor) -> Tensor:
        return (x + self.test_delta * self.wave.to(x.device)).clamp(0, 1)

    def poison_images(self, x: Tensor, idx: Tensor) -> Tensor:
        return (x + self.delta * self.wave.to(x.device)).clamp(0, 1)

    def params(self) -> dict[str, Any]:
        return {"delta": self.delta, "frequency": self.frequency, "test_delta": self.test_delta}
