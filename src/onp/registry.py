"""A small name -> factory registry shared by datasets, models, attacks and defenses (the timm pattern)."""

from __future__ import annotations

import fnmatch
import inspect
import math
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from onp.errors import OnpError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names raise an :class:`OnpError` that lists the valid ones.

    Args:
        kind: what the registry holds ("dataset", "model", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            valid = ", ".join(sorted(self._entries))
            raise OnpError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def param_hints(cls: type, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The annotated parameters of ``cls``: its ``param_types`` if it has them, else the keyword arguments of
    the ``__init__`` methods along its bases (a subclass passes ``**kw`` on to its base)."""
    own = getattr(cls, "param_types", None)
    if own is not None:
        return own()
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        resolved = typing.get_type_hints(init)
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD:
                if p.name != "self" and p.name in resolved and p.name not in skip:
                    hints[p.name] = resolved[p.name]
    return hints


def _problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint`` (numbers must also be finite and not negative), or None."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = [_problem(value, h) for h in options if h is not type(None)]
        return None if None in problems else problems[0]
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint in (int, float):
        ok = isinstance(value, int) if hint is int else isinstance(value, (int, float))
        if not ok or isinstance(value, bool):
            return f"must be {'an integer' if hint is int else 'a number'}"
        if not math.isfinite(value) or value < 0:
            return "must be a finite number, not negative"
        return None
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if origin in (Sequence, list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return "must be a list"
        inner = (typing.get_args(hint) or (Any,))[0]
        bad = [v for v in value if inner is not Any and _problem(v, inner)]
        return f"holds {bad[0]!r}, which {_problem(bad[0], inner)}" if bad else None
    return None


def check_params(what: str, cls: type, params: dict[str, Any], skip: frozenset[str] = frozenset()) -> None:
    """Refuse, before any work, a parameter ``cls`` does not have or a value of the wrong type or sign
    (``--set rho=abc``, ``mirror=maybe``, ``stop_below=-1``, ``batch_size=0``); ``what`` names it in the message,
    ``skip`` are parameters the caller sets itself."""
    hints = param_hints(cls, skip)
    for key, value in params.items():
        if key in getattr(cls, "fixed", {}):
            raise OnpError(f"{what} fixes {key}")
        if key not in hints:
            raise OnpError(f"{what} has no parameter {key!r}; valid: {', '.join(sorted(hints))}")
        problem = _problem(value, hints[key])
        if problem is None and key.endswith("batch_size") and value < 1:
            problem = "must be at least 1"
        if problem:
            raise OnpError(f"{what}: {key} {problem}, got {value!r}")
