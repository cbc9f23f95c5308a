"""A user's own architecture, named as ``path/to/file.py:factory`` or ``package.module:factory``.

The file is imported only when the user names it on the command line; a saved model's metadata records the
spec but loading never imports it on its own.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onp.errors import OnpError

_MODULE_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_user_spec(name: str) -> bool:
    """True for ``file.py:factory`` and ``pkg.mod:factory``; registry names have no colon."""
    return ":" in name


def load_user_factory(spec: str) -> Callable[..., Any]:
    """Import the module or file of ``spec`` and return its factory callable."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise OnpError(f"architecture {spec!r} must look like path/to/file.py:factory or package.module:factory")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise OnpError(f"architecture file {path} does not exist")
        mod_name = "onp_user_arch_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        mod = sys.modules.get(mod_name)
        if mod is None:
            ispec = importlib.util.spec_from_file_location(mod_name, path)
            if ispec is None or ispec.loader is None:
                raise OnpError(f"cannot import {path}")
            mod = importlib.util.module_from_spec(ispec)
            sys.modules[mod_name] = mod
            try:
                ispec.loader.exec_module(mod)
            except Exception as e:  # noqa: BLE001 - the user's file failed; say so in one line
                del sys.modules[mod_name]
                raise OnpError(f"importing {path} failed: {type(e).__name__}: {e}") from None
    else:
        if not _MODULE_SPEC.match(spec):
            raise OnpError(f"architecture {spec!r} must look like package.module:factory")
        try:
            mod = importlib.import_module(target)
        except ImportError as e:
            raise OnpError(f"cannot import module {target!r}: {e}") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise OnpError(f"{target} has no callable {attr!r}")
    return factory
