"""optimum-quanto's native extensions: compiled once, before any run; loaded without a compiler.

quanto compiles its C++ extension (``quanto_cpp``: the CPU kernel of ``quanto::unpack``, which
every forward pass of a qint4 model calls; qint8 never does, docs/findings.md) on first use with
``torch.utils.cpp_extension.load`` into ``<package>/library/extensions/cpp/build``, under a
lock file (``build/lock``) that torch waits on forever; a run killed during the build leaves
the lock behind and every later run hangs. So:

* ``python -m optimizer_job.prebuild`` (the engine image's build and ``make install``) builds
  the extensions for this machine's devices into their build directories, where quanto keeps
  them, or under ``KUBEQUANT_QUANTO_EXTENSION_DIR`` when set (one folder per extension);
* at run time :func:`ensure_for_device` imports the prebuilt module directly (no compiler, no
  ninja, no lock, a read-only directory is fine) and hands it to quanto's extension object.
  A missing or mismatched build is an immediate :class:`NativeExtensionError`; a lock left in
  the directory is waited on only while it is younger than
  ``KUBEQUANT_EXTENSION_LOCK_TIMEOUT_SECONDS`` (default 120 s, a concurrent prebuild), never
  when it is older or the directory is read-only (no build can be running there).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from optimizer_job.errors import MethodError

log = logging.getLogger("optimizer_job.native_extensions")

EXTENSION_DIR_ENV: Final = "KUBEQUANT_QUANTO_EXTENSION_DIR"
LOCK_TIMEOUT_ENV: Final = "KUBEQUANT_EXTENSION_LOCK_TIMEOUT_SECONDS"
DEFAULT_LOCK_TIMEOUT_SECONDS: Final = 120.0
LOCK_FILE: Final = "lock"  # torch.utils.cpp_extension's FileBaton in the build directory
VERSION_FILE: Final = "pytorch_version.txt"  # quanto's record of the torch it was built with
PREBUILD_COMMAND: Final = "python -m optimizer_job.prebuild"

# quanto's extension for each device type (it registers the CUDA/HIP/MPS ones only where
# that device is present).
EXTENSIONS_BY_DEVICE: Final[dict[str, tuple[str, ...]]] = {
    "cpu": ("quanto_cpp",),
    "cuda": ("quanto_cuda", "quanto_hip"),
    "mps": ("quanto_mps",),
}


class NativeExtensionError(MethodError):
    """A native extension is not usable as installed (exit code 1, reason EngineFailed).

    Raised at once, never after an unbounded wait: the message names the extension, the path
    at fault and what to do."""

    def __init__(self, name: str, path: Path, problem: str, remedy: str) -> None:
        super().__init__(f"native extension {name}: {problem} ({path}); {remedy}")
        self.extension = name
        self.path = path


def lock_timeout_seconds() -> float:
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise MethodError(f"{LOCK_TIMEOUT_ENV}: {raw!r} is not a number of seconds >= 0")
    return value


def _extension(name: str) -> Any:
    """quanto's ``Extension`` object for ``name`` (importing quanto registers them)."""
    import optimum.quanto  # noqa: F401  (registers the extensions of the present devices)
    from optimum.quanto.library.extensions import get_extension

    return get_extension(name)


def available(name: str) -> bool:
    import optimum.quanto  # noqa: F401
    from optimum.quanto.library.extensions import is_extension_available

    return bool(is_extension_available(name))


def extensions_for(device: str) -> list[str]:
    """The quanto extensions that serve ``device`` ("cpu", "cuda", "cuda:0", ...) here."""
    kind = device.split(":", 1)[0]
    return [name for name in EXTENSIONS_BY_DEVICE.get(kind, ()) if available(name)]


