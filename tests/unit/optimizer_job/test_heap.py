"""The heap trimmer: freed memory glibc cannot reuse is returned once the process has grown
by the slack, and only inside its block."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from optimizer_job import heap

MIB = 1024**2

# Run in a fresh interpreter: glibc's heap is put into a known state (a fixed mmap threshold,
# so the 4 and 8 MiB blocks come from the heap), then 40 freed 4 MiB blocks sit between kept
# ones where no 8 MiB block fits, and 20 new 8 MiB blocks are allocated. Without a trim the
# freed blocks stay resident under the new ones; prints the peak resident anonymous memory
# (VmHWM less the interpreter's own) in MiB.
_PILE = """
import ctypes, json, sys
from optimizer_job import heap
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: fixed, above every block here
MIB = 1 << 20

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM")

def block(size):
    ptr = libc.malloc(size)
    ctypes.memset(ptr, 1, size)
    return ptr

def pile():
    garbage, kept = [], []
    for _ in range(40):
        garbage.append(block(4 * MIB))
        kept.append(block(64 * 1024))
    for ptr in garbage:
        libc.free(ptr)
    return kept + [block(8 * MIB) for _ in range(20)]

open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
start = hwm()
if sys.argv[1] == "trimmed":
    with heap.trimming_heap(slack_bytes=16 * MIB, poll_s=0.001):
        pile()
else:
    pile()
print(json.dumps((hwm() - start) / MIB))
"""


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter from the repository root."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[3],
        check=False,
    )


def _pile_peak(mode: str) -> float:
    done = _python(_PILE, mode)
    assert done.returncode == 0, done.stderr
    peak: float = json.loads(done.stdout.strip().splitlines()[-1])
    return peak


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_freed_memory_that_cannot_be_reused_is_returned_as_the_process_grows() -> None:
    untrimmed = _pile_peak("untrimmed")
    trimmed = _pile_peak("trimmed")
    # kept: 40 x 64 KiB + 20 x 8 MiB = 162.5 MiB; freed and never reused: 160 MiB.
    assert untrimmed > 300, f"the freed blocks did not stay resident ({untrimmed:.0f} MiB)"
    assert trimmed < 162.5 + 80, f"trimmed peak {trimmed:.0f} MiB (untrimmed {untrimmed:.0f})"


def test_the_slack_is_a_12th_of_the_model_within_bounds() -> None:
    assert heap.slack_for(0) == 16 * MIB
    assert heap.slack_for(3 * 1024 * MIB) == 256 * MIB
    assert heap.slack_for(140 * 1024 * MIB) == 2 * 1024 * MIB


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc")
def test_anonymous_memory_is_what_the_kernel_reports() -> None:
    import os

    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        ballast = b"\x01" * (64 * MIB)  # written, so resident
        measured = heap._anonymous_bytes(fd)
        status = Path("/proc/self/status").read_text().splitlines()
        del ballast
    finally:
        os.close(fd)
    rss_anon = next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon"))
    assert measured is not None
    assert abs(measured - rss_anon) < 8 * MIB
    assert heap._anonymous_bytes(None) is None


def test_the_heap_trimmer_runs_only_inside_its_block() -> None:
    def trimmers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == heap.TRIMMER_THREAD]

    assert not trimmers()
    with heap.trimming_heap(poll_s=0.001):
        assert len(trimmers()) == 1
        junk = [bytearray(1 << 20) for _ in range(8)]
        del junk
    assert not trimmers()
    with heap.trimming_heap(poll_s=0):  # disabled
        assert not trimmers()


# Run in a fresh interpreter, so oneMKL's buffer cache starts empty: GPTQ's kind of work
# (Cholesky factorizations and inverses, fp32 matrix products) leaves oneMKL holding buffers
# in malloc's heap. Prints the heap in use (MiB) at the start, after the work, after a bare
# malloc_trim and after trim_heap.
_MKL_WORK = """
import json, platform
import torch
from optimizer_job import heap

def used():
    return heap._mallinfo2()().uordblks / (1 << 20)

torch.set_num_threads(2)
start = used()
for n in (256, 512, 1024, 2048):
    a = torch.randn(n, n)
    h = a @ a.T + n * torch.eye(n)
    factor = torch.linalg.cholesky(h)
    inverse = torch.cholesky_inverse(factor)
    del a, h, factor, inverse
worked = used()
heap._malloc_trim()(0)
malloc_trimmed = used()
heap.trim_heap()
print(json.dumps([start, worked, malloc_trimmed, used(), heap._mkl_free_buffers() is not None]))
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.machine() != "x86_64",
    reason="torch links oneMKL in on x86-64 Linux",
)
def test_trimming_the_heap_frees_what_onemkl_keeps_for_reuse() -> None:
    done = _python(_MKL_WORK, timeout=300)
    assert done.returncode == 0, done.stderr
    start, worked, malloc_trimmed, trimmed, found = json.loads(done.stdout.splitlines()[-1])
    assert found, "oneMKL's mkl_free_buffers was not found in libtorch_cpu"
    # oneMKL holds its buffers as memory in use: malloc_trim alone cannot return them
    assert worked - start > 4, f"the work left no oneMKL buffers ({worked - start:.1f} MiB)"
    assert malloc_trimmed - start > 4
    assert trimmed - start < 1, f"{trimmed - start:.1f} MiB still in use after trim_heap"


def test_without_torch_loaded_onemkl_is_looked_up_later() -> None:
    code = (
        "import sys; from optimizer_job import heap; heap.trim_heap(); "
        "assert heap._mkl_free == [] and 'torch' not in sys.modules; print('ok')"
    )
    done = _python(code)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
