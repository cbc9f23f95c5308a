"""Augment: random crop after zero padding, horizontal flip, determinism under a torch.Generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from onp.data import Augment


def batch(n: int = 16, c: int = 3, h: int = 8, w: int = 10, seed: int = 0) -> torch.Tensor:
    # random content: every window of the padded image is different, so a match pins down the offset
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def window_offsets(out: torch.Tensor, x: torch.Tensor, p: int) -> list[tuple[int, int]]:
    """For each output image, the (dy, dx) of the window of the zero-padded input it equals."""
    padded = F.pad(x, (p, p, p, p))
    h, w = x.shape[2:]
    found = []
    for o, pi in zip(out, padded):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(o, pi[:, dy:dy + h, dx:dx + w])]
        assert len(hits) == 1, "output is not a window of the padded input"
        found.append(hits[0])
    return found


def test_crop_keeps_shape_and_dtype() -> None:
    x = batch()
    out = Augment(crop_padding=4)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()


@pytest.mark.parametrize("p", [1, 2, 4])
def test_crop_is_a_window_of_the_padded_input(p: int) -> None:
    x = batch(n=32)
    out = Augment(crop_padding=p)(x, torch.Generator().manual_seed(1))
    offsets = window_offsets(out, x, p)
    assert len(set(offsets)) > 1  # offsets are drawn per image, not once per batch
    assert all(0 <= dy <= 2 * p and 0 <= dx <= 2 * p for dy, dx in offsets)


def test_one_image_against_a_manual_crop() -> None:
    x = batch(n=1, h=6, w=6)
    out = Augment(crop_padding=2)(x, torch.Generator().manual_seed(5))
    (dy, dx), = window_offsets(out, x, 2)
    manual = torch.zeros(3, 10, 10)
    manual[:, 2:8, 2:8] = x[0]
    assert torch.equal(out[0], manual[:, dy:dy + 6, dx:dx + 6])
    # the zero border shows up exactly where the window leaves the image
    if dy < 2:
        assert (out[0, :, : 2 - dy] == 0).all()


def test_hflip_flips_about_half() -> None:
    x = batch(n=1000, h=4, w=5)
    out = Augment(hflip=True)(x, torch.Generator().manual_seed(2))
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(3)).flatten(1).all(1)
    assert (same ^ flipped).all()  # each image is either untouched or mirrored, never both (random content)
    assert 400 < int(flipped.sum()) < 600


def test_no_augmentation_is_identity() -> None:
    x = batch()
    assert torch.equal(Augment()(x), x)


def test_deterministic_given_a_generator() -> None:
    aug = Augment(crop_padding=4, hflip=True)
    x = batch(n=64)
    a = aug(x, torch.Generator().manual_seed(42))
    b = aug(x, torch.Generator().manual_seed(42))
    c = aug(x, torch.Generator().manual_seed(43))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = torch.Generator().manual_seed(42)
    assert not torch.equal(aug(x, g), aug(x, g))  # the generator advances between batches


def test_works_on_uint8() -> None:
    x = (batch(n=4) * 255).to(torch.uint8)
    out = Augment(crop_padding=2, hflip=True)(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == x.shape
