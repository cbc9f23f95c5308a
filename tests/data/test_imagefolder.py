"""imagefolder: class folders, label order, train/test folders, sizes, grayscale, statistics, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from onp.data import channel_stats, create_dataset
from onp.errors import OnpError

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def write(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (16, 16), fmt: str = "PNG",
          **save_kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.new("RGB", size, color).save(path, format=fmt, **save_kw)
    return path


def solid(color: tuple[int, ...], shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.uint8)[:, None, None].expand(shape)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Classes created out of order; files of every accepted suffix, in mixed case; a few files to ignore."""
    r = tmp_path / "imgs"
    write(r / "zebra" / "b.png", WHITE)
    write(r / "zebra" / "a.PNG", BLACK)
    write(r / "cat" / "x.bmp", RED, fmt="BMP")
    write(r / "cat" / "y.Ppm", GREEN, fmt="PPM")
    write(r / "cat" / "z.webp", BLUE, fmt="WEBP", lossless=True)
    write(r / "dog" / "only.png", BLUE)
    (r / "dog" / "notes.txt").write_text("not an image")
    (r / "dog" / "._only.png").write_bytes(b"macOS resource fork, not an image")
    (r / ".hidden_class").mkdir()
    (r / "README.md").write_text("a file beside the class folders")
    return r


def test_classes_sorted_and_labels_follow_them(root: Path) -> None:
    ds = create_dataset("imagefolder", root, "train")
    assert ds.classes == ["cat", "dog", "zebra"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 2, 2]
    assert ds.images.shape == (6, 3, 16, 16) and ds.images.dtype == torch.uint8
    # files sorted by name within a class: x.bmp, y.Ppm, z.webp | only.png | a.PNG, b.png
    for img, color in zip(ds.images, [RED, GREEN, BLUE, BLUE, BLACK, WHITE]):
        assert torch.equal(img, solid(color, (3, 16, 16)))
    assert ds.name == "imagefolder"
    assert ds.augment.crop_padding == 2 and ds.augment.hflip


def test_jpeg_suffixes_are_read(tmp_path: Path) -> None:
    write(tmp_path / "a" / "one.JPG", RED, fmt="JPEG")
    write(tmp_path / "a" / "two.jpeg", RED, fmt="JPEG")
    write(tmp_path / "b" / "three.Jpeg", GREEN, fmt="JPEG")
    ds = create_dataset("imagefolder", tmp_path, "train")
    assert ds.labels.tolist() == [0, 0, 1]


def test_mean_and_std_come_from_the_images(tmp_path: Path) -> None:
    write(tmp_path / "a" / "black.png", BLACK)
    write(tmp_path / "b" / "white.png", WHITE)
    ds = create_dataset("imagefolder", tmp_path, "train")
    assert ds.mean == (0.5, 0.5, 0.5)
    assert ds.std == pytest.approx((0.5,) * 3, abs=2e-3)  # sample std of 256 zeros and 256 ones
    assert (ds.mean, ds.std) == channel_stats(ds.images)


def test_train_and_test_folders(tmp_path: Path) -> None:
    for i in range(3):
        write(tmp_path / "train" / "a" / f"{i}.png", RED)
    write(tmp_path / "train" / "b" / "0.png", GREEN)
    write(tmp_path / "test" / "a" / "0.png", RED)
    write(tmp_path / "test" / "b" / "0.png", GREEN)
    write(tmp_path / "test" / "b" / "1.png", GREEN)
    train = create_dataset("imagefolder", tmp_path, "train")
    test = create_dataset("imagefolder", tmp_path, "test")
    assert train.classes == test.classes == ["a", "b"]
    assert train.labels.tolist() == [0, 0, 0, 1]
    assert test.labels.tolist() == [0, 1, 1]


def test_without_split_folders_both_splits_are_root(root: Path) -> None:
    train = create_dataset("imagefolder", root, "train")
    test = create_dataset("imagefolder", root, "test")
    assert torch.equal(train.images, test.images) and torch.equal(train.labels, test.labels)


