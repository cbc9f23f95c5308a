"""The in-memory image dataset every loader returns, and the batch augmentation it declares."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from onp.errors import OnpError


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation, applied to whole batches of [0,1] tensors (no per-image Python loop).

    Args:
        crop_padding: random crop after zero padding by this many pixels (0: none).
        hflip: random horizontal flip with probability 0.5 (off for traffic signs and digits).
    """

    crop_padding: int = 0
    hflip: bool = False

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment a batch ``x`` of shape (B, C, H, W)."""
        b, _, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(x.device)
            rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # (B, H)
            cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # (B, W)
            bidx = torch.arange(b, device=x.device)[:, None, None]
            # gather (B, C, H, W) from padded via advanced indexing on the spatial axes
            x = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.hflip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x.contiguous()


@dataclass
class ImageDataset:
    """A labelled image set held in memory as uint8.

    Args:
        images: uint8 tensor of shape (N, C, H, W).
        labels: int64 tensor of shape (N,), values in ``[0, len(classes))``.
        classes: class names in label order.
        mean: per-channel mean of the training split (x/255), for the model's normalization layer.
        std: per-channel standard deviation of the training split.
        augment: the training augmentation this dataset calls for.
        name: registry name.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = field(default_factory=Augment)
    name: str = ""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")
        self.labels = self.labels.long()
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise OnpError(f"{self.name or 'dataset'}: labels outside [0, {len(self.classes)})")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    def float_images(self, idx: Tensor | slice | None = None) -> Tensor:
        """Images (all, or ``idx``) as float32 in [0, 1]."""
        x = self.images if idx is None else self.images[idx]
        return x.float().div_(255.0)

    def subset(self, idx: Tensor) -> ImageDataset:
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.mean, self.std, self.augment,
                            self.name)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (sample) standard deviation of uint8 images (N, C, H, W), as x/255.

    Sums are taken over chunks of images, so the memory used stays small even for a large dataset (a float64
    copy of all of CIFAR-10 would take 1.2 GB).
    """
    c = images.shape[1]
    n = images.shape[0] * images.shape[2] * images.shape[3]
    if n < 2:
        raise OnpError("channel statistics need at least two pixels")
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for chunk in images.split(1024):
        x = chunk.double()
        s1 += x.sum(dim=(0, 2, 3))
        s2 += x.square().sum(dim=(0, 2, 3))
    mean = s1 / n
    var = ((s2 - n * mean.square()) / (n - 1)).clamp_min(0.0)
    mean, std = mean / 255.0, var.sqrt() / 255.0
    return tuple(round(float(m), 4) for m in mean), tuple(round(max(float(s), 1e-3), 4) for s in std)


def read_image(path: Path, mode: str = "RGB", size: int | None = None) -> np.ndarray:
    """Decode one image file with Pillow into a uint8 array, (H, W) for mode "L" or (H, W, 3) for "RGB".

    Args:
        path: the image file.
        mode: Pillow mode to convert to ("RGB" or "L").
        size: if given, resize to ``size`` x ``size`` (bilinear).

    Raises:
        OnpError: naming ``path``, if it cannot be read or decoded (missing, truncated, not an image).
    """
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), getattr(Image, "Resampling", Image).BILINEAR)  # Pillow < 9.1
            return np.asarray(im, dtype=np.uint8)
    except Image.UnidentifiedImageError:  # its own message repeats the path
        raise OnpError(f"cannot read image {path}: not an image format Pillow recognises") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # e.g. "image file is truncated"
        raise OnpError(f"cannot read image {path}: {e}") from None
