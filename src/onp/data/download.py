"""Fetch an archive, check its checksum, and unpack it safely. Tested against local ``file://`` URLs."""

from __future__ import annotations

import hashlib
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
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
    """Download ``url`` into ``root``, verify its MD5 and extract the tar archive there.

    The archive goes to a temporary file first; on a checksum mismatch or a network error nothing is left
    in ``root``. Members that would escape ``root`` are refused.
    """
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download.", suffix=".tmp", dir=root)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, os.fdopen(fd, "wb") as out:
                while block := resp.read(1 << 20):
                    out.write(block)
        except (urllib.error.URLError, OSError) as e:
            raise OnpError(f"cannot download {url}: {e}") from None
        got = file_md5(tmp)
        if got != md5:
            raise OnpError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}")
        with tarfile.open(tmp) as tar:
            base = root.resolve()
            for m in tar.getmembers():
                if not (base / m.name).resolve().is_relative_to(base) or m.issym() or m.islnk():
                    raise OnpError(f"refusing unsafe archive member {m.name!r} in {url}")
            tar.extractall(root)
    finally:
        tmp.unlink(missing_ok=True)
