"""Suite-wide settings: one torch thread, so the tests stay out of the way of a training on the same machine."""

from __future__ import annotations

import os

# before torch starts its OpenMP pool (and inherited by the CLI subprocess test)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)
