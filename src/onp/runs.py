"""What ``onp attack`` and ``onp eval`` do, as functions: train a backdoored model; measure a saved one."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onp.artifacts import ArchSpec, load_attack, load_model, read_model_meta, recorded_data_root, save_model
from onp.attacks import create_attack
from onp.config import AttackRun, to_dict
from onp.data import ImageDataset, create_dataset, holdout_split
from onp.errors import OnpError
from onp.evaluate import evaluate
from onp.models.user import is_user_spec
from onp.training import TrainConfig, train_model
from onp.utils.io import check_output, make_parents, remove_if_empty, stable_hash
from onp.utils.progress import ProgressFactory, null_progress
from onp.utils.runtime import provenance, resolve_device, seed_everything, set_threads

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where reusable artifacts (clean reference models) go: ``$ONP_CACHE`` or ``~/.cache/onp``."""
    return Path(os.environ.get("ONP_CACHE", Path.home() / ".cache" / "onp"))


def config_hash(obj: Any) -> str:
    return stable_hash(obj)


def arch_for(cfg: AttackRun, data: ImageDataset) -> ArchSpec:
    """Registry models get the dataset's normalization in front; a user's model takes [0, 1] images and
    normalizes them itself (the convention of ``onp repair``, whose ``--weights`` are the user model's own
    state dict), so it is built bare and its weights stay the user's format."""
    user = is_user_spec(cfg.model.name)
    return ArchSpec(cfg.model.name, data.num_classes, data.image_shape[0], None if user else list(data.mean),
                    None if user else list(data.std), cfg.model.kwargs())


def reference_model(cfg: AttackRun, train: ImageDataset, device: torch.device,
                    progress: ProgressFactory = null_progress) -> nn.Module:
    """The clean model that lc, trojannn and inputaware craft their triggers on: ``cfg.reference`` if given,
    else a cached one trained for ``cfg.reference_epochs`` (keyed by data, architecture, epochs and seed)."""
    if cfg.reference:
        model, _ = load_model(cfg.reference, arch=cfg.model.name if ":" in cfg.model.name else None)
        return model
    spec = arch_for(cfg, train)
    tcfg = TrainConfig(**{**to_dict(cfg.train), "epochs": cfg.reference_epochs})
    key = config_hash({"data": cfg.data.name, "n": len(train), "arch": spec.to_dict(), "train": to_dict(tcfg),
                       "seed": cfg.seed})
    path = cache_dir() / f"reference-{cfg.data.name}-{key}"
    if (path / "model.safetensors").is_file():
        log.info("reusing the clean reference model %s", path)
        model, _ = load_model(path, arch=cfg.model.name if ":" in cfg.model.name else None)
        return model
    log.info("training a clean reference model for %d epochs (cached at %s)", tcfg.epochs, path)
    seed_everything(cfg.seed + 7919)
    model = spec.build()
    ckpt = checkpoint_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # onp's own cache
    history = train_model(model, train, tcfg, device, seed=cfg.seed + 7919, progress=progress, checkpoint=ckpt,
                          checkpoint_key=key)
    save_model(path, model, {"arch": spec.to_dict(), "data": {"name": cfg.data.name,
                                                              "image_shape": list(train.image_shape)},
                             "train": to_dict(tcfg), "history": history, "seed": cfg.seed, **provenance()})
    ckpt.unlink(missing_ok=True)
    return model


def _training_key(cfg: AttackRun, data: Any) -> str:
    """What a checkpoint must match to be resumed: the configuration and the training data it poisoned (so a
    change of how an attack poisons, under the same configuration, starts over)."""
    tensors = [data.labels]
    if hasattr(data, "poison_idx"):
        tensors += [data.poison_idx, data.cross_idx, data.mod_images[:64]]
    return stable_hash({k: v for k, v in to_dict(cfg).items() if k not in ("out", "device", "threads")}, tensors)


def checkpoint_path(out: str | Path) -> Path:
    """The per-epoch training checkpoint of a model bound for ``out``: a hidden file beside it, removed once
    the model is saved, so a killed training resumes at its last finished epoch. The caller creates the folder."""
    out = Path(out)
    return out.parent / f".{out.name}.ckpt"


