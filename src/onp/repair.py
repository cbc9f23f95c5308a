"""What ``onp defend`` and ``onp repair`` do: run a defense on a model with clean data, write the result."""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onp.artifacts import WEIGHTS, ArchSpec, load_attack, load_model, load_weights, save_model
from onp.data import ImageDataset, create_dataset, defense_split
from onp.defenses import DefenseContext, DefenseData, create_defense
from onp.errors import OnpError
from onp.evaluate import evaluate
from onp.models.user import is_user_spec
from onp.utils.io import atomic_dir, load_tensors, read_json, save_tensors, write_json
from onp.utils.progress import ProgressFactory, null_progress
from onp.utils.runtime import provenance, resolve_device, seed_everything

log = logging.getLogger(__name__)
REPORT = "report.json"


def _write_outputs(out: Path, model: nn.Module, meta: dict[str, Any], report: dict[str, Any],
                   trigger: dict[str, torch.Tensor] | None = None) -> None:
    """Weights, metadata, the full report, (for ONP) the reward curve as CSV and PNG, and the attack's trigger
    when there is one (so ``onp eval`` measures the repaired model too), all or nothing."""
    with atomic_dir(out) as tmp:
        save_tensors(tmp / WEIGHTS, model.state_dict())
        if trigger:
            save_tensors(tmp / "trigger.safetensors", trigger)
        write_json(tmp / "model.json", meta)
        write_json(tmp / REPORT, report)
        curve = report.get("reward_curve") or []
        if curve:
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(curve[0]))
            w.writeheader()
            w.writerows(curve)
            (tmp / "reward_curve.csv").write_text(buf.getvalue())
            from onp.bench.plots import plot_reward_curve

            plot_reward_curve(curve, tmp / "reward_curve.png", title=report.get("method", ""))


def slim_result(model: nn.Module, report: dict[str, Any], example: torch.Tensor) -> tuple[nn.Module, dict[str, Any]]:
    """Physically remove what a pruning defense pruned; return the slim model and its metadata entry."""
    from onp.graph import find_neurons
    from onp.graph.slim import num_parameters, slim_model

    if "pruned" not in report:
        raise OnpError(f"--slim needs a pruning defense; {report.get('method')!r} does not prune")
    neurons = find_neurons(model, example)
    index = {(c.name, ch): neurons.offsets[k] + ch for k, c in enumerate(neurons.carriers) for ch in range(c.size)}
    selected = torch.zeros(len(neurons), dtype=torch.bool)
    for p in report["pruned"]:
        selected[index[(p["layer"], p["index"])]] = True
    slim, history = slim_model(model, neurons, selected, example)
    entry = {"pruning_history": history, "parameters_before": num_parameters(model),
             "parameters_after": num_parameters(slim)}
    log.info("slimmed: %d -> %d parameters", entry["parameters_before"], entry["parameters_after"])
    return slim, entry


def run_defend(model_path: str | Path, method: str, params: dict[str, Any], out: str | Path,
               data_root: str | None = None, defense_size: int | None = 500, defense_fraction: float | None = None,
               seed: int = 0, device: str = "auto", arch: str | None = None, evaluate_after: bool = True,
               slim: bool = False, progress: ProgressFactory = null_progress) -> dict[str, Any]:
    """Defend a model made by ``onp attack``: draw the class-balanced clean split from its training set, run the
    defense, save the repaired model, then (only after the defense has finished) evaluate on the test set."""
    dev = resolve_device(device)
    model, meta = load_model(model_path, arch)
    data_meta = meta.get("data") or {}
    root = data_root or (meta.get("config") or {}).get("data", {}).get("root")
    train = create_dataset(data_meta.get("name", "cifar10"), root, "train")
    if defense_fraction is not None:
        defense_size = None
    idx = defense_split(train.labels, train.num_classes, size=defense_size, fraction=defense_fraction, seed=seed)
    defense = create_defense(method, **params)
    result, data = _run(defense, model, train.subset(idx), seed, dev, progress)
    report = {**result.report, "defense_data": {"size": len(idx), "seed": seed, "source": "train split",
                                                "indices_sha": _sha(idx)}}
    new_meta = {**meta, "defense": {"method": method, "params": defense.params(), "num_pruned":
                                     report.get("num_pruned"), "wall_time": report["wall_time"], "seed": seed},
                "source_model": str(model_path), **provenance()}
    new_meta.pop("metrics", None)
    if slim:
        result.model, new_meta["slim"] = slim_result(result.model, result.report, data.x_fit[:1].to(dev))
        report["slim"] = {k: v for k, v in new_meta["slim"].items() if k != "pruning_history"}
    if evaluate_after:
        test = create_dataset(data_meta.get("name", "cifar10"), root, "test")
        attack = load_attack(model_path, meta)
        before = meta.get("metrics") or evaluate(model, test, attack, dev, progress=progress)
        after = evaluate(result.model, test, attack, dev, progress=progress)
        new_meta["metrics"] = after
        report["metrics"] = {"before": before, "after": after}
    trig = Path(model_path) / "trigger.safetensors"
    _write_outputs(Path(out), result.model, new_meta, report, load_tensors(trig) if trig.is_file() else None)
    return report


