"""GTSRB, the German Traffic Sign Recognition Benchmark (Stallkamp et al., IJCNN 2011), official layout.

Training images are ``GTSRB/Final_Training/Images/000NN/*.ppm`` with one ``GT-000NN.csv`` per class folder;
test images are ``GTSRB/Final_Test/Images/*.ppm`` with their labels in ``GT-final_test.csv`` from the separate
ground-truth archive. The CSVs are semicolon-separated with the header
``Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId``. Images come in sizes from 15x15 to 250x250 and
are resized (whole, not cropped to the ROI) to ``image_size`` x ``image_size``.

Decoding the ~39,000 training images takes a while, so the decoded arrays are cached in an ``.npz`` inside the
``GTSRB`` folder when it is writable. The cache is keyed on the split and image size and carries a fingerprint
of the CSVs: if a CSV changes, or the cache is unreadable, it is rebuilt.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from onp.data.base import Augment, ImageDataset, read_image
from onp.data.download import download_and_extract
from onp.data.registry import register_dataset
from onp.errors import OnpError

log = logging.getLogger(__name__)

NUM_CLASSES = 43
MEAN = (0.3403, 0.3121, 0.3214)
STD = (0.2724, 0.2608, 0.2669)
BASE_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
TRAIN_ZIP = ("GTSRB_Final_Training_Images.zip", "f33fd80ac59bff73c82d25ab499e03a3")
TEST_ZIP = ("GTSRB_Final_Test_Images.zip", "c7e4e6327067d32654124b0fe9e82185")
TEST_GT_ZIP = ("GTSRB_Final_Test_GT.zip", "fe31e9c9270bbcd7b84b7f21a9d9d9e5")
_TEST_GT = "GT-final_test.csv"
_CACHE_VERSION = "1"

# (image path, label, the CSV that lists it: named in error messages)
_Entry = tuple[Path, int, Path]


def _locate(root: Path) -> tuple[Path, Path]:
    """``(top, base)``: where the archives unpack, and the ``GTSRB`` folder. ``root`` may be either."""
    if (root / "GTSRB").is_dir():
        return root, root / "GTSRB"
    if root.name == "GTSRB" or (root / "Final_Training").is_dir() or (root / "Final_Test").is_dir():
        return root.parent, root
    return root, root / "GTSRB"


def _test_gt_candidates(top: Path, base: Path) -> list[Path]:
    cands = [top / _TEST_GT, base / _TEST_GT, base / "Final_Test" / "Images" / _TEST_GT]
    return list(dict.fromkeys(cands))


def _find_test_gt(top: Path, base: Path) -> Path | None:
    return next((p for p in _test_gt_candidates(top, base) if p.is_file()), None)


def _read_gt(csv_path: Path, image_dir: Path) -> tuple[list[_Entry], bytes]:
    """Rows of one GT csv as entries, and the file's bytes (for the cache fingerprint)."""
    raw = csv_path.read_bytes()
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig", errors="replace")), delimiter=";")
    fields = [f.strip() for f in reader.fieldnames or []]
    if "Filename" not in fields or "ClassId" not in fields:
        raise OnpError(f"{csv_path} has no Filename and ClassId columns (header {';'.join(fields) or 'missing'}); "
                       "for the test split use GT-final_test.csv from GTSRB_Final_Test_GT.zip")
    reader.fieldnames = fields
    entries: list[_Entry] = []
    for row in reader:
        name, cid = (row.get("Filename") or "").strip(), (row.get("ClassId") or "").strip()
        if not name:
            raise OnpError(f"{csv_path} line {reader.line_num}: empty Filename")
        try:
            label = int(cid)
        except ValueError:
            label = -1
        if not 0 <= label < NUM_CLASSES:
            raise OnpError(f"{csv_path} line {reader.line_num}: ClassId {cid!r} is not an integer in "
                           f"0..{NUM_CLASSES - 1}")
        entries.append((image_dir / name, label, csv_path))
    return entries, raw