def run_attack(cfg: AttackRun, progress: ProgressFactory = null_progress, clean: bool = False,
               overwrite: bool = False) -> dict[str, Any]:
    """Train a backdoored model as ``cfg`` says (a clean one with ``clean=True``), evaluate it, and save it to
    ``cfg.out`` (``overwrite``: replace an earlier onp output there); return its metadata."""
    inputs = [p for p in (cfg.data.root, cfg.reference) if p]
    check_output(cfg.out, overwrite, inputs=tuple(inputs))
    t0 = time.perf_counter()
    versions = provenance()  # the code imported now, whatever the checkout becomes during training
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    train = create_dataset(cfg.data.name, cfg.data.root, "train", download=cfg.data.download)
    test = create_dataset(cfg.data.name, cfg.data.root, "test", download=cfg.data.download)
    holdout = None
    if cfg.holdout:  # the defender's pool: never poisoned, never trained on
        pool, rest = holdout_split(train.labels, train.num_classes, cfg.holdout, cfg.holdout_seed)
        holdout = {"size": len(pool), "seed": cfg.holdout_seed, "indices_sha": stable_hash(pool.tolist())}
        train = train.subset(rest)
    attack = None if clean else create_attack(
        cfg.attack.name, train.num_classes, train.image_shape, target_label=cfg.attack.target_label,
        poison_rate=cfg.attack.poison_rate, all_to_all=cfg.attack.all_to_all, seed=cfg.seed, **cfg.attack.params)
    spec = arch_for(cfg, train)
    spec.build()  # fail on a bad architecture before any long work
    if attack is not None and attack.needs_reference:
        ref = reference_model(cfg, train, device, progress)
        attack.prepare(train, ref, device, progress)
    data = train if attack is None else attack.poison(train, progress)
    seed_everything(cfg.seed)
    model = spec.build()
    ckpt = checkpoint_path(cfg.out)
    created = make_parents(ckpt)
    t_train = time.perf_counter()
    try:
        history = train_model(model, data, cfg.train, device, seed=cfg.seed, progress=progress, checkpoint=ckpt,
                              checkpoint_key=_training_key(cfg, data))
    except Exception:
        remove_if_empty(created)  # a checkpoint already written stays, so the run resumes
        raise
    t_train = time.perf_counter() - t_train  # this call's share of the training
    metrics = evaluate(model, test, attack, device, progress=progress)
    poison = None if attack is None else {"num_poisoned": len(data.poison_idx), "num_cross": len(data.cross_idx)}
    meta = {
        "arch": spec.to_dict(),
        "data": {"name": cfg.data.name, "image_shape": list(train.image_shape), "num_train": len(train),
                 "normalization": {"mean": list(train.mean), "std": list(train.std), "input_range": [0, 1]},
                 **({"holdout": holdout} if holdout else {})},
        "attack": None if attack is None else attack.config(),
        "poison": poison,
        "train": to_dict(cfg.train),
        "config": to_dict(cfg),
        "metrics": metrics,
        "history": history,
        "seed": cfg.seed,
        # a resumed training counts all its epochs, the ones before the checkpoint included (their seconds)
        "wall_time": time.perf_counter() - t0 - t_train + sum(e["seconds"] for e in history),
        **versions,
    }
    save_model(cfg.out, model, meta, None if attack is None else attack.trigger_state(), overwrite=overwrite)
    ckpt.unlink(missing_ok=True)
    log.info("saved %s: %s", cfg.out, metrics)
    return meta


def run_eval(path: str | Path, data_root: str | None = None, arch: str | None = None, device: str = "auto",
             progress: ProgressFactory = null_progress, trigger_from: str | Path | None = None,
             images: str | Path | None = None) -> dict[str, float]:
    """ACC, ASR, RA of the saved model at ``path`` on its dataset's test split.

    ``trigger_from``: a model directory made by ``onp attack`` whose dataset and trigger to use instead of
    ``path``'s own (for a model repaired by ``onp repair``, whose metadata knows neither). ``images``: a folder of
    class folders to measure on instead (a practitioner's own test images; ACC, and ASR and RA with
    ``trigger_from``).
    """
    dev = resolve_device(device)
    model, meta = load_model(path, arch)
    if images is not None:
        test = create_dataset("imagefolder", images, "test")
        attack = None
        if trigger_from is not None:
            attack = load_attack(trigger_from, read_model_meta(trigger_from))
            if attack is None:
                raise OnpError(f"{trigger_from} records no attack; --trigger-from needs a model made by onp attack")
        return evaluate(model.to(dev), test, attack, dev, progress=progress)
    source, source_path = meta, path
    if trigger_from is not None:
        source, source_path = read_model_meta(trigger_from), trigger_from
        if not source.get("attack"):
            raise OnpError(f"{trigger_from} records no attack; --trigger-from needs a model made by onp attack")
    data = source.get("data") or {}
    root = data_root or recorded_data_root(source, source_path)
    test = create_dataset(data.get("name", "cifar10"), root, "test")
    attack = load_attack(source_path, source)
    return evaluate(model.to(dev), test, attack, dev, progress=progress)
