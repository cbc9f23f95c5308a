"""What ``onp defend`` and ``onp repair`` do: run a defense on a model with clean data, write the result."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onp.artifacts import (
    TRIGGER,
    ArchSpec,
    check_meta,
    load_attack,
    load_model,
    load_weights,
    recorded_data_root,
    save_model,
)
from onp.data import ImageDataset, create_dataset
from onp.defenses import create_defense
from onp.errors import OnpError
from onp.graph import find_neurons
from onp.graph.slim import num_parameters, slim_model
from onp.models.user import is_user_spec
from onp.pipeline import DefenseOutcome, defend
from onp.plots import plot_search_curve
from onp.utils.io import check_output, load_tensors, read_json, read_weights, write_json
from onp.utils.progress import ProgressFactory, null_progress
from onp.utils.runtime import provenance, resolve_device

log = logging.getLogger(__name__)
REPORT = "report.json"
# the input normalization BackdoorBench's models are trained behind, per dataset (its
# utils/aggregate_block/dataset_and_transform_generate.py); gtsrb and celeba are not normalized there
BACKDOORBENCH_NORMALIZATION = {
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    "mnist": ([0.5], [0.5]),
    "tiny": ([0.4802, 0.4481, 0.3975], [0.2302, 0.2265, 0.2262]),
    "imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


def _extra_outputs(outcome: DefenseOutcome, report: dict[str, Any]) -> Callable[[Path], None]:
    """The files written beside the model: the full report and, for ONP, its search curve as CSV and PNG."""

    def write(folder: Path) -> None:
        write_json(folder / REPORT, report)
        curve = outcome.result.details.get("search_curve") or []
        if curve:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(curve[0]))
            w.writeheader()
            w.writerows(curve)
            (folder / "search_curve.csv").write_text(buf.getvalue())
            plot_search_curve(curve, folder / "search_curve.png", title=outcome.defense.name)
            write_tensorboard(curve, folder / "tensorboard")

    return write


def write_tensorboard(curve: list[dict[str, Any]], folder: Path) -> bool:
    """The search curve as TensorBoard scalars (``search/<key>`` by step) when tensorboard is installed
    (``pip install onp[tensorboard]``); False when it is not. The CSV beside it holds the same numbers."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for h in curve:
            for key, value in h.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(f"search/{key}", value, int(h["step"]))
    finally:
        writer.close()
    return True


def slim_outcome(outcome: DefenseOutcome, example: torch.Tensor) -> dict[str, Any]:
    """Physically remove what a pruning defense pruned from ``outcome``'s model (replaced in place); return the
    metadata entry that rebuilds it (Torch-Pruning's history)."""
    if outcome.pruning is None:
        raise OnpError(f"--slim needs a pruning defense; {outcome.defense.name!r} does not prune")
    model = outcome.result.model
    neurons = find_neurons(model, example)  # the repaired copy's own neurons, in the same order
    slim, history = slim_model(model, neurons, outcome.pruning.selected, example)
    outcome.result.model = slim
    entry = {"pruning_history": history, "parameters_before": num_parameters(model),
             "parameters_after": num_parameters(slim)}
    log.info("slimmed: %d -> %d parameters", entry["parameters_before"], entry["parameters_after"])
    return entry


def _save(outcome: DefenseOutcome, out: str | Path, meta: dict[str, Any], slim: bool, device: torch.device,
          trigger: dict[str, torch.Tensor] | None = None, overwrite: bool = False) -> None:
    """Write the repaired model (slimmed first if asked), its metadata, the report and the search curve."""
    if slim:
        meta["slim"] = slim_outcome(outcome, outcome.data.x_fit[:1].to(device))
    report = outcome.to_json()
    if slim:
        report["slim"] = {k: v for k, v in meta["slim"].items() if k != "pruning_history"}
    save_model(out, outcome.model, meta, trigger, extra=_extra_outputs(outcome, report), overwrite=overwrite)


def _defense_meta(outcome: DefenseOutcome) -> dict[str, Any]:
    p = outcome.pruning
    return {"method": outcome.defense.name, "params": outcome.defense.params(),
            "num_pruned": p.num_pruned if p is not None else None, "wall_time": outcome.wall_time,
            "seed": outcome.seed}


