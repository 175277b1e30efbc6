"""issue 12: quanto's native extension is never compiled at run time, and a build lock left by
an interrupted build fails a run at once, with a named error, instead of hanging it.

The extension under test is the one ``python -m optimizer_job.prebuild`` (``make install``)
built into quanto's own build folder; each test copies it into a private
``KUBEQUANT_QUANTO_EXTENSION_DIR`` (or leaves that empty) and runs the engine in a fresh
interpreter, since a process keeps the extension once loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from optimizer_job import native_extensions
from optimizer_job.native_extensions import (
    EXTENSION_DIR_ENV,
    LOCK_FILE,
    LOCK_TIMEOUT_ENV,
    VERSION_FILE,
    NativeExtensionError,
)
from tests.fixtures.childenv import engine_env
from tests.fixtures.storage import write_manifest

REPO = Path(__file__).resolve().parents[3]
NAME = "quanto_cpp"


@pytest.fixture(scope="module")
def prebuilt() -> Path:
    """The directory the prebuild step built quanto's CPU extension into (environment unset)."""
    saved = os.environ.pop(EXTENSION_DIR_ENV, None)
    try:
        directory = native_extensions.build_directory(NAME)
    finally:
        if saved is not None:
            os.environ[EXTENSION_DIR_ENV] = saved
    assert (
        directory / f"{NAME}.so"
    ).is_file(), (
        f"{directory}: quanto's extension is not prebuilt; run python -m optimizer_job.prebuild"
    )
    return directory


def copy_prebuilt(prebuilt: Path, root: Path) -> Path:
    target = root / NAME
    target.mkdir(parents=True)
    for file in (f"{NAME}.so", VERSION_FILE):
        shutil.copy2(prebuilt / file, target / file)
    return target


def old_lock(directory: Path, age_seconds: float) -> Path:
    lock = directory / LOCK_FILE
    lock.touch()
    then = time.time() - age_seconds
    os.utime(lock, (then, then))
    return lock


def quanto_env(tmp_path: Path, extension_root: Path, **extra: str) -> dict[str, str]:
    env = engine_env(tmp_path, repeats=2)
    env.update(
        {
            "KUBEQUANT_CACHE_DIR": str(tmp_path / "hf-cache"),
            EXTENSION_DIR_ENV: str(extension_root),
            **extra,
        }
    )
    return env


