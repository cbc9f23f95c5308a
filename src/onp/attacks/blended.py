"""Blended (Chen et al. 2017, "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning")."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from onp.attacks.base import Attack
from onp.attacks.registry import register_attack
from onp.errors import OnpError


@register_attack
class Blended(Attack):
    """Blend a key pattern into the whole image: ``(1 - alpha) * x + alpha * pattern``.

    Defaults: ``alpha = 0.2`` and the paper's random-noise key pattern (a uniform noise image drawn from
    ``pattern_seed``), since the Hello-Kitty key cannot ship here; ``pattern`` takes an image file instead.

    Args:
        alpha: blend ratio (default 0.2).
        pattern: optional path of an image to use as the key, resized to the data.
        pattern_seed: seed of the noise key (default 0).
    """

    name = "blended"

    def __init__(self, *args: Any, alpha: float = 0.2, pattern: str | None = None, pattern_seed: int = 0,
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        if not 0 < alpha <= 1:
            raise OnpError(f"blended: alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.pattern_path = pattern
        self.pattern_seed = pattern_seed
        c, h, w = self.image_shape
        if pattern is None:
            self.pattern = torch.rand((c, h, w), generator=torch.Generator().manual_seed(pattern_seed))
        else:
            self.pattern = _load_pattern(pattern, c, h, w)

    def apply(self, x: Tensor) -> Tensor:
        return (1 - self.alpha) * x + self.alpha * self.pattern.to(x.device)

    def trigger_state(self) -> dict[str, Tensor]:
        return {"pattern": self.pattern}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        self.pattern = state["pattern"]

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "pattern": self.pattern_path, "pattern_seed": self.pattern_seed}


def _load_pattern(path: str, c: int, h: int, w: int) -> Tensor:
    try:
        img = Image.open(path).convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    except (OSError, UnidentifiedImageError) as e:
        raise OnpError(f"cannot read the blend pattern {path}: {e}") from None
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr.reshape(h, w, c)).permute(2, 0, 1).contiguous()
