"""Typed configs: defaults < YAML < overrides, and one-line errors for unknown keys and wrong types."""

from __future__ import annotations

from pathlib import Path

import pytest

from onp.config import AttackRun, from_dict, load_config, parse_set, set_dotted, to_dict
from onp.errors import OnpError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    cfg = load_config(AttackRun)
    assert cfg == AttackRun()
    assert cfg.attack.name == "badnets" and cfg.attack.poison_rate == 0.1 and cfg.train.epochs == 25


def test_precedence_defaults_yaml_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, """
seed: 4
train: {epochs: 3, lr: 0.05}
attack:
  poison_rate: 0.05
  params: {alpha: 0.3}
""")
    cfg = load_config(AttackRun, path, {"train.epochs": 7, "attack.params.pattern_seed": 2, "seed": None})
    assert cfg.train.epochs == 7  # override beats YAML
    assert cfg.train.lr == 0.05 and cfg.attack.poison_rate == 0.05  # YAML beats defaults
    assert cfg.seed == 4, "a None override (an absent flag) leaves the YAML value"
    assert cfg.train.batch_size == 128 and cfg.attack.name == "badnets"  # defaults fill the rest
    assert cfg.attack.params == {"alpha": 0.3, "pattern_seed": 2}


def test_yaml_values_are_coerced(tmp_path: Path) -> None:
    cfg = load_config(AttackRun, write(tmp_path, "train: {lr: 1, epochs: 2.0}\nmodel: {width: '8'}\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 2 and isinstance(cfg.train.epochs, int)
    assert cfg.model.width == 8 and cfg.model.kwargs() == {"width": 8}
    assert load_config(AttackRun, overrides={"model.width": None}).model.kwargs() == {}


def test_round_trip_through_dict() -> None:
    cfg = load_config(AttackRun, overrides={"attack.name": "sig", "data.root": "/x", "threads": 1})
    assert from_dict(AttackRun, to_dict(cfg)) == cfg


@pytest.mark.parametrize("d, key, listed", [
    ({"trian": {}}, "'trian'", ["data", "model", "attack", "train", "seed", "out"]),
    ({"train": {"epoch": 3}}, "'train.epoch'", ["train.epochs", "train.batch_size", "train.lr"]),
    ({"attack": {"rate": 0.1}}, "'attack.rate'", ["attack.poison_rate", "attack.target_label"]),
])
def test_unknown_key_lists_valid_keys(d: dict, key: str, listed: list[str]) -> None:
    with pytest.raises(OnpError) as e:
        from_dict(AttackRun, d)
    msg = str(e.value)
    assert f"unknown config key {key}" in msg and "\n" not in msg
    for k in listed:
        assert k in msg


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    with pytest.raises(OnpError, match="unknown config key 'epochs'"):
        load_config(AttackRun, write(tmp_path, "epochs: 3\n"))


@pytest.mark.parametrize("overrides, key", [
    ({"train.epochs": "many"}, "train.epochs"),
    ({"train.epochs": 2.5}, "train.epochs"),
    ({"train.epochs": True}, "train.epochs"),
    ({"seed": [1]}, "seed"),
    ({"attack.all_to_all": "maybe"}, "attack.all_to_all"),
    ({"attack.poison_rate": "lots"}, "attack.poison_rate"),
    ({"model.width": "wide"}, "model.width"),
    ({"data.name": {"a": 1}}, "data.name"),
    ({"attack.params": 3}, "attack.params"),
])
def test_wrong_type(overrides: dict, key: str) -> None:
    with pytest.raises(OnpError) as e:
        load_config(AttackRun, overrides=overrides)
    assert repr(key) in str(e.value) and "\n" not in str(e.value)


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(OnpError, match="'train' must be a mapping"):
        load_config(AttackRun, write(tmp_path, "train: 5\n"))
    with pytest.raises(OnpError, match="'train' is not a mapping"):
        set_dotted({"train": 5}, "train.epochs", 3)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(OnpError, match="does not exist"):
        load_config(AttackRun, tmp_path / "nope.yaml")
    with pytest.raises(OnpError, match="not valid YAML"):
        load_config(AttackRun, write(tmp_path, "train: {epochs: [\n"))
    with pytest.raises(OnpError, match="must hold a mapping"):
        load_config(AttackRun, write(tmp_path, "- 1\n- 2\n"))
    assert load_config(AttackRun, write(tmp_path, "")) == AttackRun()


def test_parse_set() -> None:
    out = parse_set(["train.epochs=5", "attack.params.alpha=0.1", "attack.all_to_all=true", "data.root=/a=b",
                     "out=runs/x", "model.width=", " seed =3"])
    assert out == {"train.epochs": 5, "attack.params.alpha": 0.1, "attack.all_to_all": True, "data.root": "/a=b",
                   "out": "runs/x", "model.width": None, "seed": 3}
    cfg = load_config(AttackRun, overrides=parse_set(["train.epochs=5", "attack.params.alpha=0.1"]))
    assert cfg.train.epochs == 5 and cfg.attack.params == {"alpha": 0.1}


@pytest.mark.parametrize("item", ["train.epochs", "=5", ""])
def test_parse_set_rejects(item: str) -> None:
    with pytest.raises(OnpError, match="key=value"):
        parse_set([item])
