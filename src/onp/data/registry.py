"""The registry of datasets: ``register_dataset`` (a decorator on a loader), ``create_dataset``,
``list_datasets``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from onp.data.base import ImageDataset
from onp.errors import OnpError
from onp.registry import Registry


class DatasetLoader(Protocol):
    def __call__(self, root: Path | None, split: str, **kwargs: Any) -> ImageDataset: ...


DATASETS: Registry[DatasetLoader] = Registry("dataset")
register_dataset = DATASETS.register


def create_dataset(name: str, root: str | Path | None = None, split: str = "train", **kwargs: Any) -> ImageDataset:
    """Load ``split`` ("train" or "test") of the registered dataset ``name`` from ``root``."""
    if split not in ("train", "test"):
        raise OnpError(f"unknown split {split!r}; valid: train, test")
    loader = DATASETS.get(name)
    ds = loader(Path(root).expanduser() if root is not None else None, split, **kwargs)
    ds.name = name
    return ds


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)
