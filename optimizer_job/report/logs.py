"""LogReporter: one structured JSON log line per stage, result and finish."""

from __future__ import annotations

import json
import logging
from typing import Any

from kubequant_api.constants import ExitCode, Stage
from kubequant_api.models import Result
from optimizer_job.redact import scrub, scrub_obj
from optimizer_job.report.base import RunContext

LOGGER_NAME = "optimizer_job.report"

# Result fields copied into the log line's context (scalars only, never URIs with secrets:
# every string goes through ``scrub``).
_RESULT_FIELDS = (
    "method",
    "original_size_bytes",
    "optimized_size_bytes",
    "compression_ratio",
    "speedup",
    "perplexity_increase_percent",
    "cosine_similarity",
    "top1_agreement",
    "quality_gate",
    "output_uri",
    "output_digest",
)


class LogReporter:
    """Logs through ``logging`` (``kubequant_api.logs`` formats it as JSON)."""

    def __init__(self, ctx: RunContext, logger: logging.Logger | None = None) -> None:
        self.ctx = ctx
        self.log = logger or logging.getLogger(LOGGER_NAME)

    def _extra(self, **fields: Any) -> dict[str, Any]:
        out = dict(self.ctx.log_extra())
        out.update(fields)
        return {k: scrub(v) if isinstance(v, str) else v for k, v in out.items()}

    def stage(self, stage: Stage, percent: int, candidate: str | None = None) -> None:
        suffix = f" (candidate {candidate})" if candidate else ""
        self.log.info(
            "stage %s, %d%%%s",
            Stage(stage).value,
            percent,
            suffix,
            extra=self._extra(stage=Stage(stage).value, percent=percent, candidate=candidate),
        )

    def result(self, result: Result) -> None:
        fields: dict[str, Any] = {f"result_{k}": getattr(result, k) for k in _RESULT_FIELDS}
        fields["result_candidates"] = len(result.candidates)
        fields["result_generation"] = result.generation
        self.log.info(
            "result: method %s, compression ratio %s, quality gate %s",
            result.method,
            result.compression_ratio,
            result.quality_gate,
            extra=self._extra(**fields),
        )

    def finish(self, exit_code: ExitCode, summary: dict[str, Any]) -> None:
        code = ExitCode(exit_code)
        level = logging.INFO if code == ExitCode.SUCCESS else logging.WARNING
        self.log.log(
            level,
            "finished with exit code %d (%s)",
            int(code),
            code.name.lower(),
            extra=self._extra(
                exit_code=int(code),
                summary=json.dumps(scrub_obj(summary), separators=(",", ":"), default=str),
            ),
        )
