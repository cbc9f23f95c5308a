"""Where the neurons are, and how to switch them off: hook-based masks, folded into weights at the end."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from onp.errors import OnpError
from onp.utils.runtime import trainable

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
_WEIGHTED = (nn.Conv2d, nn.Linear)
_SUPPORTED_LEAVES = _NORMS + _WEIGHTED + (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.ELU, nn.Identity,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Dropout2d,
    nn.Upsample, nn.Softmax,
)


@dataclass
class Carrier:
    """A module whose output channels are neurons.

    Args:
        name: qualified module name in the model.
        module: the module (a BatchNorm after a conv or linear, or the conv/linear itself when no norm follows).
        size: number of neurons (output channels or features).
        producer: the conv/linear whose weights make these channels.
        group: index of the coupled group (channels coupled by residual additions share a group).
        depth: position in the traced dataflow (0 = nearest the input).
    """

    name: str
    module: nn.Module
    size: int
    producer: nn.Module
    producer_name: str
    group: int
    depth: int = 0

    @property
    def bias(self) -> Tensor | None:
        b = getattr(self.module, "bias", None)
        return b if isinstance(b, Tensor) else None


@dataclass
class Neurons:
    """All prunable neurons of a model, flattened: neuron ``i`` is channel ``channel[i]`` of
    ``carriers[carrier_of[i]]``; ``group_key[i]`` identifies its residual group (same group, same channel)."""

    carriers: list[Carrier]
    dg: tp.DependencyGraph = field(repr=False)
    classifier: nn.Linear | None = None

    def __post_init__(self) -> None:
        self.offsets = [0]
        for c in self.carriers:
            self.offsets.append(self.offsets[-1] + c.size)
        carrier, channel = [], []
        for i, c in enumerate(self.carriers):
            carrier += [i] * c.size
            channel += list(range(c.size))
        self.carrier_of = torch.tensor(carrier, dtype=torch.long)
        self.channel = torch.tensor(channel, dtype=torch.long)
        self.group_key = self.carrier_group[self.carrier_of] * 100_000 + self.channel

    @property
    def carrier_group(self) -> Tensor:
        return torch.tensor([c.group for c in self.carriers], dtype=torch.long)

    def __len__(self) -> int:
        return self.offsets[-1]

    def slice(self, k: int) -> slice:
        return slice(self.offsets[k], self.offsets[k + 1])

    def describe(self, i: int) -> dict[str, object]:
        c = self.carriers[int(self.carrier_of[i])]
        return {"layer": c.name, "index": int(self.channel[i]), "group": c.group}

    def expand_groups(self, selected: Tensor) -> Tensor:
        """A boolean selection widened to whole residual groups (a neuron pulls in its coupled neurons)."""
        keys = self.group_key[selected]
        return torch.isin(self.group_key, keys)

    def on(self, model: nn.Module) -> Neurons:
        """The same neurons on another instance of the architecture (a copy): carriers are matched by name."""
        modules = dict(model.named_modules())
        out = copy.copy(self)
        out.carriers = [dataclasses.replace(c, module=modules[c.name], producer=modules[c.producer_name])
                        for c in self.carriers]
        return out


def _unsupported(model: nn.Module) -> list[str]:
    out = []
    for name, m in model.named_modules():
        if len(list(m.children())) == 0 and not isinstance(m, _SUPPORTED_LEAVES):
            if any(True for _ in m.parameters(recurse=False)):
                out.append(f"{name} ({type(m).__name__})")
    return out


def find_neurons(model: nn.Module, example: Tensor) -> Neurons:
    """Trace ``model`` on ``example`` with Torch-Pruning and list its neuron carriers and residual groups.

    The last ``nn.Linear`` is taken to be the classifier: its outputs are logits, not neurons.

    Raises:
        OnpError: the model cannot be traced, has no classifier layer, or holds a parametrized layer this
            module does not know how to mask (the message names it).
    """
    odd = _unsupported(model)
    if odd:
        raise OnpError(f"cannot build the neuron graph: unsupported layer {odd[0]}; supported are conv, linear, "
                       "norms, activations, pooling")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise OnpError("the model has no nn.Linear classifier layer; ONP needs a classifier")
    classifier = linears[-1]
    was_training = model.training
    model.eval()
    try:
        with trainable(model):  # Torch-Pruning traces grad_fn, which a frozen model would not record
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        groups = list(dg.get_all_groups(ignored_layers=[classifier], root_module_types=[nn.Conv2d, nn.Linear]))
    except Exception as e:  # noqa: BLE001 - tracing failures of a user's model become one clear line
        raise OnpError(f"cannot trace the model into a neuron graph: {type(e).__name__}: {e}") from None
    finally:
        model.train(was_training)
    names = {m: n for n, m in model.named_modules()}
    order = _call_order(model, example)
    carriers: list[Carrier] = []
    for gi, group in enumerate(groups):
        producers = []
        for item in group.items:
            m = item.dep.target.module
            if isinstance(m, _WEIGHTED) and dg.is_out_channel_pruning_fn(item.dep.handler) and m is not classifier:
                producers.append(m)
        for prod in dict.fromkeys(producers):
            carrier = _carrier_of(dg, prod)
            size = prod.out_channels if isinstance(prod, nn.Conv2d) else prod.out_features
            carriers.append(Carrier(names[carrier], carrier, size, prod, names[prod], gi, order.get(prod, 0)))
    if not carriers:
        raise OnpError("the model has no prunable neurons (no conv or hidden linear layer before the classifier)")
    # depth: rank in the traced order, so features can say how deep a neuron sits
    ranked = sorted(range(len(carriers)), key=lambda i: carriers[i].depth)
    for r, i in enumerate(ranked):
        carriers[i].depth = r
    carriers.sort(key=lambda c: c.depth)
    return Neurons(carriers, dg, classifier)


def _call_order(model: nn.Module, example: Tensor) -> dict[nn.Module, int]:
    """The order in which weighted layers run in one forward pass (the dataflow depth)."""
    order: dict[nn.Module, int] = {}

    def record(mod: nn.Module, inp: object, out: object) -> None:
        order.setdefault(mod, len(order))

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, _WEIGHTED)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return order


def _carrier_of(dg: tp.DependencyGraph, producer: nn.Module) -> nn.Module:
    """The norm right after ``producer`` when it is the producer's only reader (its channels are the neurons),
    else ``producer``.

    A norm that shares the producer's output with another reader (the stem conv of a pre-activation ResNet
    feeds both the first block's BatchNorm and its identity shortcut) would leave the other path unmasked, so
    the producer itself carries the neurons then.
    """
    node = dg.module2node.get(producer)
    if node is not None:
        readers = {out.module for out in node.outputs}
        if len(readers) == 1:
            (reader,) = readers
            if isinstance(reader, _NORMS) and not isinstance(reader, (nn.LayerNorm, nn.GroupNorm)):
                return reader
    return producer


class NeuronMask:
    """Scale (and optionally perturb) neurons through forward hooks: ``out' = (out - b) * scale + b * shift``.

    ``b`` is the carrier's bias (BatchNorm beta, conv/linear bias, or 0). With ``scale = m`` and ``shift = m``
    the neuron's output is multiplied by ``m`` (``m = 0`` prunes it); ANP perturbs with ``scale = m + delta`` and
    ``shift = 1 + xi``.

    Args:
        neurons: the model's neurons.
        scale: (N,) multiplier per neuron (default ones).
        shift: (N,) bias multiplier per neuron (default: equal to ``scale``).
    """

    def __init__(self, neurons: Neurons, scale: Tensor | None = None, shift: Tensor | None = None) -> None:
        self.neurons = neurons
        n = len(neurons)
        self.scale = scale if scale is not None else torch.ones(n)
        self.shift = shift
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, k: int):  # noqa: ANN202
        sl = self.neurons.slice(k)
        bias = self.neurons.carriers[k].bias

        def hook(module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> Tensor:
            view = (1, -1) + (1,) * (out.dim() - 2)
            s = self.scale[sl].to(out.device).view(view)
            h = (self.shift if self.shift is not None else self.scale)[sl].to(out.device).view(view)
            if bias is None:
                return out * s
            b = bias.view(view)
            return (out - b) * s + b * h

        return hook

    def attach(self) -> NeuronMask:
        self.detach()
        for k, c in enumerate(self.neurons.carriers):
            self._handles.append(c.module.register_forward_hook(self._hook(k)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def applied(self) -> Iterator[NeuronMask]:
        self.attach()
        try:
            yield self
        finally:
            self.detach()


@torch.no_grad()
def fold_mask(neurons: Neurons, mask: Tensor, keep_bias: bool = False) -> None:
    """Write a 0/1 (or real) neuron mask into the weights, so the model needs no hooks afterwards.

    A norm carrier has its weight and bias scaled; a conv/linear carrier its output rows and bias. With
    ``keep_bias`` the bias stays (the neuron then outputs its bias, as ANP and RNP prune).
    """
    for k, c in enumerate(neurons.carriers):
        m = mask[neurons.slice(k)].to(dtype=torch.float32)
        mod = c.module
        w = getattr(mod, "weight", None)
        if isinstance(mod, _NORMS) and w is None:
            raise OnpError(f"cannot fold a mask into {c.name}: its norm has no affine weight")
        if w is not None:
            w.mul_(m.to(w.device).view(-1, *([1] * (w.dim() - 1))))
        if c.bias is not None and not keep_bias:
            c.bias.mul_(m.to(c.bias.device))
