"""download_and_extract: tar and zip from file:// URLs, checksum, unsafe members, nothing left behind."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from onp.data.download import download_and_extract, file_md5
from onp.errors import OnpError


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("make", [make_zip, make_tar], ids=["zip", "tar.gz"])
def test_extracts_and_merges_into_existing_folders(tmp_path: Path, make) -> None:
    root = tmp_path / "root"
    (root / "GTSRB" / "Final_Training").mkdir(parents=True)
    (root / "GTSRB" / "Final_Training" / "keep.txt").write_bytes(b"old")
    archive = make(tmp_path / "a.bin", {"GTSRB/Final_Test/Images/00000.ppm": b"P6", "GT.csv": b"x;y\n"})
    download_and_extract(archive.as_uri(), md5(archive), root)
    assert tree(root) == {"GT.csv": b"x;y\n", "GTSRB/Final_Test/Images/00000.ppm": b"P6",
                          "GTSRB/Final_Training/keep.txt": b"old"}  # merged, and no temporary files


@pytest.mark.parametrize("make", [make_zip, make_tar], ids=["zip", "tar.gz"])
@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/tmp/onp-test-absolute-escape"])
def test_refuses_members_outside_root(tmp_path: Path, make, name: str) -> None:
    root = tmp_path / "root"
    archive = make(tmp_path / "evil.bin", {"fine.txt": b"ok", name: b"gotcha"})
    with pytest.raises(OnpError, match="unsafe archive member"):
        download_and_extract(archive.as_uri(), md5(archive), root)
    assert not (tmp_path / "escape").exists() and not Path("/tmp/onp-test-absolute-escape").exists()
    assert not root.exists()  # created by the call, so removed again; fine.txt was never written


def test_refuses_tar_links(tmp_path: Path) -> None:
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("passwd")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(OnpError, match="unsafe archive member 'passwd'"):
        download_and_extract(archive.as_uri(), md5(archive), root)
    assert list(root.iterdir()) == []  # an existing root stays, empty


@pytest.mark.parametrize("make", [make_zip, make_tar], ids=["zip", "tar.gz"])
def test_checksum_mismatch_leaves_nothing(tmp_path: Path, make) -> None:
    archive = make(tmp_path / "a.bin", {"data.txt": b"1"})
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(OnpError, match="checksum mismatch") as e:
        download_and_extract(archive.as_uri(), "f" * 32, root)
    assert md5(archive) in str(e.value)
    assert list(root.iterdir()) == []


def test_not_an_archive(tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"this is neither tar nor zip" * 100)
    root = tmp_path / "root"
    with pytest.raises(OnpError, match="neither a tar nor a zip"):
        download_and_extract(blob.as_uri(), md5(blob), root)
    assert not root.exists()


def test_broken_zip_member_leaves_nothing(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"first.txt": b"fine", "second.txt": b"A" * 1000})
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"A" * 100) + 10] ^= 0xFF  # corrupt the second member's data: its CRC no longer matches
    archive.write_bytes(bytes(raw))
    root = tmp_path / "root"
    with pytest.raises(OnpError, match="cannot extract"):
        download_and_extract(archive.as_uri(), md5(archive), root)
    assert not root.exists()  # first.txt was unpacked into the staging folder only


def test_file_md5_matches_hashlib(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(bytes(range(256)) * 5000)
    assert file_md5(p, chunk=1000) == md5(p)
