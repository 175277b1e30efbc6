"""The one results document: its shape, and how a failure becomes an exit code and reason."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import random

import pytest

from kubequant_api.constants import API_VERSION, ExitCode, Reason
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.models import Reproducibility, Result
from optimizer_job.calibration import Texts, texts_digest
from optimizer_job.methods.base import IncompatibleError
from optimizer_job.report.base import StaleRunError
from optimizer_job.results import (
    ENGINE_SEED,
    RESULTS_KIND,
    RunOutcome,
    library_versions,
    reproducibility_record,
    seed_everything,
)


def test_the_document_has_one_shape_and_plain_values() -> None:
    result = Result(generation=3, method="torchao-int8-weight", compression_ratio=2.0)
    outcome = RunOutcome(ExitCode.QUALITY_GATE_FAILED, Reason.QUALITY_GATE_FAILED, "no", result)
    doc = outcome.results_document
    assert doc == {
        "apiVersion": API_VERSION,
        "kind": RESULTS_KIND,
        "exitCode": 3,
        "reason": "QualityGateFailed",
        "message": "no",
        "result": result.to_api(),
    }
    assert type(doc["exitCode"]) is int and type(doc["reason"]) is str
    assert type(outcome.reason) is str
    assert json.loads(json.dumps(doc)) == doc


def test_the_document_is_taken_when_the_run_ends() -> None:
    result = Result(generation=1, method="awq")
    outcome = RunOutcome(ExitCode.SUCCESS, Reason.SUCCEEDED, "ok", result)
    result.output_digest = "sha256:later"
    assert "outputDigest" not in outcome.results_document["result"]


@pytest.mark.parametrize(
    ("exc", "code", "reason", "message"),
    [
        (InvalidSpecError("spec.model.uri", "gone"), 2, "InvalidSpec", "spec.model.uri"),
        (IncompatibleError("spec.method", "needs a GPU"), 2, "InvalidSpec", "needs a GPU"),
        (StaleRunError("generation 2 replaced 1"), 2, "StaleRun", "generation 2 replaced 1"),
        (KubequantError("no candidate produced an artifact"), 1, "EngineFailed", "no candidate"),
        (RuntimeError("boom"), 1, "EngineFailed", "RuntimeError: boom"),
    ],
)
def test_a_failure_maps_to_its_exit_code_and_reason(
    exc: BaseException, code: int, reason: str, message: str
) -> None:
    outcome = RunOutcome.from_error(exc, Result(generation=2))
    assert (int(outcome.exit_code), outcome.reason) == (code, reason)
    assert message in outcome.message
    assert outcome.results_document["exitCode"] == code
    assert outcome.results_document["reason"] == reason
    summary = outcome.summary()
    assert (summary["exitCode"], summary["reason"], summary["generation"]) == (code, reason, 2)


def _record() -> Reproducibility:
    return reproducibility_record(
        source_uri="hf://org/name",
        source_revision="f" * 40,
        methods=["torchao-int8-weight"],
        texts=Texts(calibration=["a", "b"], evaluation=["c"], source="builtin"),
    )


def test_the_document_carries_the_reproducibility_record() -> None:
    record = _record()
    result = Result(generation=1, method="awq")
    doc = RunOutcome(ExitCode.SUCCESS, Reason.SUCCEEDED, "ok", result, record).results_document
    assert doc["reproducibility"] == record.to_api()
    assert Reproducibility.model_validate(doc["reproducibility"]) == record
    assert json.loads(json.dumps(doc)) == doc
    failed = RunOutcome.from_error(RuntimeError("x"), result, record).results_document
    assert failed["reproducibility"]["sourceRevision"] == "f" * 40
    assert (
        "reproducibility" not in RunOutcome.from_error(RuntimeError("x"), result).results_document
    )
    assert record.seed == ENGINE_SEED
    assert record.calibration_digest == texts_digest(["a", "b"]) and record.calibration_samples == 2
    assert record.evaluation_digest == texts_digest(["c"]) and record.evaluation_samples == 1
    assert record.calibration_source == "builtin"
    no_cal = reproducibility_record(
        source_uri="file:///m",
        source_revision="sha256:x",
        methods=["torchao-int8-weight"],
        texts=Texts(calibration=[], evaluation=["c"], source="builtin"),
    )
    assert no_cal.calibration_digest is None and no_cal.calibration_samples == 0


def test_library_versions_name_the_base_libraries_and_each_methods_runtime() -> None:
    versions = library_versions(["torchao-int8-weight", "quanto-int8", "onnx-int8", "gptq"])
    assert versions["python"] == platform.python_version()
    for dist in (
        "kubequant",
        "torch",
        "transformers",
        "huggingface-hub",
        "torchao",
        "optimum-quanto",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "llmcompressor",
        "datasets",
    ):
        assert versions[dist] == importlib.metadata.version(dist), dist
    assert "bitsandbytes" not in library_versions(["torchao-int8-weight"])


def test_texts_digest_is_ordered_and_unambiguous() -> None:
    digest = texts_digest(["a b", "c"])
    expected = hashlib.sha256(json.dumps(["a b", "c"], separators=(",", ":")).encode())
    assert digest == "sha256:" + expected.hexdigest()
    assert digest == texts_digest(["a b", "c"])
    assert digest != texts_digest(["c", "a b"])
    assert texts_digest(["ab"]) != texts_digest(["a", "b"])
    assert texts_digest(["é"]) == "sha256:" + hashlib.sha256('["é"]'.encode()).hexdigest()


def test_seed_everything_repeats_the_random_draws() -> None:
    import numpy
    import torch

    def draw() -> tuple[float, float, list[float]]:
        return random.random(), float(numpy.random.rand()), torch.rand(3).tolist()

    assert seed_everything() == ENGINE_SEED
    first = draw()
    seed_everything()
    assert draw() == first
    seed_everything(ENGINE_SEED + 1)
    assert draw() != first
