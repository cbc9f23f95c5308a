"""Families of small universal triggers the defender can optimize from clean images alone, and the optimizer that
(re-)fits one toward a class.

ONP's second design scores a pruning by how well the best small trigger still works on the pruned network, so the
families stand for the triggers of the field: a local patch (Neural Cleanse, Wang et al. 2019), an additive
perturbation at full resolution (a universal adversarial perturbation, Moosavi-Dezfooli et al. 2017) and at low
resolution (smooth, like a warp or a colour shift), a blend with a learned pattern (Blended, Chen et al. 2017) and
stripes (row and column patterns: SIG's sinusoid, Barni et al. 2019, is one). Each has a bound, so that a trigger
is small; which families, at what strength: docs/design.md, ONP.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.errors import OnpError
from onp.evaluate import predict
from onp.utils.runtime import frozen


@dataclass
class Trigger:
    """One family's trigger toward ``target``: its parameters (optimized in place), the family that pastes it, and
    its strength in (0, 1] (scales the perturbation, the mask or the blend; see :func:`calibrate`)."""

    family: Family
    target: int
    params: dict[str, Tensor] = field(default_factory=dict)
    strength: float = 1.0

    def apply(self, x: Tensor) -> Tensor:
        return self.family.apply(self.params, x, self.strength)


class Family(ABC):
    """How a family's trigger is parametrized, pasted, penalized and kept within its bound."""

    name: str = ""
    lr: float = 0.01
    """Adam step on the parameters."""

    @abstractmethod
    def init(self, shape: tuple[int, int, int], generator: torch.Generator) -> dict[str, Tensor]:
        """Starting parameters for images of ``shape`` (C, H, W)."""

    @abstractmethod
    def apply(self, params: dict[str, Tensor], x: Tensor, strength: float = 1.0) -> Tensor:
        """``x`` (B, C, H, W) in [0, 1] with the trigger pasted at ``strength``, still in [0, 1]."""

    def penalty(self, params: dict[str, Tensor]) -> Tensor | float:
        """Added to the loss while optimizing (a size penalty); 0 for bounded families."""
        return 0.0

    def project(self, params: dict[str, Tensor]) -> None:
        """Back within the bound after a step (in place)."""


class Patch(Family):
    """A mask and a pattern, ``(1 - m) x + m p`` (Neural Cleanse), kept small: an L1 penalty on the mask (``l1``,
    the weight at 32x32, scaled with the image area), and after every step the mask's logits are shifted down
    until its mean is at most ``area`` (a share of the image)."""

    name = "patch"

    def __init__(self, l1: float = 0.01, area: float = 0.04, lr: float = 0.1) -> None:
        self.l1, self.area, self.lr = l1, area, lr

    def init(self, shape: tuple[int, int, int], generator: torch.Generator) -> dict[str, Tensor]:
        c, h, w = shape
        return {"mask": torch.full((1, h, w), -3.0), "pattern": torch.randn((c, h, w), generator=generator) * 0.1}

    def apply(self, params: dict[str, Tensor], x: Tensor, strength: float = 1.0) -> Tensor:
        m = strength * torch.sigmoid(params["mask"])
        return (1 - m) * x + m * torch.sigmoid(params["pattern"])

    def penalty(self, params: dict[str, Tensor]) -> Tensor:
        m = torch.sigmoid(params["mask"])
        return self.l1 * (32 * 32 / m[0].numel()) * m.sum()

    def project(self, params: dict[str, Tensor]) -> None:
        logits = params["mask"]
        if torch.sigmoid(logits).mean() <= self.area:
            return
        lo, hi = 0.0, float(logits.max() - torch.logit(torch.tensor(self.area))) + 1.0
        for _ in range(30):  # bisect the shift that brings the mean down to the area
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if torch.sigmoid(logits - mid).mean() > self.area else (lo, mid)
        logits.sub_(hi)


