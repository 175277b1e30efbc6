"""The one results document: its shape, and how a failure becomes an exit code and reason."""

from __future__ import annotations

import json

import pytest

from kubequant_api.constants import API_VERSION, ExitCode, Reason
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.models import Result
from optimizer_job.methods.base import IncompatibleError
from optimizer_job.report.base import StaleRunError
from optimizer_job.results import RESULTS_KIND, RunOutcome


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
