"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) in both official layouts: binary and python pickles.

The python layout is read with a restricted unpickler that builds plain containers, numbers, bytes and numpy
arrays (the official batches hold their pixels as a uint8 array) and refuses every other class or function, so
a tampered batch file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from onp.data.base import Augment, ImageDataset
from onp.data.download import download_and_extract
from onp.data.registry import register_dataset
from onp.errors import OnpError

_IMG_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class _Spec:
    name: str
    bin_dir: str
    bin_files: dict[str, list[str]]
    label_bytes: int  # CIFAR-100 binary records carry (coarse, fine)
    py_dir: str
    py_files: dict[str, list[str]]
    py_label_key: str
    url: str
    md5: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = _Spec(
    name="cifar10",
    bin_dir="cifar-10-batches-bin",
    bin_files={"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]},
    label_bytes=1,
    py_dir="cifar-10-batches-py",
    py_files={"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    py_label_key="labels",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = _Spec(
    name="cifar100",
    bin_dir="cifar-100-binary",
    bin_files={"train": ["train.bin"], "test": ["test.bin"]},
    label_bytes=2,
    py_dir="cifar-100-python",
    py_files={"train": ["train"], "test": ["test"]},
    py_label_key="fine_labels",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


def _numpy_rebuilders() -> dict[tuple[str, str], object]:
    # Taken from numpy's own reducers, so they are right for numpy 1.x (numpy.core) and 2.x (numpy._core) alike.
    reconstruct = np.zeros(1).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                              ("_codecs", "encode"): codecs.encode}  # py3 protocol-2 bytes
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


_ALLOWED_GLOBALS = _numpy_rebuilders()


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _SafeUnpickler(pickle.Unpickler):
    """Builds containers, numbers, bytes and numpy arrays; any other global (``os.system``...) is refused."""

    def find_class(self, module: str, name: str):  # noqa: ANN201
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the official batches are Python 2 pickles whose str objects are raw bytes
            obj = _SafeUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except _RefusedGlobal as e:
        raise OnpError(f"refusing to load {path}: it references {e}, but a CIFAR batch holds only plain data "
                       "and arrays") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            OverflowError, MemoryError, RecursionError) as e:
        raise OnpError(f"{path} is truncated or corrupt: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise OnpError(f"{path} is not a CIFAR python batch")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _find_layout(root: Path, spec: _Spec) -> tuple[str, Path] | None:
    for layout, sub in (("bin", spec.bin_dir), ("py", spec.py_dir)):
        for cand in (root / sub, root):
            if cand.name == sub and cand.is_dir():
                return layout, cand
            if (cand / sub).is_dir():
                return layout, cand / sub
    return None


def _read_bin(folder: Path, files: list[str], label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    rec = label_bytes + _IMG_BYTES
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise OnpError(f"missing CIFAR file {path}")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % rec:
            raise OnpError(f"{path} is truncated or corrupt: {raw.size} bytes is not a whole number of "
                           f"{rec}-byte records")
        raw = raw.reshape(-1, rec)
        ys.append(raw[:, label_bytes - 1].astype(np.int64))  # the fine label is the last label byte
        xs.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32))
    return np.concatenate(xs), np.concatenate(ys)


def _read_py(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise OnpError(f"missing CIFAR file {path}")
        d = _unpickle(path)
        data, labels = d.get("data"), d.get(label_key)
        if data is None or labels is None:
            raise OnpError(f"{path} lacks 'data' or '{label_key}'")
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != _IMG_BYTES or data.shape[0] != len(labels):
            raise OnpError(f"{path} is truncated or corrupt: data of shape {data.shape} for {len(labels)} labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _class_names(folder: Path, layout: str, spec: _Spec) -> list[str]:
    n = 10 if spec is CIFAR10 else 100
    if layout == "bin":
        meta = folder / ("batches.meta.txt" if spec is CIFAR10 else "fine_label_names.txt")
        if meta.is_file():
            names = [s.strip() for s in meta.read_text().splitlines() if s.strip()]
            if len(names) == n:
                return names
    else:
        meta = folder / ("batches.meta" if spec is CIFAR10 else "meta")
        if meta.is_file():
            d = _unpickle(meta)
            names = d.get("label_names") or d.get("fine_label_names")
            if names and len(names) == n:
                return [s.decode() if isinstance(s, bytes) else str(s) for s in names]
    return [str(i) for i in range(n)]


def load_cifar(spec: _Spec, root: Path | None, split: str, download: bool = False,
               url: str | None = None, md5: str | None = None) -> ImageDataset:
    """Read ``split`` of CIFAR-10/100 from ``root`` (either layout); download the python archive if asked."""
    if root is None:
        raise OnpError(f"{spec.name} needs a data root (--data-root), e.g. ../shared/data/cifar10")
    found = _find_layout(root, spec)
    if found is None and download:
        download_and_extract(url or spec.url, md5 or spec.md5, root)
        found = _find_layout(root, spec)
    if found is None:
        if not root.exists():
            raise OnpError(f"dataset folder {root} does not exist "
                           f"(pass --data-root, or fetch it with onp attack --download)")
        raise OnpError(f"no {spec.bin_dir}/ or {spec.py_dir}/ in {root} "
                       f"(pass --data-root, or fetch it with onp attack --download)")
    layout, folder = found
    if layout == "bin":
        x, y = _read_bin(folder, spec.bin_files[split], spec.label_bytes)
    else:
        x, y = _read_py(folder, spec.py_files[split], spec.py_label_key)
    classes = _class_names(folder, layout, spec)
    if y.max(initial=0) >= len(classes):
        raise OnpError(f"{folder} holds labels up to {y.max()}, beyond the {len(classes)} {spec.name} classes")
    return ImageDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), classes, spec.mean,
                        spec.std, Augment(crop_padding=4, hflip=True), spec.name)


@register_dataset("cifar10")
def cifar10(root: Path | None, split: str, download: bool = False, **kw) -> ImageDataset:
    """CIFAR-10: 50,000 train and 10,000 test images of 32x32, 10 classes."""
    return load_cifar(CIFAR10, root, split, download, **kw)


@register_dataset("cifar100")
def cifar100(root: Path | None, split: str, download: bool = False, **kw) -> ImageDataset:
    """CIFAR-100 with its 100 fine labels: 50,000 train and 10,000 test images of 32x32."""
    return load_cifar(CIFAR100, root, split, download, **kw)
