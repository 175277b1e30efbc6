"""How a run ended: its exit code, reason and message, and the one results document.

Every way a run can end (published, quality gate failed, dry run passed or failed, no
candidate produced an artifact, an error) is a :class:`RunOutcome`, and the results document
(``results.json`` in the artifact and from ``run --results``) and the compact summary (the
termination message the operator harvests) are both derived from it here, so their shape is
defined in one place.

A run that got as far as fetching its source also carries a :class:`Reproducibility` record
(key ``reproducibility`` of the document, beside ``result``; never in the object's status):
the source's resolved revision, the library versions, the digests of the calibration and
evaluation texts and the seed. The seed is :data:`ENGINE_SEED`, the same for every spec, set
by :func:`seed_everything` before the baseline and again before the candidates.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from kubequant_api.constants import API_VERSION, ExitCode, Reason
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.methods import method_spec
from kubequant_api.models import Reproducibility, Result
from optimizer_job.calibration import Texts, texts_digest
from optimizer_job.errors import IncompatibleError
from optimizer_job.report.base import StaleRunError
from optimizer_job.report.termination import compact_summary

RESULTS_KIND: Final = "ModelOptimizationResult"
STALE_RUN_REASON: Final = "StaleRun"
# The one seed of every run: a fixed value, independent of the spec, so that two runs of the
# same spec on the same inputs draw the same random numbers.
ENGINE_SEED: Final = 20240601
# Distributions recorded for every run; a method adds those of its runtime modules.
BASE_DISTRIBUTIONS: Final = ("kubequant", "torch", "transformers", "huggingface-hub")


def results_document(
    result: Result,
    exit_code: int,
    reason: str,
    message: str,
    reproducibility: Reproducibility | None = None,
) -> dict[str, Any]:
    """The content of results.json (also what the operator harvests)."""
    document = {
        "apiVersion": API_VERSION,
        "kind": RESULTS_KIND,
        "exitCode": exit_code,
        "reason": reason,
        "message": message,
        "result": result.to_api(),
    }
    if reproducibility is not None:
        document["reproducibility"] = reproducibility.to_api()
    return document


def seed_everything(seed: int = ENGINE_SEED) -> int:
    """Seed Python's, NumPy's and torch's (every CUDA device's too) generators."""
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:  # pragma: no cover - numpy comes with torch in the engine image
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is part of the engine image
        pass
    return seed


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions(methods: Iterable[str]) -> dict[str, str]:
    """Python's version and the installed versions of the base libraries and of every
    distribution providing a runtime module of ``methods`` (from the method table)."""
    distributions = list(BASE_DISTRIBUTIONS)
    providers = importlib.metadata.packages_distributions()
    for name in methods:
        for module in method_spec(name).runtime_modules:
            distributions += providers.get(module.split(".", 1)[0], [])
    versions = {"python": platform.python_version()}
    for dist in dict.fromkeys(distributions):
        version = _version(dist)
        if version is not None:
            versions[dist] = version
    return versions


def reproducibility_record(
    *, source_uri: str, source_revision: str, methods: Iterable[str], texts: Texts
) -> Reproducibility:
    """The run's record, once its source is fetched and its texts are chosen."""
    return Reproducibility(
        source_uri=source_uri,
        source_revision=source_revision,
        library_versions=library_versions(methods),
        calibration_source=texts.source,
        calibration_samples=len(texts.calibration),
        calibration_digest=texts_digest(texts.calibration) if texts.calibration else None,
        evaluation_samples=len(texts.evaluation),
        evaluation_digest=texts_digest(texts.evaluation),
        seed=ENGINE_SEED,
    )


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
    reproducibility: Reproducibility | None = None
    results_document: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.reason = str(self.reason)  # a Reason member or a plain string: the same text
        self.results_document = results_document(
            self.result, int(self.exit_code), self.reason, self.message, self.reproducibility
        )

    @classmethod
    def from_error(
        cls, exc: BaseException, result: Result, reproducibility: Reproducibility | None = None
    ) -> RunOutcome:
        code, reason = exit_code_for(exc)
        return cls(code, reason, error_message(exc), result, reproducibility)

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


__all__ = [
    "ENGINE_SEED",
    "RESULTS_KIND",
    "RunOutcome",
    "error_message",
    "exit_code_for",
    "library_versions",
    "reproducibility_record",
    "results_document",
    "seed_everything",
]
