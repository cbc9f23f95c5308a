"""The benchmark grid: datasets x models x attacks x defenses x seeds, from one YAML file.

A *model cell* trains (or reuses) one backdoored model; a *defense cell* applies one defense with one seed to
one model and measures it. Cells are identified by a hash of everything that determines their result, so a
rerun reuses finished work and a changed setting is a new cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onp.attacks import ATTACKS
from onp.config import (
    AttackConfig,
    AttackRun,
    DataConfig,
    ModelConfig,
    load_config,
    to_dict,
)
from onp.defenses import create_defense
from onp.errors import OnpError
from onp.training import TrainConfig
from onp.utils.io import stable_hash


@dataclass
class DefenseSpec:
    """One defense of the grid and its hyperparameters (defaults: the paper's)."""

    name: str
    """Registry name (``onp list defenses``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters overriding the defaults."""
    label: str | None = None
    """Name in the tables (default: ``name``)."""

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass
class BenchConfig:
    """A benchmark: which models to backdoor, which defenses to run on them, how many seeds."""

    name: str = "bench"
    """Name of the benchmark (used in the report)."""
    data: DataConfig = field(default_factory=DataConfig)
    """The dataset (one per config; run several configs for several datasets)."""
    datasets: list[DataConfig] = field(default_factory=list)
    """Several datasets instead of ``data`` (optional)."""
    models: list[ModelConfig] = field(default_factory=lambda: [ModelConfig()])
    """Architectures."""
    attacks: list[AttackConfig] = field(default_factory=lambda: [AttackConfig()])
    """Attacks (poison rate, target and trigger parameters per attack)."""
    model_attacks: dict[str, list[str]] = field(default_factory=dict)
    """For an architecture named here, only the attacks listed (by name); the others get every attack."""
    defenses: list[DefenseSpec] = field(default_factory=list)
    """Defenses."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """How the backdoored models are trained."""
    reference_epochs: int = 10
    """Epochs of the clean reference model for lc, trojannn and inputaware."""
    reference: str | None = None
    """A saved clean model to use as that reference."""
    model_seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of the backdoored models."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of the defenses (each draws its own clean split)."""
    defense_size: int = 500
    """Clean images per defense, class-balanced, drawn with the defense's seed from ``clean_source``."""
    holdout: int = 0
    """Training images every model of the grid leaves out of its training (class-balanced, ``holdout_seed``):
    a defender's pool of images the models never saw. 0: the models train on the whole training set."""
    holdout_seed: int = 0
    """Seed of the held-out pool's draw."""
    clean_source: str = "auto"
    """Where the defenses' clean images come from: ``pool`` (the held-out pool, a practitioner's case), ``train``
    (the training set, the models' own images: the benchmark convention of the defense papers), ``auto``
    (``pool`` when the grid holds one out, else ``train``)."""
    zoo: str = "benchmarks/zoo"
    """Where backdoored models are kept and looked up by config hash."""
    curves: bool = True
    """Measure pruning curves (test ACC and ASR against neurons pruned) after pruning defenses."""
    curve_images: int = 2000
    """Test images per point of a pruning curve."""
    frozen: str | None = None
    """A git revision whose code every defense row must come from (an evaluation set's freeze): the bench refuses
    to run while onp's source differs from it, and refuses rows made by other code (files that only parse
    arguments, show progress or draw the report may change). None: no such check."""
    threads: int | None = None
    """Torch threads per cell (default: the cores the process may use)."""
    device: str = "auto"
    """auto, cpu, cuda."""

    def __post_init__(self) -> None:
        names = {a.name for a in self.attacks}
        for model, attacks in self.model_attacks.items():
            if not isinstance(attacks, list) or not all(isinstance(a, str) for a in attacks):
                raise OnpError(f"model_attacks: {model} needs a list of attack names, got {attacks!r}")
            if unknown := [a for a in attacks if a not in names]:
                raise OnpError(f"model_attacks: {model} lists {unknown[0]!r}, which is not among the attacks")
        if self.clean_source not in ("auto", "pool", "train"):
            raise OnpError(f"clean_source must be auto, pool or train, got {self.clean_source!r}")
        if self.clean_source == "pool" and not self.holdout:
            raise OnpError("clean_source pool needs a held-out pool: set holdout (e.g. 1000)")
        if self.source == "pool" and self.defense_size > self.holdout:
            raise OnpError(f"defense_size {self.defense_size} is larger than the held-out pool of {self.holdout}")

    @property
    def source(self) -> str:
        """``pool`` or ``train``: where the defenses' clean images come from."""
        if self.clean_source == "auto":
            return "pool" if self.holdout else "train"
        return self.clean_source

    def all_data(self) -> list[DataConfig]:
        return self.datasets or [self.data]


def key(obj: Any) -> str:
    """A short stable hash of a JSON-able object."""
    return stable_hash(obj, length=12)


def attack_key(run: AttackRun) -> str:
    """What determines a backdoored model: dataset, architecture, attack, training, seed, and for attacks that
    craft their trigger on a clean model, that reference (not output paths, devices or threads)."""
    needs_ref = ATTACKS.get(run.attack.name).needs_reference
    what = {"data": run.data.name, "model": to_dict(run.model), "attack": to_dict(run.attack),
            "train": to_dict(run.train), "seed": run.seed,
            "reference": [run.reference, run.reference_epochs] if needs_ref else None}
    if run.holdout:  # only then, so that the models made before holding out was possible keep their keys
        what["holdout"] = [run.holdout, run.holdout_seed]
    return key(what)


@dataclass
class ModelCell:
    run: AttackRun

    @property
    def id(self) -> str:
        return f"{self.run.data.name}-{self.run.model.name}-{self.run.attack.name}-s{self.run.seed}-" \
               f"{attack_key(self.run)}"


@dataclass
class DefenseCell:
    model: ModelCell
    defense: DefenseSpec
    seed: int
    defense_size: int
    clean_source: str = "train"
    """``train`` or ``pool`` (see :attr:`BenchConfig.clean_source`)."""

    @property
    def id(self) -> str:
        what: list[Any] = [self.defense.name, self.defense.params, self.seed, self.defense_size]
        if self.clean_source != "train":  # only then, so that the rows made before keep their ids
            what.append(self.clean_source)
        return f"{self.model.id}/{self.defense.title}-s{self.seed}-{key(what)}"


def load_bench(path: str | Path, overrides: dict[str, Any] | None = None) -> BenchConfig:
    cfg = load_config(BenchConfig, path, overrides)
    if not cfg.defenses:
        raise OnpError(f"{path}: the benchmark lists no defenses")
    for d in cfg.defenses:
        if "oracle_target" in d.params:
            raise OnpError(f"{path}: {d.title} sets oracle_target, a diagnostic that tells the defense the target; "
                           f"a benchmark defense may not know it")
        create_defense(d.name, **d.params)  # unknown names and parameters fail before any work
    for a in cfg.attacks:
        ATTACKS.get(a.name)  # an unknown name fails with the list of valid ones
    return cfg


def expand(cfg: BenchConfig) -> tuple[list[ModelCell], list[DefenseCell]]:
    """All model cells and defense cells of the grid, in a fixed order."""
    models, cells = [], []
    for data in cfg.all_data():
        for model in cfg.models:
            for attack in cfg.attacks:
                if model.name in cfg.model_attacks and attack.name not in cfg.model_attacks[model.name]:
                    continue
                for mseed in cfg.model_seeds:
                    run = AttackRun(data=data, model=model, attack=attack, train=cfg.train,
                                    reference_epochs=cfg.reference_epochs, reference=cfg.reference, seed=mseed,
                                    holdout=cfg.holdout, holdout_seed=cfg.holdout_seed, device=cfg.device,
                                    threads=cfg.threads)
                    mc = ModelCell(run)
                    models.append(mc)
                    for d in cfg.defenses:
                        for s in cfg.seeds:
                            cells.append(DefenseCell(mc, d, s, cfg.defense_size, cfg.source))
    return models, cells
