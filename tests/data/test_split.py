"""defense_split: class balance, remainders, determinism, exclusions, fractions, errors."""

from __future__ import annotations

import pytest
import torch

from onp.data import defense_split
from onp.errors import OnpError


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    """CIFAR-10-like training labels: 5,000 per class, shuffled."""
    y = torch.arange(10).repeat_interleave(5_000)
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(123))]


def counts(labels: torch.Tensor, idx: torch.Tensor) -> list[int]:
    return torch.bincount(labels[idx], minlength=10).tolist()


def test_balanced(labels: torch.Tensor) -> None:
    idx = defense_split(labels, 10, size=500, seed=0)
    assert idx.dtype == torch.int64 and len(idx) == 500
    assert counts(labels, idx) == [50] * 10
    assert torch.equal(idx, idx.sort().values) and len(idx.unique()) == 500


def test_remainder_goes_to_the_lowest_classes(labels: torch.Tensor) -> None:
    idx = defense_split(labels, 10, size=505, seed=0)
    assert counts(labels, idx) == [51] * 5 + [50] * 5


def test_deterministic_for_a_seed(labels: torch.Tensor) -> None:
    a = defense_split(labels, 10, size=500, seed=7)
    assert torch.equal(a, defense_split(labels, 10, size=500, seed=7))
    b = defense_split(labels, 10, size=500, seed=8)
    assert not torch.equal(a, b)
    assert counts(labels, b) == [50] * 10


def test_does_not_depend_on_the_global_rng(labels: torch.Tensor) -> None:
    torch.manual_seed(0)
    a = defense_split(labels, 10, size=100, seed=3)
    torch.manual_seed(1)
    assert torch.equal(a, defense_split(labels, 10, size=100, seed=3))


def test_respects_exclude(labels: torch.Tensor) -> None:
    chosen = defense_split(labels, 10, size=500, seed=0)
    exclude = torch.arange(0, 50_000, 2)  # every even index, and with it half of the first pick
    idx = defense_split(labels, 10, size=500, seed=0, exclude=exclude)
    assert not (idx % 2 == 0).any()
    assert counts(labels, idx) == [50] * 10
    assert not torch.equal(idx, chosen)


def test_exclude_that_empties_a_class(labels: torch.Tensor) -> None:
    exclude = torch.nonzero(labels == 3).flatten()[:4_990]  # class 3 keeps 10 images
    with pytest.raises(OnpError, match="class 3 has 10 images, fewer than the 50"):
        defense_split(labels, 10, size=500, exclude=exclude)


def test_fraction(labels: torch.Tensor) -> None:
    idx = defense_split(labels, 10, fraction=0.01, seed=0)
    assert len(idx) == 500 and counts(labels, idx) == [50] * 10
    assert torch.equal(idx, defense_split(labels, 10, size=500, seed=0))


def test_whole_pool(labels: torch.Tensor) -> None:
    assert torch.equal(defense_split(labels, 10, fraction=1.0), torch.arange(50_000))


def test_size_smaller_than_the_classes(labels: torch.Tensor) -> None:
    with pytest.raises(OnpError, match="defense split of 9 images is smaller than the 10 classes"):
        defense_split(labels, 10, size=9)
    with pytest.raises(OnpError, match="smaller than the 10 classes"):
        defense_split(labels, 10, fraction=0.0001)  # 5 images


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, 2.0])
def test_fraction_outside_range(labels: torch.Tensor, fraction: float) -> None:
    with pytest.raises(OnpError, match=r"defense fraction must be in \(0, 1\]"):
        defense_split(labels, 10, fraction=fraction)


def test_size_xor_fraction(labels: torch.Tensor) -> None:
    with pytest.raises(OnpError, match="either a size or a fraction"):
        defense_split(labels, 10)
    with pytest.raises(OnpError, match="either a size or a fraction"):
        defense_split(labels, 10, size=500, fraction=0.01)
