import pytest
import torch
from torch import nn

from onp.rl.probes import Probe, calibrate, probe_rate


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
    import onp.rl.probes as probes
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


def test_with_full_strength_adds_a_full_copy_of_each_weakened_probe() -> None:
    from onp.rl.probes import ProbeSet

    weak = Probe("uap", 1, delta=torch.ones(1, 4, 4), strength=0.3)
    whole = Probe("patch", 1, mask=torch.ones(1, 4, 4), pattern=torch.zeros(1, 4, 4))
    both = ProbeSet(1, [weak, whole], {}).with_full_strength()
    assert [(p.kind, p.strength) for p in both.probes] == [("uap", 0.3), ("patch", 1.0), ("uap", 1.0)]
    assert weak.strength == 0.3  # the calibrated probe itself is unchanged
    x = torch.zeros(2, 1, 4, 4)
    assert torch.allclose(both.probes[2].apply(x), torch.ones_like(x))
