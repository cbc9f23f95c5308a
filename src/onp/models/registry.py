"""The registry of architectures: ``register_model`` (a decorator on a factory), ``create_model``,
``list_models``; a user's architecture file is called here, and only because the user named it."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Protocol

from torch import nn

from onp.errors import OnpError, at_least
from onp.models.normalize import Classifier, Normalize
from onp.models.user import is_user_spec, load_user_factory
from onp.registry import Registry


class ModelFactory(Protocol):
    def __call__(self, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module: ...


MODELS: Registry[ModelFactory] = Registry("model")
register_model = MODELS.register


def create_model(name: str, num_classes: int, in_channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **kwargs: Any) -> nn.Module:
    """Build a classifier taking [0,1] images.

    Args:
        name: a registry name (``resnet18``) or a user spec (``path/to/file.py:factory``, ``pkg.mod:factory``).
            A user file is imported only here, because the user named it.
        num_classes: number of output logits.
        in_channels: image channels.
        mean, std: normalization statistics; registry models always get a :class:`Normalize` (identity when
            omitted), user models only when given.
        **kwargs: passed to the factory (for example ``width=16``).
    """
    at_least(num_classes, 1, "num_classes")
    at_least(in_channels, 1, "in_channels")
    _check_stats(mean, std, in_channels)
    if is_user_spec(name):
        backbone = _call_user(load_user_factory(name), num_classes, kwargs)
        if mean is None:
            return backbone
    else:
        factory = MODELS.get(name)
        try:
            backbone = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
        except TypeError as e:
            raise OnpError(f"bad arguments for model {name!r}: {e}") from None
    c = len(mean) if mean is not None else in_channels
    return Classifier(Normalize(mean or [0.0] * c, std or [1.0] * c), backbone)


def _check_stats(mean: Sequence[float] | None, std: Sequence[float] | None, channels: int) -> None:
    """Refuse normalization statistics that are not one finite number per channel, with std above 0."""
    for key, stats in (("mean", mean), ("std", std)):
        if stats is None:
            continue
        ok = isinstance(stats, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in stats)
        if not ok or len(stats) != channels:
            raise OnpError(f"--{key} must be {channels} finite numbers (one per channel), got {stats!r}")
    if std is not None and min(std) <= 0:
        raise OnpError(f"--std must be above 0 for every channel, got {list(std)}")
    if (mean is None) != (std is None):
        raise OnpError("give --mean and --std together")


def _call_user(factory: Any, num_classes: int, kwargs: dict[str, Any]) -> nn.Module:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "num_classes" in params or takes_any:
        kwargs = {"num_classes": num_classes, **kwargs}
    try:
        model = factory(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's factory failed; say so in one line
        raise OnpError(f"the architecture factory failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise OnpError(f"the architecture factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)
