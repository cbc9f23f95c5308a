"""The dataset registry, parametrized over every registered loader, and the offline digits set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from onp.data import ImageDataset, create_dataset, list_datasets
from onp.errors import OnpError


def test_list_datasets() -> None:
    names = list_datasets()
    assert {"cifar10", "cifar100", "gtsrb", "imagefolder", "digits", "digits16"} <= set(names)
    assert names == sorted(names)
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(OnpError, match="unknown dataset 'mnist'") as e:
        create_dataset("mnist", None, "train")
    msg = str(e.value)
    for name in list_datasets():
        assert name in msg


def test_unknown_split() -> None:
    with pytest.raises(OnpError, match="unknown split 'val'; valid: train, test"):
        create_dataset("digits", None, "val")


@pytest.mark.parametrize("name", list_datasets())
def test_every_loader_handles_a_missing_root(name: str, tmp_path: Path) -> None:
    """A missing folder is a user error naming the folder, or ignored by loaders that need no files."""
    root = tmp_path / "missing"
    try:
        ds = create_dataset(name, root, "train")
    except OnpError as e:
        assert str(root) in str(e)
    else:
        assert isinstance(ds, ImageDataset) and ds.name == name
    assert not root.exists()  # and nothing was created (no download unless asked)


@pytest.mark.parametrize("name", list_datasets())
def test_every_loader_needs_or_ignores_root_none(name: str) -> None:
    try:
        ds = create_dataset(name, None, "test")
    except OnpError as e:
        assert "data root" in str(e)
    else:
        assert isinstance(ds, ImageDataset)


@pytest.fixture(scope="module")
def digits() -> tuple[ImageDataset, ImageDataset]:
    return create_dataset("digits", None, "train"), create_dataset("digits", None, "test")


def test_digits_shapes(digits) -> None:
    train, test = digits
    assert train.images.shape == (1347, 1, 8, 8) and test.images.shape == (450, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert train.num_classes == test.num_classes == 10 and train.classes == [str(i) for i in range(10)]
    assert len(train) + len(test) == 1797
    assert train.name == "digits" and train.augment.crop_padding == 1 and not train.augment.hflip


def test_digits_split_is_stratified_and_a_partition(digits) -> None:
    from sklearn.datasets import load_digits

    train, test = digits
    assert torch.bincount(train.labels, minlength=10).min() >= 130
    assert torch.bincount(test.labels, minlength=10).min() >= 43
    # train + test is exactly the full set: same (image, label) rows, as multisets
    d = load_digits()
    full = np.concatenate([np.rint(d.images * (255 / 16)).reshape(1797, -1), d.target[:, None]], axis=1)
    ours = np.concatenate([torch.cat([train.images, test.images]).reshape(1797, -1).numpy(),
                           torch.cat([train.labels, test.labels]).numpy()[:, None]], axis=1)
    assert np.array_equal(np.unique(full.astype(np.int64), axis=0, return_counts=True)[1],
                          np.unique(ours.astype(np.int64), axis=0, return_counts=True)[1])
    assert np.array_equal(np.unique(full.astype(np.int64), axis=0), np.unique(ours.astype(np.int64), axis=0))


def test_digits_is_deterministic_and_normalization_matches(digits) -> None:
    train, _ = digits
    again = create_dataset("digits", None, "train")
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    x = train.images.double() / 255
    assert train.mean[0] == pytest.approx(float(x.mean()), abs=1e-3)
    assert train.std[0] == pytest.approx(float(x.std()), abs=1e-3)


def test_digits16_is_digits_with_each_pixel_a_2x2_block(digits) -> None:
    for split, small in zip(("train", "test"), digits):
        big = create_dataset("digits16", None, split)
        assert big.images.shape[1:] == (1, 16, 16) and torch.equal(big.labels, small.labels)
        assert torch.equal(big.images[:, :, ::2, ::2], small.images)
        assert torch.equal(big.images[:, :, 1::2, 1::2], small.images)
        assert big.name == "digits16" and big.augment.crop_padding == 2