def run_defend(model_path: str | Path, method: str, params: dict[str, Any], out: str | Path,
               data_root: str | None = None, defense_size: int | None = 500, defense_fraction: float | None = None,
               seed: int = 0, device: str = "auto", arch: str | None = None, evaluate_after: bool = True,
               slim: bool = False, progress: ProgressFactory = null_progress,
               overwrite: bool = False) -> DefenseOutcome:
    """Defend a model made by ``onp attack``: draw the class-balanced clean split from its training set, run the
    defense, then (only after the defense has finished) evaluate on the test set, and save the repaired model
    (``overwrite``: replace an earlier onp output at ``out``)."""
    check_output(out, overwrite, inputs=(model_path,))
    defense = create_defense(method, **params)  # bad settings fail before any work
    provenance()  # read now: the revision of the code this process imported
    dev = resolve_device(device)
    model, meta = load_model(model_path, arch)
    attack = load_attack(model_path, meta) if evaluate_after else None  # a malformed record fails before the work
    data_meta = meta.get("data") or {}
    root = data_root or recorded_data_root(meta, model_path)
    if root:
        check_output(out, overwrite, inputs=(model_path, root))
    name = data_meta.get("name", "cifar10")
    train = create_dataset(name, root, "train")
    test = create_dataset(name, root, "test") if evaluate_after else None
    outcome = defend(model, defense, train, size=None if defense_fraction is not None else defense_size,
                     fraction=defense_fraction, seed=seed, device=dev, progress=progress, test=test,
                     attack=attack, before=meta.get("metrics"))
    new_meta = {**meta, "defense": _defense_meta(outcome), "source_model": str(model_path), **provenance()}
    new_meta.pop("metrics", None)
    if outcome.metrics is not None:
        new_meta["metrics"] = outcome.metrics["after"]
    trig = Path(model_path) / TRIGGER
    _save(outcome, out, new_meta, slim, dev, load_tensors(trig) if trig.is_file() else None, overwrite)
    return outcome


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict saved from ``nn.DataParallel`` or DistributedDataParallel has every key under ``module.``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def build_user_model(arch: str, weights: str | Path, num_classes: int, in_channels: int,
                     mean: list[float] | None, std: list[float] | None,
                     kwargs: dict[str, Any] | None = None,
                     state: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, ArchSpec]:
    """The user's architecture with its weights. Registry models take onp's format (with the normalization
    buffers) or a bare backbone state dict (torchvision style, ``module.`` prefix or not); a user file's net takes
    its own state dict, behind a :class:`~onp.models.normalize.Normalize` when ``mean`` and ``std`` are given."""
    spec = ArchSpec(arch, num_classes, in_channels, mean, std, dict(kwargs or {}))
    model = spec.build()
    state = strip_prefix(load_tensors(weights) if state is None else state)
    wrapped = hasattr(model, "normalize") and hasattr(model, "net") and (not is_user_spec(arch) or mean is not None)
    if wrapped and not any(k.startswith(("normalize.", "net.")) for k in state):
        load_weights(model.net, state, weights)  # the bare backbone: from another codebase, or the user's own net
    else:
        load_weights(model, state, weights)
    return model.eval(), spec


def check_classifier(model: nn.Module, clean: ImageDataset) -> None:
    """Refuse what ONP cannot repair: too few images, a model that is not a classifier over the clean folder's
    classes (images of the wrong size are refused as they are read: ``expect_size``)."""
    c, h, w = clean.image_shape
    if len(clean) < clean.num_classes:
        raise OnpError(f"the clean folder has {len(clean)} images, fewer than its {clean.num_classes} classes")
    try:
        with torch.no_grad():
            out = model.eval()(clean.float_images(slice(0, 2)))
    except Exception as e:  # noqa: BLE001 - the user's model failed on their images; say so in one line
        raise OnpError(f"the model cannot run on {c}x{h}x{w} images: {type(e).__name__}: {e}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise OnpError(f"the model is not a classifier: it returns {shape}, not (batch, classes) logits")
    if out.shape[1] != clean.num_classes:
        raise OnpError(f"the model has {out.shape[1]} outputs but the clean folder has {clean.num_classes} classes")


def run_repair(arch: str, weights: str | Path, clean_dir: str | Path, out: str | Path, method: str = "onp",
               params: dict[str, Any] | None = None, input_size: int | None = None, resize: bool = False,
               mean: list[float] | None = None, std: list[float] | None = None, seed: int = 0, device: str = "auto",
               slim: bool = False, progress: ProgressFactory = null_progress,
               overwrite: bool = False, arch_kwargs: dict[str, Any] | None = None) -> DefenseOutcome:
    """Repair a user's model with a folder of clean images (class subfolders); write weights and a report
    (``overwrite``: replace an earlier onp output at ``out``; the inputs are never written). ``arch_kwargs`` go to
    the architecture (``width=16``); by default those of a ``model.json`` beside the weights naming the same one."""
    arch_file = arch.rsplit(":", 1)[0] if is_user_spec(arch) else None
    check_output(out, overwrite, inputs=(weights, clean_dir, *([arch_file] if arch_file else [])))
    defense = create_defense(method, **(params or {}))  # bad settings fail before any work
    provenance()  # read now: the revision of the code this process imported
    dev = resolve_device(device)
    meta_path = Path(weights).with_name("model.json")
    src_meta = read_json(meta_path) if meta_path.is_file() else {}
    if src_meta:
        src_meta = check_meta(src_meta, meta_path)  # untrusted input
        shape = (src_meta.get("data") or {}).get("image_shape")
        if input_size is None and shape:
            input_size = shape[1]
        src_arch = src_meta.get("arch")
        if arch_kwargs is None and isinstance(src_arch, dict) and src_arch.get("name") == arch:
            arch_kwargs = ArchSpec.from_dict(src_arch).kwargs
            log.info("architecture arguments from %s: %s", meta_path, arch_kwargs)
    state, info = read_weights(weights)
    if info.get("format") == "backdoorbench":
        log.info("%s is BackdoorBench's attack result: %s", weights, info)
        norm = BACKDOORBENCH_NORMALIZATION.get(str(info.get("clean_data")))
        if mean is None and std is None and norm is not None:
            mean, std = norm
            log.info("normalization of BackdoorBench's %s: mean %s, std %s", info["clean_data"], mean, std)
        size = info.get("img_size")
        if input_size is None and isinstance(size, (list, tuple)) and size and isinstance(size[0], int):
            input_size = size[0]
    clean = create_dataset("imagefolder", clean_dir, "train", image_size=input_size if resize else None,
                           expect_size=None if resize else input_size)
    model, spec = build_user_model(arch, weights, clean.num_classes, clean.image_shape[0], mean, std, arch_kwargs,
                                   state)
    check_classifier(model, clean)
    outcome = defend(model, defense, clean, seed=seed, device=dev,
                     progress=progress, source=f"folder {clean_dir}")
    meta = {"arch": spec.to_dict(), "data": {"name": "imagefolder", "image_shape": list(clean.image_shape),
                                             "classes": clean.classes},
            "defense": _defense_meta(outcome), "source_weights": str(weights), **provenance()}
    _save(outcome, out, meta, slim, dev, overwrite=overwrite)
    return outcome
