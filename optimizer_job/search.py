"""Running candidates: quantize, write, reload, measure, gate — and picking the winner.

A single method is a search with one candidate. With ``method: auto`` every candidate runs
in order under the quality gate; each one is reported (a crashed one with its error); the
smallest passing artifact wins (ties: the fastest). Only the winner is ever published.
"""

from __future__ import annotations

import gc
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubequant_api.constants import GateVerdict, Stage, Task
from kubequant_api.methods import incompatibility
from kubequant_api.models import ApiModel, CandidateResult, Measurements, QualityGate
from optimizer_job import modeling
from optimizer_job.evaluation import Comparison, Inputs, ModelRun, compare, gate_verdict, run_model
from optimizer_job.methods.base import IncompatibleError, QuantizationMethod, QuantizeRequest
from optimizer_job.report.base import Reporter, StaleRunError

log = logging.getLogger(__name__)


@dataclass
class PlannedRun:
    """One (method, params) the engine will try, with the spec field that names it.

    Built from the parsed spec's plan (``ModelOptimizationSpec.planned``); not to be confused
    with ``kubequant_api.models.Candidate``, an entry of ``spec.candidates``.
    """

    index: int
    name: str
    params: ApiModel
    field: str  # spec.method or spec.candidates[i].method
    method: QuantizationMethod | None = None
    # Set by check_compatible once the task is known: why this run cannot happen here.
    incompatible: IncompatibleError | None = None

    @property
    def params_dict(self) -> dict[str, Any]:
        return self.params.model_dump(by_alias=True, mode="json")

    @property
    def label(self) -> str:
        return f"{self.index}:{self.name}"


@dataclass
class CandidateOutcome:
    """What one candidate produced (how the whole run ended is results.RunOutcome)."""

    candidate: PlannedRun
    artifact_dir: Path | None = None
    size_bytes: int | None = None
    measurements: Measurements | None = None
    comparison: Comparison | None = None
    verdict: GateVerdict = GateVerdict.FAILED
    gate_failures: list[str] = field(default_factory=list)
    error: str | None = None
    incompatible: IncompatibleError | None = None

    @property
    def passed(self) -> bool:
        return self.artifact_dir is not None and self.verdict in (
            GateVerdict.PASSED,
            GateVerdict.NOT_REQUESTED,
        )

    def to_result(self, original_size: int, baseline: Measurements) -> CandidateResult:
        c = self.comparison or Comparison()
        return CandidateResult(
            method=self.candidate.name,
            params=self.candidate.params_dict,
            optimized_size_bytes=self.size_bytes,
            compression_ratio=ratio(original_size, self.size_bytes),
            speedup=speedup(baseline, self.measurements),
            perplexity_increase_percent=c.perplexity_increase_percent,
            cosine_similarity=c.cosine_similarity,
            top1_agreement=c.top1_agreement,
            quality_gate=None if self.error and self.artifact_dir is None else self.verdict,
            error=self.error,
        )


def ratio(original: int | None, optimized: int | None) -> float | None:
    if not original or not optimized:
        return None
    return round(original / optimized, 4)


def speedup(baseline: Measurements | None, optimized: Measurements | None) -> float | None:
    if not baseline or not optimized or not baseline.latency_ms or not optimized.latency_ms:
        return None
    return round(baseline.latency_ms / optimized.latency_ms, 4)


@dataclass
class SearchContext:
    """Everything a candidate run needs, prepared once by the pipeline."""

    source_dir: Path
    task: Task
    device: str
    trust_remote_code: bool
    calibration: list[str]
    sequence_length: int
    inputs: Inputs
    reference: ModelRun
    gate: QualityGate | None
    staging_root: Path
    repeats: int
    reporter: Reporter
    percent: Callable[[int, float], int]  # (candidate index, fraction within it) -> 0..100