def build_directory(name: str) -> Path:
    """Where extension ``name`` is (pre)built: ``$KUBEQUANT_QUANTO_EXTENSION_DIR/<name>``, else
    quanto's own ``build`` folder beside the extension's sources."""
    root = os.environ.get(EXTENSION_DIR_ENV, "").strip()
    if root:
        return Path(root) / name
    sources = _extension(name).sources
    return Path(sources[0]).parent / "build"


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def wait_for_lock(name: str, directory: Path, timeout: float | None = None) -> None:
    """Return once ``directory`` holds no build lock; raise NativeExtensionError at once for a
    lock older than ``timeout`` seconds or in a read-only directory, and after waiting at most
    until the lock is ``timeout`` seconds old otherwise (a build running elsewhere)."""
    limit = lock_timeout_seconds() if timeout is None else timeout
    lock = directory / LOCK_FILE
    waited = False
    while True:
        try:
            modified = lock.stat().st_mtime
        except FileNotFoundError:
            if waited:
                log.info("%s: the build lock %s was released", name, lock)
            return
        age = max(0.0, time.time() - modified)
        if not _writable(directory):
            raise NativeExtensionError(
                name,
                lock,
                f"a build lock ({age:.0f}s old) is in a read-only directory, so no build can "
                "be running",
                "an interrupted build was copied in: remove the lock and rebuild the "
                f"extension ({PREBUILD_COMMAND}) or the engine image",
            )
        if age >= limit:
            raise NativeExtensionError(
                name,
                lock,
                f"a stale build lock, {age:.0f}s old (limit {limit:g}s, {LOCK_TIMEOUT_ENV}), "
                "left by an interrupted build",
                f"remove the lock and run {PREBUILD_COMMAND} (make install); runs never "
                "compile the extension",
            )
        if not waited:
            log.warning(
                "%s: waiting at most %.0fs for the build lock %s (a prebuild is running?)",
                name,
                limit - age,
                lock,
            )
            waited = True
        time.sleep(min(0.2, max(0.01, limit - age)))


def _import_built(name: str, library: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, library)
    if spec is None or spec.loader is None:
        raise NativeExtensionError(name, library, "not an importable module", "rebuild it")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(name: str) -> ModuleType:
    """The prebuilt extension ``name``, imported and handed to quanto; never compiles."""
    import torch

    ext = _extension(name)
    if ext._lib is not None:  # quanto caches the module: loaded (or built) in this process
        return ext._lib  # type: ignore[no-any-return]
    directory = build_directory(name)
    wait_for_lock(name, directory)
    library = directory / f"{name}.so"
    remedy = f"run {PREBUILD_COMMAND} (make install does) or use the engine image"
    if not library.is_file():
        raise NativeExtensionError(name, library, "not built", remedy)
    try:
        built_for = (directory / VERSION_FILE).read_text().strip()
    except OSError:
        built_for = "an unknown torch"
    if built_for != torch.__version__:
        raise NativeExtensionError(
            name, library, f"built for torch {built_for}, torch {torch.__version__} runs", remedy
        )
    try:
        module = _import_built(name, library)
    except (ImportError, OSError) as exc:
        raise NativeExtensionError(
            name, library, f"cannot be imported: {type(exc).__name__}: {exc}", remedy
        ) from exc
    # quanto's Extension loads lazily through this cache; filling it keeps quanto from calling
    # torch.utils.cpp_extension.load (a compiler, ninja and a lock in the directory).
    ext._lib = module
    ext.build_directory = str(directory)
    log.info("%s loaded from %s", name, library)
    return module


def ensure_for_device(device: str) -> list[str]:
    """Load every quanto extension that serves ``device``; the names loaded."""
    names = extensions_for(device)
    for name in names:
        load(name)
    return names


def build(name: str) -> Path:
    """Compile extension ``name`` into :func:`build_directory` (the prebuild step); returns the
    built library. A stale lock there (older than the lock timeout) is removed first."""
    directory = build_directory(name)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        wait_for_lock(name, directory)
    except NativeExtensionError:
        if not _writable(directory):
            raise
        log.warning("%s: removing the stale build lock %s", name, directory / LOCK_FILE)
        (directory / LOCK_FILE).unlink(missing_ok=True)
    bin_dir = str(Path(sys.executable).parent)  # the venv's ninja (a quanto dependency)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(p for p in (bin_dir, path) if p)
    ext = _extension(name)
    ext.build_directory = str(directory)
    ext.lib  # noqa: B018  (quanto compiles, or finds the build up to date, and records torch)
    library = directory / f"{name}.so"
    if not library.is_file():
        raise NativeExtensionError(name, library, "the build wrote no library", "see its log")
    return library
