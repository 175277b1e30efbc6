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
while such a block runs.

A trim also returns freed chunks the very next tensor would have reused, which then fault
their pages in again. Measured on the 1.5B synthetic checkpoint (bitsandbytes int8, load
only, minor page faults and peak RSS): no trimming 3.6M faults, 3.25 GB; a trim every 50 ms
5.9M, 2.39 GB; a trim whenever the freed-but-resident memory grew by 94 MB, 5.4M (88 trims
of ~100 MB each: one tensor's temporaries, freed and about to be reused); by 256 MB, 3.9M
faults and 2.56 GB (9 trims); torchao int8 the same way: 5.8M / 6.8M / 5.7M faults. So the
trigger is freed memory still resident, in bytes, and the slack a 12th of the model: enough
to hold a layer's temporaries at every size, little against the model.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

POLL_INTERVAL_S = 0.01
SLACK_DIVISOR = 12
SLACK_MIN_BYTES = 16 * 1024**2
SLACK_MAX_BYTES = 2 * 1024**3
TRIMMER_THREAD = "kubequant-heap-trimmer"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.cache
def _libc() -> ctypes.CDLL | None:
    for name in ("libc.so.6", None):
        path = name or ctypes.util.find_library("c")
        if not path:
            continue
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    libc = _libc()
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return trim


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc's ``mallinfo2`` (2.33 and later), or None."""
    info: Any = getattr(_libc(), "mallinfo2", None)
    if info is None:
        return None
    info.restype = _MallInfo2
    info.argtypes = []
    typed: Callable[[], _MallInfo2] = info
    return typed


# oneMKL's "free the allocator's unused buffers": the public name, then the one torch's
# statically linked oneMKL exports (libtorch_cpu.so exports only the latter).
_MKL_FREE_BUFFERS = ("mkl_free_buffers", "MKL_Free_Buffers", "mkl_serv_free_buffers")
_mkl_free: list[Callable[[], Any] | None] = []


def _mkl_free_buffers() -> Callable[[], Any] | None:
    """oneMKL's ``mkl_free_buffers`` in the loaded torch, or None: torch not imported yet
    (nothing asked then, so a later call looks again), or built without oneMKL."""
    if _mkl_free:
        return _mkl_free[0]
    torch_file = getattr(sys.modules.get("torch"), "__file__", None)
    if not torch_file:
        return None
    found: Callable[[], Any] | None = None
    library = Path(torch_file).parent / "lib" / "libtorch_cpu.so"
    if library.is_file():
        try:
            handle = ctypes.CDLL(str(library))
        except OSError:
            handle = None
        for name in _MKL_FREE_BUFFERS if handle is not None else ():
            found = getattr(handle, name, None)
            if found is not None:
                break
    _mkl_free.append(found)
    return found


def trim_heap() -> None:
    """Return the free pages at the top of the heap and in every arena to the OS, after
    oneMKL has given back the buffers it keeps for reuse.

    oneMKL (torch's BLAS and LAPACK on x86-64) caches what its routines allocate, in malloc's
    heap, until told to free it: after GPTQ's calibration (its Cholesky factorizations) the
    cache held 38 MB at 0.1B, through the artifact's evaluation. Called from the main thread
    between stages only, never while a library may be running a oneMKL routine."""
    free_buffers = _mkl_free_buffers()
    if free_buffers is not None:
        free_buffers()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def slack_for(model_bytes: int) -> int:
    """How much freed memory :func:`trimming_heap` lets stay resident for a model of
    ``model_bytes``: a 12th of it, within 16 MiB-2 GiB."""
    return min(max(model_bytes // SLACK_DIVISOR, SLACK_MIN_BYTES), SLACK_MAX_BYTES)


def _anonymous_bytes(statm: int | None) -> int | None:
    """Resident anonymous memory of this process (statm's resident less its file-backed
    and shared pages), or None where /proc cannot say."""
    if statm is None:
        return None
    try:
        fields = os.pread(statm, 256, 0).split()
        return (int(fields[1]) - int(fields[2])) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _idle_bytes(statm: int | None) -> int | None:
    """Resident anonymous memory malloc does not hand out: freed chunks whose pages are still
    resident, plus what is not malloc's at all (interpreter arenas, thread stacks), which
    stays about constant while a block runs. Without ``mallinfo2``, all anonymous memory."""
    anon = _anonymous_bytes(statm)
    info = _mallinfo2()
    if anon is None or info is None:
        return anon
    used = info()
    return anon - int(used.uordblks) - int(used.hblkhd)


@contextmanager
def trimming_heap(
    slack_bytes: int = SLACK_MIN_BYTES, poll_s: float = POLL_INTERVAL_S
) -> Iterator[None]:
    """Trim the heap whenever freed memory that stays resident has grown by ``slack_bytes``
    since the last trim, while the block runs, and once when it ends.

    Every ``poll_s`` the trimmer reads the process' resident anonymous memory
    (``/proc/self/statm``) less what malloc has handed out and not had back (``mallinfo2``):
    what is left over is the freed chunks still resident. glibc reuses those for the next
    allocations without faulting their pages in again, so up to ``slack_bytes`` of them stay;
    past that, ``malloc_trim`` returns them all. What piles up is bounded by bytes, not by
    time, so a slow or busy machine holds no more than a fast one, and a short-lived
    temporary (which a growth of the whole process would count) triggers nothing. Without
    ``mallinfo2`` (glibc before 2.33) the trigger is the growth of anonymous memory; without
    ``/proc``, every poll. ``poll_s <= 0`` turns the trimming off.

    ``malloc_trim`` takes the allocator's own locks, so a trim from this thread is safe while
    the block allocates; ctypes releases the GIL for the call."""
    trim = _malloc_trim()
    if trim is None or poll_s <= 0:
        yield
        return
    done = threading.Event()
    try:
        statm: int | None = os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        statm = None

    def trimmer() -> None:
        floor = _idle_bytes(statm)
        while not done.wait(poll_s):
            now = _idle_bytes(statm)
            if now is None or floor is None:
                trim(0)
                continue
            if now - floor < slack_bytes:
                floor = min(floor, now)
                continue
            trim(0)
            floor = _idle_bytes(statm)

    thread = threading.Thread(target=trimmer, name=TRIMMER_THREAD, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if statm is not None:
            os.close(statm)
        trim(0)
