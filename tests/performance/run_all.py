"""``make bench``: every benchmark, one after the other; figures, not pass/fail.

Runs ``tests.performance.bench_engine`` and, when present, ``tests.performance.bench_operator``
(imported lazily; a missing module is skipped with a note). Results land in
``bench-results/``. Arguments are passed to the engine benchmark (see its ``--help``).
"""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Sequence


def _run(module_name: str, argv: Sequence[str]) -> int | None:
    """Run ``module_name.main(argv)``; None when the module does not exist."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:  # the module exists but one of its imports is missing
            raise
        return None
    started = time.monotonic()
    print(f"=== {module_name}", flush=True)
    code = module.main(list(argv))
    print(f"=== {module_name}: exit {code} in {time.monotonic() - started:.0f}s\n", flush=True)
    return int(code or 0)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    failures = 0
    for name, module_args in (
        ("tests.performance.bench_engine", args),
        ("tests.performance.bench_operator", []),
    ):
        code = _run(name, module_args)
        if code is None:
            print(f"=== {name}: not present yet, skipped", flush=True)
        elif code != 0:
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
