"""Your own images: one folder per class, ``root/<class_name>/<image files>`` (torchvision's ImageFolder layout).

Splits: if ``root`` holds both ``train/`` and ``test/`` folders, ``split`` picks one of them
(``root/train/<class_name>/...``); otherwise ``root`` itself is used for *both* splits, so train and test are the
same images. Use that only to try things out; pass separate folders to measure anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from onp.data.base import Augment, ImageDataset, channel_stats, read_image
from onp.data.registry import register_dataset
from onp.errors import OnpError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"})
_MODES = {1: "L", 3: "RGB"}
MAX_SIDE = 1024  # 20 images of 4000x4000 ran out of memory in channel_stats
RESIZE_HINT = "resize them, or pass --input-size N --resize to onp repair to resize every image to NxN"


def _split_folder(root: Path, split: str) -> Path:
    if (root / "train").is_dir() and (root / "test").is_dir():
        return root / split
    log.info("%s has no train/ and test/ folders: using it for the %s split", root, split)
    return root


def _image_files(folder: Path) -> list[Path]:
    # hidden files are skipped: macOS leaves "._name.jpg" resource forks that are not images
    return sorted(f for f in folder.iterdir()
                  if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))


@register_dataset("imagefolder")
def imagefolder(root: Path | None, split: str, image_size: int | None = None, channels: int = 3,
                expect_size: int | None = None, **kw) -> ImageDataset:
    """Images in class folders; labels follow the sorted folder names.

    Args:
        root: the folder of class folders, or of ``train/`` and ``test/`` folders of class folders.
        split: "train" or "test" (see the module docstring for folders without that split).
        image_size: resize every image to this square size (bilinear); None keeps the size, which must then be
            the same for all images.
        channels: 3 for RGB, 1 for grayscale.
        expect_size: without ``image_size``, the side the images must have (a model's input): the first image
            of another size is refused before the others are read.

    Files with the suffixes in ``IMAGE_SUFFIXES`` (any case) are read; other files are ignored. Mean and std are
    those of the images loaded, so take a model's normalization from the training split.
    """
    if root is None:
        raise OnpError("imagefolder needs a data root (--data-root): a folder with one subfolder per class")
    if channels not in _MODES:
        raise OnpError(f"imagefolder channels must be 1 or 3, got {channels}")
    if image_size is not None and image_size < 1:
        raise OnpError(f"imagefolder image_size must be positive, got {image_size}")
    if not root.is_dir():
        raise OnpError(f"dataset folder {root} does not exist")
    folder = _split_folder(root, split)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise OnpError(f"no class folders in {folder}: expected {folder}/<class_name>/<images>")
    if len(classes) < 2:
        raise OnpError(f"{folder} holds one class folder ({classes[0]}); a classifier needs images of at least two "
                       "classes")

    arrays: list[np.ndarray] = []
    labels: list[int] = []
    first: Path | None = None
    for label, name in enumerate(classes):
        files = _image_files(folder / name)
        if not files:
            raise OnpError(f"class folder {folder / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in files:
            img = read_image(path, _MODES[channels], image_size)
            if first is None:
                first = path
                if image_size is None and expect_size is not None and img.shape[:2] != (expect_size, expect_size):
                    raise OnpError(f"the clean images are {img.shape[1]}x{img.shape[0]} ({path}) but the model takes "
                                   f"{expect_size}x{expect_size}; pass --resize to resize them")
                if image_size is None and max(img.shape[:2]) > MAX_SIDE:
                    raise OnpError(f"{path} is {img.shape[1]}x{img.shape[0]}, larger than any model onp repairs "
                                   f"takes ({MAX_SIDE}); {RESIZE_HINT}")
            elif img.shape != arrays[0].shape:
                h0, w0 = arrays[0].shape[:2]
                raise OnpError(f"{path} is {img.shape[1]}x{img.shape[0]} but {first} is {w0}x{h0}; {RESIZE_HINT}")
            arrays.append(img)
            labels.append(label)

    x = np.stack(arrays)
    x = x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)
    images = torch.from_numpy(np.ascontiguousarray(x))
    mean, std = channel_stats(images)
    size = image_size if image_size is not None else int(images.shape[2])
    return ImageDataset(images, torch.tensor(labels, dtype=torch.int64), classes, mean, std,
                        Augment(crop_padding=size // 8, hflip=True), "imagefolder")
