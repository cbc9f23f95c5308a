"""Every registered defense, on a tiny small CNN trained briefly on digits: same architecture back, the input
model untouched, pruning only where the result says, reproducible for a seed; and the argument errors."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from onp.data import ImageDataset, create_dataset
from onp.defenses import (
    DEFENSES,
    DefenseContext,
    DefenseData,
    DefenseResult,
    create_defense,
    list_defenses,
)
from onp.defenses.pruning import ScorePruneDefense
from onp.errors import OnpError
from onp.models import create_model

K, WIDTH = 10, 8
ONP_FAST = {"anp_iterations": 3, "max_steps": 3, "window": 3, "fit_steps": 5, "refit_steps": 1, "images": 16,
            "families": "patch,additive", "prefix_points": 3}
# the smallest settings that still run each defense end to end; pruning defenses may use up to the whole
# clean-accuracy budget, so that they do prune something and the tests below check real pruning
FAST: dict[str, dict[str, Any]] = {
    "anp": {"iterations": 5, "max_drop": 1.0},
    "clp": {"selection": "bound", "max_drop": 1.0},
    "fineprune": {"finetune_epochs": 1, "max_drop": 1.0},
    "finetune": {"epochs": 1},
    "ibau": {"rounds": 1},
    "nad": {"epochs": 1, "teacher_epochs": 1},
    "onp": ONP_FAST,
    "onp_nognn": ONP_FAST,
    "onp_norl": ONP_FAST,
    "onp_greedy": ONP_FAST,
    "onp_mask": {**ONP_FAST, "mask_steps": 4},
    "rnp": {"unlearn_epochs": 2, "recover_epochs": 2, "max_drop": 1.0},
    "sau": {"rounds": 1},
    "ftsam": {"epochs": 1},
    "fst": {"epochs": 1},
    "btidbf": {"preround": 1, "nround": 2, "mround": 1, "uround": 1, "ul_round": 1, "gen_width": 4, "gen_blocks": 2},
}
PRUNING = [n for n in list_defenses() if DEFENSES.get(n).prunes]
FINE_TUNES_AFTER_PRUNING = {"fineprune"}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("small_cnn", K, 1, (0.3,), (0.38,), width=WIDTH)


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return create_dataset("digits", None, "train")


@pytest.fixture(scope="module")
def trained(digits: ImageDataset) -> nn.Module:
    """Two epochs on 400 digits: a model that has learned something, in a tenth of a second."""
    model = make_model()
    x, y = digits.float_images(slice(0, 400)), digits.labels[:400]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):
        for s in range(0, len(x), 32):
            loss = torch.nn.functional.cross_entropy(model(x[s:s + 32]), y[s:s + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def data(digits: ImageDataset) -> DefenseData:
    return DefenseData.from_dataset(digits.subset(torch.arange(400, 520)), seed=0)


def state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(name: str, model: nn.Module, data: DefenseData, seed: int = 0) -> DefenseResult:
    return create_defense(name, **FAST.get(name, {})).repair(model, data, DefenseContext(seed=seed))


_RUNS: dict[str, tuple[DefenseResult, dict[str, Tensor], nn.Module]] = {}


@pytest.fixture
def first_run(trained: nn.Module, data: DefenseData, request: pytest.FixtureRequest):  # noqa: ANN201
    """One run per defense, shared by the tests: (result, the input's weights before, the input model)."""
    name = request.node.callspec.params["name"]
    if name not in _RUNS:
        model = copy.deepcopy(trained)
        before = state(model)
        _RUNS[name] = (run(name, model, data), before, model)
    return _RUNS[name]


# --- every defense --------------------------------------------------------------------------------------------
def test_every_defense_has_fast_settings() -> None:
    assert set(list_defenses()) <= set(FAST), "give a new defense its tiny settings in FAST"


@pytest.mark.parametrize("name", list_defenses())
def test_returns_the_same_architecture(name: str, first_run) -> None:  # noqa: ANN001
    result, before, _ = first_run
    after = result.model.state_dict()
    assert list(after) == list(before)
    assert all(after[k].shape == before[k].shape and after[k].dtype == before[k].dtype for k in before)
    fresh = make_model()
    fresh.load_state_dict(after, strict=True)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), result.model.eval()(x), atol=1e-6)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in result.model.modules()), "hooks left behind"


@pytest.mark.parametrize("name", list_defenses())
def test_input_model_is_unchanged(name: str, first_run) -> None:  # noqa: ANN001
    result, before, model = first_run
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"{name} changed the input model: {changed[:5]}"
    assert result.model is not model
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()), "hooks left on the input"


@pytest.mark.parametrize("name", list_defenses())
def test_result_is_typed(name: str, first_run) -> None:  # noqa: ANN001
    """A pruning defense says what it pruned as tensors aligned with the input's neurons; every defense's own
    details are JSON."""
    result, _, _ = first_run
    json.dumps(result.details)
    p = result.pruning
    if not DEFENSES.get(name).prunes:
        assert p is None
        return
    assert p is not None and p.selected.dtype == torch.bool and p.selected.shape == (len(p.neurons),)
    assert p.ranking.dtype == torch.long and len(set(p.ranking.tolist())) == len(p.ranking)
    assert p.curve[0]["k"] == 0 and p.chosen in p.curve
    granularity = create_defense(name, **FAST.get(name, {})).params().get("granularity", "neuron")
    if granularity == "neuron":  # the pruned neurons are the chosen prefix of the ranking
        assert set(torch.nonzero(p.selected).flatten().tolist()) == set(p.ranking[:int(p.chosen["k"])].tolist())


