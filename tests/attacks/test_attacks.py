"""Attacks: every registered attack poisons exactly what it says and nothing else, reproducibly; argument errors;
each trigger's own formula."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from onp.attacks import ATTACKS, Attack, PoisonedDataset, create_attack, list_attacks
from onp.data import ImageDataset
from onp.errors import OnpError
from onp.models import create_model
from onp.utils.io import load_tensors, save_tensors

K, PER_CLASS, SHAPE, RATE, TARGET = 4, 50, (3, 16, 16), 0.1, 1
N = K * PER_CLASS
CPU = torch.device("cpu")

# the smallest settings that still exercise each attack's whole preparation
TINY: dict[str, dict] = {
    "lc": {"steps": 2},
    "trojannn": {"steps": 5},
    "inputaware": {"mask_epochs": 1, "gen_epochs": 1, "batch_size": 16, "gen_width": 4},
}
DIRTY = [n for n in list_attacks() if not ATTACKS.get(n).clean_label]
CLEAN_LABEL = [n for n in list_attacks() if ATTACKS.get(n).clean_label]
NO_ALL_TO_ALL = [n for n in list_attacks() if not ATTACKS.get(n).supports_all_to_all]


def make_data() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, *SHAPE), dtype=torch.uint8, generator=g)
    labels = torch.arange(K).repeat_interleave(PER_CLASS)[torch.randperm(N, generator=g)]
    return ImageDataset(images, labels, [f"c{i}" for i in range(K)], (0.5,) * 3, (0.25,) * 3, name="synthetic")


DATA = make_data()


def build(name: str, seed: int = 0, **kw) -> Attack:
    params = {"target_label": TARGET, "poison_rate": RATE, "seed": seed, **TINY.get(name, {}), **kw}
    return create_attack(name, K, SHAPE, **params)


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    """An untrained small CNN; each attack gets its own copy (some attacks switch it to eval mode)."""
    torch.manual_seed(0)
    return create_model("small_cnn", K, 3, [0.5] * 3, [0.25] * 3, width=4)


def run(attack: Attack, reference: torch.nn.Module, data: ImageDataset = DATA) -> PoisonedDataset:
    if attack.needs_reference:
        attack.prepare(data, copy.deepcopy(reference), CPU)
    return attack.poison(data)


@pytest.fixture(scope="module")
def poisoned(reference: torch.nn.Module) -> Callable[[str, int], tuple[Attack, PoisonedDataset]]:
    """(attack, poisoned set) for ``name`` and ``seed``, built once per module."""
    cache: dict[tuple[str, int], tuple[Attack, PoisonedDataset]] = {}

    def get(name: str, seed: int = 0) -> tuple[Attack, PoisonedDataset]:
        if (name, seed) not in cache:
            attack = build(name, seed)
            cache[(name, seed)] = (attack, run(attack, reference))
        return cache[(name, seed)]

    return get


# --- every attack ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_attacks())
def test_poisons_exactly_the_rate(name: str, poisoned) -> None:
    attack, pd = poisoned(name)
    assert len(pd) == N
    if attack.clean_label:  # a fraction of the target class (50 images here)
        assert len(pd.poison_idx) == round(RATE * int((DATA.labels == TARGET).sum())) == 5
    else:
        assert len(pd.poison_idx) == round(RATE * N) == 20
    assert torch.equal(pd.poison_idx, pd.poison_idx.unique())  # sorted, no repeats
    assert len(set(pd.poison_idx.tolist()) & set(pd.cross_idx.tolist())) == 0
    assert torch.equal(pd.mod_idx, torch.cat([pd.poison_idx, pd.cross_idx]).sort().values)
    assert pd.mod_images.shape == (len(pd.mod_idx), *SHAPE)
    assert len(pd.cross_idx) == round(attack.cross_ratio * len(pd.poison_idx))


@pytest.mark.parametrize("name", list_attacks())
def test_poisoned_labels(name: str, poisoned) -> None:
    attack, pd = poisoned(name)
    _, y = pd.batch(torch.arange(N))
    clean_y = DATA.labels[pd.poison_idx]
    if attack.clean_label:
        assert (clean_y == TARGET).all(), "clean-label attacks poison only the target class"
        assert torch.equal(y[pd.poison_idx], clean_y)
    else:
        assert (clean_y != TARGET).all(), "all-to-one attacks poison only the other classes"
        assert (y[pd.poison_idx] == TARGET).all()
    assert torch.equal(y[pd.cross_idx], DATA.labels[pd.cross_idx]), "cross samples keep their labels"


@pytest.mark.parametrize("name", list_attacks())
def test_nothing_else_changes(name: str, poisoned) -> None:
    _, pd = poisoned(name)
    x, y = pd.batch(torch.arange(N))
    clean = DATA.float_images()
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[pd.mod_idx] = False
    assert untouched.sum() == N - len(pd.mod_idx)
    assert torch.equal(x[untouched], clean[untouched])
    assert torch.equal(y[untouched], DATA.labels[untouched])
    # batch() answers any order and any subset the same way
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(3))[:37]
    xs, ys = pd.batch(idx)
    assert torch.equal(xs, x[idx]) and torch.equal(ys, y[idx])


@pytest.mark.parametrize("name", list_attacks())
def test_poisoned_images_carry_the_trigger(name: str, poisoned) -> None:
    attack, pd = poisoned(name)
    x, _ = pd.batch(torch.arange(N))
    clean = DATA.float_images()
    p = pd.poison_idx
    diff = (x[p] - clean[p]).abs().flatten(1).amax(1)
    assert (diff > 0).all(), "every poisoned image is modified"
    assert x.min() >= 0 and x.max() <= 1
    if type(attack).poison_images is Attack.poison_images:  # training-time poison == the test-time trigger
        assert torch.allclose(x[p], attack.apply(clean[p]).clamp(0, 1), atol=1e-6)
    if len(pd.cross_idx):
        c = pd.cross_idx
        assert ((x[c] - clean[c]).abs().flatten(1).amax(1) > 0).all(), "cross images are modified"


@pytest.mark.parametrize("name", list_attacks())
def test_same_seed_same_poison_other_seed_other_indices(name: str, poisoned, reference) -> None:
    _, a = poisoned(name, 0)
    _, c = poisoned(name, 1)
    attack = build(name, 0)
    b = run(attack, reference)  # built again from scratch
    for field in ("poison_idx", "cross_idx", "mod_idx", "labels"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert torch.equal(a.mod_images, b.mod_images)
    assert not torch.equal(a.poison_idx, c.poison_idx)


@pytest.mark.parametrize("name", list_attacks())
def test_apply_keeps_shape_and_range(name: str, poisoned) -> None:
    attack, _ = poisoned(name)
    x = torch.cat([DATA.float_images(slice(0, 6)), torch.zeros(1, *SHAPE), torch.ones(1, *SHAPE)])
    before = x.clone()
    out = attack.apply(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(x, before), "apply() does not modify its input"
    assert not torch.equal(out, x)


@pytest.mark.parametrize("name", list_attacks())
def test_trigger_state_round_trip(name: str, poisoned, tmp_path: Path) -> None:
    attack, _ = poisoned(name)
    state = attack.trigger_state()
    if state:  # as save_model does: through a safetensors file
        save_tensors(tmp_path / "trigger.safetensors", state)
        state = load_tensors(tmp_path / "trigger.safetensors")
    fresh = build(name, seed=123)  # a different seed, so a seed-drawn trigger differs until loaded
    fresh.load_trigger_state(state)
    x = DATA.float_images(slice(0, 8))
    assert torch.equal(fresh.apply(x), attack.apply(x))


# --- argument checks ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_attacks())
@pytest.mark.parametrize("rate", [0, -0.1, 1.5])
def test_poison_rate_out_of_range(name: str, rate: float) -> None:
    with pytest.raises(OnpError, match=r"\(0, 1\]"):
        build(name, poison_rate=rate)


@pytest.mark.parametrize("name", list_attacks())
def test_target_out_of_range(name: str) -> None:
    with pytest.raises(OnpError, match="out of range"):
        build(name, target_label=K)
    with pytest.raises(OnpError, match="out of range"):
        build(name, target_label=-1)


@pytest.mark.parametrize("name", NO_ALL_TO_ALL)
def test_clean_label_attacks_reject_all_to_all(name: str) -> None:
    with pytest.raises(OnpError, match="all-to-all"):
        build(name, all_to_all=True)


def test_clean_label_attacks_have_no_all_to_all() -> None:
    assert set(CLEAN_LABEL) <= set(NO_ALL_TO_ALL) and CLEAN_LABEL


@pytest.mark.parametrize("name", CLEAN_LABEL)
def test_clean_label_rate_counts_the_target_class(name: str, reference) -> None:
    pd = run(build(name, poison_rate=1.0), reference)
    assert torch.equal(pd.poison_idx, torch.nonzero(DATA.labels == TARGET).flatten())  # the whole class
    with pytest.raises(OnpError, match="no sample of a 50-image target class"):
        run(build(name, poison_rate=0.005), reference)


def test_rate_that_poisons_nothing() -> None:
    with pytest.raises(OnpError, match="poisons no sample"):
        build("badnets", poison_rate=0.001).poison(DATA)


def test_unknown_attack_lists_valid_names() -> None:
    with pytest.raises(OnpError) as e:
        create_attack("badnet", K, SHAPE)
    for name in list_attacks():
        assert name in str(e.value)


def test_unknown_parameter() -> None:
    with pytest.raises(OnpError, match="nonsense"):
        create_attack("badnets", K, SHAPE, nonsense=1)


@pytest.mark.parametrize("name", [n for n in list_attacks() if ATTACKS.get(n).needs_reference])
def test_reference_is_required(name: str) -> None:
    with pytest.raises(OnpError, match="reference"):
        build(name).prepare(DATA, None, CPU)


# --- all-to-all ---------------------------------------------------------------------------------------------------
def test_badnets_all_to_all() -> None:
    attack = build("badnets", all_to_all=True)
    pd = attack.poison(DATA)
    p = pd.poison_idx
    assert len(p) == 20
    assert torch.equal(pd.labels[p], (DATA.labels[p] + 1) % K)
    assert attack.asr_mask(DATA.labels).all()
    assert torch.equal(attack.target_of(torch.arange(K)), torch.tensor([1, 2, 3, 0]))


def test_all_to_all_may_poison_every_class() -> None:
    pd = build("badnets", all_to_all=True, poison_rate=1.0).poison(DATA)
    assert torch.equal(pd.poison_idx, torch.arange(N))


# --- each trigger's formula ---------------------------------------------------------------------------------------
def test_badnets_sets_exactly_the_bottom_right_patch() -> None:
    x = DATA.float_images(slice(0, 4))
    attack = build("badnets")
    assert attack.patch_size == 2  # 3 at 32x32, scaled to 16x16
    expected = x.clone()
    expected[..., -2:, -2:] = 1.0
    assert torch.equal(attack.apply(x), expected)

    attack = build("badnets", patch_size=3, value=0.0, margin=1)
    expected = x.clone()
    expected[..., 12:15, 12:15] = 0.0
    assert torch.equal(attack.apply(x), expected)


def test_blended_is_a_convex_mix() -> None:
    attack = build("blended", alpha=0.3)
    pattern = attack.trigger_state()["pattern"]
    assert pattern.shape == SHAPE and pattern.min() >= 0 and pattern.max() <= 1
    x = DATA.float_images(slice(0, 4))
    assert torch.allclose(attack.apply(x), 0.7 * x + 0.3 * pattern, atol=1e-6)
    with pytest.raises(OnpError, match="alpha"):
        build("blended", alpha=0)


def test_sig_adds_the_sinusoid() -> None:
    attack = build("sig")
    x = torch.full((2, *SHAPE), 0.5)  # mid-grey: nothing is clipped
    out = attack.apply(x)
    w = SHAPE[2]
    col = 3
    expected = 0.5 + (20 / 255) * math.sin(2 * math.pi * col * 6 / w)
    assert torch.allclose(out[..., :, col], torch.full_like(out[..., :, col], expected), atol=1e-6)
    signal = (out - x)[0, 0, 0]  # the same horizontal signal on every row and channel
    assert torch.allclose(out - x, signal.expand_as(out), atol=1e-6)
    assert signal[0].abs() < 1e-6 and signal.abs().max() <= 20 / 255 + 1e-6


def test_sig_test_time_signal_may_be_stronger_than_the_training_one() -> None:
    attack = build("sig", test_delta=40 / 255)
    x = torch.full((2, *SHAPE), 0.5)
    train_signal = attack.poison_images(x, torch.arange(2)) - x
    test_signal = attack.apply(x) - x
    assert torch.allclose(test_signal, 2 * train_signal, atol=1e-6)
    assert train_signal.abs().max() <= 20 / 255 + 1e-6
    poisoned = attack.poison(DATA)  # the training set carries the weaker signal
    i = poisoned.poison_idx[0]
    diff = poisoned.batch(i[None])[0] - DATA.float_images(i[None])
    assert diff.abs().max() <= 20 / 255 + 1 / 255


def test_wanet_warp_is_fixed_and_identity_at_zero_strength() -> None:
    x = DATA.float_images(slice(0, 4))
    attack = build("wanet")
    out = attack.apply(x)
    assert torch.equal(attack.apply(x), out), "the same warp every time"
    assert torch.allclose(attack.apply(x[1:2]), out[1:2], atol=1e-6), "per image, not per batch"
    assert (out - x).abs().max() > 0.05
    assert torch.equal(build("wanet").apply(x), out), "the grid is drawn from the seed"
    assert not torch.equal(build("wanet", seed=1).apply(x), out)
    identity = build("wanet", s=0.0)
    assert torch.allclose(identity.apply(x), x, atol=1e-5)


@pytest.mark.parametrize("dithering", [True, False])
def test_bpp_quantizes(dithering: bool) -> None:
    levels = 4
    attack = build("bpp", squeeze_num=levels, dithering=dithering)
    out = attack.apply(DATA.float_images(slice(0, 8)))
    grid = torch.arange(levels, dtype=torch.float32) / (levels - 1)
    for c in range(SHAPE[0]):
        values = out[:, c].unique()
        assert len(values) <= levels
        assert torch.isclose(values[:, None], grid[None], atol=1e-6).any(1).all(), values


def test_inputaware_diversity_has_a_finite_gradient_when_two_outputs_coincide() -> None:
    from onp.attacks.inputaware import _diversity

    x1, x2 = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    g = torch.zeros(4, 1, 8, 8, requires_grad=True)  # a saturated mask generator: every mask is all zeros
    h = torch.zeros(4, 1, 8, 8, requires_grad=True)
    _diversity(x1, x2, g, h).backward()
    assert torch.isfinite(g.grad).all() and torch.isfinite(h.grad).all()


def test_a_trigger_that_yields_non_finite_images_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    attack = build("badnets")
    monkeypatch.setattr(attack, "apply", lambda x: torch.full_like(x, float("nan")))
    with pytest.raises(OnpError, match="non-finite"):
        attack.poison(DATA)
