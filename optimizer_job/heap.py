"""Hand freed heap memory back to the operating system.

glibc keeps freed pages for reuse, so without a trim the next stage's peak memory would sit
on top of the previous stage's high-water mark (and a measured peak would be hidden by
reuse). The evaluation's peak-memory probe and the methods' ``release`` both call
:func:`trim_heap`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    for name in ("libc.so.6", None):
        path = name or ctypes.util.find_library("c")
        if not path:
            continue
        try:
            trim: Callable[[int], int] = ctypes.CDLL(path).malloc_trim
        except (OSError, AttributeError):
            continue
        return trim
    return None


def trim_heap() -> None:
    """Return the free pages at the top of the heap and in every arena to the OS."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
