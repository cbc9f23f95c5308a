"""scikit-learn's digits (UCI optical digits): 1,797 real 8x8 grayscale images, embedded, works offline; and the
same images at 16x16 (``digits16``, the demo's)."""

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
    return _digits(split, 1)


@register_dataset("digits16")
def digits16(root: Path | None, split: str, **kw) -> ImageDataset:
    """:func:`digits` at 16x16, each pixel a 2x2 block (the same split). The offline demo's: at 8x8 BadNets' 2x2
    trigger covers 6% of the image, more than the 4% ONP's patch triggers may cover (docs/design.md, ONP, the
    demo)."""
    return _digits(split, 2)


def _digits(split: str, scale: int) -> ImageDataset:
    # scikit-learn takes about a second to import, and only this dataset needs it
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    images = images.repeat(scale, axis=2).repeat(scale, axis=3)
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(_SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):  # stratified, so both splits stay balanced
        idx = np.flatnonzero(labels == c)
        test[rng.choice(idx, size=int(round(_TEST_FRACTION * len(idx))), replace=False)] = True
    keep = test if split == "test" else ~test
    name = "digits" if scale == 1 else f"digits{8 * scale}"
    return ImageDataset(torch.from_numpy(images[keep]), torch.from_numpy(labels[keep]),
                        [str(i) for i in range(10)], (0.3048,), (0.3756,), Augment(crop_padding=scale), name)
