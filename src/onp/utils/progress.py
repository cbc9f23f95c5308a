"""Progress hooks: library code reports progress through these; only the CLI draws bars.

A library function takes ``progress: ProgressFactory = null_progress`` and uses it as
``with progress(total=n, desc="train") as bar: bar.update(1, loss=0.3)``.
"""

from __future__ import annotations

from typing import Any, Protocol

from tqdm.auto import tqdm


class Bar(Protocol):
    def update(self, n: int = 1, **postfix: Any) -> None: ...

    def __enter__(self) -> Bar: ...

    def __exit__(self, *exc: object) -> None: ...


class ProgressFactory(Protocol):
    def __call__(self, total: int | None, desc: str) -> Bar: ...


class _NullBar:
    def update(self, n: int = 1, **postfix: Any) -> None:
        pass

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def null_progress(total: int | None, desc: str) -> Bar:
    """A progress factory that draws nothing (the library default)."""
    return _NullBar()


class TqdmBar:
    """A tqdm bar behind the :class:`Bar` protocol; postfix values are shown compactly."""

    def __init__(self, total: int | None, desc: str, leave: bool = False) -> None:
        self._bar = tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if postfix:
            self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                  refresh=False)
        self._bar.update(n)

    def __enter__(self) -> TqdmBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


def tqdm_progress(total: int | None, desc: str) -> Bar:
    return TqdmBar(total, desc)
