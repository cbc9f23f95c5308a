"""Shuffled index batches over in-memory data, for the step- and epoch-counted loops of the defenses."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def batches(n: int, batch_size: int, generator: torch.Generator, epochs: int = 1) -> Iterator[Tensor]:
    """Index batches over ``n`` samples for ``epochs`` shuffled passes."""
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for s in range(0, n, batch_size):
            yield order[s:s + batch_size]


def batch_steps(n: int, batch_size: int, generator: torch.Generator, count: int) -> Iterator[Tensor]:
    """Exactly ``count`` index batches over ``n`` samples, reshuffled at every pass (for step-counted loops)."""
    step = 0
    while step < count:
        for idx in batches(n, batch_size, generator):
            if step >= count:
                return
            yield idx
            step += 1
