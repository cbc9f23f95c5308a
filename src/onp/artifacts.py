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
from onp.errors import OnpError, at_least
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
    def from_dict(cls, d: Any) -> ArchSpec:
        """The architecture entry of a model.json, which is untrusted input: every field is checked."""
        if not isinstance(d, dict) or not isinstance(d.get("name"), str):
            raise OnpError("model metadata has no architecture entry with a name")
        kwargs = d.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise OnpError("model metadata: arch.kwargs must be a mapping")
        at_least(d.get("num_classes"), 1, "model metadata: arch.num_classes")
        at_least(d.get("in_channels", 3), 1, "model metadata: arch.in_channels")
        width = kwargs.get("width")
        if width is not None:
            at_least(width, 1, "model metadata: arch.kwargs.width")
        return cls(d["name"], d["num_classes"], d.get("in_channels", 3), d.get("mean"), d.get("std"), dict(kwargs))


def save_model(out: str | Path, model: nn.Module, meta: dict[str, Any], trigger: dict[str, torch.Tensor] | None = None,
               extra: Callable[[Path], None] | None = None, overwrite: bool = False) -> Path:
    """Write weights, metadata and trigger into the directory ``out`` atomically (all or nothing); ``extra``
    writes more files (a report, plots) into the folder before it is committed. An earlier onp output at ``out``
    is replaced only with ``overwrite``; anything else there is refused (:func:`onp.utils.io.check_output`)."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
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


def check_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse ``state`` unless it has exactly ``model``'s tensors, shapes and kinds (a float parameter given as
    integers loaded and gave 9.78% accuracy), with one line that names the first problems. ``model`` may live on
    the meta device, so that an absurd architecture is caught before its tensors are allocated."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    kind = [f"{k} is {state[k].dtype}" for k, v in own.items()
            if k in state and v.is_floating_point() and not state[k].is_floating_point()]
    if missing or unexpected or wrong or kind:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
        if kind:
            parts.append(f"{len(kind)} not floating point (e.g. {kind[0]})")
        raise OnpError(f"weights in {source} do not fit the architecture: " + "; ".join(parts))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` strictly (:func:`check_weights` first)."""
    check_weights(model, state, source)
    model.load_state_dict(state)


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a saved model directory, without building the model (a mapping, else one error line)."""
    where = _model_dir(path) / META
    return check_meta(read_json(where), where)


def check_meta(meta: Any, where: str | Path) -> dict[str, Any]:
    """``meta`` if it is a mapping whose ``data.image_shape`` (when present) is three positive integers."""
    if not isinstance(meta, dict):
        raise OnpError(f"{where} must hold a mapping, not {type(meta).__name__}")
    shape = (meta.get("data") or {}).get("image_shape") if isinstance(meta.get("data"), dict) else None
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in shape)):
        raise OnpError(f"{where}: data.image_shape must be three positive integers, got {shape!r}")
    return meta


def load_model(path: str | Path, arch: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a saved model directory; ``arch`` must name the user file again for user architectures."""
    d = _model_dir(path)
    meta = read_model_meta(d)
    spec = ArchSpec.from_dict(meta.get("arch"))
    if is_user_spec(spec.name):
        if arch is None:
            raise OnpError(f"{d} uses the user architecture {spec.name!r}; name it with --arch to run its code")
        spec.name = arch
    elif arch is not None and arch != spec.name:
        raise OnpError(f"{d} holds a {spec.name!r} model, not {arch!r}")
    state = load_tensors(d / WEIGHTS)
    history = (meta.get("slim") or {}).get("pruning_history")
    if not history:
        try:
            with torch.device("meta"):  # shapes only: an absurd width is refused before anything is allocated
                probe = spec.build()
        except Exception:  # noqa: BLE001 - an architecture that cannot be built without data; the real build says
            probe = None
        if probe is not None:
            check_weights(probe, state, d / WEIGHTS)
    model = spec.build()
    if history:  # a physically slimmed model: replay its channel removals on the fresh architecture
        shape = (meta.get("data") or {}).get("image_shape")
        if not shape:
            raise OnpError(f"{d} is a slimmed model without data.image_shape in its metadata")
        try:
            replay_history(model.eval(), history, torch.zeros(1, *shape))
        except Exception as e:  # noqa: BLE001 - a history that does not fit this architecture
            raise OnpError(f"cannot replay the pruning history of {d} on {spec.name!r}: {e}") from None
    load_weights(model, state, d / WEIGHTS)
    model.eval()
    return model, meta


def recorded_data_root(meta: dict[str, Any], model_dir: str | Path) -> str | None:
    """The dataset folder a model was made with. A relative one (the benchmark's ``../shared/data/cifar10``) is
    taken from the current folder if it is there, else from the nearest folder above the model that has it, so a
    zoo model finds its data from anywhere."""
    root = ((meta.get("config") or {}).get("data") or {}).get("root")
    if not isinstance(root, str) or Path(root).is_absolute() or Path(root).exists():
        return root if isinstance(root, str) else None
    for base in Path(model_dir).resolve().parents:
        if (base / root).is_dir():
            return str(base / root)
    return root


def load_attack(path: str | Path, meta: dict[str, Any]) -> Attack | None:
    """Rebuild the attack recorded in a model's metadata, with its saved trigger."""
    cfg = meta.get("attack")
    if not cfg:
        return None
    need = {"name": str, "target_label": int, "poison_rate": (int, float), "all_to_all": bool, "seed": int}
    if not isinstance(cfg, dict):
        raise OnpError(f"{path}: the recorded attack is not a mapping")
    for key, kind in need.items():
        if not isinstance(cfg.get(key), kind):
            raise OnpError(f"{path}: the recorded attack has no valid {key}")
    params = cfg.get("params") or {}
    if not isinstance(params, dict):
        raise OnpError(f"{path}: the recorded attack's params are not a mapping")
    spec = ArchSpec.from_dict(meta.get("arch"))
    shape = (meta.get("data") or {}).get("image_shape")
    if not shape:
        raise OnpError(f"{path}: the model records an attack but no data.image_shape")
    attack = create_attack(cfg["name"], spec.num_classes, tuple(shape), target_label=cfg["target_label"],
                           poison_rate=cfg["poison_rate"], all_to_all=cfg["all_to_all"], seed=cfg["seed"], **params)
    trig = _model_dir(path) / TRIGGER
    if trig.is_file():
        attack.load_trigger_state(load_tensors(trig))
    return attack