def run_quanto_int4(
    tmp_path: Path, model: Path, extension_root: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], float]:
    spec = {
        "model": {"uri": f"file://{model}", "task": "causal-lm"},
        "method": "quanto-int4",
        "evaluation": {"samples": 4},
        "output": {"uri": f"file://{tmp_path / 'out'}"},
    }
    manifest = write_manifest(tmp_path / "run.yaml", spec)
    results = tmp_path / "results.json"
    start = time.monotonic()
    command = [sys.executable, "-m", "optimizer_job", "run", "-f", str(manifest)]
    proc = subprocess.run(
        [*command, "--results", str(results)],
        env=quanto_env(tmp_path, extension_root),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.monotonic() - start
    doc = json.loads(results.read_text()) if results.is_file() else {}
    return proc, doc, seconds


def load_in_fresh_process(
    tmp_path: Path, extension_root: Path, prelude: str = "", **extra: str
) -> tuple[int, str]:
    """``native_extensions.load`` in a new interpreter (after ``prelude``, run once quanto is
    imported); exit code 3 and the error on NativeExtensionError."""
    code = (
        "import logging, threading, time\n"
        "from pathlib import Path\n"
        "import optimum.quanto\n"
        "from optimizer_job import native_extensions as n\n"
        "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
        f"{prelude}\n"
        "try:\n"
        f"    print('LOADED', n.load({NAME!r}).__file__, flush=True)\n"
        "except n.NativeExtensionError as exc:\n"
        "    print('ERROR', type(exc).__name__, exc, flush=True)\n"
        "    raise SystemExit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=quanto_env(tmp_path, extension_root, **extra),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
def test_stale_lock_fails_the_quanto_int4_run_at_once(
    tmp_path: Path, tiny_lm_path: Path, prebuilt: Path
) -> None:
    root = tmp_path / "ext"
    lock = old_lock(copy_prebuilt(prebuilt, root), age_seconds=3600)
    proc, doc, seconds = run_quanto_int4(tmp_path, tiny_lm_path, root)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert doc["reason"] == "EngineFailed"
    message = doc["message"]
    assert f"native extension {NAME}" in message and str(lock) in message
    assert "stale build lock" in message and "python -m optimizer_job.prebuild" in message
    # Fails before loading the model (an unbounded wait would hit the 600 s timeout): the
    # interpreter, torch and the preflight take the time; the lock check none.
    assert seconds < 120, seconds
    assert lock.exists(), "a run never removes (or takes) the lock"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_prebuilt_extension_runs_quanto_int4(
    tmp_path: Path, tiny_lm_path: Path, prebuilt: Path
) -> None:
    root = tmp_path / "ext"
    target = copy_prebuilt(prebuilt, root)
    proc, doc, _ = run_quanto_int4(tmp_path, tiny_lm_path, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert doc["reason"] == "Succeeded"
    assert f"{NAME} loaded from {target / (NAME + '.so')}" in proc.stderr
    # Nothing was compiled or locked there: only the two copied files.
    assert sorted(p.name for p in target.iterdir()) == sorted([f"{NAME}.so", VERSION_FILE])


def test_missing_or_mismatched_extension_fails_at_once(tmp_path: Path, prebuilt: Path) -> None:
    code, out = load_in_fresh_process(tmp_path, tmp_path / "empty")
    assert code == 3, out
    assert f"ERROR NativeExtensionError native extension {NAME}: not built" in out
    assert str(tmp_path / "empty" / NAME / f"{NAME}.so") in out
    assert not (tmp_path / "empty").exists(), "a run builds nothing, not even the folder"

    other = copy_prebuilt(prebuilt, tmp_path / "other")
    (other / VERSION_FILE).write_text("2.0.0+cpu")
    code, out = load_in_fresh_process(tmp_path, tmp_path / "other")
    assert code == 3, out
    assert f"built for torch 2.0.0+cpu, torch {torch.__version__} runs" in out


def test_prebuilt_copy_loads_and_a_fresh_lock_is_waited_on(tmp_path: Path, prebuilt: Path) -> None:
    root = tmp_path / "ext"
    target = copy_prebuilt(prebuilt, root)
    code, out = load_in_fresh_process(tmp_path, root)
    assert code == 0 and f"LOADED {target / (NAME + '.so')}" in out, out
    # A lock a prebuild holds right now is waited on, and the load goes on once it is gone
    # (the child takes the lock, as a concurrent prebuild would, and drops it after 1.5 s).
    lock = target / LOCK_FILE
    prelude = (
        f"lock = Path({str(lock)!r}); lock.touch(); start = time.monotonic()\n"
        "threading.Timer(1.5, lock.unlink).start()"
    )
    code, out = load_in_fresh_process(tmp_path, root, prelude, **{LOCK_TIMEOUT_ENV: "600"})
    assert code == 0 and "LOADED" in out, out
    assert f"waiting at most 600s for the build lock {lock}" in out
    assert f"the build lock {lock} was released" in out
    assert not lock.exists()


def test_wait_for_a_fresh_lock_is_bounded(tmp_path: Path) -> None:
    lock = old_lock(tmp_path, age_seconds=0)
    start = time.monotonic()
    with pytest.raises(NativeExtensionError, match="stale build lock") as caught:
        native_extensions.wait_for_lock(NAME, tmp_path, timeout=1.5)
    waited = time.monotonic() - start
    assert 1.0 <= waited < 5.0, waited
    assert caught.value.path == lock and caught.value.extension == NAME
    # Older than the limit: no wait at all.
    old_lock(tmp_path, age_seconds=10)
    start = time.monotonic()
    with pytest.raises(NativeExtensionError, match="10s old"):
        native_extensions.wait_for_lock(NAME, tmp_path, timeout=5)
    assert time.monotonic() - start < 0.5
    # No lock: returns at once.
    lock.unlink()
    native_extensions.wait_for_lock(NAME, tmp_path, timeout=5)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_any_lock_in_a_read_only_directory_fails_at_once(tmp_path: Path) -> None:
    old_lock(tmp_path, age_seconds=0)
    tmp_path.chmod(0o555)
    try:
        start = time.monotonic()
        with pytest.raises(NativeExtensionError, match="read-only directory"):
            native_extensions.wait_for_lock(NAME, tmp_path, timeout=600)
        assert time.monotonic() - start < 0.5
    finally:
        tmp_path.chmod(0o755)