def _run(defense: Any, model: nn.Module, clean: ImageDataset, seed: int, dev: torch.device,
         progress: ProgressFactory) -> tuple[Any, DefenseData]:
    seed_everything(seed)
    data = DefenseData.from_dataset(clean, seed=seed)
    ctx = DefenseContext(dev, seed, progress)
    t0 = time.perf_counter()
    result = defense.repair(model, data, ctx)
    result.report.setdefault("wall_time", time.perf_counter() - t0)
    return result, data


def _sha(idx: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(idx.numpy().tobytes()).hexdigest()[:16]


def build_user_model(arch: str, weights: str | Path, num_classes: int, in_channels: int,
                     mean: list[float] | None, std: list[float] | None) -> tuple[nn.Module, ArchSpec]:
    """The user's architecture with its weights. Registry models take onp's format (with the normalization
    buffers) or a bare backbone state dict; user files take their own state dict."""
    spec = ArchSpec(arch, num_classes, in_channels, mean, std, {})
    model = spec.build()
    state = load_tensors(weights)
    if not is_user_spec(arch) and not any(k.startswith(("normalize.", "net.")) for k in state):
        load_weights(model.net, state, weights)  # a bare backbone (e.g. from another codebase)
    else:
        load_weights(model, state, weights)
    return model.eval(), spec


def check_classifier(model: nn.Module, clean: ImageDataset, input_size: int | None) -> None:
    """Refuse what ONP cannot repair: images of the wrong size, too few images, a model that is not a
    classifier over the clean folder's classes."""
    c, h, w = clean.image_shape
    if input_size is not None and (h, w) != (input_size, input_size):
        raise OnpError(f"the clean images are {h}x{w} but the model takes {input_size}x{input_size}; "
                       f"pass --resize to resize them")
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
               slim: bool = False, progress: ProgressFactory = null_progress) -> dict[str, Any]:
    """Repair a user's model with a folder of clean images (class subfolders); write weights and a report."""
    dev = resolve_device(device)
    meta_path = Path(weights).with_name("model.json")
    src_meta = read_json(meta_path) if meta_path.is_file() else {}
    if input_size is None and src_meta.get("data", {}).get("image_shape"):
        input_size = int(src_meta["data"]["image_shape"][1])
    clean = create_dataset("imagefolder", clean_dir, "train", image_size=input_size if resize else None)
    model, spec = build_user_model(arch, weights, clean.num_classes, clean.image_shape[0], mean, std)
    check_classifier(model, clean, input_size)
    defense = create_defense(method, **(params or {}))
    result, data = _run(defense, model, clean, seed, dev, progress)
    meta = {"arch": spec.to_dict(), "data": {"name": "imagefolder", "image_shape": list(clean.image_shape),
                                             "classes": clean.classes},
            "defense": {"method": method, "params": defense.params(), "num_pruned": result.report.get("num_pruned"),
                        "wall_time": result.report["wall_time"], "seed": seed},
            "source_weights": str(weights), **provenance()}
    report = {**result.report, "defense_data": {"size": len(clean), "folder": str(clean_dir)}}
    if slim:
        result.model, meta["slim"] = slim_result(result.model, result.report, data.x_fit[:1].to(dev))
        report["slim"] = {k: v for k, v in meta["slim"].items() if k != "pruning_history"}
    _write_outputs(Path(out), result.model, meta, report)
    return report
