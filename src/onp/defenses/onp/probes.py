"""Trigger-free backdoor probes, computed from the defender's clean images only.

A backdoored model has a shortcut to its target class. Two probes look for it without the trigger:

- a *universal adversarial perturbation* (Moosavi-Dezfooli et al. 2017), L-inf bounded and shared by all images;
  on a backdoored model it tends to follow the backdoor, and the class it drives images to estimates the target
  (the observation behind i-BAU, Zeng et al. 2022);
- an *inverted patch trigger*, a mask and a pattern pasted into every image with an L1 penalty on the mask, as in
  Neural Cleanse (Wang et al. 2019), aimed at that estimated class.

Neither sees the real trigger, target label or test set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onp.defenses.base import DefenseContext
from onp.evaluate import predict
from onp.graph.neurons import NeuronMask, Neurons
from onp.scores import channel_lipschitz, standardize_per_layer
from onp.utils.batching import batch_steps
from onp.utils.runtime import frozen


@dataclass
class Probe:
    """A synthesized trigger: ``apply(x)`` pastes it; ``target`` is the class it drives images to."""

    kind: str
    target: int
    delta: Tensor | None = None  # additive (C, H, W)
    mask: Tensor | None = None  # (1, H, W) in [0, 1]
    pattern: Tensor | None = None  # (C, H, W) in [0, 1]
    strength: float = 1.0  # scales the perturbation or the mask (see :func:`calibrate`)

    def apply(self, x: Tensor) -> Tensor:
        if self.delta is not None:
            x = x + self.strength * self.delta.to(x.device)
        if self.mask is not None:
            m = self.strength * self.mask.to(x.device)
            x = (1 - m) * x + m * self.pattern.to(x.device)
        return x.clamp(0, 1)


def universal_perturbation(model: nn.Module, x: Tensor, y: Tensor, ctx: DefenseContext, eps: float = 8 / 255,
                           steps: int = 60, batch_size: int = 128, target: int | None = None,
                           resolution: int | None = None) -> Tensor:
    """An L-inf universal perturbation: untargeted (raise the loss of the true labels) or toward ``target``.

    With ``resolution`` the perturbation is a ``resolution`` x ``resolution`` map per channel, upsampled
    bilinearly to the image: a low-frequency pattern, which cannot use the high-frequency adversarial features a
    full-resolution perturbation finds.
    """
    model.eval()
    g = torch.Generator().manual_seed(ctx.seed + 11)
    c, h, w = x.shape[1:]
    shape = (c, h, w) if resolution is None else (c, resolution, resolution)
    param = torch.zeros(shape, device=ctx.device, requires_grad=True)

    def expand(p: Tensor) -> Tensor:
        if resolution is None:
            return p
        return F.interpolate(p[None], size=(h, w), mode="bilinear", align_corners=False)[0]

    opt = torch.optim.Adam([param], lr=eps / 10)
    with frozen(model):
        for idx in batch_steps(len(x), batch_size, g, steps):
            xb, yb = x[idx].to(ctx.device), y[idx].to(ctx.device)
            logits = model((xb + expand(param)).clamp(0, 1))
            if target is None:
                loss = -F.cross_entropy(logits, yb)
            else:
                keep = yb != target
                loss = F.cross_entropy(logits[keep], torch.full_like(yb[keep], target))
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                param.clamp_(-eps, eps)
    with torch.no_grad():
        return expand(param).detach().cpu()


@torch.no_grad()
def dominant_class(model: nn.Module, x: Tensor, y: Tensor, probe_apply, device: torch.device,  # noqa: ANN001
                   num_classes: int) -> tuple[int, float]:
    """The class the probe sends most images of *other* classes to, and that fraction."""
    rates = rates_to_classes(predict(model, probe_apply(x), device, 500), y, num_classes)
    c = int(torch.tensor(rates).argmax())
    return c, rates[c]


def rates_to_classes(pred: Tensor, y: Tensor, num_classes: int) -> list[float]:
    """Per class, the fraction of the images of *other* classes predicted as it."""
    return [((pred == c) & (y != c)).sum().item() / max(int((y != c).sum()), 1) for c in range(num_classes)]


def invert_patch(model: nn.Module, x: Tensor, y: Tensor, target: int, ctx: DefenseContext, steps: int = 150,
                 l1: float = 0.01, batch_size: int = 128) -> Probe:
    """A Neural-Cleanse-style mask and pattern that send clean images of other classes to ``target``.

    ``l1`` weighs the mask's L1 norm at 32x32 and scales with the image area, so covering the same fraction of
    the image costs the same at every resolution (docs/design.md, ONP).
    """
    model.eval()
    c, h, w = x.shape[1:]
    g = torch.Generator().manual_seed(ctx.seed + 13)
    mask_logit = torch.full((1, h, w), -3.0, device=ctx.device).requires_grad_(True)
    pattern_logit = (torch.randn((c, h, w), generator=g) * 0.1).to(ctx.device).requires_grad_(True)
    opt = torch.optim.Adam([mask_logit, pattern_logit], lr=0.1)
    keep = y != target
    xs = x[keep]
    penalty = l1 * (32 * 32) / (h * w)
    with frozen(model):
        for idx in batch_steps(len(xs), batch_size, g, steps):
            xb = xs[idx].to(ctx.device)
            m, p = torch.sigmoid(mask_logit), torch.sigmoid(pattern_logit)
            logits = model((1 - m) * xb + m * p)
            loss = F.cross_entropy(logits, torch.full((len(xb),), target, device=ctx.device)) + penalty * m.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Probe("patch", target, mask=torch.sigmoid(mask_logit).detach().cpu(),
                 pattern=torch.sigmoid(pattern_logit).detach().cpu())


def calibrate(model: nn.Module, x: Tensor, y: Tensor, probe: Probe, device: torch.device, rate: float = 0.6,
              iterations: int = 8) -> Probe:
    """Weaken ``probe`` (bisect its ``strength`` in (0, 1]) until it sends about ``rate`` of the other classes'
    images to its target; a probe weaker than that is kept whole. A saturated probe cannot register pruning;
    below saturation, removing the neurons it rides on shows (docs/design.md, ONP).
    """
    probe.strength = 1.0
    if probe_rate(model, x, y, probe, device) <= rate:
        return probe
    lo, hi = 0.0, 1.0
    for _ in range(iterations):
        probe.strength = (lo + hi) / 2
        if probe_rate(model, x, y, probe, device) > rate:
            hi = probe.strength
        else:
            lo = probe.strength
    probe.strength = hi
    return probe


@dataclass
class ProbeSet:
    """The probes of one model and the target class they agree on."""

    target: int
    probes: list[Probe]
    rates: dict[str, float | int]

    def with_full_strength(self) -> ProbeSet:
        """These probes plus a full-strength copy of each weakened one: a weakened probe breaks before the real
        trigger does (see :class:`~onp.defenses.onp.ONP`'s ``stop_full``)."""
        full = [dataclasses.replace(p, strength=1.0) for p in self.probes if p.strength < 1.0]
        return ProbeSet(self.target, self.probes + full, self.rates)


def estimate_target(model: nn.Module, x: Tensor, y: Tensor, num_classes: int, ctx: DefenseContext,
                    eps: float = 8 / 255, uap_steps: int = 60, unlearned_predictions: list[int] | None = None,
                    amplified: list[float] | None = None, collapse: float = 0.9, amplified_decides: float = 0.5,
                    candidate_share: float = 0.1, max_candidates: int = 3) -> tuple[int, dict[str, float | int]]:
    """The class a backdoor most likely targets, and the signals it was estimated from.

    The estimate combines three trigger-free signals of a shortcut to a class:

    - the share of clean images that RNP's unlearned model (trained to *raise* the clean loss) sends to it:
      unlearning leaves the backdoor's shortcut as the easiest wrong answer;
    - ``amplified``: the share of images of other classes sent to it when the neurons CLP flags are amplified
      (:func:`amplified_rates`);
    - how many images of other classes a targeted universal perturbation (half the probe's steps) sends to it.

    An unlearned share of at least ``collapse`` decides alone; then an amplified share of at least
    ``amplified_decides``. Otherwise the candidates are the classes with at least ``candidate_share`` of the
    unlearned predictions (at most ``max_candidates``), the class amplification sends most images to, and the
    class an untargeted universal perturbation drives most images to; the estimate is the candidate with the
    largest sum of the three signals. No signal suffices alone (docs/design.md, ONP, the target estimate).
    """
    rates: dict[str, float | int] = {}
    counts = torch.tensor(unlearned_predictions or [0] * num_classes, dtype=torch.float)
    share = counts / counts.sum().clamp_min(1)
    rates["unlearned_class"], rates["unlearned_share"] = int(share.argmax()), share.max().item()
    amp = torch.tensor(amplified or [0.0] * num_classes, dtype=torch.float)
    if amplified is not None:
        rates["amplified_class"], rates["amplified_share"] = int(amp.argmax()), amp.max().item()
    if share.max() >= collapse:
        target = int(share.argmax())
    elif amp.max() >= amplified_decides:
        target = int(amp.argmax())
    else:
        order = share.argsort(descending=True)[:max_candidates]
        candidates = [int(c) for c in order if share[c] >= candidate_share]
        if amplified is not None and int(amp.argmax()) not in candidates:
            candidates.append(int(amp.argmax()))
        untargeted = universal_perturbation(model, x, y, ctx, eps, uap_steps)
        uap_class, rates["untargeted_uap"] = dominant_class(model, x, y, lambda v: (v + untargeted).clamp(0, 1),
                                                            ctx.device, num_classes)
        rates["uap_class"] = uap_class
        if uap_class not in candidates:
            candidates.append(uap_class)
        scores = {}
        for c in candidates:
            delta = universal_perturbation(model, x, y, ctx, eps, max(1, uap_steps // 2), target=c)
            rates[f"scan_uap_{c}"] = probe_rate(model, x, y, Probe("uap", c, delta=delta), ctx.device)
            scores[c] = share[c].item() + amp[c].item() + rates[f"scan_uap_{c}"]
        target = max(scores, key=scores.get)
    rates["target_estimate"] = target
    return target, rates


def make_probes(model: nn.Module, x: Tensor, y: Tensor, num_classes: int, ctx: DefenseContext,
                eps: float = 8 / 255, uap_steps: int = 60, patch_steps: int = 150,
                unlearned_predictions: list[int] | None = None, amplified: list[float] | None = None,
                rate: float | None = 0.6, probe_eps: float | None = None, probe_resolution: int | None = None,
                target: int | None = None, **estimate: float | int) -> ProbeSet:
    """Estimate the target class (:func:`estimate_target`, which ``estimate`` parameterizes), then build a
    targeted universal perturbation and an inverted patch trigger toward it.

    The estimate's perturbations use ``eps`` at full resolution; the targeted probe uses ``probe_eps`` (default
    ``eps``) and ``probe_resolution`` (default full; see :func:`universal_perturbation`).

    Each probe is then weakened to send about ``rate`` of the images to the target (:func:`calibrate`;
    ``None`` keeps full strength). ``target`` skips the estimate and aims at that class: for diagnostics only,
    since no defense knows the target.
    """
    if target is None:
        target, rates = estimate_target(model, x, y, num_classes, ctx, eps, uap_steps, unlearned_predictions,
                                        amplified, **estimate)
    else:
        rates = {"target_estimate": target, "target_forced": 1}
    targeted = Probe("uap", target, delta=universal_perturbation(
        model, x, y, ctx, eps if probe_eps is None else probe_eps, uap_steps, target=target,
        resolution=probe_resolution))
    patch = invert_patch(model, x, y, target, ctx, patch_steps)
    for p in (targeted, patch):
        rates[f"{p.kind}_full"] = probe_rate(model, x, y, p, ctx.device)
        if rate is not None:
            calibrate(model, x, y, p, ctx.device, rate)
        rates[p.kind], rates[f"{p.kind}_strength"] = probe_rate(model, x, y, p, ctx.device), p.strength
    return ProbeSet(target, [targeted, patch], rates)


@torch.no_grad()
def amplified_rates(model: nn.Module, neurons: Neurons, x: Tensor, y: Tensor, num_classes: int, device: torch.device,
                    k: int = 10, gain: float = 4.0) -> list[float]:
    """Per class, the share of the images of other classes sent to it when the ``k`` neurons with the largest
    per-layer z-scores of CLP's channel Lipschitz bound are multiplied by ``gain``.

    A backdoor lives in a few neurons that respond strongly to the trigger (CLP's observation), and amplified
    they push to its target (docs/design.md, ONP, the target estimate).
    """
    ranking = torch.argsort(standardize_per_layer(channel_lipschitz(neurons), neurons), descending=True)
    scale = torch.ones(len(neurons))
    scale[ranking[:k]] = gain
    with NeuronMask(neurons, scale).applied():
        return rates_to_classes(predict(model, x, device, 500), y, num_classes)


@torch.no_grad()
def probe_rate(model: nn.Module, x: Tensor, y: Tensor, probe: Probe, device: torch.device) -> float:
    """Fraction of the images not of the probe's target class that the probe sends to it."""
    keep = y != probe.target
    xs = x[keep]
    if not len(xs):
        return 0.0
    return (predict(model, probe.apply(xs), device, 500) == probe.target).sum().item() / len(xs)
