"""BadNets (Gu et al. 2017, "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain")."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from onp.attacks.base import Attack
from onp.attacks.registry import register_attack


@register_attack
class BadNets(Attack):
    """A small solid patch in the bottom-right corner, dirty label, all-to-one or all-to-all.

    Defaults: a white 3x3 square on 32x32 images (the setting of BackdoorBench and of the pruning papers
    ANP/RNP/ONP evaluate on); the side scales with the image (``round(3 * H / 32)``, at least 1).

    Args:
        patch_size: side of the square in pixels (default: scaled from 3 at 32x32).
        value: the patch's intensity in [0, 1] (default 1.0, white).
        margin: distance from the bottom-right corner (default 0).
    """

    name = "badnets"

    def __init__(self, *args: Any, patch_size: int | None = None, value: float = 1.0, margin: int = 0,
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        h = self.image_shape[1]
        self.check_patch(patch_size, margin)
        self.patch_size = patch_size or max(2, round(3 * h / 32))
        self.value = value
        self.margin = margin

    def apply(self, x: Tensor) -> Tensor:
        x = x.clone()
        s, m = self.patch_size, self.margin
        h, w = x.shape[-2:]
        x[..., h - m - s:h - m, w - m - s:w - m] = self.value
        return x

    def params(self) -> dict[str, Any]:
        return {"patch_size": self.patch_size, "value": self.value, "margin": self.margin}
