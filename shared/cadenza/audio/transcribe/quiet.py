"""Importing basic-pitch without its import-time side effects."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_imports() -> Iterator[None]:
    """Import basic-pitch without its side effects: at import it logs warnings about optional
    runtimes through the *root* logger (which would also configure logging for the whole
    process) and resampy warns about ``pkg_resources``."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    added = not root.handlers
    if added:
        root.addHandler(guard)  # keeps logging.warning() from calling basicConfig()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
        if added:
            root.removeHandler(guard)
