"""Helpers shared by every sub-package: atomic files, devices and seeds, progress hooks."""
