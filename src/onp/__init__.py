"""onp: remove backdoors from image classifiers by Optimized Neuron Pruning.

Sub-packages: :mod:`onp.data` (datasets), :mod:`onp.models` (architectures), :mod:`onp.attacks`
(backdoor attacks), :mod:`onp.defenses` (ONP and baselines), :mod:`onp.graph` (neuron graphs),
:mod:`onp.rl` (the pruning agent), :mod:`onp.bench` (benchmark and report).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from onp.errors import OnpError

__all__ = ["OnpError", "__version__"]
