"""A held-out defender pool: models never train on it, defenses draw their clean images from it, and the grids
made before it existed keep their model and cell ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onp.bench.grid import expand, load_bench
from onp.bench.report import clean_source_sentence
from onp.bench.runner import clean_images, find_in_zoo, read_results, run_bench
from onp.data import create_dataset, holdout_split
from onp.errors import OnpError

ROOT = Path(__file__).resolve().parents[2]
HELD = """
name: held
data: {{name: digits}}
models: [{{name: small_cnn, width: 4}}]
attacks: [{{name: badnets, poison_rate: 0.1}}]
defenses: [{{name: clp, params: {{selection: bound}}}}]
train: {{epochs: 1, batch_size: 64, lr: 0.05}}
holdout: 100
holdout_seed: 3
seeds: [0]
defense_size: 60
zoo: {zoo}
threads: 1
curves: false
"""


def test_holdout_split_is_balanced_disjoint_and_repeatable() -> None:
    labels = create_dataset("digits", None, "train").labels
    pool, rest = holdout_split(labels, 10, 100, 3)
    assert len(pool) == 100 and len(pool) + len(rest) == len(labels)
    assert not set(pool.tolist()) & set(rest.tolist())
    assert labels[pool].bincount(minlength=10).tolist() == [10] * 10
    again, _ = holdout_split(labels, 10, 100, 3)
    other, _ = holdout_split(labels, 10, 100, 4)
    assert again.equal(pool) and not other.equal(pool)


@pytest.mark.slow
def test_models_leave_the_pool_out_and_defenses_draw_from_it(tmp_path: Path) -> None:
    cfg_path = tmp_path / "held.yaml"
    cfg_path.write_text(HELD.format(zoo=tmp_path / "zoo"))
    cfg = load_bench(cfg_path)
    assert run_bench(cfg, tmp_path / "r.jsonl", models_only=True) == []  # trains the model, runs no cell
    assert len(list((tmp_path / "zoo").glob("*/model.json"))) == 1 and not (tmp_path / "r.jsonl").exists()
    rows = run_bench(cfg, tmp_path / "r.jsonl")
    assert len(rows) == 1 and rows[0]["clean_source"] == "pool"
    model_dir = Path(rows[0]["model_dir"])
    meta = json.loads((model_dir / "model.json").read_text())
    train = create_dataset("digits", None, "train")
    pool, rest = holdout_split(train.labels, 10, 100, 3)
    assert meta["data"]["num_train"] == len(rest) and meta["data"]["holdout"]["size"] == 100
    assert meta["poison"]["num_poisoned"] == round(0.1 * len(rest))  # poisoned from the rest only
    clean, words = clean_images(train, meta, "pool", str(model_dir))
    assert clean.images.equal(train.images[pool]) and "never trained on" in words
    own, words = clean_images(train, meta, "train", str(model_dir))
    assert own.images.equal(train.images[rest]) and "trained on" in words
    assert "left out of its training" in clean_source_sentence(rows)
    # the same grid drawing from the training set instead is another cell of the same model
    cfg.clean_source = "train"
    _, cells = expand(cfg)
    assert cells[0].model.id == rows[0]["model_id"] and cells[0].id != rows[0]["id"]


@pytest.mark.parametrize(("text", "message"), [
    ("clean_source: pool\n", "clean_source pool needs a held-out pool"),
    ("clean_source: test\n", "clean_source must be auto, pool or train"),
    ("holdout: 100\ndefense_size: 500\n", "larger than the held-out pool"),
    ("attacks: [{name: badnets}]\nmodel_attacks: {vgg16_bn: [wanet]}\n",
     "lists 'wanet', which is not among the attacks"),
    ("attacks: [{name: badnets}]\nmodel_attacks: {vgg16_bn: badnets}\n", "needs a list of attack names"),
])
def test_bad_pool_and_attack_options_are_refused(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "x.yaml"
    p.write_text(f"name: x\n{text}defenses: [{{name: clp}}]\n")
    with pytest.raises(OnpError, match=message):
        load_bench(p)


def test_a_pool_is_refused_where_there_is_none() -> None:
    train = create_dataset("digits", None, "train")
    with pytest.raises(OnpError, match="held no pool out"):
        clean_images(train, {"data": {}}, "pool", "m")
    bad = {"data": {"holdout": {"size": 100, "seed": 3, "indices_sha": "0"}}}
    with pytest.raises(OnpError, match="not the one it recorded"):
        clean_images(train, bad, "pool", "m")


def test_the_development_grid_keeps_its_model_and_cell_ids() -> None:
    """Holding out is new: the committed zoo models are still found, and the committed rows are still cells."""
    cfg = load_bench(ROOT / "benchmarks" / "cifar10_cpu.yaml")
    models, cells = expand(cfg)
    for m in models:
        assert find_in_zoo(ROOT / cfg.zoo, m.run) is not None, m.id
    ids = {c.id for c in cells}
    rows = [r for r in read_results(ROOT / "docs" / "results" / "cifar10_cpu.jsonl") if r.get("asr") is not None]
    assert rows and all(r["id"] in ids for r in rows)


def test_an_architecture_can_take_only_some_attacks(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("name: x\nmodels: [{name: resnet18}, {name: vgg16_bn}]\n"
                 "attacks: [{name: badnets}, {name: blended}, {name: sig}]\n"
                 "model_attacks: {vgg16_bn: [badnets, sig]}\ndefenses: [{name: clp}]\n")
    models, _ = expand(load_bench(p))
    assert [(m.run.model.name, m.run.attack.name) for m in models] == [
        ("resnet18", "badnets"), ("resnet18", "blended"), ("resnet18", "sig"), ("vgg16_bn", "badnets"),
        ("vgg16_bn", "sig")]
