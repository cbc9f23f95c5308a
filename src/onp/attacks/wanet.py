"""WaNet (Nguyen and Tran 2021, "WaNet - Imperceptible Warping-based Backdoor Attack")."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from onp.attacks.base import Attack
from onp.attacks.registry import register_attack


@register_attack
class WaNet(Attack):
    """A smooth, fixed image warp as the trigger, with the paper's noise mode.

    A random ``k x k`` flow field, normalized and upsampled to the image, scaled by ``s`` and applied with
    ``grid_sample``. Noise mode: ``cross_ratio`` times as many extra samples get the warp plus a random
    per-pixel jitter and keep their labels, so the model must learn the exact warp.
    Defaults from the paper for CIFAR-10: ``k = 4``, ``s = 0.5``, ``grid_rescale = 1``, ``cross_ratio = 2``.

    Args:
        k: control grid size (default 4).
        s: warping strength (default 0.5).
        grid_rescale: rescale of the warped grid (default 1).
        cross_ratio: noise samples per poisoned sample (default 2).
        grid_seed: seed of the flow field (default: the attack's seed).
    """

    name = "wanet"

    def __init__(self, *args: Any, k: int = 4, s: float = 0.5, grid_rescale: float = 1.0,
                 cross_ratio: float = 2.0, grid_seed: int | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.k, self.s, self.grid_rescale = k, s, grid_rescale
        self.cross_ratio = cross_ratio
        self.grid_seed = self.seed if grid_seed is None else grid_seed
        _, h, w = self.image_shape
        g = torch.Generator().manual_seed(self.grid_seed)
        ins = torch.rand((1, 2, k, k), generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        self.noise_grid = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.identity_grid = torch.stack((xs, ys), 2)[None]

    def _grid(self) -> Tensor:
        h = self.image_shape[1]
        grid = (self.identity_grid + self.s * self.noise_grid / h) * self.grid_rescale
        return grid.clamp(-1, 1)

    def apply(self, x: Tensor) -> Tensor:
        grid = self._grid().to(x.device).expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, align_corners=True).clamp(0, 1)

    def cross_images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        h = self.image_shape[1]
        jitter = (torch.rand((x.shape[0], *self._grid().shape[1:]), generator=generator) * 2 - 1).to(x.device)
        grid = (self._grid().to(x.device) + jitter / h).clamp(-1, 1)
        return F.grid_sample(x, grid, align_corners=True).clamp(0, 1)

    def trigger_state(self) -> dict[str, Tensor]:
        return {"noise_grid": self.noise_grid, "identity_grid": self.identity_grid}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        self.noise_grid, self.identity_grid = state["noise_grid"], state["identity_grid"]

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "s": self.s, "grid_rescale": self.grid_rescale, "cross_ratio": self.cross_ratio,
                "grid_seed": self.grid_seed}
