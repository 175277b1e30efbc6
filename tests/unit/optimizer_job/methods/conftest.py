"""Shared pieces of the method tests: quantize each (method, model) once per session, and
measure a reloaded artifact against the fp32 original on real held-out text.

``build_artifact`` is shared by test_causal_methods.py, test_encoder_methods.py and
test_ecosystem_loading.py: each (method, model, params) is quantized once per session however
many tests use it. The artifact directory is shared, so tests only read it; a test that
writes into it (the model card) works on :func:`private_copy`. A shared directory that
changed since it was built fails the next test that asks for it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubequant_api.constants import Task
from kubequant_api.models import METHOD_PARAMS
from optimizer_job import modeling
from optimizer_job.corpus import split_corpus
from optimizer_job.methods.base import ArtifactInfo, InferenceModel, QuantizeRequest, get_method

EVAL_SAMPLES = 24
MAX_LENGTH = 96
LM_MAX_LENGTH = 64  # the tiny LM was trained on 64-token windows
CALIBRATION_SAMPLES = 64
# AWQ's grid search runs each decoder block 20 times over every sample: keep CPU time low.
CALIBRATION_SAMPLES_PER_METHOD = {"gptq": 32, "awq": 16}


@dataclass
class Built:
    """One quantized artifact, written and measured once per session."""

    method: str
    source: Path
    out_dir: Path
    info: ArtifactInfo
    quantize_seconds: float
    size_ratio: float


@dataclass
class BuildLog:
    """What ``build_artifact`` did this session (reported at the end of the run)."""

    quantized: list[str] = field(default_factory=list)
    reused: int = 0
    failed: list[str] = field(default_factory=list)


BUILD_LOG = pytest.StashKey[BuildLog]()


def dir_manifest(path: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime ns) of every file under ``path``: cheap change detection."""
    return sorted(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in path.rglob("*")
        if p.is_file()
    )


def private_copy(built: Built, tmp_path: Path) -> Built:
    """``built`` with its artifact copied under ``tmp_path``, for a test that writes into it
    (the shared directory stays as the method wrote it)."""
    target = tmp_path / built.out_dir.name
    shutil.copytree(built.out_dir, target)
    return replace(built, out_dir=target)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    log = config.stash.get(BUILD_LOG, None)
    if log is None:
        return
    line = (
        f"method artifacts: {len(log.quantized)} quantized, {log.reused} reused from "
        "this session"
    )
    if log.failed:
        line += f", {len(log.failed)} failed ({', '.join(log.failed)})"
    terminalreporter.write_line(line)


def encode(
    model_dir: Path, texts: list[str], max_length: int = MAX_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    tokenizer = modeling.load_tokenizer(model_dir)
    enc = tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="np"
    )
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    pooled: np.ndarray = (hidden * weights).sum(1) / np.maximum(weights.sum(1), 1.0)
    return pooled


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def top1_agreement(ref: np.ndarray, out: np.ndarray, mask: np.ndarray) -> float:
    same = (ref.argmax(-1) == out.argmax(-1)) & (mask == 1)
    return float(same.sum() / mask.sum())


def perplexity(logits: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> float:
    shifted = logits[:, :-1].astype(np.float64)
    shifted = shifted - shifted.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    target = ids[:, 1:]
    valid = mask[:, 1:] == 1
    nll = -np.take_along_axis(logp, target[..., None], -1)[..., 0]
    return float(math.exp(nll[valid].sum() / valid.sum()))


def report(name: str, figures: dict[str, Any]) -> None:
    """Print measured figures (pytest -s shows them; they also go to the junit output)."""
    print(f"\nMEASURED {name}: {json.dumps(figures, sort_keys=True)}")


@pytest.fixture(scope="session")
def eval_texts() -> list[str]:
    held_out = split_corpus()[1]
    return held_out[:EVAL_SAMPLES]


@pytest.fixture(scope="session")
def calibration_subset(calibration_texts: list[str]) -> list[str]:
    return calibration_texts[:CALIBRATION_SAMPLES]


@pytest.fixture(scope="session")
def build_artifact(
    tmp_path_factory: pytest.TempPathFactory,
    calibration_subset: list[str],
    pytestconfig: pytest.Config,
) -> Iterator[Callable[..., Built]]:
    """``build(method, source, task, **params)``: quantize once per session and cache.

    A build that failed is not tried again in the session: later tests fail at once with
    its error. The artifact directory is checked unchanged at each reuse."""
    cache: dict[tuple[str, str, str], tuple[Built, list[tuple[str, int, int]]]] = {}
    failures: dict[tuple[str, str, str], str] = {}
    log = pytestconfig.stash.setdefault(BUILD_LOG, BuildLog())

    def build(method: str, source: Path, task: Task, **params: Any) -> Built:
        key = (method, str(source), json.dumps(params, sort_keys=True))
        name = f"{method} on {source}" + (f" {key[2]}" if params else "")
        if key in failures:
            pytest.fail(f"quantizing {name} failed earlier in this session: {failures[key]}")
        if key in cache:
            built, manifest = cache[key]
            assert dir_manifest(built.out_dir) == manifest, (
                f"the shared artifact of {name} ({built.out_dir}) changed since it was built: "
                "a test that writes into an artifact must use private_copy()"
            )
            log.reused += 1
            return built
        impl = get_method(method)
        out = tmp_path_factory.mktemp(method.replace("-", "_"))
        request = QuantizeRequest(
            source_dir=source,
            out_dir=out,
            task=task,
            params=METHOD_PARAMS[method].model_validate(params),
            calibration=(
                calibration_subset[: CALIBRATION_SAMPLES_PER_METHOD.get(method, 64)]
                if impl.needs_calibration
                else ()
            ),
            sequence_length=LM_MAX_LENGTH,
        )
        start = time.monotonic()
        try:
            info = impl.quantize(request)
            seconds = time.monotonic() - start
            info.write(out)
        except Exception as exc:
            failures[key] = f"{type(exc).__name__}: {exc}"
            log.failed.append(name)
            raise
        ratio = modeling.weights_size(out) / modeling.weights_size(source)
        log.quantized.append(name)
        built = Built(method, source, out, info, seconds, ratio)
        cache[key] = (built, dir_manifest(out))
        return built

    yield build


@pytest.fixture(scope="session")
def reference_outputs() -> Callable[[Path, Task, list[str]], tuple[Any, Any, Any]]:
    """fp32 original outputs for (model, texts), computed once per model."""
    cache: dict[str, tuple[Any, Any, Any]] = {}

    def get(source: Path, task: Task, texts: list[str]) -> tuple[Any, Any, Any]:
        if str(source) not in cache:
            ids, mask = encode(
                source, texts, LM_MAX_LENGTH if task == Task.CAUSAL_LM else MAX_LENGTH
            )
            original = modeling.load_original(source, task)
            try:
                cache[str(source)] = (ids, mask, original.forward(ids, mask))
            finally:
                original.close()
        return cache[str(source)]

    return get


def run_loaded(model: InferenceModel, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    try:
        out = model.forward(ids, mask)
    finally:
        model.close()
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    return out
