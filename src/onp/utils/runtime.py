"""Devices, seeds, threads, and the provenance every run records (version, git revision)."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from onp.errors import OnpError
from onp.version import __version__


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present and the CPU otherwise; an unavailable device is a user error."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise OnpError(f"invalid device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OnpError(f"device {name!r} requested but CUDA is not available")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data order and sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_threads(n: int | None) -> None:
    """Give this process ``n`` intra-op threads (default: the cores it may use). More threads than cores only
    slow torch down (1,000 made training 40x slower here; 100,000 crashed it), so they are refused."""
    cores = usable_cores()
    if n is None:
        n = cores
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= cores:
        raise OnpError(f"--threads must be between 1 and the {cores} cores this process may use, got {n}")
    torch.set_num_threads(n)


ONP_SOURCE = Path(__file__).resolve().parents[1]
"""onp's package folder: whose git revision a run records, and whose files a frozen benchmark compares."""


def git_revision(package: Path | None = None) -> str | None:
    """The git revision of the source tree the package runs from, or None outside a checkout; ``-dirty`` when the
    package's own files (``package``, default: onp's folder) differ from it. Other files of the checkout (results
    being written, docs) do not count: a row made by committed code says so."""
    here = package or ONP_SOURCE
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        rev = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here, capture_output=True,
            text=True, timeout=5,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


PRESENTATION = ("cli.py", "bench/report.py", "plots.py", "utils/progress.py")
"""onp's files that only parse arguments, show progress or draw the report: a change to them changes no result."""


def code_changes(since: str, until: str | None = None, package: Path | None = None,
                 ignore: tuple[str, ...] = PRESENTATION) -> list[str]:
    """onp's source files (relative to the package) that differ between git revision ``since`` and ``until``
    (default: the files on disk, uncommitted edits included), leaving out ``ignore``: what a frozen benchmark
    checks before it adds a row. One error line outside a checkout or for a revision git does not know."""
    here = package or ONP_SOURCE
    for rev in (since, until):
        if rev is not None and (not rev or rev.startswith("-")):  # git would read it as an option
            raise OnpError(f"not a git revision: {rev!r}")
    cmd = ["git", "diff", "--name-only", "--relative", since, *([until] if until else []), "--", ".",
           *(f":(exclude){p}" for p in ignore)]
    try:
        out = subprocess.run(cmd, cwd=here, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise OnpError(f"cannot compare onp's source with revision {since!r}: {e}") from None
    if out.returncode != 0:
        why = (out.stderr.strip().splitlines() or ["git failed"])[0]
        raise OnpError(f"cannot compare onp's source with revision {since!r}: {why}")
    return out.stdout.split()


_PROVENANCE: dict[str, str | None] = {}


def provenance() -> dict[str, str | None]:
    """onp's and torch's versions and the git revision, read once per process at the first call: the entry
    points call it before their work, so a result names the code that was imported, even when the checkout
    changes while a long run goes on."""
    if not _PROVENANCE:
        _PROVENANCE.update({"onp": __version__, "torch": torch.__version__, "git": git_revision()})
    return dict(_PROVENANCE)


@contextlib.contextmanager
def _requiring_grad(model: torch.nn.Module, flag: bool) -> Iterator[torch.nn.Module]:
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(flag)
    try:
        with torch.set_grad_enabled(flag or torch.is_grad_enabled()):
            yield model
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def frozen(model: torch.nn.Module) -> contextlib.AbstractContextManager[torch.nn.Module]:
    """Parameters of ``model`` do not require gradients inside the block; their own flags come back after."""
    return _requiring_grad(model, False)


def trainable(model: torch.nn.Module) -> contextlib.AbstractContextManager[torch.nn.Module]:
    """Parameters of ``model`` require gradients (and autograd records) inside the block, as tracing through
    ``grad_fn`` needs even for a model loaded frozen; their own flags come back after."""
    return _requiring_grad(model, True)


@contextlib.contextmanager
def batch_statistics(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside the block the model's BatchNorm layers normalize with each batch's own statistics (train mode,
    as ANP's and RNP's code learn their masks) while every other module stays in eval mode; the running
    statistics and all training flags are restored afterwards, so the model leaves unchanged."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in model.modules()]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in bns]
    model.eval()
    for m in bns:
        m.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, bufs in zip(bns, saved):
                for k, v in bufs.items():
                    getattr(m, k).copy_(v)
        for m, t in zip(model.modules(), modes):
            m.training = t
