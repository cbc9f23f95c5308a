"""Input-aware dynamic backdoor (Nguyen and Tran 2020, "Input-Aware Dynamic Backdoor Attack")."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.attacks.base import Attack
from onp.attacks.registry import register_attack
from onp.data.base import ImageDataset
from onp.errors import OnpError
from onp.utils.progress import ProgressFactory, null_progress

log = logging.getLogger(__name__)
_EPS = 1e-7


class TriggerGenerator(nn.Module):
    """The paper's encoder-decoder generator, narrower: two down and two up stages. As in the authors' code, the
    output is batch-normalised, so that the mask's steep threshold ``tanh(20 m - 10)`` starts unsaturated.

    Shapes:
        input (B, in_channels, H, W) in [0,1], H and W divisible by 4; output (B, out_channels, H, W) raw.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 16) -> None:
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

        w = width
        self.net = nn.Sequential(
            *block(in_channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            *block(4 * w, 2 * w), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            *block(2 * w, w), nn.Conv2d(w, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _diversity(x1: Tensor, x2: Tensor, g1: Tensor, g2: Tensor) -> Tensor:
    """The paper's diversity loss: input distance over output distance, so distinct inputs get distinct outputs.

    The squared distances are floored before the square root: two identical (saturated) outputs would otherwise
    give an infinite gradient times zero, a NaN that poisons the generator after a few steps.
    """
    d_in = (x1 - x2).pow(2).flatten(1).mean(1).clamp_min(_EPS ** 2).sqrt()
    d_out = (g1 - g2).pow(2).flatten(1).mean(1).clamp_min(_EPS ** 2).sqrt()
    return (d_in / (d_out + _EPS)).mean()


def _check_finite(loss: Tensor, stage: str) -> None:
    if not torch.isfinite(loss):
        raise OnpError(f"inputaware: the {stage}'s loss became {loss.item()}; its training diverged")


@register_attack
class InputAware(Attack):
    """Each image gets its own trigger: a pattern ``G(x)`` pasted through a mask ``M(x)``, both generated.

    As in the paper: the mask generator is trained first for diversity and sparsity (density 0.032,
    ``lambda_norm = 100``, ``lambda_div = 1``), then the pattern generator is trained jointly with a classifier
    on backdoor samples (``p_attack``), cross samples that carry the trigger of another image and keep their
    label (``p_cross = p_attack``, hence ``cross_ratio = 1``), and clean samples. Unlike the paper, the joint
    training uses a copy of the clean reference model and lasts ``gen_epochs``; the generators are then frozen
    and the victim is trained on the statically poisoned set, so the trigger can be shipped as data.

    Args:
        mask_density: target fraction of masked pixels (default 0.032).
        lambda_div, lambda_norm: loss weights (defaults 1 and 100).
        mask_epochs, gen_epochs: passes over the training set for the two stages (defaults 1 and 2).
        gen_width: channels of the generators' first stage (default 16).
        batch_size: of the generator training (default 128).
    """

    name = "inputaware"
    needs_reference = True

    def __init__(self, *args: Any, mask_density: float = 0.032, lambda_div: float = 1.0, lambda_norm: float = 100.0,
                 mask_epochs: int = 1, gen_epochs: int = 2, gen_width: int = 16, batch_size: int = 128,
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        c, h, w = self.image_shape
        if h % 4 or w % 4:
            raise OnpError(f"inputaware needs image sides divisible by 4, got {h}x{w}")
        self.cross_ratio = 1.0
        self.mask_density, self.lambda_div, self.lambda_norm = mask_density, lambda_div, lambda_norm
        self.mask_epochs, self.gen_epochs, self.gen_width, self.batch_size = mask_epochs, gen_epochs, gen_width, \
            batch_size
        torch.manual_seed(self.seed)
        self.G = TriggerGenerator(c, c, gen_width)
        self.M = TriggerGenerator(c, 1, gen_width)
        self._ready = False

    # the paper's output maps
    def _pattern(self, x: Tensor) -> Tensor:
        return (torch.tanh(self.G(x)) + 1) / 2

    def _mask(self, x: Tensor) -> Tensor:
        return torch.tanh(self.M(x) * 20 - 10) / 2 + 0.5

    def _paste(self, x: Tensor, source: Tensor) -> Tensor:
        m = self._mask(source)
        return x + (self._pattern(source) - x) * m

    @torch.no_grad()
    def apply(self, x: Tensor) -> Tensor:
        if not self._ready:
            raise OnpError("inputaware: the generators are not trained; call prepare() with a reference model")
        self.G.to(x.device).eval()
        self.M.to(x.device).eval()
        return self._paste(x, x).clamp(0, 1)

    @torch.no_grad()
    def cross_images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        self.G.to(x.device).eval()
        self.M.to(x.device).eval()
        perm = torch.randperm(len(x), generator=generator).to(x.device)
        return self._paste(x, x[perm]).clamp(0, 1)

    def prepare(self, train: ImageDataset, reference: nn.Module | None, device: torch.device,
                progress: ProgressFactory = null_progress) -> None:
        if reference is None:
            raise OnpError("inputaware needs a clean reference model to train its generators against")
        g = torch.Generator().manual_seed(self.seed)
        self.G.to(device)
        self.M.to(device)
        n, bs = len(train), self.batch_size
        steps = n // bs

        def batches() -> Any:
            order = torch.randperm(n, generator=g)
            second = torch.randperm(n, generator=g)
            for s in range(steps):
                i1, i2 = order[s * bs:(s + 1) * bs], second[s * bs:(s + 1) * bs]
                yield (train.float_images(i1).to(device), train.labels[i1].to(device),
                       train.float_images(i2).to(device))

        # stage 1: the mask generator, for diversity and sparsity
        opt_m = torch.optim.Adam(self.M.parameters(), lr=1e-2, betas=(0.5, 0.9))
        self.M.train()
        with progress(total=self.mask_epochs * steps, desc="inputaware: mask") as bar:
            for _ in range(self.mask_epochs):
                for x1, _, x2 in batches():
                    m1, m2 = self._mask(x1), self._mask(x2)
                    loss = self.lambda_norm * F.relu(m1.mean() - self.mask_density) + \
                        self.lambda_div * _diversity(x1, x2, m1, m2)
                    _check_finite(loss, "mask generator")
                    opt_m.zero_grad()
                    loss.backward()
                    opt_m.step()
                    bar.update(1, loss=loss.item())
        self.M.eval()
        for p in self.M.parameters():
            p.requires_grad_(False)

        # stage 2: the pattern generator, jointly with a copy of the clean classifier
        clf = copy.deepcopy(reference).to(device).train()
        opt_c = torch.optim.SGD(clf.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        opt_g = torch.optim.Adam(self.G.parameters(), lr=1e-3, betas=(0.5, 0.9))
        n_bd = n_cross = max(1, int(round(0.1 * bs)))
        self.G.train()
        with progress(total=self.gen_epochs * steps, desc="inputaware: generator") as bar:
            for _ in range(self.gen_epochs):
                for x1, y1, x2 in batches():
                    bd = self._paste(x1[:n_bd], x1[:n_bd])
                    cross = self._paste(x1[n_bd:n_bd + n_cross], x2[n_bd:n_bd + n_cross])
                    xs = torch.cat([bd, cross, x1[n_bd + n_cross:]])
                    ys = torch.cat([self.target_of(y1[:n_bd]), y1[n_bd:]])
                    logits = clf(xs)
                    div = _diversity(x1[:n_bd], x2[:n_bd], self._pattern(x1[:n_bd]), self._pattern(x2[:n_bd]))
                    loss = F.cross_entropy(logits, ys) + self.lambda_div * div
                    _check_finite(loss, "pattern generator")
                    opt_c.zero_grad()
                    opt_g.zero_grad()
                    loss.backward()
                    opt_c.step()
                    opt_g.step()
                    bd_acc = (logits[:n_bd].argmax(1) == ys[:n_bd]).float().mean().item()
                    bar.update(1, loss=loss.item(), bd_acc=bd_acc)
        self.G.eval()
        for p in self.G.parameters():
            p.requires_grad_(False)
        self._ready = True
        self.G.cpu()
        self.M.cpu()

    def trigger_state(self) -> dict[str, Tensor]:
        if not self._ready:
            return {}
        return {**{f"G.{k}": v for k, v in self.G.state_dict().items()},
                **{f"M.{k}": v for k, v in self.M.state_dict().items()}}

    def load_trigger_state(self, state: dict[str, Tensor]) -> None:
        self.G.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("G.")})
        self.M.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("M.")})
        self.G.eval()
        self.M.eval()
        self._ready = True

    def params(self) -> dict[str, Any]:
        return {"mask_density": self.mask_density, "lambda_div": self.lambda_div, "lambda_norm": self.lambda_norm,
                "mask_epochs": self.mask_epochs, "gen_epochs": self.gen_epochs, "gen_width": self.gen_width,
                "batch_size": self.batch_size}