def run_candidate(ctx: SearchContext, cand: PlannedRun, *, raise_errors: bool) -> CandidateOutcome:
    """Quantize into a fresh staging dir, reload from disk, measure and gate."""
    outcome = CandidateOutcome(cand)
    out_dir = ctx.staging_root / f"candidate-{cand.index}-{cand.name}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    method = cand.method
    assert method is not None
    ctx.reporter.stage(Stage.QUANTIZING, ctx.percent(cand.index, 0.0), cand.label)
    try:
        request = QuantizeRequest(
            source_dir=ctx.source_dir,
            out_dir=out_dir,
            task=ctx.task,
            params=cand.params,
            calibration=tuple(ctx.calibration),
            sequence_length=ctx.sequence_length,
            device=ctx.device,
            trust_remote_code=ctx.trust_remote_code,
            progress=lambda pct: ctx.reporter.stage(
                Stage.QUANTIZING, ctx.percent(cand.index, 0.6 * pct / 100), cand.label
            ),
        )
        info = method.quantize(request)
        info.write(out_dir)  # the method's finish_artifact() already copied the tokenizer
    except StaleRunError:
        raise
    except Exception as exc:
        shutil.rmtree(out_dir, ignore_errors=True)
        gc.collect()
        if raise_errors:
            raise
        log.warning("candidate %s failed: %s", cand.label, exc, exc_info=True)
        outcome.error = f"{type(exc).__name__}: {exc}"[:500]
        if isinstance(exc, IncompatibleError):
            outcome.incompatible = exc
        return outcome
    gc.collect()
    outcome.artifact_dir = out_dir
    outcome.size_bytes = modeling.weights_size(out_dir)
    ctx.reporter.stage(Stage.EVALUATING, ctx.percent(cand.index, 0.6), cand.label)
    try:
        run = run_model(
            lambda: modeling.load_artifact(out_dir, ctx.device),
            ctx.inputs,
            ctx.task,
            ctx.device,
            ctx.repeats,
        )
    except StaleRunError:
        raise
    except Exception as exc:
        log.warning("artifact of %s does not reload: %s", cand.label, exc, exc_info=True)
        outcome.error = f"artifact failed to reload: {type(exc).__name__}: {exc}"[:500]
        outcome.verdict, outcome.gate_failures = gate_verdict(ctx.gate, None)
        return outcome
    outcome.measurements = run.measurements
    outcome.comparison = compare(ctx.reference.outputs, run.outputs, ctx.inputs)
    outcome.verdict, outcome.gate_failures = gate_verdict(ctx.gate, outcome.comparison)
    log.info(
        "candidate %s: %s",
        cand.label,
        outcome.verdict,
        extra={"candidate": cand.label, "gate_failures": "; ".join(outcome.gate_failures)},
    )
    return outcome


def pick_winner(outcomes: list[CandidateOutcome]) -> CandidateOutcome | None:
    """The smallest passing artifact; ties go to the lowest latency, then the earlier one."""
    passing = [o for o in outcomes if o.passed]
    if not passing:
        return None
    return min(
        passing,
        key=lambda o: (
            o.size_bytes if o.size_bytes is not None else float("inf"),
            o.measurements.latency_ms if o.measurements and o.measurements.latency_ms else 0.0,
            o.candidate.index,
        ),
    )


def best_failing(outcomes: list[CandidateOutcome]) -> CandidateOutcome | None:
    """The failing candidate closest to passing (fewest failed bounds, then smallest)."""
    measured = [o for o in outcomes if o.comparison is not None]
    if not measured:
        return None
    return min(
        measured,
        key=lambda o: (
            len(o.gate_failures),
            o.size_bytes if o.size_bytes is not None else float("inf"),
            o.candidate.index,
        ),
    )


def search(
    ctx: SearchContext, candidates: list[PlannedRun], *, auto: bool
) -> list[CandidateOutcome]:
    """Run every candidate (only the passing ones keep their staging dirs)."""
    outcomes: list[CandidateOutcome] = []
    best: CandidateOutcome | None = None
    for cand in candidates:
        outcome = run_candidate(ctx, cand, raise_errors=not auto)
        outcomes.append(outcome)
        if not auto:
            continue
        # Keep disk use bounded: only the best passing artifact so far stays staged.
        winner = pick_winner([o for o in (best, outcome) if o is not None])
        for o in (best, outcome):
            if o is not None and o is not winner and o.artifact_dir is not None:
                shutil.rmtree(o.artifact_dir, ignore_errors=True)
        best = winner
    return outcomes


def check_compatible(runs: list[PlannedRun], task: Task, device: str) -> None:
    """The engine's one compatibility check, once the task is resolved.

    Each run that cannot happen for ``task`` on ``device`` gets ``incompatible`` set: an
    IncompatibleError naming its field, in the words of ``kubequant_api.methods``.
    """
    for run in runs:
        problem = incompatibility(run.name, task, run.field, device)
        run.incompatible = (
            None if problem is None else IncompatibleError(problem.field, problem.message)
        )
