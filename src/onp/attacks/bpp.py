"""BppAttack (Wang et al. 2022, "BppAttack: Stealthy and Efficient Trojan Attacks against Deep Neural Networks
via Image Quantization and Contrastive Adversarial Learning")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from onp.attacks.base import Attack
from onp.attacks.registry import register_attack


def floyd_steinberg(x: Tensor, levels: int) -> Tensor:
    """Quantize ``x`` (B, C, H, W) in [0,1] to ``levels`` values per channel with Floyd-Steinberg dithering.

    The error diffusion is sequential over pixels, vectorized over images and channels.
    """
    x = x.clone()
    h, w = x.shape[-2:]
    q = levels - 1
    for i in range(h):
        for j in range(w):
            old = x[..., i, j]
            new = torch.round(old.clamp(0, 1) * q) / q
            err = old - new
            x[..., i, j] = new
            if j + 1 < w:
                x[..., i, j + 1] += err * (7 / 16)
            if i + 1 < h:
                if j > 0:
                    x[..., i + 1, j - 1] += err * (3 / 16)
                x[..., i + 1, j] += err * (5 / 16)
                if j + 1 < w:
                    x[..., i + 1, j + 1] += err * (1 / 16)
    return x.clamp(0, 1)


@register_attack
class BppAttack(Attack):
    """Color-depth reduction with dithering as an invisible trigger.

    Defaults from the paper for CIFAR-10: ``squeeze_num = 8`` levels per channel (3 bits) with Floyd-Steinberg
    dithering. The paper also trains on "negative" samples made by adversarial perturbation during training
    (contrastive adversarial learning); this static-poisoning version leaves them out (``cross_ratio = 0``),
    which makes the attack easier to learn and no harder to defend.

    Args:
        squeeze_num: quantization levels per channel (default 8).
        dithering: use Floyd-Steinberg dithering (default True).
    """

    name = "bpp"

    def __init__(self, *args: Any, squeeze_num: int = 8, dithering: bool = True, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.squeeze_num = squeeze_num
        self.dithering = dithering

    def apply(self, x: Tensor) -> Tensor:
        if self.dithering:
            return floyd_steinberg(x, self.squeeze_num)
        q = self.squeeze_num - 1
        return torch.round(x * q) / q

    def params(self) -> dict[str, Any]:
        return {"squeeze_num": self.squeeze_num, "dithering": self.dithering}