# --- pruning defenses -----------------------------------------------------------------------------------------
def pruned_list(result: DefenseResult) -> list[dict[str, Any]]:
    p = result.pruning
    assert p is not None
    return [p.neurons.describe(int(i)) for i in torch.nonzero(p.selected).flatten()]


def pruned_channels(result: DefenseResult) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for p in pruned_list(result):
        out.setdefault(p["layer"], set()).add(int(p["index"]))
    return out


@pytest.mark.parametrize("name", PRUNING)
def test_pruning_touches_only_the_reported_neurons(name: str, first_run) -> None:  # noqa: ANN001
    result, before, _ = first_run
    pruned = pruned_list(result)
    assert result.pruning.num_pruned == len(pruned) == len({(p["layer"], p["index"]) for p in pruned})
    if isinstance(DEFENSES.get(name), type) and issubclass(DEFENSES.get(name), ScorePruneDefense):
        assert result.pruning.num_pruned > 0, "with the whole accuracy budget, a pruning defense prunes something"
    layers = pruned_channels(result)
    after = result.model.state_dict()
    # ANP and RNP prune as their papers' code does: the weight part is zeroed and the bias kept
    zeroed = ("weight",) if getattr(DEFENSES.get(name), "keep_bias", False) else ("weight", "bias")
    for layer, idx in layers.items():
        rows = torch.tensor(sorted(idx))
        for part in zeroed:
            if f"{layer}.{part}" in after:
                assert (after[f"{layer}.{part}"][rows] == 0).all(), f"{layer}.{part}{sorted(idx)} not zeroed"
    if name in FINE_TUNES_AFTER_PRUNING:
        return
    for key, old in before.items():
        layer, _, part = key.rpartition(".")
        new = after[key]
        if layer in layers and part in ("weight", "bias"):
            keep = torch.ones(len(old), dtype=torch.bool)
            keep[sorted(layers[layer])] = False
            assert torch.equal(new[keep], old[keep]), f"{key} changed outside the pruned channels"
        else:
            assert torch.equal(new, old), f"{key} changed but no neuron of it was pruned"


@pytest.mark.parametrize("name", list_defenses())
def test_deterministic_for_a_seed(name: str, first_run, trained: nn.Module, data: DefenseData) -> None:  # noqa: ANN001
    result, _, _ = first_run
    again = run(name, copy.deepcopy(trained), data)
    if result.pruning is not None:
        assert torch.equal(again.pruning.selected, result.pruning.selected)
    a, b = result.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), f"{name}: two runs with seed 0 gave different weights"


def test_onp_comparators_reuse_onp_evidence_and_search_as_without_it(trained: nn.Module, data: DefenseData,
                                                                    tmp_path) -> None:  # noqa: ANN001
    ctx = DefenseContext(seed=0, cache_dir=str(tmp_path))
    first = create_defense("onp", **ONP_FAST).repair(copy.deepcopy(trained), data, ctx)
    assert first.details["evidence_cached_seconds"] == 0.0
    assert len(list(tmp_path.glob("onp-evidence-*.json"))) == 1
    for name in ("onp_norl", "onp"):
        params = FAST[name]
        cached = create_defense(name, **params).repair(copy.deepcopy(trained), data, ctx)
        fresh = create_defense(name, **params).repair(copy.deepcopy(trained), data, DefenseContext(seed=0))
        assert cached.details["evidence_cached_seconds"] > 0
        assert torch.equal(cached.pruning.ranking, fresh.pruning.ranking)
        assert torch.equal(cached.pruning.selected, fresh.pruning.selected)
        assert cached.details["classes"] == fresh.details["classes"]
    # another seed draws another split and other masks: it does not reuse this entry
    create_defense("onp_norl", **FAST["onp_norl"]).repair(copy.deepcopy(trained), data,
                                                         DefenseContext(seed=1, cache_dir=str(tmp_path)))
    assert len(list(tmp_path.glob("onp-evidence-*.json"))) == 2


def test_clp_with_its_paper_threshold_does_not_read_the_clean_images(trained: nn.Module, data: DefenseData) -> None:
    """CLP is data-free: the same neurons are pruned whatever images and labels it is given."""
    g = torch.Generator().manual_seed(1)
    noise = dataclasses.replace(data, x_fit=torch.rand(data.x_fit.shape, generator=g), y_fit=data.y_fit.flip(0),
                                x_val=torch.rand(data.x_val.shape, generator=g), y_val=data.y_val.flip(0))
    a = create_defense("clp", threshold=1.0).repair(copy.deepcopy(trained), data, DefenseContext(seed=0))
    b = create_defense("clp", threshold=1.0).repair(copy.deepcopy(trained), noise, DefenseContext(seed=0))
    assert a.pruning.num_pruned and torch.equal(a.pruning.selected, b.pruning.selected)