def test_only_a_train_folder_is_a_class(tmp_path: Path) -> None:
    write(tmp_path / "train" / "0.png", RED)  # no test/: "train" is just a class name here
    write(tmp_path / "other" / "0.png", GREEN)
    assert create_dataset("imagefolder", tmp_path, "test").classes == ["other", "train"]


def test_size_mismatch_names_the_image(tmp_path: Path) -> None:
    first = write(tmp_path / "a" / "0.png", RED, (16, 16))
    write(tmp_path / "a" / "1.png", RED, (16, 16))
    odd = write(tmp_path / "b" / "0.png", GREEN, (20, 12))
    with pytest.raises(OnpError) as e:
        create_dataset("imagefolder", tmp_path, "train")
    msg = str(e.value)
    assert str(odd) in msg and "20x12" in msg and str(first) in msg and "16x16" in msg
    assert "--input-size N --resize" in msg and "\n" not in msg


def test_image_size_resizes(tmp_path: Path) -> None:
    write(tmp_path / "a" / "0.png", RED, (16, 16))
    write(tmp_path / "b" / "0.png", GREEN, (20, 12))
    ds = create_dataset("imagefolder", tmp_path, "train", image_size=8)
    assert ds.images.shape == (2, 3, 8, 8)
    assert torch.equal(ds.images[1], solid(GREEN, (3, 8, 8)))
    assert ds.augment.crop_padding == 1


def test_grayscale(root: Path) -> None:
    ds = create_dataset("imagefolder", root, "train", channels=1)
    assert ds.images.shape == (6, 1, 16, 16)
    want = [PIL.Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0))
            for c in [RED, GREEN, BLUE, BLUE, BLACK, WHITE]]
    assert ds.images[:, 0, 0, 0].tolist() == want
    assert len(ds.mean) == len(ds.std) == 1


def test_non_square_images_keep_their_size(tmp_path: Path) -> None:
    write(tmp_path / "a" / "0.png", RED, (24, 10))
    write(tmp_path / "b" / "0.png", GREEN, (24, 10))
    ds = create_dataset("imagefolder", tmp_path, "train")
    assert ds.image_shape == (3, 10, 24)


def test_corrupt_image_is_named(root: Path) -> None:
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(OnpError, match="cannot read image") as e:
        create_dataset("imagefolder", root, "train")
    assert str(bad) in str(e.value)


def test_truncated_image_is_named(root: Path) -> None:
    good = write(root / "dog" / "big.png", WHITE, (16, 16))
    noisy = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    noisy.save(good)
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(OnpError, match="cannot read image .*big.png"):
        create_dataset("imagefolder", root, "train")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(OnpError, match="does not exist") as e:
        create_dataset("imagefolder", tmp_path / "nope", "train")
    assert str(tmp_path / "nope") in str(e.value)


def test_no_class_folders(tmp_path: Path) -> None:
    write(tmp_path / "loose.png", RED)
    with pytest.raises(OnpError, match="no class folders"):
        create_dataset("imagefolder", tmp_path, "train")


def test_class_folder_without_images(root: Path) -> None:
    (root / "empty").mkdir()
    (root / "empty" / "labels.csv").write_text("a,b\n")
    with pytest.raises(OnpError, match="holds no images") as e:
        create_dataset("imagefolder", root, "train")
    assert str(root / "empty") in str(e.value)


@pytest.mark.parametrize("kw,match", [({"channels": 2}, "channels must be 1 or 3"),
                                      ({"image_size": 0}, "image_size must be positive")])
def test_bad_arguments(root: Path, kw: dict, match: str) -> None:
    with pytest.raises(OnpError, match=match):
        create_dataset("imagefolder", root, "train", **kw)


def test_no_root() -> None:
    with pytest.raises(OnpError, match="data root"):
        create_dataset("imagefolder", None, "train")
