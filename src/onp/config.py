"""Typed run configurations. Precedence: dataclass defaults < YAML file < command-line flags (dotted keys)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from onp.errors import OnpError, at_least, within
from onp.training import TrainConfig

T = TypeVar("T")
MAX_SEED = 2**63 - 1  # torch's generators take at most this
MAX_WIDTH = 4096  # a ResNet-18 this wide would have about 45 G parameters: no run here gets near it


@dataclass
class DataConfig:
    """Which dataset, and where it lives."""

    name: str = "cifar10"
    """Registry name (``onp list datasets``)."""
    root: str | None = None
    """Folder holding the dataset (e.g. ../shared/data/cifar10); unused for ``digits``."""
    download: bool = False
    """Fetch the official archive into ``root`` when it is missing (needs the network)."""


@dataclass
class ModelConfig:
    """Which architecture."""

    name: str = "resnet18"
    """Registry name or a user spec ``path/file.py:factory``."""
    width: int | None = None
    """Base width (ResNet: channels of the first stage); None keeps the architecture's default."""

    def __post_init__(self) -> None:
        if self.width is not None:
            at_least(self.width, 1, "model.width")
            if self.width > MAX_WIDTH:
                raise OnpError(f"model.width {self.width} is above {MAX_WIDTH}: its weights would not fit in memory")

    def kwargs(self) -> dict[str, Any]:
        return {} if self.width is None else {"width": self.width}


@dataclass
class AttackConfig:
    """Which backdoor, at which rate, to which target."""

    name: str = "badnets"
    """Registry name (``onp list attacks``)."""
    poison_rate: float = 0.1
    """Fraction poisoned, in (0, 1]: of the training set, or of the target class for clean-label attacks."""
    target_label: int = 0
    """Label the trigger leads to (all-to-one)."""
    all_to_all: bool = False
    """Label y goes to (y + 1) mod K instead."""
    params: dict[str, Any] = field(default_factory=dict)
    """Trigger parameters overriding the paper defaults (see each attack's docstring)."""

    def __post_init__(self) -> None:
        within(self.poison_rate, 0, 1, "attack.poison_rate", low_open=True)
        at_least(self.target_label, 0, "attack.target_label")


@dataclass
class AttackRun:
    """``onp attack``: train a backdoored model."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reference_epochs: int = 10
    """Epochs of the clean reference model that lc, trojannn and inputaware craft their triggers on."""
    reference: str | None = None
    """A saved clean model to use as that reference instead of training (or reusing a cached) one."""
    seed: int = 0
    """Seeds the poisoning and the training."""
    holdout: int = 0
    """Training images left out of the model's training (class-balanced, drawn with ``holdout_seed``): a
    defender's pool of clean images the model never saw. 0 trains on the whole training set."""
    holdout_seed: int = 0
    """Seed of the draw of the held-out pool (the same pool for every model that gives the same seed)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1, ..."""
    threads: int | None = None
    """Torch intra-op threads (default: the cores this process may use)."""
    out: str = "runs/model"
    """Output directory of the model."""

    def __post_init__(self) -> None:
        at_least(self.reference_epochs, 1, "reference_epochs")
        at_least(self.seed, 0, "seed")
        at_least(self.holdout, 0, "holdout")
        at_least(self.holdout_seed, 0, "holdout_seed")
        if self.seed > MAX_SEED:
            raise OnpError(f"seed must be at most {MAX_SEED}, got {self.seed}")
        if self.threads is not None:
            at_least(self.threads, 1, "threads")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except OnpError:
                continue
        raise OnpError(f"config key {key!r}: cannot use {value!r} as {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise OnpError(f"config key {key!r} must be a mapping")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise OnpError(f"config key {key!r} must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise OnpError(f"config key {key!r} must be a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise OnpError(f"config key {key!r} must be {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise OnpError(f"config key {key!r} must be an integer, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            raise OnpError(f"config key {key!r} must be a string")
        return str(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise OnpError(f"config key {key!r} must be a mapping")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise OnpError(f"config key {key!r} must be a list")
        (inner,) = typing.get_args(tp) or (Any,)
        return [v if inner is Any else _coerce(v, inner, key) for v in value]
    return value


def from_dict(cls: type[T], d: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys (the message lists the valid ones)."""
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in d if k not in names]
    if unknown:
        valid = ", ".join(prefix + n for n in names)
        raise OnpError(f"unknown config key {prefix + unknown[0]!r}; valid keys: {valid}")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in d.items()})  # type: ignore[call-arg]


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "train.epochs", 5)`` sets ``d["train"]["epochs"]`` (params take any sub-key)."""
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise OnpError(f"cannot set {key!r}: {p!r} is not a mapping")
    d[parts[-1]] = value


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Defaults < the YAML file at ``path`` < ``overrides`` (dotted keys, e.g. ``{"train.epochs": 5}``)."""
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise OnpError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise OnpError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise OnpError(f"{p} must hold a mapping of config keys")
        d = loaded
    for k, v in (overrides or {}).items():
        if v is not None:
            set_dotted(d, k, v)
    return from_dict(cls, d)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["train.epochs=5", "attack.params.alpha=0.1"]`` -> dotted overrides; values are parsed as YAML."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise OnpError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(raw)
    return out
