"""The installed package's version (``0.0.0+unknown`` when running from a source tree that is not installed)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onp")
except PackageNotFoundError:
    __version__ = "0.0.0+unknown"
