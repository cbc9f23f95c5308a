"""CIFAR-10/100: the real binary set, both official layouts written here, corruption, unsafe pickles, download."""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from onp.data import create_dataset
from onp.errors import OnpError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --------------------------------------------------------------------------- the real files (../shared)


@pytest.fixture(scope="module")
def real_train(cifar_root: Path):
    return create_dataset("cifar10", cifar_root, "train")


@pytest.mark.cifar
def test_real_train_split(real_train, cifar_root: Path) -> None:
    ds = real_train
    assert len(ds) == 50_000
    assert ds.images.shape == (50_000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.image_shape == (3, 32, 32)
    assert torch.bincount(ds.labels, minlength=10).tolist() == [5_000] * 10
    # exact integer sums over chunks: a float copy of 150M pixels would take 600 MB
    sums = sum(chunk.sum(dim=(0, 2, 3), dtype=torch.int64) for chunk in ds.images.split(2_500))
    means = sums.double() / (50_000 * 32 * 32 * 255)
    assert means.tolist() == pytest.approx([0.4914, 0.4822, 0.4465], abs=1e-3)
    meta = (cifar_root / "cifar-10-batches-bin" / "batches.meta.txt").read_text().split()
    assert ds.classes == meta == CIFAR10_NAMES
    assert ds.name == "cifar10"
    assert ds.augment.crop_padding == 4 and ds.augment.hflip


@pytest.mark.cifar
def test_real_train_follows_record_order(real_train, cifar_root: Path) -> None:
    folder = cifar_root / "cifar-10-batches-bin"
    first = np.fromfile(folder / "data_batch_1.bin", dtype=np.uint8, count=3073)
    last = np.fromfile(folder / "data_batch_5.bin", dtype=np.uint8)[-3073:]
    assert real_train.labels[0] == first[0] and real_train.labels[-1] == last[0]
    assert np.array_equal(real_train.images[0].numpy(), first[1:].reshape(3, 32, 32))
    assert np.array_equal(real_train.images[-1].numpy(), last[1:].reshape(3, 32, 32))


@pytest.mark.cifar
def test_real_test_split(cifar_root: Path) -> None:
    ds = create_dataset("cifar10", cifar_root, "test")
    assert ds.images.shape == (10_000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert torch.bincount(ds.labels, minlength=10).tolist() == [1_000] * 10
    assert ds.classes == CIFAR10_NAMES


@pytest.mark.cifar
def test_real_root_may_be_the_batches_folder(cifar_root: Path) -> None:
    ds = create_dataset("cifar10", cifar_root / "cifar-10-batches-bin", "test")
    assert len(ds) == 10_000


# --------------------------------------------------------------------------- layouts written by the tests


def py2_pickle(obj: object) -> bytes:
    """Serialize ``obj`` the way Python 2's cPickle (protocol 2) wrote the official CIFAR python batches.

    A ``str`` of Python 2 is raw bytes in the stream (SHORT_BINSTRING / BINSTRING), which Python 3 can only
    read back with ``encoding="bytes"``; arrays are rebuilt by ``numpy.core.multiarray._reconstruct``.
    Handles dicts, lists, tuples, bytes, ints, bools, None and 1-2-D uint8 arrays: what a CIFAR batch holds.
    """
    out = bytearray(b"\x80\x02")

    def emit(o: object) -> None:
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, bytes):
            out.extend(b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<i", len(o)) + o)
        elif isinstance(o, list):
            out.extend(b"](")
            for v in o:
                emit(v)
            out.extend(b"e")
        elif isinstance(o, tuple):
            out.extend(b"(")
            for v in o:
                emit(v)
            out.extend(b"t")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray) and o.dtype == np.uint8:
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n")
            emit((0,))
            emit(b"b")
            out.extend(b"\x87R")  # TUPLE3, REDUCE
            out.extend(b"(")  # state: (version, shape, dtype, fortran, data)
            emit(1)
            emit(tuple(o.shape))
            out.extend(b"cnumpy\ndtype\n")
            emit((b"u1", 0, 1))
            out.extend(b"R")
            emit((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b")  # BUILD the dtype
            emit(False)
            emit(np.ascontiguousarray(o).tobytes())
            out.extend(b"tb")  # BUILD the array
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def dump(obj: object, protocol: str | int) -> bytes:
    return py2_pickle(obj) if protocol == "py2" else pickle.dumps(obj, protocol=int(protocol))


def split_train_test(x: np.ndarray, y: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": (x[:50], y[:50]), "test": (x[50:], y[50:])}


def write_cifar10_py(root: Path, x: np.ndarray, y: np.ndarray, protocol: str | int = "py2") -> Path:
    """Official python layout: 5 training batches of 10 images, a test batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = split_train_test(x, y)
    tx, ty = parts["train"]
    for i in range(5):
        sl = slice(10 * i, 10 * (i + 1))
        batch = {b"batch_label": f"training batch {i + 1} of 5".encode(), b"labels": [int(v) for v in ty[sl]],
                 b"data": tx[sl], b"filenames": [f"img_{j}.png".encode() for j in range(10)]}
        (folder / f"data_batch_{i + 1}").write_bytes(dump(batch, protocol))
    ex, ey = parts["test"]
    test = {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in ey], b"data": ex,
            b"filenames": [f"t_{j}.png".encode() for j in range(len(ey))]}
    (folder / "test_batch").write_bytes(dump(test, protocol))
    meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": 10, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(dump(meta, protocol))
    return folder


def write_cifar10_bin(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    parts = split_train_test(x, y)
    tx, ty = parts["train"]
    rec = np.concatenate([ty[:, None].astype(np.uint8), tx], axis=1)
    for i in range(5):
        rec[10 * i:10 * (i + 1)].tofile(folder / f"data_batch_{i + 1}.bin")
    ex, ey = parts["test"]
    np.concatenate([ey[:, None].astype(np.uint8), ex], axis=1).tofile(folder / "test_batch.bin")
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return folder


def assert_split(ds, x: np.ndarray, y: np.ndarray) -> None:
    assert ds.images.shape == (len(y), 3, 32, 32) and ds.images.dtype == torch.uint8
    assert np.array_equal(ds.images.numpy(), x.reshape(-1, 3, 32, 32))
    assert ds.labels.tolist() == y.tolist()


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_python_layout_reads_back(tmp_path: Path, cifar_sample, protocol) -> None:
    x, y = cifar_sample
    write_cifar10_py(tmp_path, x, y, protocol)
    for split, (sx, sy) in split_train_test(x, y).items():
        ds = create_dataset("cifar10", tmp_path, split)
        assert_split(ds, sx, sy)
        assert ds.classes == CIFAR10_NAMES


def test_binary_layout_reads_back(tmp_path: Path, cifar_sample) -> None:
    x, y = cifar_sample
    write_cifar10_bin(tmp_path, x, y)
    for split, (sx, sy) in split_train_test(x, y).items():
        ds = create_dataset("cifar10", tmp_path, split)
        assert_split(ds, sx, sy)
        assert ds.classes == CIFAR10_NAMES


def test_truncated_binary_file(tmp_path: Path, cifar_sample) -> None:
    folder = write_cifar10_bin(tmp_path, *cifar_sample)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(OnpError, match="truncated or corrupt") as e:
        create_dataset("cifar10", tmp_path, "train")
    assert "data_batch_3.bin" in str(e.value)


def test_empty_binary_file(tmp_path: Path, cifar_sample) -> None:
    folder = write_cifar10_bin(tmp_path, *cifar_sample)
    (folder / "test_batch.bin").write_bytes(b"")
    with pytest.raises(OnpError, match="truncated or corrupt"):
        create_dataset("cifar10", tmp_path, "test")


def test_missing_binary_batch(tmp_path: Path, cifar_sample) -> None:
    folder = write_cifar10_bin(tmp_path, *cifar_sample)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(OnpError, match="missing CIFAR file .*data_batch_4.bin"):
        create_dataset("cifar10", tmp_path, "train")


@pytest.mark.parametrize("cut", [10, 0.5])
def test_truncated_pickle(tmp_path: Path, cifar_sample, cut) -> None:
    folder = write_cifar10_py(tmp_path, *cifar_sample)
    path = folder / "data_batch_2"
    raw = path.read_bytes()
    path.write_bytes(raw[:cut] if isinstance(cut, int) else raw[:int(len(raw) * cut)])
    with pytest.raises(OnpError, match="truncated or corrupt") as e:
        create_dataset("cifar10", tmp_path, "train")
    assert "data_batch_2" in str(e.value)


def test_label_beyond_the_classes(tmp_path: Path, cifar_sample) -> None:
    x, y = cifar_sample
    y = y.copy()
    y[3] = 10
    write_cifar10_bin(tmp_path, x, y)
    with pytest.raises(OnpError, match="labels up to 10"):
        create_dataset("cifar10", tmp_path, "train")


def test_missing_root_names_the_path(tmp_path: Path) -> None:
    root = tmp_path / "no" / "such" / "folder"
    with pytest.raises(OnpError, match="does not exist") as e:
        create_dataset("cifar10", root, "train")
    assert str(root) in str(e.value)


def test_root_without_cifar_folders(tmp_path: Path) -> None:
    with pytest.raises(OnpError, match="cifar-10-batches-bin"):
        create_dataset("cifar10", tmp_path, "train")


def test_no_root() -> None:
    with pytest.raises(OnpError, match="data root"):
        create_dataset("cifar10", None, "train")


# --------------------------------------------------------------------------- pickles that try to run code


def global_call_pickle(module: str, name: str, arg: str) -> bytes:
    """A protocol-2 pickle that calls ``module.name(arg)`` while loading (the GLOBAL + REDUCE opcodes)."""
    a = arg.encode()
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n"
            + b"X" + struct.pack("<I", len(a)) + a + b"\x85R.")


@pytest.mark.parametrize("payload", [
    pytest.param(lambda marker: global_call_pickle("os", "system", f"touch {marker}"), id="os.system"),
    pytest.param(lambda marker: global_call_pickle("builtins", "exec",
                                                   f"open({str(marker)!r}, 'w').close()"), id="builtins.exec"),
    pytest.param(lambda marker: pickle.dumps({b"data": collections.OrderedDict(a=1), b"labels": []}),
                 id="OrderedDict"),
])
def test_pickle_with_a_class_reference_is_refused(tmp_path: Path, cifar_sample, payload) -> None:
    folder = write_cifar10_py(tmp_path / "data", *cifar_sample)
    marker = tmp_path / "pwned"
    (folder / "data_batch_1").write_bytes(payload(marker))
    with pytest.raises(OnpError, match="refusing to load") as e:
        create_dataset("cifar10", tmp_path / "data", "train")
    assert "data_batch_1" in str(e.value)
    assert not marker.exists()


def test_unsafe_meta_pickle_is_refused(tmp_path: Path, cifar_sample) -> None:
    folder = write_cifar10_py(tmp_path / "data", *cifar_sample)
    marker = tmp_path / "pwned"
    (folder / "batches.meta").write_bytes(global_call_pickle("os", "system", f"touch {marker}"))
    with pytest.raises(OnpError, match="refusing to load .*batches.meta"):
        create_dataset("cifar10", tmp_path / "data", "test")
    assert not marker.exists()


# --------------------------------------------------------------------------- download


def make_tar_gz(path: Path, src: Path, arcname: str) -> str:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar10_archive(tmp_path: Path, cifar_sample) -> tuple[Path, str]:
    folder = write_cifar10_py(tmp_path / "src", *cifar_sample)
    archive = tmp_path / "server" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    return archive, make_tar_gz(archive, folder, "cifar-10-batches-py")


def test_download_from_local_archive(tmp_path: Path, cifar_sample, cifar10_archive) -> None:
    archive, md5 = cifar10_archive
    root = tmp_path / "root"
    ds = create_dataset("cifar10", root, "train", download=True, url=archive.as_uri(), md5=md5)
    assert_split(ds, *split_train_test(*cifar_sample)["train"])
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py"]  # no temporary files left
    # once the data is there, download=True does not fetch again (the archive may even be gone)
    archive.unlink()
    assert len(create_dataset("cifar10", root, "test", download=True, url=archive.as_uri(), md5=md5)) == 10


def test_download_checksum_mismatch_leaves_nothing(tmp_path: Path, cifar10_archive) -> None:
    archive, _ = cifar10_archive
    root = tmp_path / "root"
    with pytest.raises(OnpError, match="checksum mismatch"):
        create_dataset("cifar10", root, "train", download=True, url=archive.as_uri(), md5="0" * 32)
    assert not root.exists() or not any(root.iterdir())
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(OnpError, match="checksum mismatch"):
        create_dataset("cifar10", existing, "train", download=True, url=archive.as_uri(), md5="0" * 32)
    assert list(existing.iterdir()) == []


def test_download_missing_url(tmp_path: Path) -> None:
    url = (tmp_path / "nothing.tar.gz").as_uri()
    with pytest.raises(OnpError, match="cannot download"):
        create_dataset("cifar10", tmp_path / "root", "train", download=True, url=url, md5="0" * 32)
    assert not (tmp_path / "root").exists()


def test_download_refuses_escaping_member(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    payload = b"gotcha"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "root"
    with pytest.raises(OnpError, match="unsafe archive member '../escape'"):
        create_dataset("cifar10", root, "train", download=True, url=archive.as_uri(), md5=md5)
    assert not (tmp_path / "escape").exists()
    assert not root.exists() or not any(root.iterdir())


# --------------------------------------------------------------------------- CIFAR-100


def cifar100_labels(n: int) -> tuple[np.ndarray, np.ndarray]:
    fine = (np.arange(n) * 37 + 5) % 100
    coarse = (fine + 1) % 20  # never equal to the fine label, so reading the wrong byte or key shows
    return fine.astype(np.int64), coarse.astype(np.int64)


def test_cifar100_python_layout(tmp_path: Path, cifar_sample) -> None:
    x, _ = cifar_sample
    fine, coarse = cifar100_labels(len(x))
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, sl in (("train", slice(0, 50)), ("test", slice(50, None))):
        d = {b"filenames": [b"f.png"] * len(fine[sl]), b"batch_label": split.encode(),
             b"fine_labels": [int(v) for v in fine[sl]], b"coarse_labels": [int(v) for v in coarse[sl]],
             b"data": x[sl]}
        (folder / split).write_bytes(py2_pickle(d))
    names = [f"fine{i}".encode() for i in range(100)]
    (folder / "meta").write_bytes(py2_pickle({b"fine_label_names": names,
                                              b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}))
    for split, sl in (("train", slice(0, 50)), ("test", slice(50, None))):
        ds = create_dataset("cifar100", tmp_path, split)
        assert_split(ds, x[sl], fine[sl])
        assert ds.num_classes == 100 and ds.classes[7] == "fine7"


def test_cifar100_binary_layout_uses_the_fine_label(tmp_path: Path, cifar_sample) -> None:
    x, _ = cifar_sample
    fine, coarse = cifar100_labels(len(x))
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    rec = np.concatenate([coarse[:, None].astype(np.uint8), fine[:, None].astype(np.uint8), x], axis=1)
    rec[:50].tofile(folder / "train.bin")
    rec[50:].tofile(folder / "test.bin")
    (folder / "fine_label_names.txt").write_text("\n".join(f"fine{i}" for i in range(100)) + "\n")
    for split, sl in (("train", slice(0, 50)), ("test", slice(50, None))):
        ds = create_dataset("cifar100", tmp_path, split)
        assert_split(ds, x[sl], fine[sl])
        assert ds.classes[99] == "fine99"
    # a CIFAR-10 file (3073-byte records) is not a whole number of CIFAR-100 records
    (folder / "test.bin").write_bytes(np.zeros(3073 * 3, np.uint8).tobytes())
    with pytest.raises(OnpError, match="truncated or corrupt"):
        create_dataset("cifar100", tmp_path, "test")
