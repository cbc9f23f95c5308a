"""Atomic writes, weights that never run code (safetensors with a JSON metadata sidecar), and stable hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from onp.errors import OnpError


def stable_hash(obj: Any, tensors: tuple[torch.Tensor, ...] | list[torch.Tensor] = (), length: int = 16) -> str:
    """A short hex digest of a JSON-able ``obj`` (keys sorted) followed by the raw bytes of ``tensors``: the same
    inputs give the same key in every process and on every run."""
    h = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode())
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``final`` that is renamed onto it only if the block succeeds.

    A failure, an exception or a kill leaves nothing at ``final`` (an old ``final`` is replaced only at the
    very end, so a crash never leaves it half-written).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise OnpError(f"missing file: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise OnpError(f"{path} is not valid JSON: {e}") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor]) -> None:
    """Save tensors as safetensors (contiguous, detached, CPU), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a tensor file without running code: safetensors, or a pickle through ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise OnpError(f"missing weights file: {path}")
    if path.suffix in {".pt", ".pth", ".ckpt", ".bin"}:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
            raise OnpError(f"cannot read {path} as plain weights (weights_only=True): {e}") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise OnpError(f"{path} does not hold a state dict of tensors")
        return obj
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise OnpError(f"cannot read {path} as safetensors: {e}") from None
