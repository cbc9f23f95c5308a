"""scikit-learn's digits (UCI optical digits): 1,797 real 8x8 grayscale images, embedded, works offline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from onp.data.base import Augment, ImageDataset
from onp.data.registry import register_dataset

_TEST_FRACTION = 0.25
_SPLIT_SEED = 0


@register_dataset("digits")
def digits(root: Path | None, split: str, **kw) -> ImageDataset:
    """Digits 0-9 as 1x8x8 uint8 images (0-16 scaled to 0-255); a fixed stratified 75/25 train/test split.

    ``root`` is ignored: the data ships inside scikit-learn.
    """
    # scikit-learn takes about a second to import, and only this dataset needs it
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(_SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):  # stratified, so both splits stay balanced
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, size=int(round(_TEST_FRACTION * len(idx))), replace=False)] = True
    keep = test if split == "test" else ~test
    return ImageDataset(torch.from_numpy(images[keep]), torch.from_numpy(labels[keep]),
                        [str(i) for i in range(10)], (0.3048,), (0.3756,), Augment(crop_padding=1), "digits")
