"""How the engine tells the world what it is doing: the Reporter contract.

The pipeline calls a single Reporter; ``CompositeReporter`` fans out to logs, Prometheus, the
Kubernetes status subresource and the termination message. A reporter must never make the
run fail: implementations log and swallow their own transport errors, except where a
precondition says the run itself is obsolete (see ``StaleRunError``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kubequant_api.constants import ExitCode, Stage
from kubequant_api.errors import KubequantError
from kubequant_api.models import Result


class StaleRunError(KubequantError):
    """The object changed under the run (new generation, or a different uid): stop reporting."""


@dataclass(frozen=True)
class RunContext:
    """Who this run is for. Local runs have no namespace/uid."""

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    method: str | None = None

    def log_extra(self) -> dict[str, Any]:
        """Context for ``logging``'s ``extra=``.

        The object's name goes under ``object_name``: ``name`` is a reserved LogRecord
        attribute (``logger.info(..., extra={"name": ...})`` raises KeyError).
        """
        return {
            "namespace": self.namespace,
            "object_name": self.name,
            "generation": self.generation,
            "method": self.method,
        }


class Reporter(Protocol):
    def stage(self, stage: Stage, percent: int, candidate: str | None = None) -> None:
        """A stage started or advanced (percent of the whole run, 0..100)."""

    def result(self, result: Result) -> None:
        """The (final or partial) result of this run."""

    def finish(self, exit_code: ExitCode, summary: dict[str, Any]) -> None:
        """The run ended; ``summary`` is the compact JSON summary (< 4 KiB)."""


class CompositeReporter:
    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self.reporters = list(reporters)

    def stage(self, stage: Stage, percent: int, candidate: str | None = None) -> None:
        for r in self.reporters:
            r.stage(stage, percent, candidate)

    def result(self, result: Result) -> None:
        for r in self.reporters:
            r.result(result)

    def finish(self, exit_code: ExitCode, summary: dict[str, Any]) -> None:
        for r in self.reporters:
            r.finish(exit_code, summary)

    def close(self) -> None:
        """Release what the reporters hold (metrics server, API clients); idempotent."""
        for r in self.reporters:
            close = getattr(r, "close", None)
            if callable(close):
                close()
