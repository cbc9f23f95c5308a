"""A saved model: ``model.safetensors`` (weights), ``model.json`` (metadata), ``trigger.safetensors`` (attack).

The architecture is rebuilt from the metadata by name; a user's architecture file is imported only when the
user names it again (``arch=`` here, ``--arch`` on the command line), never because a metadata file says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from onp.attacks import Attack, create_attack
from onp.errors import OnpError
from onp.graph.slim import replay_history
from onp.models import create_model
from onp.models.user import is_user_spec
from onp.utils.io import atomic_dir, load_tensors, read_json, save_tensors, write_json

WEIGHTS, META, TRIGGER = "model.safetensors", "model.json", "trigger.safetensors"


@dataclass
class ArchSpec:
    """Everything needed to rebuild a model: registry name or user spec, and its arguments."""

    name: str
    num_classes: int
    in_channels: int = 3
    mean: list[float] | None = None
    std: list[float] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        return create_model(self.name, self.num_classes, self.in_channels, self.mean, self.std, **self.kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes, "in_channels": self.in_channels,
                "mean": self.mean, "std": self.std, "kwargs": self.kwargs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        try:
            return cls(d["name"], int(d["num_classes"]), int(d.get("in_channels", 3)), d.get("mean"), d.get("std"),
                       dict(d.get("kwargs") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise OnpError(f"model metadata has a malformed architecture entry: {e}") from None


def save_model(out: str | Path, model: nn.Module, meta: dict[str, Any], trigger: dict[str, torch.Tensor] | None = None,
               extra: Callable[[Path], None] | None = None) -> Path:
    """Write weights, metadata and trigger into the directory ``out`` atomically (all or nothing); ``extra``
    writes more files (a report, plots) into the folder before it is committed."""
    with atomic_dir(out) as tmp:
        save_tensors(tmp / WEIGHTS, model.state_dict())
        if trigger:
            save_tensors(tmp / TRIGGER, trigger)
        write_json(tmp / META, meta)
        if extra is not None:
            extra(tmp)
    return Path(out)


def _model_dir(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS, META):
        path = path.parent
    if not path.is_dir():
        raise OnpError(f"model directory {path} does not exist")
    if not (path / WEIGHTS).is_file() or not (path / META).is_file():
        raise OnpError(f"{path} is not a saved model: it needs {WEIGHTS} and {META}")
    return path


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` strictly, turning a mismatch into one line that names the first problems."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
        raise OnpError(f"weights in {source} do not fit the architecture: " + "; ".join(parts))
    model.load_state_dict(state)


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a saved model directory, without building the model."""
    return read_json(_model_dir(path) / META)


def load_model(path: str | Path, arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a saved model directory; ``arch`` must name the user file again for user architectures."""
    d = _model_dir(path)
    meta = read_json(d / META)
    spec = ArchSpec.from_dict(meta.get("arch") or {})
    if is_user_spec(spec.name):
        if arch is None:
            raise OnpError(f"{d} uses the user architecture {spec.name!r}; name it with --arch to run its code")
        spec.name = arch
    elif arch is not None and arch != spec.name:
        raise OnpError(f"{d} holds a {spec.name!r} model, not {arch!r}")
    model = spec.build()
    history = (meta.get("slim") or {}).get("pruning_history")
    if history:  # a physically slimmed model: replay its channel removals on the fresh architecture
        shape = (meta.get("data") or {}).get("image_shape")
        if not shape:
            raise OnpError(f"{d} is a slimmed model without data.image_shape in its metadata")
        try:
            replay_history(model.eval(), history, torch.zeros(1, *shape))
        except Exception as e:  # noqa: BLE001 - a history that does not fit this architecture
            raise OnpError(f"cannot replay the pruning history of {d} on {spec.name!r}: {e}") from None
    load_weights(model, load_tensors(d / WEIGHTS), d / WEIGHTS)
    model.eval()
    return model, meta


def load_attack(path: str | Path, meta: dict[str, Any]) -> Attack | None:
    """Rebuild the attack recorded in a model's metadata, with its saved trigger."""
    cfg = meta.get("attack")
    if not cfg:
        return None
    spec = ArchSpec.from_dict(meta["arch"])
    shape = tuple(meta["data"]["image_shape"])
    attack = create_attack(cfg["name"], spec.num_classes, shape, target_label=cfg["target_label"],
                           poison_rate=cfg["poison_rate"], all_to_all=cfg["all_to_all"], seed=cfg["seed"],
                           **cfg.get("params", {}))
    trig = _model_dir(path) / TRIGGER
    if trig.is_file():
        attack.load_trigger_state(load_tensors(trig))
    return attack
