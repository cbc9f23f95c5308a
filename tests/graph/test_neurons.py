"""Neurons: every registry model's carriers and residual groups, hook masks that switch off exactly one channel
(and everything it carries), folding, and the errors for models the graph cannot handle."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from onp.errors import OnpError
from onp.graph import NeuronMask, Neurons, find_neurons, fold_mask
from onp.models import create_model, list_models

K, SHAPE = 5, (3, 16, 16)


def build(name: str) -> tuple[nn.Module, Neurons, Tensor]:
    """A registry model with BatchNorm statistics taken from random images and random affine parameters, so
    biases are not zero and activations neither vanish nor explode."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = create_model(name, K, SHAPE[0], width=8)
    x = torch.rand(16, *SHAPE, generator=g)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
            m.bias.copy_(0.3 * torch.randn(m.num_features, generator=g))
            m.momentum = None  # cumulative average over the calibration pass
        model.train()(x)
    return model.eval(), find_neurons(model, x[:1]), x[:4]


def weighted(model: nn.Module, classifier: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not classifier]


def out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.Conv2d) else m.out_features


def capture(module: nn.Module, store: dict[str, Tensor]):  # noqa: ANN201
    return module.register_forward_hook(lambda mod, inp, out: store.__setitem__("out", out.detach().clone()))


def probe_neurons(neurons: Neurons) -> list[int]:
    """One neuron per carrier (a channel that moves with the carrier index), to keep the tests fast."""
    return [neurons.offsets[k] + (7 * k) % c.size for k, c in enumerate(neurons.carriers)]


# --- what find_neurons finds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_every_hidden_layer_carries_its_channels(name: str) -> None:
    model, neurons, _ = build(name)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert neurons.classifier is linears[-1]
    producers = [c.producer for c in neurons.carriers]
    assert len(set(map(id, producers))) == len(producers), "a layer is the producer of two carriers"
    assert set(map(id, producers)) == set(map(id, weighted(model, neurons.classifier)))
    assert len(neurons) > 0
    assert len(neurons) == sum(out_channels(m) for m in weighted(model, neurons.classifier))
    names = dict(model.named_modules())
    for c in neurons.carriers:
        assert c.size == out_channels(c.producer)
        assert names[c.name] is c.module and names[c.producer_name] is c.producer
        assert c.module is c.producer or (isinstance(c.module, nn.BatchNorm2d) and c.module.num_features == c.size)
    assert [c.depth for c in neurons.carriers] == list(range(len(neurons.carriers)))
    # neuron i is channel channel[i] of carrier carrier[i], in carrier order
    assert neurons.carrier_of.tolist() == sorted(neurons.carrier_of.tolist())
    for k, c in enumerate(neurons.carriers):
        assert neurons.channel[neurons.slice(k)].tolist() == list(range(c.size))


@pytest.mark.parametrize("name", list_models())
def test_carriers_follow_the_dataflow(name: str) -> None:
    model, neurons, x = build(name)
    order: list[nn.Module] = []
    handles = [c.producer.register_forward_hook(lambda m, i, o: order.append(m)) for c in neurons.carriers]
    with torch.no_grad():
        model(x[:1])
    for h in handles:
        h.remove()
    first = {id(m): order.index(m) for m in order}
    assert [first[id(c.producer)] for c in neurons.carriers] == sorted(first[id(c.producer)] for c in neurons.carriers)


def test_resnet18_residual_groups() -> None:
    _, neurons, _ = build("resnet18")
    group = {c.name: c.group for c in neurons.carriers}
    stem = group["net.bn1"]
    assert group["net.layer1.0.bn2"] == stem and group["net.layer1.1.bn2"] == stem
    assert group["net.layer1.0.bn1"] != stem and group["net.layer1.1.bn1"] not in (stem, group["net.layer1.0.bn1"])
    assert group["net.layer2.0.bn2"] == group["net.layer2.0.shortcut.1"] == group["net.layer2.1.bn2"] != stem
    # widening a selection to groups pulls in the same channel of the coupled carriers, and nothing else
    by_name = {c.name: k for k, c in enumerate(neurons.carriers)}
    sel = torch.zeros(len(neurons), dtype=torch.bool)
    sel[neurons.offsets[by_name["net.bn1"]] + 3] = True
    wide = neurons.expand_groups(sel)
    got = {(neurons.carriers[int(neurons.carrier_of[i])].name, int(neurons.channel[i])) for i in torch.nonzero(wide)}
    assert got == {("net.bn1", 3), ("net.layer1.0.bn2", 3), ("net.layer1.1.bn2", 3)}


def test_preact_stem_is_carried_by_its_conv() -> None:
    """The stem conv of a pre-activation ResNet feeds a BatchNorm *and* the identity shortcut: a mask at the
    BatchNorm would leave the shortcut path on, so the conv itself must carry the neurons."""
    _, neurons, _ = build("preact_resnet18")
    names = [c.name for c in neurons.carriers]
    assert "net.conv1" in names and "net.layer1.0.bn1" not in names


