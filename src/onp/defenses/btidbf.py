"""BTI-DBF (U): backdoor trigger inversion by decoupling benign features, then unlearning (Xu, Liu, Zhang, Xia and
Cheng, "Towards Reliable and Efficient Backdoor Trigger Inversion via Decoupling Benign Features", ICLR 2024).

Instead of searching for the trigger, it learns which features are benign and trains a generator to change
everything else. Steps, as in the authors' ``pretrain.py`` and ``btidbfu.py``:
1. Pretrain a U-Net generator to reproduce the clean images (same features and predictions, small change).
2. For ``nround`` rounds: learn a feature mask ``m`` in (0, 1) with which ``m * f(x)`` keeps the label and
   ``(1 - m) * f(x)`` loses it (the benign features); train the generator to keep ``m * f`` and push ``(1 - m) * f``
   away within a pixel budget (after the first round also toward the class its images are classified as on round
   one: the detected target); then fine-tune the model with a tenth of each batch replaced by generated images,
   keeping their true labels and their features close to the clean ones (the unlearning).

Defaults are the authors' (``cfg.py``): generator width 32 and 4 blocks, 50 pretraining epochs at Adam 1e-3, 5
rounds of 20 mask epochs (Adam 0.01), 30 generator epochs (``norm_bound`` 0.3, ``feat_bound`` 3) and 30
unlearning epochs (Adam 1e-4), batch 128, the dataset's augmentation. Two differences, both forced by taking any
CNN: the features ``f`` are the input of the classifier head (the authors' ResNet masks its last feature map,
before pooling), and the generator works on [0, 1] images while its pixel loss is measured on the model's
normalized input, as theirs is. The paper's clean set is the authors' split of the training set; here it gets the
defender's images (500 in the benchmark).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.defenses.base import (
    Defense,
    DefenseContext,
    DefenseData,
    DefenseResult,
    classifier_head,
)
from onp.defenses.registry import register_defense
from onp.utils.progress import Bar


class _Conv2(nn.Module):
    """Two 3x3 convolutions, each with instance norm and leaky ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout, affine=True),
                                  nn.LeakyReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                                  nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class UNet(nn.Module):
    """The U-Net the authors' generator uses: ``blocks`` encoder stages of width ``base * 2^i`` (at most 512),
    max pooling, a bottleneck of twice the last width, transposed-convolution upsampling with skip connections,
    and a 1x1 output convolution (no output activation)."""

    def __init__(self, channels: int = 3, base: int = 32, blocks: int = 4) -> None:
        super().__init__()
        widths = [min(base * 2**i, 512) for i in range(blocks)]
        self.down = nn.ModuleList(_Conv2(cin, w) for cin, w in zip([channels, *widths[:-1]], widths))
        self.bottleneck = _Conv2(widths[-1], 2 * widths[-1])
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        cin = 2 * widths[-1]
        for w in reversed(widths):
            self.up.append(nn.ConvTranspose2d(cin, cin, 3, stride=2, padding=1, output_padding=1))
            self.merge.append(_Conv2(cin + w, w))
            cin = w
        self.out = nn.Conv2d(widths[0], channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([F.leaky_relu(up(x)), skip], dim=1))
        return self.out(x)


class HeadSplit:
    """A classifier seen as ``head(features(x))``: the features are the input of its last linear layer (a
    context manager: the hook that reads them is removed on exit)."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        self.model, self.head = model, classifier_head(model, num_classes)
        self._seen: list[Tensor] = []
        self._hook = self.head.register_forward_pre_hook(lambda _m, args: self._seen.append(args[0]))

    def __enter__(self) -> HeadSplit:
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()

    def features(self, x: Tensor) -> Tensor:
        self._seen.clear()
        self.model(x)
        return self._seen[-1]

    def both(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._seen.clear()
        out = self.model(x)
        return self._seen[-1], out


def _normalizer(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The model's input normalization (onp's models carry it), to measure the generator's pixel change where
    the authors do; the identity for a model without one."""
    norm = getattr(model, "normalize", None)
    return norm if isinstance(norm, nn.Module) else (lambda x: x)


