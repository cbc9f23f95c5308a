"""The defense split: the small class-balanced clean set every defense gets (ONP.md's threat model)."""

from __future__ import annotations

import torch
from torch import Tensor

from onp.errors import OnpError


def defense_split(labels: Tensor, num_classes: int, size: int | None = None, fraction: float | None = None,
                  seed: int = 0, exclude: Tensor | None = None) -> Tensor:
    """Pick a class-balanced subset of indices, by ``size`` or by ``fraction`` of ``labels``.

    Each class gets ``size // num_classes`` indices, and the remainder goes one each to the lowest classes.
    The choice depends only on ``labels`` and ``seed``.

    Args:
        labels: (N,) int labels of the pool (the training set).
        num_classes: number of classes.
        size: number of indices to draw.
        fraction: alternatively, a fraction of ``len(labels)`` (0.01 -> 500 on CIFAR-10).
        seed: random seed.
        exclude: indices that may not be drawn (for example the poisoned ones when the pool is a training set).

    Returns:
        Sorted int64 indices into ``labels``.
    """
    if (size is None) == (fraction is None):
        raise OnpError("give the defense split either a size or a fraction")
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise OnpError(f"defense fraction must be in (0, 1], got {fraction}")
        size = int(round(fraction * len(labels)))
    assert size is not None
    if size < num_classes:
        raise OnpError(f"defense split of {size} images is smaller than the {num_classes} classes")
    allowed = torch.ones(len(labels), dtype=torch.bool)
    if exclude is not None:
        allowed[exclude] = False
    g = torch.Generator().manual_seed(seed)
    per, extra = divmod(size, num_classes)
    chosen = []
    for c in range(num_classes):
        pool = torch.nonzero((labels == c) & allowed).flatten()
        want = per + (1 if c < extra else 0)
        if len(pool) < want:
            raise OnpError(f"class {c} has {len(pool)} images, fewer than the {want} the defense split needs")
        chosen.append(pool[torch.randperm(len(pool), generator=g)[:want]])
    return torch.cat(chosen).sort().values


def holdout_split(labels: Tensor, num_classes: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(pool, rest)``: ``size`` indices drawn class-balanced with ``seed`` (a defender's pool, left out of a
    model's training) and all the others, both sorted. The same labels, size and seed give the same pool, so
    every model of a benchmark that holds out the same pool leaves out the same images."""
    pool = defense_split(labels, num_classes, size=size, seed=seed)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[pool] = False
    return pool, torch.nonzero(keep).flatten()
