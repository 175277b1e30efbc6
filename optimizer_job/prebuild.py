"""``python -m optimizer_job.prebuild``: compile the native extensions the methods need.

Run by the engine image's build and by ``make install``, so that no run compiles anything
(:mod:`optimizer_job.native_extensions`). It builds quanto's extension for every device this
machine has (the CPU one always; CUDA's only where a GPU is visible: quanto picks its kernels
from the GPUs present). ``--check`` only loads the prebuilt extensions, as a run does.
Exit code 0 when every extension is built (or loadable), 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from collections.abc import Sequence

from optimizer_job import native_extensions
from optimizer_job.errors import MethodError

log = logging.getLogger("optimizer_job.prebuild")


def devices() -> list[str]:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optimizer_job.prebuild", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="load the prebuilt extensions, build nothing"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    failed = False
    for device in devices():
        for name in native_extensions.extensions_for(device):
            start = time.monotonic()
            try:
                if args.check:
                    native_extensions.load(name)
                    where = native_extensions.build_directory(name)
                else:
                    where = native_extensions.build(name)
            except MethodError as exc:
                print(f"{name}: FAILED: {exc}", file=sys.stderr)
                failed = True
                continue
            except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as exc:
                # torch's compile step (a compiler, ninja, a header missing): report, keep going
                print(f"{name}: FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                failed = True
                continue
            verb = "loaded" if args.check else "built"
            print(f"{name}: {verb} {where} ({time.monotonic() - start:.1f}s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
