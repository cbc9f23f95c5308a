"""Datasets (a registry): every loader returns an in-memory :class:`ImageDataset` of uint8 images.

``create_dataset(name, root, split)`` loads one split; ``list_datasets()`` names them. Models take [0,1] images
and carry the dataset's normalization themselves (see :mod:`onp.models`).
"""

# importing each loader module registers it
from onp.data import cifar, digits, gtsrb, imagefolder  # noqa: F401
from onp.data.base import Augment, ImageDataset, channel_stats
from onp.data.registry import DATASETS, create_dataset, list_datasets, register_dataset
from onp.data.split import defense_split, holdout_split

__all__ = ["DATASETS", "Augment", "ImageDataset", "channel_stats", "create_dataset", "defense_split",
           "holdout_split", "list_datasets", "register_dataset"]
