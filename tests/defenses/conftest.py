"""What the defense tests share."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from onp.models import create_model


@pytest.fixture
def small_net() -> Callable[[], nn.Module]:
    """A factory of the same small CNN (width 8, one channel, ten classes) in eval mode: each call builds it afresh
    from seed 0, so two calls give two equal models."""

    def build() -> nn.Module:
        torch.manual_seed(0)
        return create_model("small_cnn", 10, 1, (0.3,), (0.38,), width=8).eval()

    return build
