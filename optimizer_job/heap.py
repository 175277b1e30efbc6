"""Hand freed heap memory back to the operating system.

glibc keeps freed pages for reuse, so without a trim the next stage's peak memory would sit
on top of the previous stage's high-water mark (and a measured peak would be hidden by
reuse). The evaluation's peak-memory probe and the methods' ``release`` both call
:func:`trim_heap`.

Quantizing while loading frees a full-precision tensor for every quantized one it keeps.
glibc's dynamic mmap threshold rises to 32 MiB after the first large free, so from then on
those tensors come from the heap, interleaved with the quantized ones that stay, and the
freed space cannot be returned from the top: measured on a 0.5B bf16 checkpoint, the heap
held 0.9x the checkpoint in freed pages at the end of the load. :func:`trimming_heap` trims
while such a block runs. Trimming every 50 ms, the 0.5B load peaked at 0.70x the checkpoint,
every 200 ms at 0.76x. Each trim makes the next allocations fault their pages in again, and a
250 ms interval made the 1.5B load faster (engine vs bare 0.90-1.09x against 1.17-1.26x, on
noisy cores), but at 0.1B, on a busy machine, 250 ms let 0.35x of the checkpoint pile up
between trims (the memory-bound test's run: 1.39x anonymous against 1.05x), so the interval
is 50 ms. A fixed, low mmap threshold bounded the peak too, but made every temporary a fresh
mapping and the same load twice as slow.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

TRIM_INTERVAL_S = 0.05


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


@contextmanager
def trimming_heap(interval_s: float = TRIM_INTERVAL_S) -> Iterator[None]:
    """Trim the heap every ``interval_s`` while the block runs, and once when it ends.

    ``malloc_trim`` takes the allocator's own locks, so a trim from this thread is safe while
    the block allocates; ctypes releases the GIL for the call."""
    trim = _malloc_trim()
    if trim is None or interval_s <= 0:
        yield
        return
    done = threading.Event()

    def trimmer() -> None:
        while not done.wait(interval_s):
            trim(0)

    thread = threading.Thread(target=trimmer, name="kubequant-heap-trimmer", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        trim(0)
