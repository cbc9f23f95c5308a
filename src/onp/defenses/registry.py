"""The registry of defenses: ``register_defense`` (a class decorator), ``create_defense``, ``list_defenses``."""

from __future__ import annotations

from typing import Any

from onp.defenses.base import Defense
from onp.errors import OnpError
from onp.registry import Registry, check_params

DEFENSES: Registry[type[Defense]] = Registry("defense")


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Register a :class:`Defense` subclass under its ``name``."""
    return DEFENSES.register(cls.name)(cls)


def create_defense(name: str, **params: Any) -> Defense:
    """Build the registered defense ``name`` with hyperparameters ``params`` (defaults: its paper's), checked
    against their annotations first."""
    cls = DEFENSES.get(name)
    check_params(f"defense {name!r}", cls, params)
    try:
        return cls(**params)
    except TypeError as e:
        raise OnpError(f"bad parameters for defense {name!r}: {e}") from None


def list_defenses(pattern: str = "*") -> list[str]:
    return DEFENSES.names(pattern)
