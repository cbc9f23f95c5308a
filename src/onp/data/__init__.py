"""Datasets (a registry): every loader returns an in-memory :class:`ImageDataset` of uint8 images.

``create_dataset(name, root, split)`` loads one split; ``list_datasets()`` names them. Models take [0,1] images
and carry the dataset's normalization themselves (see :mod:`onp.models`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from onp.data.base import Augment, ImageDataset, channel_stats
from onp.registry import Registry


class DatasetLoader(Protocol):
    def __call__(self, root: Path | None, split: str, **kwargs: Any) -> ImageDataset: ...


DATASETS: Registry[DatasetLoader] = Registry("dataset")
register_dataset = DATASETS.register

from onp.data import cifar, digits, gtsrb, imagefolder  # noqa: E402,F401  (registration)
from onp.data.split import defense_split  # noqa: E402


def create_dataset(name: str, root: str | Path | None = None, split: str = "train", **kwargs: Any) -> ImageDataset:
    """Load ``split`` ("train" or "test") of the registered dataset ``name`` from ``root``."""
    from onp.errors import OnpError

    if split not in ("train", "test"):
        raise OnpError(f"unknown split {split!r}; valid: train, test")
    loader = DATASETS.get(name)
    ds = loader(Path(root).expanduser() if root is not None else None, split, **kwargs)
    ds.name = name
    return ds


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)


__all__ = ["Augment", "ImageDataset", "channel_stats", "create_dataset", "defense_split", "list_datasets",
           "register_dataset"]
