"""Atomic writes, weights that never run code (safetensors with a JSON metadata sidecar), and stable hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
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


MANIFEST = ".onp-output.json"
# what onp wrote into its output folders before they carried a manifest
_KNOWN = frozenset({"model.safetensors", "model.json", "trigger.safetensors", "report.json", "search_curve.csv",
                    "search_curve.png", MANIFEST})


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def foreign_files(folder: Path) -> list[str]:
    """The entries of ``folder`` that onp did not write: those missing from its manifest (an output onp wrote
    lists its files there), or, for an output without one, those outside the names onp has always written."""
    allowed, folders = set(_KNOWN), set()
    manifest = folder / MANIFEST
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            allowed, folders = {*data["files"], MANIFEST}, set(data.get("folders", []))
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
            allowed, folders = set(_KNOWN), set()
    return sorted(p.name for p in folder.iterdir()
                  if p.is_symlink() or not ((p.is_file() and p.name in allowed) or (p.is_dir() and p.name in folders)))


def check_output(out: str | os.PathLike, overwrite: bool = False, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Refuse, with one line and before any work, an output folder that would lose or touch what is not onp's.

    ``out`` may be new, an empty folder, or (with ``overwrite``) a folder holding only an earlier onp output. It may
    not be the current folder or hold it, nor overlap any of ``inputs`` (onp never writes inside what it reads).
    """
    out = Path(out)
    res = out.resolve()
    cwd = Path.cwd().resolve()
    if res == cwd or res in cwd.parents:
        raise OnpError(f"--out {out} is the current folder or holds it; name a new folder for the output")
    for src in inputs:
        s = Path(src).resolve()
        if res == s or s in res.parents or res in s.parents:
            raise OnpError(f"--out {out} overlaps the input {src}; write the output to a separate folder")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise OnpError(f"--out {out} is an existing file, not a folder; name a new folder")
    if out.is_dir() and any(out.iterdir()):
        foreign = foreign_files(out)
        if foreign:
            raise OnpError(f"--out {out} holds files onp did not write (e.g. {foreign[0]}); name a new or empty "
                           "folder")
        if not overwrite:
            raise OnpError(f"--out {out} holds an earlier onp output; pass --overwrite to replace it")
    home = next(p for p in (res, *res.parents) if p.exists())
    if home == res and home.is_dir():
        home = res.parent  # the output replaces the folder, so its parent must take the new one
    if not os.access(home, os.W_OK | os.X_OK):
        raise OnpError(f"--out {out}: cannot write in {home} (permission denied)")
    return out


def make_parents(path: Path) -> list[Path]:
    """Create the missing parent folders of ``path``; return those created, outermost first."""
    missing = [p for p in reversed(path.parents) if not p.exists()]
    for p in missing:
        p.mkdir()
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders (innermost first) that are still empty: a failed command takes back what it created."""
    for p in reversed(folders):
        with contextlib.suppress(OSError):
            p.rmdir()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``final`` that is renamed onto it only if the block succeeds.

    A failure, an exception or a kill leaves nothing at ``final`` and takes back the parent folders it created. An
    existing ``final`` must be empty or (with ``overwrite``) an earlier onp output (:func:`check_output`); it is
    replaced only at the very end, so a crash never leaves it half-written. The folder lists its files in
    ``.onp-output.json``, and files and folders get the user's umask.
    """
    final = Path(final)
    if final.exists():
        check_output(final, overwrite=overwrite)
    created = make_parents(final)
    ok = False
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            yield tmp
            files = sorted(p.name for p in tmp.iterdir() if p.is_file())
            folders = sorted(p.name for p in tmp.iterdir() if p.is_dir())
            write_json(tmp / MANIFEST, {"files": files, "folders": folders})
            mask = _umask()
            tmp.chmod(0o777 & ~mask)
            for p in tmp.rglob("*"):
                p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)
            if final.exists():
                check_output(final, overwrite=overwrite)  # nothing of the user's appeared while it ran
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
                final.rename(old / "x")
                tmp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(final)
            ok = True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if not ok:
            remove_if_empty(created)


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the user's umask decides
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
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _unpickling_reason(e: Exception) -> str:
    """The part of torch's refusal that says what the file holds, without its advice to load it unsafely."""
    text = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return f"it holds {m.group(1)}, which would run code when unpickled; refused"
    lines = [ln for ln in text.splitlines() if ln.strip() and "weights_only" not in ln]
    return lines[0][:200] if lines else "it holds Python objects beyond tensors; refused"


def _numpy_globals() -> list[Any]:
    """NumPy's array and scalar rebuilders and its dtypes: data, not code (torch documents allowing them for
    checkpoints that hold arrays, like BackdoorBench's ``attack_result.pt``), under NumPy 1's names and 2's."""
    import numpy as np
    from numpy._core import multiarray

    safe: list[Any] = [np.ndarray, np.dtype]
    for fn in (multiarray._reconstruct, multiarray.scalar):
        safe += [fn, (fn, f"numpy.core.multiarray.{fn.__name__}")]
    safe += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return safe


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` without running code: tensors, containers, numbers, strings and NumPy arrays only
    (``weights_only=True`` with NumPy allowed); anything else is refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise OnpError(f"missing weights file: {path}")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise OnpError(f"cannot read {path} as plain weights (weights_only=True): {_unpickling_reason(e)}") from None


def is_backdoorbench(obj: Any) -> bool:
    """BackdoorBench's ``attack_result.pt`` layout: the model's state dict under ``model``, its name beside it."""
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and isinstance(obj.get("model_name"), str)


def read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict in a weights file, read without running code, and what the file says about it: safetensors;
    or a pickle (``weights_only=True``) holding a state dict, a checkpoint with one under ``state_dict``, or
    BackdoorBench's ``attack_result.pt`` (then the second value holds its ``model_name``, ``num_classes``,
    ``img_size`` and ``clean_data``)."""
    path = Path(path)
    if not path.is_file():
        raise OnpError(f"missing weights file: {path}")
    if path.suffix not in {".pt", ".pth", ".ckpt", ".bin"}:
        return load_tensors(path), {}
    obj, info = read_checkpoint(path), {}
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif is_backdoorbench(obj):
        info = {k: obj.get(k) for k in ("model_name", "num_classes", "img_size", "clean_data")}
        info["format"] = "backdoorbench"
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise OnpError(f"{path} does not hold a state dict of tensors")
    return obj, info


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a tensor file without running code: safetensors, or any pickle :func:`read_weights` reads."""
    path = Path(path)
    if not path.is_file():
        raise OnpError(f"missing weights file: {path}")
    if path.suffix in {".pt", ".pth", ".ckpt", ".bin"}:
        return read_weights(path)[0]
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise OnpError(f"cannot read {path} as safetensors: {e}") from None