class Additive(Family):
    """An L-inf bounded additive perturbation, at full resolution or, with ``resolution``, a ``resolution`` x
    ``resolution`` map per channel upsampled bilinearly (a smooth pattern)."""

    def __init__(self, eps: float, resolution: int | None = None, name: str = "additive") -> None:
        self.eps, self.resolution, self.name, self.lr = eps, resolution, name, eps / 5

    def init(self, shape: tuple[int, int, int], generator: torch.Generator) -> dict[str, Tensor]:
        c, h, w = shape
        r = self.resolution
        return {"delta": torch.zeros((c, h, w) if r is None else (c, r, r))}

    def apply(self, params: dict[str, Tensor], x: Tensor, strength: float = 1.0) -> Tensor:
        d = params["delta"]
        if self.resolution is not None:
            d = F.interpolate(d[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        return (x + strength * d).clamp(0, 1)

    def project(self, params: dict[str, Tensor]) -> None:
        params["delta"].clamp_(-self.eps, self.eps)


class Stripes(Family):
    """A row pattern plus a column pattern, ``x + u[c, j] + v[c, i]``, L-inf bounded: any pattern that varies along
    one axis only (SIG's horizontal sinusoid among them)."""

    name = "stripes"

    def __init__(self, eps: float) -> None:
        self.eps, self.lr = eps, eps / 5

    def init(self, shape: tuple[int, int, int], generator: torch.Generator) -> dict[str, Tensor]:
        c, h, w = shape
        return {"cols": torch.zeros(c, 1, w), "rows": torch.zeros(c, h, 1)}

    def apply(self, params: dict[str, Tensor], x: Tensor, strength: float = 1.0) -> Tensor:
        return (x + strength * (params["cols"] + params["rows"]).clamp(-self.eps, self.eps)).clamp(0, 1)

    def project(self, params: dict[str, Tensor]) -> None:
        params["cols"].clamp_(-self.eps, self.eps)
        params["rows"].clamp_(-self.eps, self.eps)


class Blend(Family):
    """A learned pattern blended into the whole image, ``(1 - alpha) x + alpha p``."""

    name = "blend"

    def __init__(self, alpha: float, lr: float = 0.1) -> None:
        self.alpha, self.lr = alpha, lr

    def init(self, shape: tuple[int, int, int], generator: torch.Generator) -> dict[str, Tensor]:
        return {"pattern": torch.randn(shape, generator=generator) * 0.1}

    def apply(self, params: dict[str, Tensor], x: Tensor, strength: float = 1.0) -> Tensor:
        a = strength * self.alpha
        return (1 - a) * x + a * torch.sigmoid(params["pattern"])


def default_families() -> dict[str, Family]:
    """The families and strengths ONP probes with (docs/design.md, ONP, trigger families)."""
    fams: list[Family] = [Patch(), Additive(8 / 255), Additive(24 / 255, resolution=8, name="lowfreq"),
                          Stripes(24 / 255), Blend(0.05)]
    return {f.name: f for f in fams}


def make_families(names: list[str] | None = None) -> dict[str, Family]:
    """The named default families (all of them by default); an unknown name lists the valid ones."""
    fams = default_families()
    if names is None:
        return fams
    unknown = [n for n in names if n not in fams]
    if unknown:
        raise OnpError(f"unknown trigger family {unknown[0]!r}; valid: {', '.join(fams)}")
    return {n: fams[n] for n in names}


def new_trigger(family: Family, target: int, shape: tuple[int, int, int], generator: torch.Generator) -> Trigger:
    params = {k: v.requires_grad_(True) for k, v in family.init(shape, generator).items()}
    return Trigger(family, target, params)


def fit(model: nn.Module, trigger: Trigger, x: Tensor, steps: int, generator: torch.Generator,
        device: torch.device, batch_size: int = 64) -> Trigger:
    """``steps`` Adam steps moving ``trigger`` (in place, from wherever it is: a warm start) to send the images
    ``x`` (of classes other than its target) to its target through ``model``, which is left unchanged."""
    if not len(x) or steps <= 0:
        return trigger
    params = list(trigger.params.values())
    opt = torch.optim.Adam(params, lr=trigger.family.lr)
    target = torch.full((min(batch_size, len(x)),), trigger.target, device=device)
    for p in params:
        p.data = p.data.to(device)
    with frozen(model):
        model.eval()
        for _ in range(steps):
            idx = torch.randint(len(x), (len(target),), generator=generator)
            loss = F.cross_entropy(model(trigger.apply(x[idx].to(device))), target) + \
                trigger.family.penalty(trigger.params)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                trigger.family.project(trigger.params)
    for p in params:
        p.grad = None
    return trigger


@torch.no_grad()
def success(model: nn.Module, trigger: Trigger, x: Tensor, device: torch.device) -> float:
    """Fraction of ``x`` (images of other classes) the trigger sends to its target."""
    if not len(x):
        return 0.0
    return (predict(model, trigger.apply(x.to(device)), device, 500) == trigger.target).float().mean().item()


def calibrate(model: nn.Module, trigger: Trigger, x: Tensor, device: torch.device, rate: float = 0.6,
              iterations: int = 8) -> Trigger:
    """Weaken ``trigger`` (bisect its strength in (0, 1]) until it sends about ``rate`` of ``x`` to its target; a
    trigger weaker than that keeps full strength. A saturated trigger succeeds whatever is pruned and so cannot
    register a pruning (docs/design.md, ONP); the strength then stays fixed while the trigger is re-fitted."""
    trigger.strength = 1.0
    if success(model, trigger, x, device) <= rate:
        return trigger
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        trigger.strength = (lo + hi) / 2
        lo, hi = (lo, trigger.strength) if success(model, trigger, x, device) > rate else (trigger.strength, hi)
    trigger.strength = hi
    return trigger
