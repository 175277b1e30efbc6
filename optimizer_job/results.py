"""How a run ended: its exit code, reason and message, and the one results document.

Every way a run can end (published, quality gate failed, dry run passed or failed, no
candidate produced an artifact, an error) is a :class:`RunOutcome`, and the results document
(``results.json`` in the artifact and from ``run --results``) and the compact summary (the
termination message the operator harvests) are both derived from it here, so their shape is
defined in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from kubequant_api.constants import API_VERSION, ExitCode, Reason
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.models import Result
from optimizer_job.errors import IncompatibleError
from optimizer_job.report.base import StaleRunError
from optimizer_job.report.termination import compact_summary

RESULTS_KIND: Final = "ModelOptimizationResult"
STALE_RUN_REASON: Final = "StaleRun"


def results_document(result: Result, exit_code: int, reason: str, message: str) -> dict[str, Any]:
    """The content of results.json (also what the operator harvests)."""
    return {
        "apiVersion": API_VERSION,
        "kind": RESULTS_KIND,
        "exitCode": exit_code,
        "reason": reason,
        "message": message,
        "result": result.to_api(),
    }


def exit_code_for(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and reason of a run that ended with ``exc``."""
    if isinstance(exc, InvalidSpecError | IncompatibleError):
        return ExitCode.INVALID_SPEC, Reason.INVALID_SPEC.value
    if isinstance(exc, StaleRunError):
        return ExitCode.INVALID_SPEC, STALE_RUN_REASON
    return ExitCode.RETRYABLE, Reason.ENGINE_FAILED.value


def error_message(exc: BaseException) -> str:
    """A domain error says what went wrong itself; anything else is named by its type."""
    return str(exc) if isinstance(exc, KubequantError) else f"{type(exc).__name__}: {exc}"


@dataclass
class RunOutcome:
    """How the run ended. ``results_document`` is taken when the outcome is made, so it is
    exactly the document the run wrote into its artifact."""

    exit_code: ExitCode
    reason: str
    message: str
    result: Result
    results_document: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.reason = str(self.reason)  # a Reason member or a plain string: the same text
        self.results_document = results_document(
            self.result, int(self.exit_code), self.reason, self.message
        )

    @classmethod
    def from_error(cls, exc: BaseException, result: Result) -> RunOutcome:
        code, reason = exit_code_for(exc)
        return cls(code, reason, error_message(exc), result)

    def summary(self) -> dict[str, Any]:
        """The compact summary (< 4 KiB of JSON) for the termination message."""
        full = {
            "exitCode": int(self.exit_code),
            "reason": self.reason,
            "message": self.message,
            "generation": self.result.generation,
            "result": self.result.to_api(),
        }
        compacted: dict[str, Any] = json.loads(compact_summary(full))
        return compacted


__all__ = ["RESULTS_KIND", "RunOutcome", "error_message", "exit_code_for", "results_document"]
