"""Helpers the method modules share (not a method: nothing here registers)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubequant_api.constants import Task
from optimizer_job.heap import trim_heap
from optimizer_job.methods.base import (
    ArtifactInfo,
    IncompatibleError,
    MethodError,
    QuantizeRequest,
)

log = logging.getLogger("optimizer_job.methods")

# Exceptions a quantization library raises when it fails; turned into MethodError.
LIBRARY_ERRORS: tuple[type[BaseException], ...] = (
    RuntimeError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    NotImplementedError,
    AssertionError,
    IndexError,
    ImportError,
    OSError,
)


@contextmanager
def library_errors(name: str, stage: str) -> Iterator[None]:
    """Turn a library's exception into MethodError, keeping the library's message."""
    try:
        yield
    except (IncompatibleError, MethodError):
        raise
    except LIBRARY_ERRORS as exc:
        raise MethodError(f"{name}: {stage} failed: {type(exc).__name__}: {exc}") from exc


@contextmanager
def timed(name: str, stage: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        log.info(
            "%s %s took %.2fs",
            name,
            stage,
            time.monotonic() - start,
            extra={"method": name, "stage": stage, "seconds": round(time.monotonic() - start, 3)},
        )


def release(*objects: Any) -> None:
    """Drop references and collect, returning model memory before the next big allocation."""
    del objects
    gc.collect()
    trim_heap()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def artifact_files(out_dir: Path) -> list[str]:
    """Relative paths of every file written into the artifact, sorted."""
    return sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())


def torch_dtype(name: str) -> Any:
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    return dtypes[name]


def device_map(request: QuantizeRequest) -> str:
    return "cuda:0" if request.device.startswith("cuda") else "cpu"


def spread(request: QuantizeRequest) -> dict[str, Any]:
    """``from_pretrained`` placement for quantize-while-loading: every visible GPU (with a
    per-device budget) on CUDA, the host on CPU."""
    from optimizer_job import loading

    return loading.placement(request.device) or {"device_map": "cpu"}


def source_dtype(request: QuantizeRequest) -> Any:
    """The torch dtype the source checkpoint is stored in (methods load it as stored)."""
    from optimizer_job import loading

    return loading.torch_dtype_of(loading.checkpoint_dtype(request.source_dir))


def finish_artifact(
    name: str,
    request: QuantizeRequest,
    task: Task,
    fmt: str,
    extra: dict[str, Any] | None = None,
) -> ArtifactInfo:
    """The tail every method shares: make the artifact self-contained and describe it."""
    from optimizer_job import loading

    loading.copy_tokenizer(request.source_dir, request.out_dir)
    request.progress(100)
    return ArtifactInfo(
        method=name,
        params=request.params.to_api(),
        task=task.value,
        format=fmt,
        files=artifact_files(request.out_dir),
        extra=extra or {},
    )
