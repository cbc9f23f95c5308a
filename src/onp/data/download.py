"""Fetch an archive, check its checksum, and unpack it safely. Tested against local ``file://`` URLs."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from onp.errors import OnpError

log = logging.getLogger(__name__)


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_and_extract(url: str, md5: str, root: Path) -> None:
    """Download ``url`` into ``root``, verify its MD5 and extract the archive (tar, tar.gz or zip) there.

    The archive is recognised by its content, not its name. It is downloaded to a temporary file and unpacked
    into a temporary folder inside ``root``, whose contents are moved into ``root`` only once everything is
    unpacked: on a network error, a checksum mismatch, an unsafe member or a broken archive, nothing is left in
    ``root`` (and a ``root`` this call created is removed again). Members that would escape ``root``, links and
    device files are refused before anything is written.
    """
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".download.", suffix=".tmp", dir=root)
    except OSError as e:
        raise OnpError(f"cannot write to {root}: {e}") from None
    tmp = Path(tmp_name)
    staging: Path | None = None
    ok = False
    try:
        log.info("downloading %s", url)
        with os.fdopen(fd, "wb") as out:  # opened first, so the descriptor is closed whatever urlopen does
            try:
                with urllib.request.urlopen(url, timeout=60) as resp:
                    while block := resp.read(1 << 20):
                        out.write(block)
            except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: a malformed URL
                raise OnpError(f"cannot download {url}: {e}") from None
        got = file_md5(tmp)
        if got != md5:
            raise OnpError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}")
        staging = Path(tempfile.mkdtemp(prefix=".extract.", suffix=".tmp", dir=root))
        try:
            if zipfile.is_zipfile(tmp):
                _extract_zip(tmp, staging, url)
            elif tarfile.is_tarfile(tmp):
                _extract_tar(tmp, staging, url)
            else:
                raise OnpError(f"{url} is neither a tar nor a zip archive")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise OnpError(f"cannot extract {url}: {e}") from None
        _merge_into(staging, root)
        ok = True
    finally:
        tmp.unlink(missing_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not ok and created:
            with contextlib.suppress(OSError):
                root.rmdir()  # only succeeds if empty


def _is_inside(base: Path, name: str) -> bool:
    return (base / name).resolve().is_relative_to(base)


def _extract_tar(path: Path, dest: Path, url: str) -> None:
    base = dest.resolve()
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if not (m.isfile() or m.isdir()) or not _is_inside(base, m.name):
                raise OnpError(f"refusing unsafe archive member {m.name!r} in {url}")
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: a second line of defence
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)


def _extract_zip(path: Path, dest: Path, url: str) -> None:
    base = dest.resolve()
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            # zipfile would silently strip "../" and leading "/"; refuse such an archive instead
            if info.filename.startswith(("/", "\\")) or not _is_inside(base, info.filename):
                raise OnpError(f"refusing unsafe archive member {info.filename!r} in {url}")
        zf.extractall(dest)


def _merge_into(src: Path, dst: Path) -> None:
    """Move the tree ``src`` into ``dst``, merging folders that already exist (a second archive of a dataset)."""
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and target.is_dir():
            _merge_into(entry, target)
        else:
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