def _list_train(root: Path, base: Path) -> tuple[list[_Entry], list[bytes]]:
    images = base / "Final_Training" / "Images"
    if not images.is_dir():
        raise OnpError(f"no GTSRB/Final_Training/Images in {root} "
                       f"(pass --data-root, or fetch it with onp attack --download)")
    class_dirs = sorted(d for d in images.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise OnpError(f"no class folders (00000..00042) in {images}")
    entries: list[_Entry] = []
    blobs: list[bytes] = []
    for d in class_dirs:
        gt = d / f"GT-{d.name}.csv"
        if not gt.is_file():
            raise OnpError(f"missing label file {gt}")
        rows, raw = _read_gt(gt, d)
        entries += rows
        blobs += [d.name.encode(), raw]
    return entries, blobs


def _list_test(root: Path, top: Path, base: Path) -> tuple[list[_Entry], list[bytes]]:
    images = base / "Final_Test" / "Images"
    if not images.is_dir():
        raise OnpError(f"no GTSRB/Final_Test/Images in {root} "
                       f"(pass --data-root, or fetch it with onp attack --download)")
    gt = _find_test_gt(top, base)
    if gt is None:
        searched = ", ".join(str(p) for p in _test_gt_candidates(top, base))
        raise OnpError(f"missing GTSRB test labels {_TEST_GT} (from GTSRB_Final_Test_GT.zip); looked in {searched}")
    rows, raw = _read_gt(gt, images)
    return rows, [raw]


def _fingerprint(split: str, image_size: int, blobs: list[bytes]) -> str:
    h = hashlib.sha1(f"gtsrb/{_CACHE_VERSION}/{split}/{image_size}".encode())
    for b in blobs:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _decode(entries: list[_Entry], image_size: int) -> np.ndarray:
    out = np.empty((len(entries), image_size, image_size, 3), dtype=np.uint8)
    for i, (path, _, csv_path) in enumerate(entries):
        if not path.is_file():
            raise OnpError(f"{csv_path} lists {path.name}, but {path} does not exist")
        out[i] = read_image(path, "RGB", image_size)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def _load_cache(path: Path, fingerprint: str, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["fingerprint"]) != fingerprint:
                log.info("%s is out of date; rebuilding it", path)
                return None
            images = z["images"]
    except Exception as e:  # noqa: BLE001  a broken cache (truncated, garbage, old format) only costs a rebuild
        log.warning("ignoring unreadable cache %s (%s); rebuilding it", path, e)
        return None
    if images.dtype != np.uint8 or images.shape != shape:
        log.warning("ignoring cache %s with images %s %s; rebuilding it", path, images.dtype, images.shape)
        return None
    return images


def _write_cache(path: Path, images: np.ndarray, fingerprint: str) -> None:
    if not os.access(path.parent, os.W_OK):
        log.info("not caching GTSRB: %s is not writable", path.parent)
        return
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, fingerprint=np.array(fingerprint))
        os.replace(tmp, path)  # readers see the old cache or the complete new one, never half a file
        tmp = None
    except OSError as e:  # a full disk must not fail the load that has already succeeded
        log.warning("could not write the GTSRB cache %s: %s", path, e)
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def _download(root: Path, split: str, base_url: str, md5s: dict[str, str] | None) -> None:
    top, base = _locate(root)
    if split == "train":
        wanted = [TRAIN_ZIP] if not (base / "Final_Training" / "Images").is_dir() else []
    else:
        wanted = [TEST_ZIP] if not (base / "Final_Test" / "Images").is_dir() else []
        if _find_test_gt(top, base) is None:
            wanted.append(TEST_GT_ZIP)
    for fname, md5 in wanted:
        download_and_extract(base_url.rstrip("/") + "/" + fname, (md5s or {}).get(fname, md5), top)


@register_dataset("gtsrb")
def gtsrb(root: Path | None, split: str, image_size: int = 32, download: bool = False,
          base_url: str = BASE_URL, md5s: dict[str, str] | None = None, **kw) -> ImageDataset:
    """GTSRB: 39,209 train and 12,630 test RGB images of 43 traffic-sign classes, resized to ``image_size``.

    Args:
        root: the folder holding ``GTSRB/`` (and ``GT-final_test.csv``), or the ``GTSRB`` folder itself.
        split: "train" or "test".
        image_size: side of the square images returned.
        download: fetch the official archives the split needs, if they are missing, into ``root``.
        base_url: where the archives live (tests point it at a local ``file://`` folder).
        md5s: override the expected MD5 of an archive, by file name.

    Classes are named by their ids ("0".."42"). Augmentation crops but never flips: a flipped sign can mean
    another sign.
    """
    if root is None:
        raise OnpError("gtsrb needs a data root (--data-root): the folder holding GTSRB/")
    if image_size < 1:
        raise OnpError(f"gtsrb image_size must be positive, got {image_size}")
    if download:
        _download(root, split, base_url, md5s)
    if not root.exists():
        raise OnpError(f"dataset folder {root} does not exist "
                       f"(pass --data-root, or fetch it with onp attack --download)")
    top, base = _locate(root)
    entries, blobs = _list_train(root, base) if split == "train" else _list_test(root, top, base)
    if not entries:
        raise OnpError(f"the GTSRB {split} labels in {root} list no images")
    fingerprint = _fingerprint(split, image_size, blobs)
    cache = base / f"onp_cache_{split}_{image_size}px.npz"
    shape = (len(entries), 3, image_size, image_size)
    images = _load_cache(cache, fingerprint, shape)
    if images is None:
        log.info("decoding %d GTSRB %s images (cached afterwards when %s is writable)", len(entries), split, base)
        images = _decode(entries, image_size)
        _write_cache(cache, images, fingerprint)
    labels = np.fromiter((e[1] for e in entries), dtype=np.int64, count=len(entries))
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), [str(i) for i in range(NUM_CLASSES)],
                        MEAN, STD, Augment(crop_padding=4, hflip=False), "gtsrb")
