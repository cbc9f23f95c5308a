"""Fixtures for the data tests: the shared real CIFAR-10 files, and a few real (or random) CIFAR images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

# /work/main/tests/data/conftest.py -> /work/shared/data/cifar10 (the project's ../shared/data/cifar10)
CIFAR_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10"
CIFAR_BIN = CIFAR_ROOT / "cifar-10-batches-bin"


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    """The real CIFAR-10 binary set; tests that need it are skipped where it is absent."""
    if not all((CIFAR_BIN / f).is_file() for f in ("data_batch_1.bin", "test_batch.bin", "batches.meta.txt")):
        pytest.skip(f"the real CIFAR-10 binary files are not in {CIFAR_BIN}")
    return CIFAR_ROOT


@pytest.fixture(scope="session")
def cifar_sample() -> tuple[np.ndarray, np.ndarray]:
    """60 images as (60, 3072) uint8 rows and their labels: the first records of the real set, else random."""
    n = 60
    path = CIFAR_BIN / "data_batch_1.bin"
    if path.is_file():
        raw = np.fromfile(path, dtype=np.uint8, count=n * 3073).reshape(n, 3073)
        return raw[:, 1:].copy(), raw[:, 0].astype(np.int64)
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)