# --- bad input ------------------------------------------------------------------------------------------------
def test_unknown_defense_lists_the_valid_names() -> None:
    with pytest.raises(OnpError) as e:
        create_defense("bogus")
    msg = str(e.value)
    assert "bogus" in msg and all(n in msg for n in list_defenses())


@pytest.mark.parametrize("name", list_defenses())
def test_unknown_parameter(name: str) -> None:
    with pytest.raises(OnpError, match=f"defense '{name}' has no parameter 'no_such_param'; valid: "):
        create_defense(name, no_such_param=1)


@pytest.mark.parametrize("name", list_defenses())
def test_every_setting_is_checked_by_its_type(name: str) -> None:
    """Each numeric or boolean setting refuses a string, NaN and a negative value, before any work."""
    from onp.registry import param_hints

    hints = param_hints(DEFENSES.get(name))
    numeric = [k for k, t in hints.items() if t in (int, float)]
    floats = [k for k, t in hints.items() if t is float]
    assert numeric and floats, name
    for key, value, message in ((numeric[0], "abc", "must be"), (floats[0], float("nan"), "finite"),
                                (numeric[0], -1, "not negative")):
        with pytest.raises(OnpError, match=message):
            create_defense(name, **{key: value})
    flags = [k for k, t in hints.items() if t is bool]
    for k in flags:
        with pytest.raises(OnpError, match="true or false"):
            create_defense(name, **{k: "maybe"})


@pytest.mark.parametrize("name", PRUNING)
def test_bad_granularity(name: str) -> None:
    with pytest.raises(OnpError, match="unknown granularity 'bogus'; valid: neuron, group"):
        create_defense(name, granularity="bogus")


@pytest.mark.parametrize(("param", "value", "message"), [
    ("search", "bogus", "unknown search 'bogus'; valid: agent, greedy, prefix, mask"),
    ("families", "patch,bogus", "unknown trigger family 'bogus'; valid: patch"),
    ("window", 0, "window must be at least 1, got 0"),
    ("rate", 1.5, r"rate must be in \(0, 1\], got 1.5")])
def test_bad_onp_setting(param: str, value: Any, message: str) -> None:
    with pytest.raises(OnpError, match=message):
        create_defense("onp", **{param: value})


@pytest.mark.parametrize("name", ["onp_nognn", "onp_greedy", "onp_norl", "onp_mask"])
def test_onp_comparators_refuse_to_change_what_they_fix(name: str) -> None:
    with pytest.raises(OnpError, match=f"defense '{name}' fixes"):
        create_defense(name, gnn=True, search="agent")


@pytest.mark.parametrize("name", [n for n in PRUNING if issubclass(DEFENSES.get(n), ScorePruneDefense)])
def test_bad_selection(name: str) -> None:
    with pytest.raises(OnpError, match="unknown selection 'bogus'; valid: bound, threshold"):
        create_defense(name, selection="bogus")


def test_fewer_images_than_classes(digits: ImageDataset) -> None:
    with pytest.raises(OnpError, match="9 images, fewer than the 10 classes"):
        DefenseData.from_dataset(digits.subset(torch.arange(9)))


def test_a_class_with_one_image(digits: ImageDataset) -> None:
    idx = torch.cat([torch.nonzero(digits.labels == c).flatten()[: 1 if c == 3 else 3] for c in range(K)])
    with pytest.raises(OnpError, match="class 3 has 1"):
        DefenseData.from_dataset(digits.subset(idx))


def test_defense_data_split(digits: ImageDataset) -> None:
    d = DefenseData.from_dataset(digits.subset(torch.arange(200)), val_fraction=0.2, seed=0)
    assert len(d.x_fit) + len(d.x_val) == 200 and len(d.x_val) == 40
    assert d.x_fit.dtype == torch.float32 and 0 <= d.x_all.min() and d.x_all.max() <= 1
    assert set(d.y_val.tolist()) == set(range(K)), "the held-out part has every class"


def test_selection_curve_stops_past_the_bound(trained: nn.Module, data: DefenseData) -> None:
    from onp.defenses.pruning import pruning_curve
    from onp.graph import find_neurons

    neurons = find_neurons(trained, data.x_fit[:1])
    accs = iter([0.9, 0.89, 0.85, 0.7, 0.95, 0.95])  # falls 20 points at the fourth point; would "recover" after

    def metric(m: nn.Module) -> dict[str, float]:
        return {"clean_acc": next(accs)}

    ranking = torch.arange(len(neurons))
    full = pruning_curve(trained, neurons, ranking, [0, 1, 2, 3, 4, 5], metric)
    assert [p["k"] for p in full] == [0, 1, 2, 3, 4, 5]
    accs = iter([0.9, 0.89, 0.85, 0.7, 0.95, 0.95])
    cut = pruning_curve(trained, neurons, ranking, [0, 1, 2, 3, 4, 5], metric, stop_below=0.12)
    assert [p["k"] for p in cut] == [0, 1, 2, 3]
