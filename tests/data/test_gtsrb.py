"""GTSRB: a tiny fake of the official layout (ppm images + GT csv files), the cache, errors, zip download."""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from onp.data import create_dataset
from onp.errors import OnpError

HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
# class folder -> images as (width, height, colour); every image is one solid colour, so after any resize each
# pixel still equals that colour and the test can tell which image landed where
TRAIN = {
    0: [(30, 34, (255, 0, 0)), (45, 40, (0, 255, 0))],
    1: [(64, 64, (0, 0, 255))],
    42: [(25, 29, (10, 20, 30)), (40, 52, (200, 100, 50)), (33, 33, (7, 77, 177))],
}
TEST = [(31, 35, (1, 2, 3), 42), (50, 48, (90, 80, 70), 0), (28, 28, (250, 240, 230), 1), (60, 61, (5, 5, 5), 0)]


def write_ppm(path: Path, w: int, h: int, color: tuple[int, int, int]) -> None:
    PIL.Image.new("RGB", (w, h), color).save(path, format="PPM")


def write_layout(root: Path) -> Path:
    """The official layout as unpacked from the three zips: GTSRB/... and GT-final_test.csv beside it."""
    for cid, imgs in TRAIN.items():
        folder = root / "GTSRB" / "Final_Training" / "Images" / f"{cid:05d}"
        folder.mkdir(parents=True)
        rows = [HEADER]
        for j, (w, h, color) in enumerate(imgs):
            name = f"{j:05d}_{j:05d}.ppm"
            write_ppm(folder / name, w, h, color)
            rows.append(f"{name};{w};{h};5;5;{w - 5};{h - 5};{cid}")
        (folder / f"GT-{cid:05d}.csv").write_text("\n".join(rows) + "\n")
    test_dir = root / "GTSRB" / "Final_Test" / "Images"
    test_dir.mkdir(parents=True)
    rows = [HEADER]
    for j, (w, h, color, cid) in enumerate(TEST):
        write_ppm(test_dir / f"{j:05d}.ppm", w, h, color)
        rows.append(f"{j:05d}.ppm;{w};{h};5;5;{w - 5};{h - 5};{cid}")
    (root / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    # the test-images zip also ships labels-free GT-final_test.test.csv, which must not be taken for the labels
    (test_dir / "GT-final_test.test.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2\n")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_layout(tmp_path / "data")


def expected_train() -> tuple[list[tuple[int, int, int]], list[int]]:
    colors = [c for cid in sorted(TRAIN) for (_, _, c) in TRAIN[cid]]
    labels = [cid for cid in sorted(TRAIN) for _ in TRAIN[cid]]
    return colors, labels


def assert_solid(images: torch.Tensor, colors: list[tuple[int, int, int]]) -> None:
    assert len(images) == len(colors)
    for img, color in zip(images, colors):
        assert torch.equal(img, torch.tensor(color, dtype=torch.uint8)[:, None, None].expand_as(img))


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("PIL.Image.open called: the cache was not used")

    monkeypatch.setattr(PIL.Image, "open", refuse)


def test_train_split(root: Path) -> None:
    ds = create_dataset("gtsrb", root, "train")
    colors, labels = expected_train()
    assert ds.images.shape == (6, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == labels  # from ClassId; class folders in order, rows in CSV order
    assert_solid(ds.images, colors)
    assert ds.classes == [str(i) for i in range(43)]
    assert ds.mean == (0.3403, 0.3121, 0.3214) and ds.std == (0.2724, 0.2608, 0.2669)
    assert ds.augment.crop_padding == 4 and not ds.augment.hflip  # a mirrored sign is another sign
    assert ds.name == "gtsrb"


def test_test_split(root: Path) -> None:
    ds = create_dataset("gtsrb", root, "test")
    assert ds.images.shape == (4, 3, 32, 32)
    assert ds.labels.tolist() == [cid for *_, cid in TEST]
    assert_solid(ds.images, [c for _, _, c, _ in TEST])


def test_image_size(root: Path) -> None:
    ds = create_dataset("gtsrb", root, "train", image_size=20)
    assert ds.images.shape == (6, 3, 20, 20)
    assert_solid(ds.images, expected_train()[0])


def test_resize_is_bilinear_of_the_whole_image(root: Path) -> None:
    # a two-colour image: the loader must match Pillow's bilinear resize of the full image (no ROI crop)
    folder = root / "GTSRB" / "Final_Training" / "Images" / "00001"
    img = PIL.Image.new("RGB", (40, 30), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 30))
    img.save(folder / "00000_00000.ppm", format="PPM")
    ds = create_dataset("gtsrb", root, "train")
    want = np.asarray(img.resize((32, 32), PIL.Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(ds.images[2].numpy(), want)


@pytest.mark.parametrize("where", ["GT-final_test.csv", "GTSRB/GT-final_test.csv",
                                   "GTSRB/Final_Test/Images/GT-final_test.csv"])
def test_test_labels_found_in_each_place(root: Path, where: str) -> None:
    dest = root / where
    if dest != root / "GT-final_test.csv":
        shutil.move(root / "GT-final_test.csv", dest)
    assert create_dataset("gtsrb", root, "test").labels.tolist() == [cid for *_, cid in TEST]


def test_root_may_be_the_gtsrb_folder(root: Path) -> None:
    train = create_dataset("gtsrb", root / "GTSRB", "train")
    assert train.labels.tolist() == expected_train()[1]
    test = create_dataset("gtsrb", root / "GTSRB", "test")  # GT-final_test.csv sits beside GTSRB/
    assert test.labels.tolist() == [cid for *_, cid in TEST]


def test_second_load_uses_the_cache(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = create_dataset("gtsrb", root, "train")
    cache = root / "GTSRB" / "onp_cache_train_32px.npz"
    assert cache.is_file()
    assert not [p for p in (root / "GTSRB").iterdir() if p.name.endswith(".tmp")]
    forbid_decoding(monkeypatch)
    second = create_dataset("gtsrb", root, "train")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_cache_is_keyed_on_split_and_size(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create_dataset("gtsrb", root, "train")
    forbid_decoding(monkeypatch)
    with pytest.raises(AssertionError, match="cache was not used"):
        create_dataset("gtsrb", root, "train", image_size=16)
    with pytest.raises(AssertionError, match="cache was not used"):
        create_dataset("gtsrb", root, "test")


def test_changed_labels_invalidate_the_cache(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create_dataset("gtsrb", root, "test")
    gt = root / "GT-final_test.csv"
    gt.write_text(gt.read_text().replace(";42\n", ";41\n"))
    forbid_decoding(monkeypatch)
    with pytest.raises(AssertionError, match="cache was not used"):
        create_dataset("gtsrb", root, "test")
    monkeypatch.undo()
    assert create_dataset("gtsrb", root, "test").labels[0] == 41


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape"])
def test_corrupt_cache_is_rebuilt(root: Path, damage: str) -> None:
    first = create_dataset("gtsrb", root, "train")
    cache = root / "GTSRB" / "onp_cache_train_32px.npz"
    if damage == "garbage":
        cache.write_bytes(b"not an npz at all")
    elif damage == "truncated":
        cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    else:
        with np.load(cache) as z:
            fingerprint = z["fingerprint"]
        np.savez(cache, images=np.zeros((2, 3, 32, 32), np.uint8), fingerprint=fingerprint)
    again = create_dataset("gtsrb", root, "train")
    assert torch.equal(first.images, again.images)
    with np.load(cache) as z:  # and the cache was written anew
        assert np.array_equal(z["images"], first.images.numpy())


def test_cache_write_failure_does_not_fail_the_load(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def no_space(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_space)
    ds = create_dataset("gtsrb", root, "train")
    assert len(ds) == 6
    assert not list((root / "GTSRB").glob("*.npz"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_folder_is_not_cached(root: Path) -> None:
    gtsrb = root / "GTSRB"
    gtsrb.chmod(0o555)
    try:
        assert len(create_dataset("gtsrb", root, "train")) == 6
        assert not list(gtsrb.glob("*.npz"))
    finally:
        gtsrb.chmod(0o755)


# --------------------------------------------------------------------------- errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(OnpError, match="does not exist") as e:
        create_dataset("gtsrb", tmp_path / "nope", "train")
    assert str(tmp_path / "nope") in str(e.value)


def test_root_without_gtsrb(tmp_path: Path) -> None:
    with pytest.raises(OnpError, match="no GTSRB/Final_Training/Images"):
        create_dataset("gtsrb", tmp_path, "train")
    with pytest.raises(OnpError, match="no GTSRB/Final_Test/Images"):
        create_dataset("gtsrb", tmp_path, "test")


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "GTSRB" / "Final_Training" / "Images").mkdir(parents=True)
    with pytest.raises(OnpError, match="no class folders"):
        create_dataset("gtsrb", tmp_path, "train")


def test_missing_class_csv(root: Path) -> None:
    (root / "GTSRB" / "Final_Training" / "Images" / "00001" / "GT-00001.csv").unlink()
    with pytest.raises(OnpError, match="missing label file .*GT-00001.csv"):
        create_dataset("gtsrb", root, "train")


def test_missing_test_csv(root: Path) -> None:
    (root / "GT-final_test.csv").unlink()
    with pytest.raises(OnpError, match="GT-final_test.csv") as e:
        create_dataset("gtsrb", root, "test")
    assert "GTSRB_Final_Test_GT.zip" in str(e.value)


def test_csv_without_class_column(root: Path) -> None:
    shutil.copy(root / "GTSRB" / "Final_Test" / "Images" / "GT-final_test.test.csv", root / "GT-final_test.csv")
    with pytest.raises(OnpError, match="no Filename and ClassId columns"):
        create_dataset("gtsrb", root, "test")


def test_csv_row_whose_file_is_missing(root: Path) -> None:
    missing = root / "GTSRB" / "Final_Training" / "Images" / "00042" / "00001_00001.ppm"
    missing.unlink()
    with pytest.raises(OnpError, match="00001_00001.ppm") as e:
        create_dataset("gtsrb", root, "train")
    assert "does not exist" in str(e.value) and "GT-00042.csv" in str(e.value)


@pytest.mark.parametrize("bad", ["43", "-1", "seven", ""])
def test_class_id_outside_range(root: Path, bad: str) -> None:
    csv = root / "GTSRB" / "Final_Training" / "Images" / "00001" / "GT-00001.csv"
    csv.write_text(csv.read_text().replace(";1\n", f";{bad}\n"))
    with pytest.raises(OnpError, match=r"GT-00001.csv line 2: ClassId .* not an integer in 0..42"):
        create_dataset("gtsrb", root, "train")


@pytest.mark.parametrize("content", [b"garbage, not an image", b"P6\n64 64\n255\n" + b"\x00" * 100],
                         ids=["garbage", "truncated"])
def test_corrupt_image_is_named(root: Path, content: bytes) -> None:
    bad = root / "GTSRB" / "Final_Training" / "Images" / "00000" / "00001_00001.ppm"
    bad.write_bytes(content)
    with pytest.raises(OnpError, match="cannot read image") as e:
        create_dataset("gtsrb", root, "train")
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert not list((root / "GTSRB").glob("*.npz"))  # a failed load caches nothing


# --------------------------------------------------------------------------- download


def zip_tree(path: Path, base: Path, files: list[Path]) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        for f in files:
            zf.write(f, f.relative_to(base).as_posix())
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def server(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A local folder with the three official zips built from the fake layout, and their MD5s."""
    src = write_layout(tmp_path / "src")
    srv = tmp_path / "server"
    srv.mkdir()
    files = [p for p in sorted(src.rglob("*")) if p.is_file()]
    train = [p for p in files if "Final_Training" in p.parts]
    test = [p for p in files if "Final_Test" in p.parts]
    md5s = {"GTSRB_Final_Training_Images.zip": zip_tree(srv / "GTSRB_Final_Training_Images.zip", src, train),
            "GTSRB_Final_Test_Images.zip": zip_tree(srv / "GTSRB_Final_Test_Images.zip", src, test),
            "GTSRB_Final_Test_GT.zip": zip_tree(srv / "GTSRB_Final_Test_GT.zip", src, [src / "GT-final_test.csv"])}
    return srv, md5s


def test_download_train_from_local_zip(tmp_path: Path, server) -> None:
    srv, md5s = server
    root = tmp_path / "root"
    ds = create_dataset("gtsrb", root, "train", download=True, base_url=srv.as_uri(), md5s=md5s)
    assert ds.labels.tolist() == expected_train()[1]
    assert_solid(ds.images, expected_train()[0])
    assert sorted(p.name for p in root.iterdir()) == ["GTSRB"]  # only what the train split needs, no temp files


def test_download_test_fetches_images_and_labels(tmp_path: Path, server) -> None:
    srv, md5s = server
    root = tmp_path / "root"
    ds = create_dataset("gtsrb", root, "test", download=True, base_url=srv.as_uri() + "/", md5s=md5s)
    assert ds.labels.tolist() == [cid for *_, cid in TEST]
    assert sorted(p.name for p in root.iterdir()) == ["GT-final_test.csv", "GTSRB"]
    # with everything in place nothing is fetched again, even if the server is gone
    shutil.rmtree(srv)
    assert len(create_dataset("gtsrb", root, "test", download=True, base_url=srv.as_uri(), md5s=md5s)) == 4


def test_download_checksum_mismatch(tmp_path: Path, server) -> None:
    srv, md5s = server
    root = tmp_path / "root"
    bad = dict(md5s, **{"GTSRB_Final_Training_Images.zip": "0" * 32})
    with pytest.raises(OnpError, match="checksum mismatch .*GTSRB_Final_Training_Images.zip"):
        create_dataset("gtsrb", root, "train", download=True, base_url=srv.as_uri(), md5s=bad)
    assert not root.exists() or not any(root.iterdir())


def test_no_download_by_default(tmp_path: Path, server) -> None:
    with pytest.raises(OnpError, match="pass --data-root, or fetch it with onp attack --download"):
        create_dataset("gtsrb", tmp_path / "root", "train", base_url=server[0].as_uri(), md5s=server[1])
    assert not (tmp_path / "root").exists()