@register_defense
class BTIDBF(Defense):
    """BTI-DBF (U): trigger inversion by decoupling benign features, then unlearning (Xu et al., ICLR 2024); see
    the module."""

    name = "btidbf"

    def __init__(self, preround: int = 50, nround: int = 5, mround: int = 20, uround: int = 30, ul_round: int = 30,
                 gen_lr: float = 1e-3, mask_lr: float = 0.01, lr: float = 1e-4, norm_bound: float = 0.3,
                 feat_bound: float = 3.0, batch_size: int = 128, gen_width: int = 32, gen_blocks: int = 4,
                 poison_fraction: float = 0.1) -> None:
        self.preround, self.nround, self.mround, self.uround = preround, nround, mround, uround
        self.ul_round, self.gen_lr, self.mask_lr, self.lr = ul_round, gen_lr, mask_lr, lr
        self.norm_bound, self.feat_bound = norm_bound, feat_bound
        self.batch_size, self.gen_width, self.gen_blocks = batch_size, gen_width, gen_blocks
        self.poison_fraction = poison_fraction

    def repair(self, model: nn.Module, data: DefenseData, ctx: DefenseContext) -> DefenseResult:
        torch.manual_seed(ctx.seed)
        rng = random.Random(ctx.seed)
        g = torch.Generator().manual_seed(ctx.seed)
        model = copy.deepcopy(model).to(ctx.device)
        normalize = _normalizer(model)
        gen = UNet(data.x_all.shape[1], self.gen_width, self.gen_blocks).to(ctx.device)
        opt_gen = torch.optim.Adam(gen.parameters(), lr=self.gen_lr)
        opt_cls = torch.optim.Adam(model.parameters(), lr=self.lr)
        per_epoch = (len(data.x_all) + self.batch_size - 1) // self.batch_size
        total = per_epoch * (self.preround + self.nround * (self.mround + self.uround + self.ul_round))
        target: int | None = None
        history: list[dict[str, float]] = []
        with ctx.progress(total=total, desc="bti-dbf") as bar:
            self._pretrain(model, gen, opt_gen, normalize, data, g, ctx, bar)
            for n in range(self.nround):
                inv = copy.deepcopy(model)
                mask = self._benign_mask(inv, data, g, ctx, bar)
                self._train_generator(inv, gen, opt_gen, mask, normalize, target, data, g, ctx, bar)
                if target is None:
                    target = self._detect_target(model, gen, normalize, data, ctx)
                self._unlearn(model, gen, opt_cls, rng, data, g, ctx, bar)
                history.append({"round": n, "mask_mean": float(mask.mean())})
        return DefenseResult(model.eval(), {"detected_target": target, "rounds": history})

    def _pretrain(self, model: nn.Module, gen: UNet, opt: torch.optim.Optimizer, normalize: Callable,
                  data: DefenseData, g: torch.Generator, ctx: DefenseContext, bar: Bar) -> None:
        with HeadSplit(model.eval(), data.num_classes) as split:
            gen.train()
            for x, _ in data.train_batches(self.batch_size, g, self.preround, ctx.device):
                out = gen(x)
                with torch.no_grad():
                    feat, logits = split.both(x)
                pur_feat, pur_logits = split.both(out)
                loss_pred = F.cross_entropy(F.softmax(logits, 1), F.softmax(pur_logits, 1))
                loss_feat = F.mse_loss(feat, pur_feat)
                loss_norm = F.mse_loss(normalize(x), normalize(out))
                loss = loss_pred + loss_feat + (100 * loss_norm if loss_norm > 0.1 else 0.01 * loss_norm)
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(1, stage="pretrain", loss=loss.item())

    def _benign_mask(self, inv: nn.Module, data: DefenseData, g: torch.Generator, ctx: DefenseContext,
                     bar: Bar) -> Tensor:
        # the authors learn the mask with BatchNorm in train mode
        with HeadSplit(inv.train(), data.num_classes) as split:
            with torch.no_grad():
                shape = (1, *split.features(data.x_all[:2].to(ctx.device)).shape[1:])
            raw = torch.randn(shape, device=ctx.device).requires_grad_(True)
            opt = torch.optim.Adam([raw], lr=self.mask_lr)
            for x, y in data.train_batches(self.batch_size, g, self.mround, ctx.device):
                m = torch.tanh(raw) / (2 + 1e-7) + 0.5
                feat = split.features(x)
                loss = F.cross_entropy(split.head(m * feat), y) - F.cross_entropy(split.head((1 - m) * feat), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(1, stage="mask", loss=loss.item())
            return (torch.tanh(raw) / (2 + 1e-7) + 0.5).detach()

    def _train_generator(self, inv: nn.Module, gen: UNet, opt: torch.optim.Optimizer, mask: Tensor,
                         normalize: Callable, target: int | None, data: DefenseData, g: torch.Generator,
                         ctx: DefenseContext, bar: Bar) -> None:
        with HeadSplit(inv.eval(), data.num_classes) as split:
            gen.train()
            for x, y in data.train_batches(self.batch_size, g, self.uround, ctx.device):
                out = gen(x)
                with torch.no_grad():
                    feat = split.features(x)
                gen_feat, gen_logits = split.both(out)
                loss_benign = F.mse_loss(mask * feat, mask * gen_feat)
                loss_backdoor = F.mse_loss((1 - mask) * feat, (1 - mask) * gen_feat)
                loss_norm = F.mse_loss(normalize(x), normalize(out))
                if loss_norm > self.norm_bound or loss_benign > self.feat_bound:
                    loss = loss_norm
                else:
                    loss = -loss_backdoor + 0.01 * loss_benign
                if target is not None:
                    loss = loss + F.cross_entropy(gen_logits, torch.full_like(y, target))
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(1, stage="generator", loss=loss.item())

    @torch.no_grad()
    def _detect_target(self, model: nn.Module, gen: UNet, normalize: Callable, data: DefenseData,
                       ctx: DefenseContext) -> int:
        """The class the generated images land in most (the authors add Gaussian noise of 0.03 on their
        normalized images first; here 0.03 times the normalization's std on [0, 1] images)."""
        model.eval()
        gen.eval()
        std = getattr(normalize, "std", None)
        scale = 0.03 * (std.view(1, -1, 1, 1).to(ctx.device) if isinstance(std, Tensor) else 1.0)
        counts = torch.zeros(data.num_classes)
        for s in range(0, len(data.x_all), self.batch_size):
            x = data.x_all[s:s + self.batch_size].to(ctx.device)
            pred = model(gen(x + scale * torch.randn_like(x))).argmax(1)
            counts += torch.bincount(pred.cpu(), minlength=data.num_classes).float()
        return int(counts.argmax())

    def _unlearn(self, model: nn.Module, gen: UNet, opt: torch.optim.Optimizer, rng: random.Random,
                 data: DefenseData, g: torch.Generator, ctx: DefenseContext, bar: Bar) -> None:
        with HeadSplit(model, data.num_classes) as split:
            gen.eval()
            for x, y in data.train_batches(self.batch_size, g, self.ul_round, ctx.device):
                model.train()
                mixed = x.clone()
                chosen = rng.sample(range(len(x)), int(self.poison_fraction * len(x) + 1))
                with torch.no_grad():
                    mixed[chosen] = gen(x[chosen])
                feat = split.features(x)
                mixed_feat, logits = split.both(mixed)
                loss = F.cross_entropy(logits, y) + F.mse_loss(feat, mixed_feat)
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update(1, stage="unlearn", loss=loss.item())
            model.eval()
