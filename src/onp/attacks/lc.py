"""Label-Consistent (Turner et al. 2019, "Label-Consistent Backdoor Attacks")."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from onp.attacks.base import Attack
from onp.attacks.registry import register_attack
from onp.data.base import ImageDataset
from onp.errors import OnpError
from onp.utils.progress import ProgressFactory, null_progress


def checkerboard_corners(x: Tensor, size: int, amplitude: float = 1.0) -> Tensor:
    """Stamp a ``size`` x ``size`` black/white checkerboard in each of the four corners of ``x``."""
    x = x.clone()
    h, w = x.shape[-2:]
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    board = ((ii + jj) % 2 == 0).float().to(x.device)  # white on the diagonal, like the paper's figure
    for r0, c0, flip_r, flip_c in ((0, 0, False, False), (0, w - size, False, True),
                                   (h - size, 0, True, False), (h - size, w - size, True, True)):
        b = board.flip(0) if flip_r else board
        b = b.flip(1) if flip_c else b
        patch = x[..., r0:r0 + size, c0:c0 + size]
        x[..., r0:r0 + size, c0:c0 + size] = (1 - amplitude) * patch + amplitude * b
    return x


@register_attack
class LabelConsistent(Attack):
    """Clean-label: target-class images are made hard to learn from their content by a PGD adversarial
    perturbation (from a clean reference model), then get a checkerboard in the four corners.

    Defaults from the paper's strongest setting: L-inf ``eps = 16/255``, the four-corner 3x3 checkerboard at
    full amplitude, the trigger alone at test time. The paper crafts the perturbations on an adversarially
    trained model; here the reference is a normally trained clean model of the victim's architecture
    (as BackdoorBench does), and PGD uses 10 steps of ``eps/4``.

    Args:
        eps: L-inf bound of the perturbation (default 16/255).
        steps: PGD steps (default 10).
        patch_size: checkerboard side (default: ``round(3 * H / 32)``).
        amplitude: trigger visibility in [0, 1] (default 1).
    """

    name = "lc"
    clean_label = True
    needs_reference = True
    supports_all_to_all = False

    def __init__(self, *args: Any, eps: float = 16 / 255, steps: int = 10, patch_size: int | None = None,
                 amplitude: float = 1.0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.eps = eps
        self.steps = steps
        self.check_patch(patch_size, corners=2)
        self.patch_size = patch_size or max(2, round(3 * self.image_shape[1] / 32))
        self.amplitude = amplitude
        self._delta: dict[str, Tensor] | None = None

    def apply(self, x: Tensor) -> Tensor:
        return checkerboard_corners(x, self.patch_size, self.amplitude)

    def prepare(self, train: ImageDataset, reference: nn.Module | None, device: torch.device,
                progress: ProgressFactory = null_progress) -> None:
        if reference is None:
            raise OnpError("lc needs a clean reference model to craft its adversarial perturbations")
        poison_idx, _ = self.select(train.labels)
        reference = reference.to(device).eval()
        g = torch.Generator().manual_seed(self.seed)  # PGD's random start, so a seed gives the same poison
        deltas = []
        with progress(total=len(poison_idx), desc="lc: PGD") as bar:
            for s in range(0, len(poison_idx), 250):
                idx = poison_idx[s:s + 250]
                x = train.float_images(idx).to(device)
                y = train.labels[idx].to(device)
                deltas.append((pgd(reference, x, y, self.eps, self.steps, generator=g) - x).cpu())
                bar.update(len(idx))
        self._delta = {"idx": poison_idx, "delta": torch.cat(deltas)}

    def poison_images(self, x: Tensor, idx: Tensor) -> Tensor:
        if self._delta is None:
            raise OnpError("lc: call prepare() with a reference model before poisoning")
        pos = torch.searchsorted(self._delta["idx"], idx)
        return self.apply((x + self._delta["delta"][pos].to(x.device)).clamp(0, 1))

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps, "steps": self.steps, "patch_size": self.patch_size, "amplitude": self.amplitude}


def pgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int, step_size: float | None = None,
        generator: torch.Generator | None = None) -> Tensor:
    """Untargeted L-inf PGD (Madry et al. 2018) with a random start; returns the adversarial images."""
    step_size = step_size if step_size is not None else eps / 4
    noise = torch.rand(x.shape, generator=generator).to(x.device) * 2 - 1
    x_adv = (x + eps * noise).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            x_adv = x_adv + step_size * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()
