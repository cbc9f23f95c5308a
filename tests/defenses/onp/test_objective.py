"""The adaptive objective on a planted network where a trigger reaches the target through two redundant neurons:
pruning the one a stale trigger used clears the stale trigger but not the re-fitted one, so only the set that
cuts both paths scores well."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from onp.defenses.onp.objective import AdaptiveObjective, ObjectiveConfig
from onp.defenses.onp.triggers import Additive
from onp.graph import find_neurons

A, B, C = 0, 1, 2  # the hidden units: the easy path, the redundant path, a clean unit


def planted() -> nn.Module:
    """Images in [0, 0.1]; class 1 when unit A (pixel 0 above about 0.2) or unit B (pixel 15 above about 0.6)
    fires, else class 0. An additive trigger bounded by 0.8 can fire either; after two steps it fires A only."""
    hidden, out = nn.Linear(16, 3), nn.Linear(3, 2)
    with torch.no_grad():
        hidden.weight.zero_()
        hidden.weight[A, 0], hidden.weight[B, 15], hidden.weight[C, 5] = 20.0, 20.0, 1.0
        hidden.bias.copy_(torch.tensor([-4.0, -12.0, 0.0]))
        out.weight.zero_()
        out.weight[1, A], out.weight[1, B] = 5.0, 5.0
        out.bias.copy_(torch.tensor([0.0, -2.0]))
    return nn.Sequential(nn.Flatten(), hidden, nn.LeakyReLU(0.1), out).eval()


@pytest.fixture
def objective() -> AdaptiveObjective:
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(200, 1, 4, 4, generator=g)
    y = torch.zeros(200, dtype=torch.long)
    y[:100] = 1  # labels only decide which images a trigger toward 1 is scored on (the class-0 half)
    model = planted()
    cfg = ObjectiveConfig(fit_steps=2, refit_steps=8, images=64, rate=None)  # full strength: a 0-or-1 toy
    return AdaptiveObjective(model, find_neurons(model, x[:1]), x, y, {"additive": Additive(0.8)}, {1: 1.0}, cfg)


def sel(*units: int) -> torch.Tensor:
    s = torch.zeros(3, dtype=torch.bool)
    s[list(units)] = True
    return s


def test_the_stale_trigger_rides_the_easy_path_only(objective: AdaptiveObjective) -> None:
    assert objective.metrics(sel(), refit=False)["adversary"] == 1.0
    assert objective.metrics(sel(A), refit=False)["adversary"] == 0.0, "pruning A clears the stale trigger"
    assert objective.metrics(sel(B), refit=False)["adversary"] == 1.0


def test_a_set_that_clears_only_the_stale_trigger_scores_worse(objective: AdaptiveObjective) -> None:
    stale_a, _ = objective(sel(A), refit=False)
    stale_ab, _ = objective(sel(A, B), refit=False)
    assert stale_a > stale_ab, "without re-fitting, the smaller set looks better (the size term decides)"
    adaptive_a, m_a = objective(sel(A))
    assert m_a["adversary"] == 1.0, "re-fitted against the pruned network, the trigger finds B"
    adaptive_ab, m_ab = objective(sel(A, B))
    assert m_ab["adversary"] == 0.0
    assert adaptive_ab > adaptive_a


def test_weights_scale_a_class_and_metrics_name_each_trigger(objective: AdaptiveObjective) -> None:
    m = objective.metrics(sel(), refit=False)
    assert set(k for k in m if k.startswith("success/")) == {"success/additive/1"}
    objective.weights[1] = 0.5
    assert objective.metrics(sel(), refit=False)["adversary"] == 0.5
    assert objective.acc0 == 0.5 and m["clean_acc"] == 0.5  # every image is predicted class 0


def test_greedy_cuts_both_paths_and_keeps_the_clean_unit(objective: AdaptiveObjective) -> None:
    from onp.defenses.onp.search import greedy, removal_scores

    first = removal_scores(objective, sel())
    assert int(first.argmax()) == A and first[C] == 0, "the stale trigger rides A; C does not reach the logits"
    result = greedy(objective, per_step=1, max_steps=3)
    assert result.selected.tolist() == [True, True, False]
    assert [h["adversary"] for h in result.history[:3]] == [1.0, 1.0, 0.0], "A alone is not enough once re-fitted"
    assert result.value == max(h["value"] for h in result.history)
    assert float(removal_scores(objective, sel(A, B))[A]) == -float("inf"), "pruned neurons are not offered again"


def test_mean_aggregate_and_a_bad_one(objective: AdaptiveObjective) -> None:
    from onp.errors import OnpError

    objective.weights[1] = 0.5
    objective.cfg.aggregate = "mean"
    assert objective.metrics(sel(), refit=False)["adversary"] == 1.0, "a weighted mean of one trigger is its success"
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(10, 1, 4, 4, generator=g), torch.arange(10) % 2
    with pytest.raises(OnpError, match="unknown aggregate 'sum'; valid: max, mean"):
        AdaptiveObjective(planted(), find_neurons(planted(), x[:1]), x, y, {"additive": Additive(0.8)}, {1: 1.0},
                          ObjectiveConfig(aggregate="sum"))


def test_costly_neurons_are_not_offered_above_the_cost_quantile(objective: AdaptiveObjective) -> None:
    from onp.defenses.onp.search import removal_scores

    every = removal_scores(objective, sel())
    cheap = removal_scores(objective, sel(), cost_quantile=0.0)
    assert torch.isfinite(every).all()
    assert torch.isfinite(cheap).sum() >= 1 and (cheap[torch.isfinite(cheap)] == every[torch.isfinite(cheap)]).all()


def test_ranked_greedy_skips_a_candidate_that_does_not_help(objective: AdaptiveObjective) -> None:
    """Given the ranking C, A, B (C reaches no logit) and triggers that are not re-fitted (they ride A), it tries C
    and A and takes A, where a prefix of the ranking would have pruned C first; the best set is A alone."""
    from onp.defenses.onp.search import ranked_greedy

    objective.cfg.refit_steps = 0
    result = ranked_greedy(objective, torch.tensor([C, A, B]), window=2, max_steps=2)
    assert [s.nonzero().flatten().tolist() for s in result.sets] == [[], [A], [A, C]]
    assert result.selected.tolist() == [True, False, False]


def test_a_base_warm_start_scores_a_set_the_same_whatever_came_before(objective: AdaptiveObjective) -> None:
    """From the unpruned network's trigger every time, with each re-fit's batches drawn afresh from its own seed, a
    set's score and its re-fitted trigger do not depend on what was scored before (the last-trigger warm start
    accumulates optimization across scores)."""
    from onp.errors import OnpError

    objective.cfg.warm = "base"
    objective.cfg.images = 32  # fewer draws than images: a shared generator would give each re-fit other batches
    first = objective.metrics(sel(A))
    fitted = {k: v.detach().clone() for k, v in objective.triggers[0].params.items()}
    objective.metrics(sel(B))
    objective.metrics(sel(), refit=False)
    objective.generator.manual_seed(123)  # whatever the shared generator has drawn
    assert objective.metrics(sel(A)) == first
    assert all(torch.equal(fitted[k], v) for k, v in objective.triggers[0].params.items())
    assert first["success/additive/1"] == 1.0, "8 steps from the base trigger still find B"
    with pytest.raises(OnpError, match="unknown warm start 'first'; valid: last, base"):
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(10, 1, 4, 4, generator=g), torch.arange(10) % 2
        AdaptiveObjective(planted(), find_neurons(planted(), x[:1]), x, y, {"additive": Additive(0.8)}, {1: 1.0},
                          ObjectiveConfig(warm="first"))


def test_a_mask_learned_against_the_adapting_trigger_cuts_both_paths(objective: AdaptiveObjective) -> None:
    """The continuous comparator: as the mask closes the path the trigger rides, the trigger (re-fitted one step
    per mask step) moves to the other, so both paths' masks fall below the clean unit's."""
    from onp.defenses.onp.search import learn_mask

    m = learn_mask(objective, steps=60, lr=0.1, sparsity=0.1, clean_images=64)
    assert m[A] < 0.5 and m[B] < 0.5 and m[C] > 0.5, m


def test_full_strength_counts_a_calibrated_trigger_by_both_its_rates(objective: AdaptiveObjective) -> None:
    from onp.defenses.onp.triggers import success

    t = objective.triggers[0]
    t.strength = 0.3
    images = objective.others[1]
    t.strength = 1.0
    strong = success(objective.model, t, images, objective.device)
    t.strength = 0.3
    weak = success(objective.model, t, images, objective.device)
    assert weak < strong, "the toy trigger is weaker at 0.3"
    assert objective.metrics(sel(), refit=False)["success/additive/1"] == weak
    objective.cfg.full = True
    assert objective.metrics(sel(), refit=False)["success/additive/1"] == (weak + strong) / 2
    assert t.strength == 0.3, "the calibrated strength is kept"


def test_triggers_too_weak_to_register_a_pruning_are_dropped() -> None:
    g = torch.Generator().manual_seed(0)
    x = 0.1 * torch.rand(200, 1, 4, 4, generator=g)
    y = torch.zeros(200, dtype=torch.long)
    y[:100] = 1
    model = planted()
    families = {"weak": Additive(0.01, name="weak"), "strong": Additive(0.8, name="strong")}
    obj = AdaptiveObjective(model, find_neurons(model, x[:1]), x, y, families, {1: 1.0},
                            ObjectiveConfig(fit_steps=2, rate=None, min_success=0.2))
    assert [t.family.name for t in obj.triggers] == ["strong"] and [t.family.name for t in obj.dropped] == ["weak"]
    none = AdaptiveObjective(model, find_neurons(model, x[:1]), x, y, families, {1: 1.0},
                             ObjectiveConfig(fit_steps=2, rate=None, min_success=1.01))
    assert none.triggers == [] and none.metrics(sel())["adversary"] == 0.0


def test_a_trial_scores_a_share_of_the_images(objective: AdaptiveObjective) -> None:
    objective.cfg.trial_share = 0.25
    objective.x, objective.y = objective.x.clone(), objective.y.clone()
    objective.y[50:] = 1 - objective.y[50:]  # the first quarter keeps its labels; the rest are flipped
    full = objective.metrics(sel(), refit=True)["clean_acc"]
    trial = objective.metrics(sel(), refit=False)["clean_acc"]
    assert trial == accuracy_of(objective, 50) and full == accuracy_of(objective, 200)


def accuracy_of(objective: AdaptiveObjective, n: int) -> float:
    from onp.evaluate import accuracy

    return accuracy(objective.model, objective.x[:n], objective.y[:n], objective.device)


def test_mirror_counts_the_accuracy_on_the_mirror_images_as_well() -> None:
    """A model that tells the left column from the right is right on every image and wrong on every mirror image."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(100, 1, 4, 4, generator=g)
    y = (x[:, 0, 0, 3] > x[:, 0, 0, 0]).long()
    hidden, out = nn.Linear(16, 2), nn.Linear(2, 2)
    with torch.no_grad():
        hidden.weight.zero_()
        hidden.bias.zero_()
        hidden.weight[0, 0], hidden.weight[0, 3], hidden.weight[1, 0], hidden.weight[1, 3] = 1.0, -1.0, -1.0, 1.0
        out.weight.copy_(torch.eye(2))
        out.bias.zero_()
    model = nn.Sequential(nn.Flatten(), hidden, nn.ReLU(), out).eval()
    neurons = find_neurons(model, x[:1])
    plain = AdaptiveObjective(model, neurons, x, y, {}, {1: 1.0}, ObjectiveConfig())
    mirrored = AdaptiveObjective(model, neurons, x, y, {}, {1: 1.0}, ObjectiveConfig(mirror=True))
    assert plain.acc0 == 1.0 and mirrored.acc0 == 0.5
