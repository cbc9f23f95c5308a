"""Architectures (a registry) and the one input convention every command uses.

Convention: **every model takes images in [0, 1]** of shape (B, C, H, W) and carries its own normalization.
Registry models are built as ``Classifier(Normalize(mean, std), backbone)``; the mean and std are buffers, so
they travel inside the weights file. A user's architecture (``path/file.py:factory`` or ``pkg.module:factory``)
must take [0, 1] images too; ``create_model(..., mean=..., std=...)`` wraps it in a :class:`Normalize` when the
user gives statistics.
"""

# importing each architecture module registers it
from onp.models import mobilenet, resnet, small, vgg  # noqa: F401
from onp.models.normalize import Classifier, Normalize
from onp.models.registry import MODELS, create_model, list_models, register_model

__all__ = ["MODELS", "Classifier", "Normalize", "create_model", "list_models", "register_model"]