# --- masks ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_mask_zeroes_exactly_one_channel(name: str) -> None:
    model, neurons, x = build(name)
    for i in probe_neurons(neurons):
        c = neurons.carriers[int(neurons.carrier_of[i])]
        ch = int(neurons.channel[i])
        base: dict[str, Tensor] = {}
        h = capture(c.module, base)
        with torch.no_grad():
            model(x)
        h.remove()
        scale = torch.ones(len(neurons))
        scale[i] = 0.0
        masked: dict[str, Tensor] = {}
        with NeuronMask(neurons, scale=scale).applied(), torch.no_grad():
            h = capture(c.module, masked)  # registered after the mask's hook, so it sees the masked output
            model(x)
            h.remove()
        out, ref = masked["out"], base["out"]
        assert (out[:, ch] == 0).all(), f"{c.name}[{ch}] not zeroed"
        keep = torch.arange(c.size) != ch
        tol = 1e-5 * (1 + ref.abs().max().item())  # (out - b) * 1 + b rounds differently from out
        assert torch.allclose(out[:, keep], ref[:, keep], atol=tol), f"{c.name}: other channels changed"
    assert not any(m._forward_hooks for m in model.modules()), "the mask left hooks behind"


@pytest.mark.parametrize("name", list_models())
def test_masked_neuron_carries_nothing(name: str) -> None:
    """With a neuron's mask at zero, noise added to its producer's output channel no longer reaches the logits:
    every path from that channel goes through the carrier."""
    model, neurons, x = build(name)
    g = torch.Generator().manual_seed(1)
    for i in probe_neurons(neurons):
        c = neurons.carriers[int(neurons.carrier_of[i])]
        ch = int(neurons.channel[i])
        noise = torch.randn(x.shape[0], generator=g)  # one value per image, broadcast over space

        def jolt(mod: nn.Module, inp: object, out: Tensor, ch: int = ch, noise: Tensor = noise) -> Tensor:
            out = out.clone()
            view = (-1,) + (1,) * (out.dim() - 2)
            out[:, ch] = out[:, ch] + 5.0 * noise.view(view)
            return out

        with torch.no_grad():
            clean = model(x)
            h = c.producer.register_forward_hook(jolt)  # before the mask's hook when the carrier is the producer
            jolted = model(x)
            scale = torch.ones(len(neurons))
            scale[i] = 0.0
            mask = NeuronMask(neurons, scale=scale)
            with mask.applied():
                masked_jolted = model(x)
            h.remove()
            with mask.applied():
                masked = model(x)
        assert not torch.allclose(jolted, clean, atol=1e-4), f"{c.name}[{ch}]: the noise does not matter at all"
        assert torch.allclose(masked_jolted, masked, atol=1e-5), f"{c.name}[{ch}] still reaches the logits"


@pytest.mark.parametrize("name", list_models())
def test_fold_mask_matches_the_hook_mask(name: str) -> None:
    model, neurons, x = build(name)
    g = torch.Generator().manual_seed(2)
    scale = torch.rand(len(neurons), generator=g)
    scale[torch.rand(len(neurons), generator=g) < 0.2] = 0.0
    with NeuronMask(neurons, scale=scale).applied(), torch.no_grad():
        hooked = model(x)
    fold_mask(neurons, scale)
    with torch.no_grad():
        folded = model(x)
    assert torch.allclose(hooked, folded, atol=1e-5, rtol=1e-4)
    for k, c in enumerate(neurons.carriers):
        zero = scale[neurons.slice(k)] == 0
        assert (c.module.weight[zero] == 0).all()


# --- models the graph cannot handle ---------------------------------------------------------------------------
class Gain(nn.Module):
    """A parametrized leaf the neuron graph does not know."""

    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.g


class WithGain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gain = Gain()
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gain(self.conv(x)).mean((2, 3)))


def test_unsupported_parametrized_layer_is_named() -> None:
    with pytest.raises(OnpError) as e:
        find_neurons(WithGain(), torch.rand(1, *SHAPE))
    msg = str(e.value)
    assert "gain" in msg and "Gain" in msg and "\n" not in msg


def test_a_frozen_model_has_the_same_neurons() -> None:
    model = create_model("resnet18", 10, 3, width=4)
    live = find_neurons(model, torch.rand(1, *SHAPE))
    model.requires_grad_(False)
    frozen = find_neurons(model, torch.rand(1, *SHAPE))
    assert [(c.name, c.size) for c in frozen.carriers] == [(c.name, c.size) for c in live.carriers]
    assert not any(p.requires_grad for p in model.parameters())


def test_model_without_linear_classifier() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(OnpError, match="no nn.Linear"):
        find_neurons(model, torch.rand(1, *SHAPE))


def test_model_without_hidden_layers() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    with pytest.raises(OnpError, match="no prunable neurons"):
        find_neurons(model, torch.rand(1, *SHAPE))
