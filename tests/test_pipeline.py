"""defend(): the one sequence behind `onp defend`, `onp repair` and a benchmark cell, and its typed outcome."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from onp.attacks import create_attack
from onp.data import ImageDataset, create_dataset
from onp.defenses import create_defense
from onp.evaluate import accuracy, evaluate
from onp.models import create_model
from onp.pipeline import defend


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return create_dataset("digits", None, "train")


@pytest.fixture(scope="module")
def model(digits: ImageDataset) -> nn.Module:
    torch.manual_seed(0)
    m = create_model("small_cnn", 10, 1, width=8)
    x, y = digits.float_images(slice(0, 400)), digits.labels[:400]
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):
        for s in range(0, len(x), 32):
            loss = nn.functional.cross_entropy(m(x[s:s + 32]), y[s:s + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return m.eval()


def test_a_pruning_outcome_and_its_report(model: nn.Module, digits: ImageDataset) -> None:
    defense = create_defense("clp", selection="bound", max_drop=1.0)
    out = defend(model, defense, digits, size=100, seed=3)
    p = out.pruning
    assert p is not None and p.selected.shape == (len(p.neurons),) and p.num_pruned > 0
    assert len(out.data.x_fit) + len(out.data.x_val) == 100
    assert out.clean_acc_defense_val == accuracy(out.model, out.data.x_val, out.data.y_val, torch.device("cpu"))
    assert out.metrics is None, "no test set given, nothing measured"
    report = json.loads(json.dumps(out.to_json()))
    assert report["method"] == "clp" and report["params"] == defense.params()
    assert report["num_pruned"] == p.num_pruned == len(report["pruned"])
    assert report["num_neurons"] == len(p.neurons) and report["ranking"] == p.ranking.tolist()
    assert report["selection_curve"] == p.curve and report["chosen"] == p.chosen
    assert report["defense_data"]["size"] == 100 and report["defense_data"]["seed"] == 3
    assert report["wall_time"] > 0 and "scores" in report  # the method's own details
    again = defend(model, create_defense("clp", selection="bound", max_drop=1.0), digits, size=100, seed=3)
    assert again.clean_split == out.clean_split and torch.equal(again.pruning.selected, p.selected)
    other = defend(model, create_defense("clp", selection="bound", max_drop=1.0), digits, size=100, seed=4)
    assert other.clean_split["indices_sha"] != out.clean_split["indices_sha"]


def test_test_metrics_come_after_and_use_what_is_known(model: nn.Module, digits: ImageDataset) -> None:
    test = create_dataset("digits", None, "test")
    attack = create_attack("badnets", 10, (1, 8, 8), target_label=0)
    known = {"clean_acc": 0.5, "asr": 0.25}
    out = defend(model, create_defense("finetune", epochs=1), digits, size=60, test=test, attack=attack,
                 before=known)
    assert out.pruning is None and "num_pruned" not in out.to_json()
    assert out.metrics == {"before": known, "after": evaluate(out.model, test, attack, torch.device("cpu"))}
    measured = defend(model, create_defense("finetune", epochs=1), digits, size=60, test=test, attack=attack)
    assert measured.metrics["before"] == evaluate(model, test, attack, torch.device("cpu"))


def test_the_whole_pool_when_no_size_is_given(model: nn.Module, digits: ImageDataset) -> None:
    pool = digits.subset(torch.arange(50))
    out = defend(model, create_defense("finetune", epochs=1), pool, source="folder x")
    assert out.clean_split["size"] == 50 and out.clean_split["source"] == "folder x"
    assert len(out.data.x_fit) + len(out.data.x_val) == 50


@pytest.mark.parametrize("method", ["finetune", "clp"])
def test_a_frozen_model_is_repaired_and_stays_frozen(model: nn.Module, digits: ImageDataset, method: str) -> None:
    frozen_copy = copy.deepcopy(model).requires_grad_(False)
    before = {k: v.clone() for k, v in frozen_copy.state_dict().items()}
    settings = {"epochs": 1} if method == "finetune" else {"selection": "bound", "max_drop": 1.0}
    out = defend(frozen_copy, create_defense(method, **settings), digits, size=60)
    assert not any(p.requires_grad for p in frozen_copy.parameters()), "the user's flags come back"
    assert all(torch.equal(v, before[k]) for k, v in frozen_copy.state_dict().items())
    changed = any(not torch.equal(v, before[k]) for k, v in out.model.state_dict().items())
    assert changed, "the defense did its work on the frozen model"
