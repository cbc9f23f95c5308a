"""onp: remove backdoors from image classifiers by Optimized Neuron Pruning.

Sub-packages: :mod:`onp.data` (datasets), :mod:`onp.models` (architectures), :mod:`onp.attacks` (backdoor attacks),
:mod:`onp.scores` (per-neuron evidence shared by defenses), :mod:`onp.graph` (neurons and their graph),
:mod:`onp.defenses` (ONP, in :mod:`onp.defenses.onp`, and the baselines), :mod:`onp.pipeline` (defend one model),
:mod:`onp.bench` (benchmark and report). docs/design.md draws the layers.
"""

from __future__ import annotations

from typing import Any

from onp.errors import OnpError
from onp.version import __version__

__all__ = ["OnpError", "Repaired", "__version__", "repair"]


def __getattr__(name: str) -> Any:
    """``onp.repair`` and ``onp.Repaired`` (:mod:`onp.api`), imported on first use so that ``import onp`` (and
    ``onp --help``) does not load torch."""
    if name in ("repair", "Repaired"):
        from onp import api

        return getattr(api, name)
    raise AttributeError(f"module 'onp' has no attribute {name!r}")
