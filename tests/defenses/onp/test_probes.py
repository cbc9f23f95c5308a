import pytest
import torch
from torch import nn

from onp.defenses.onp.probes import Probe, calibrate, probe_rate


class Threshold(nn.Module):
    """Class 1 when the image's mean brightness exceeds the image's own 'threshold' pixel, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x[:, :, :, 1:].mean((1, 2, 3)) - x[:, 0, 0, 0]
        return torch.stack([-score, score], 1)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(200, 1, 4, 4)
    x[:, 0, 0, 0] = torch.linspace(0.01, 0.99, 200)  # images need different pushes to flip
    return x, torch.zeros(200, dtype=torch.long)


def test_calibrate_weakens_a_saturated_probe_to_the_rate() -> None:
    x, y = _data()
    delta = torch.ones(1, 4, 4)
    delta[0, 0, 0] = 0  # brightens the image, not its threshold pixel
    probe = Probe("uap", 1, delta=delta)
    assert probe_rate(Threshold(), x, y, probe, torch.device("cpu")) == 1.0
    calibrate(Threshold(), x, y, probe, torch.device("cpu"), rate=0.6, iterations=12)
    assert 0 < probe.strength < 1
    assert abs(probe_rate(Threshold(), x, y, probe, torch.device("cpu")) - 0.6) < 0.02


def test_calibrate_keeps_a_weak_probe_whole() -> None:
    x, y = _data()
    mask = torch.full((1, 4, 4), 0.3)
    mask[0, 0, 0] = 0
    probe = Probe("patch", 1, mask=mask, pattern=torch.ones(1, 4, 4))
    before = probe_rate(Threshold(), x, y, probe, torch.device("cpu"))
    assert before < 0.6
    calibrate(Threshold(), x, y, probe, torch.device("cpu"), rate=0.6)
    assert probe.strength == 1.0


def test_make_probes_calibrates_to_the_asked_rate_after_a_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """The candidate scan measures its own rates; the probes are still calibrated to ``rate`` (a scan variable
    once shadowed it, and the probes were calibrated to the last scanned class's rate instead)."""
    import onp.defenses.onp.probes as probes
    from onp.defenses.base import DefenseContext

    asked = []
    monkeypatch.setattr(probes, "universal_perturbation", lambda *a, **k: torch.zeros(1, 4, 4))
    monkeypatch.setattr(probes, "dominant_class", lambda *a, **k: (1, 0.5))
    monkeypatch.setattr(probes, "probe_rate", lambda *a, **k: 0.9)
    monkeypatch.setattr(probes, "invert_patch", lambda model, x, y, t, *a, **k: Probe(
        "patch", t, mask=torch.zeros(1, 4, 4), pattern=torch.zeros(1, 4, 4)))
    monkeypatch.setattr(probes, "calibrate", lambda model, x, y, p, device, rate: asked.append(rate) or p)
    x, y = _data()
    ps = probes.make_probes(Threshold(), x, y, 2, DefenseContext(), unlearned_predictions=[50, 50], rate=0.6)
    assert "scan_uap_0" in ps.rates and "scan_uap_1" in ps.rates
    assert asked == [0.6, 0.6]


def test_make_probes_with_a_forced_target_skips_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The oracle diagnostic's way in: a parameter, not a patched function. The probes aim at the given class
    and the estimate never runs."""
    import onp.defenses.onp.probes as probes
    from onp.defenses.base import DefenseContext

    def no_estimate(*a: object, **k: object) -> None:
        raise AssertionError("the target was given; nothing may estimate it")

    monkeypatch.setattr(probes, "estimate_target", no_estimate)
    x, y = _data()
    ps = probes.make_probes(Threshold(), x, y, 2, DefenseContext(), uap_steps=2, patch_steps=2, rate=None, target=1)
    assert ps.target == 1 and [p.target for p in ps.probes] == [1, 1]
    assert ps.rates["target_estimate"] == 1 and ps.rates["target_forced"] == 1


def test_with_full_strength_adds_a_full_copy_of_each_weakened_probe() -> None:
    from onp.defenses.onp.probes import ProbeSet

    weak = Probe("uap", 1, delta=torch.ones(1, 4, 4), strength=0.3)
    whole = Probe("patch", 1, mask=torch.ones(1, 4, 4), pattern=torch.zeros(1, 4, 4))
    both = ProbeSet(1, [weak, whole], {}).with_full_strength()
    assert [(p.kind, p.strength) for p in both.probes] == [("uap", 0.3), ("patch", 1.0), ("uap", 1.0)]
    assert weak.strength == 0.3  # the calibrated probe itself is unchanged
    x = torch.zeros(2, 1, 4, 4)
    assert torch.allclose(both.probes[2].apply(x), torch.ones_like(x))


def test_amplified_rates_follow_the_neuron_clp_flags() -> None:
    """Amplifying the neuron with the outlying Lipschitz bound sends images of class 0 to the class it feeds."""
    from onp.defenses.onp.probes import amplified_rates
    from onp.graph import find_neurons

    model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 0.0], [0.1, 0.1], [0.1, -0.1], [-0.1, 0.1]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
        model[2].bias.copy_(torch.tensor([2.5, 0.0]))  # class 1 when 3 * x0 > 2.5
    x = torch.stack([torch.linspace(0, 1, 101), torch.zeros(101)], 1)
    y = model(x).argmax(1)
    assert (y == 0).sum() > 80  # the clean labels are the model's own: most images are class 0
    rates = amplified_rates(model, find_neurons(model, x[:2]), x, y, 2, torch.device("cpu"), k=1, gain=4.0)
    # x0 in (2.5 / 12, 2.5 / 3) goes to class 1 when the neuron is multiplied by 4: about 3/4 of class 0
    assert 0.7 < rates[1] < 0.8
    assert rates[0] == 0.0


def test_a_strong_amplified_share_decides_the_estimate_without_a_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on LC: unlearning names class 0 with 80% (below the collapse), amplification class 1 with 70%."""
    import onp.defenses.onp.probes as probes
    from onp.defenses.base import DefenseContext

    def no_scan(*a: object, **k: object) -> None:
        raise AssertionError("the estimate scanned")

    monkeypatch.setattr(probes, "universal_perturbation", no_scan)
    x, y = _data()
    target, rates = probes.estimate_target(Threshold(), x, y, 2, DefenseContext(), unlearned_predictions=[80, 20],
                                           amplified=[0.1, 0.7])
    assert target == 1 and rates["amplified_class"] == 1 and rates["amplified_share"] == pytest.approx(0.7)
    # an unlearned collapse still decides first
    assert probes.estimate_target(Threshold(), x, y, 2, DefenseContext(), unlearned_predictions=[95, 5],
                                  amplified=[0.1, 0.7])[0] == 0


def test_a_weak_amplified_share_joins_the_candidates_and_the_score(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ``amplified_decides`` the amplified class is scanned as a candidate and its share is added."""
    import onp.defenses.onp.probes as probes
    from onp.defenses.base import DefenseContext

    monkeypatch.setattr(probes, "universal_perturbation", lambda *a, target=None, **k: torch.full((1, 4, 4), target
                                                                                               or 0.0))
    monkeypatch.setattr(probes, "dominant_class", lambda *a, **k: (0, 0.5))
    monkeypatch.setattr(probes, "probe_rate", lambda model, x, y, p, device: 0.5)  # every scan rate equal
    x, y = _data()
    target, rates = probes.estimate_target(Threshold(), x, y, 3, DefenseContext(), unlearned_predictions=[60, 0, 40],
                                           amplified=[0.0, 0.1, 0.3])
    assert {"scan_uap_0", "scan_uap_2"} <= rates.keys()
    assert target == 2  # 0.4 + 0.3 + 0.5 beats 0.6 + 0.0 + 0.5


def test_a_low_resolution_perturbation_is_smooth_bounded_and_works() -> None:
    """At resolution 1 the perturbation is one value per channel: here a brightening the model reads as class 1."""
    from onp.defenses.base import DefenseContext
    from onp.defenses.onp.probes import universal_perturbation

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.zeros(16), torch.ones(16) / 16]))
        model[1].bias.copy_(torch.tensor([0.0, -0.5]))  # class 1 when the mean pixel exceeds 0.5
    x = torch.rand(200, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.8
    y = model(x).argmax(1)
    assert (y == 0).float().mean() > 0.9
    delta = universal_perturbation(model, x, y, DefenseContext(), eps=0.3, steps=100, target=1, resolution=1)
    assert delta.shape == (1, 4, 4)
    assert torch.allclose(delta, delta[:, :1, :1].expand_as(delta))
    assert delta.abs().max() <= 0.3 + 1e-6
    assert probe_rate(model, x, y, Probe("uap", 1, delta=delta), torch.device("cpu")) > 0.9


def test_make_probes_builds_the_probe_at_its_own_bound_and_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    """The estimate's scan keeps ``eps`` at full resolution; only the targeted probe takes ``probe_*``."""
    import onp.defenses.onp.probes as probes
    from onp.defenses.base import DefenseContext

    calls = []

    def record(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: DefenseContext, eps: float, steps: int,
               target: int | None = None, resolution: int | None = None) -> torch.Tensor:
        calls.append((eps, steps, target, resolution))
        return torch.zeros(1, 4, 4)

    monkeypatch.setattr(probes, "universal_perturbation", record)
    monkeypatch.setattr(probes, "invert_patch", lambda model, x, y, t, *a, **k: Probe(
        "patch", t, mask=torch.zeros(1, 4, 4), pattern=torch.zeros(1, 4, 4)))
    x, y = _data()
    probes.make_probes(Threshold(), x, y, 2, DefenseContext(), eps=0.03, unlearned_predictions=[50, 50], rate=None,
                       probe_eps=0.1, probe_resolution=2)
    assert calls[:-1] and all(c[0] == 0.03 and c[3] is None for c in calls[:-1])  # the estimate's
    assert calls[-1] == (0.1, 60, calls[-1][2], 2)  # the probe
