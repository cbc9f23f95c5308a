"""onp: remove backdoors from image classifiers by Optimized Neuron Pruning.

Sub-packages: :mod:`onp.data` (datasets), :mod:`onp.models` (architectures), :mod:`onp.attacks` (backdoor attacks),
:mod:`onp.scores` (per-neuron evidence shared by defenses), :mod:`onp.graph` (neurons and their graph),
:mod:`onp.defenses` (ONP, in :mod:`onp.defenses.onp`, and the baselines), :mod:`onp.pipeline` (defend one model),
:mod:`onp.bench` (benchmark and report). docs/design.md draws the layers.
"""

from onp.errors import OnpError
from onp.version import __version__

__all__ = ["OnpError", "__version__"]
