"""The engine's one code path: spec in, measured artifact (or plan) out, exit code back.

Stages (reported through a Reporter): Loading, Calibrating, Quantizing, Evaluating, Saving,
Done. Exit codes: 0 success, 2 invalid spec (InvalidSpecError, IncompatibleError: the
message names the field or file), 3 quality gate failed, 1 anything else (retryable).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubequant_api.constants import ExitCode, GateVerdict, Reason, Stage, Task
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.models import ModelOptimizationSpec, Result
from optimizer_job import artifact, modeling, preflight
from optimizer_job.calibration import select_texts
from optimizer_job.evaluation import check_gate_fits_task, encode, run_model
from optimizer_job.methods.base import IncompatibleError, get_method
from optimizer_job.report.base import Reporter, RunContext, StaleRunError
from optimizer_job.report.termination import compact_summary
from optimizer_job.search import (
    Candidate,
    Outcome,
    SearchContext,
    best_failing,
    check_compatible,
    pick_winner,
    ratio,
    search,
    speedup,
)
from optimizer_job.settings import EngineSettings
from optimizer_job.storage import OutputSink, fetch_model, redact

log = logging.getLogger(__name__)

# Share of the whole run (percent) before the candidates start and after they end.
_CANDIDATES_START, _CANDIDATES_END = 15, 90


@dataclass
class RunOutcome:
    exit_code: ExitCode
    reason: str
    message: str
    result: Result
    results_document: dict[str, Any]

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


def exit_code_for(exc: BaseException) -> tuple[ExitCode, str]:
    if isinstance(exc, InvalidSpecError | IncompatibleError):
        return ExitCode.INVALID_SPEC, Reason.INVALID_SPEC.value
    if isinstance(exc, StaleRunError):
        return ExitCode.INVALID_SPEC, "StaleRun"
    return ExitCode.RETRYABLE, Reason.ENGINE_FAILED.value


def build_candidates(spec: ModelOptimizationSpec) -> list[Candidate]:
    auto = spec.method == "auto"
    out = []
    for i, (name, params) in enumerate(spec.plan_candidates()):
        field = f"spec.candidates[{i}].method" if auto else "spec.method"
        try:
            method = get_method(name)
        except IncompatibleError as exc:
            raise IncompatibleError(field, exc.message) from exc
        out.append(Candidate(index=i, name=name, params=params, field=field, method=method))
    return out


def load_original(
    source_dir: Path, task: Task, device: str, trust_remote_code: bool, uri: str
) -> Any:
    """The original model; a model that does not load is a bad spec.model.uri (exit 2)."""
    try:
        return modeling.load_original(source_dir, task, device, trust_remote_code)
    except (KubequantError, MemoryError):
        raise
    except Exception as exc:
        raise InvalidSpecError(
            "spec.model.uri",
            f"the model files at {redact(uri)} cannot be loaded "
            f"({type(exc).__name__}: {str(exc)[:300]})",
        ) from exc


def _quiet_progress_bars() -> None:
    """Library progress bars would interleave with the JSON log lines on stderr."""
    try:
        from transformers.utils import logging as transformers_logging

        disable: Any = transformers_logging.disable_progress_bar
        disable()
    except ImportError:  # pragma: no cover - transformers is part of the engine image
        pass


class Pipeline:
    """One run of one spec."""

    def __init__(
        self,
        spec: ModelOptimizationSpec,
        ctx: RunContext,
        settings: EngineSettings,
        reporter: Reporter,
    ) -> None:
        self.spec = spec
        self.ctx = ctx
        self.settings = settings
        self.reporter = reporter
        self.result = Result(generation=ctx.generation, method=spec.method)
        self.staging_root = settings.work_dir / f"run-{uuid.uuid4().hex[:12]}"

    # -- the whole run, with every failure mapped to an exit code

    def execute(self) -> RunOutcome:
        _quiet_progress_bars()
        try:
            outcome = self._run()
        except StaleRunError as exc:
            log.warning("the run is obsolete: %s", exc, extra=self.ctx.log_extra())
            outcome = self._failed(exc)
            with contextlib.suppress(StaleRunError):
                self.reporter.finish(outcome.exit_code, outcome.summary())
            return outcome
        except KubequantError as exc:
            outcome = self._failed(exc)
        except Exception as exc:
            log.error("the run crashed", exc_info=True, extra=self.ctx.log_extra())
            outcome = self._failed(exc)
        finally:
            shutil.rmtree(self.staging_root, ignore_errors=True)
            gc.collect()
        try:
            self.reporter.result(outcome.result)
            self.reporter.finish(outcome.exit_code, outcome.summary())
        except StaleRunError as exc:
            log.warning("the run is obsolete: %s", exc, extra=self.ctx.log_extra())
        return outcome

    def _failed(self, exc: BaseException) -> RunOutcome:
        code, reason = exit_code_for(exc)
        message = str(exc) if isinstance(exc, KubequantError) else f"{type(exc).__name__}: {exc}"
        log.error("run failed (%s): %s", reason, message, extra=self.ctx.log_extra())
        doc = artifact.results_document(self.result, int(code), reason, message)
        return RunOutcome(code, reason, message, self.result, doc)

    # -- the happy path

    def _run(self) -> RunOutcome:
        spec, settings = self.spec, self.settings
        self.reporter.stage(Stage.LOADING, 0)
        device = settings.resolved_device()
        candidates = build_candidates(spec)
        sink = OutputSink(spec.output.uri, settings, spec.output.overwrite)
        if spec.dry_run:
            return self._dry_run(candidates, sink, device)
        sink.check()

        source_dir = fetch_model(spec.model.uri, settings)
        task = (
            modeling.detect_task(source_dir)
            if spec.model.task == Task.AUTO
            else Task(spec.model.task)
        )
        auto = spec.method == "auto"
        if not auto:
            check_compatible(candidates[0], task, device)
        gate = spec.evaluation.quality_gate
        check_gate_fits_task(gate, task)

        self.reporter.stage(Stage.CALIBRATING, 5)
        needs_cal = any(c.method is not None and c.method.needs_calibration for c in candidates)
        texts = select_texts(spec, settings, needs_calibration=needs_cal)
        tokenizer = modeling.load_tokenizer(source_dir, spec.model.trust_remote_code)
        config = modeling.read_config(source_dir)
        vocab = config.get("vocab_size")
        inputs = encode(
            tokenizer,
            texts.evaluation,
            spec.calibration.sequence_length,
            vocab if isinstance(vocab, int) else None,
            task,
        )
        del tokenizer

        self.reporter.stage(Stage.LOADING, 10)
        # Import every library the run will use first, so that the baseline's peak memory
        # measures the model, not one-time library imports.
        for name in dict.fromkeys(c.name for c in candidates):
            try:
                modeling.preload_runtime(name, source_dir, task)
            except ImportError as exc:
                log.warning("cannot preload the runtime of %s: %s", name, exc)
        reference = run_model(
            lambda: load_original(
                source_dir, task, device, spec.model.trust_remote_code, spec.model.uri
            ),
            inputs,
            task,
            device,
            settings.bench_repeats,
        )
        baseline = reference.measurements
        original_size = modeling.weights_size(source_dir)
        self.result.original_size_bytes = original_size
        self.result.baseline = baseline

        # Candidates that cannot run here are reported as such (auto), never tried.
        runnable: list[Candidate] = []
        skipped: list[Outcome] = []
        for cand in candidates:
            try:
                check_compatible(cand, task, device)
                runnable.append(cand)
            except IncompatibleError as exc:
                skipped.append(Outcome(cand, error=str(exc), incompatible=exc))
        span = (_CANDIDATES_END - _CANDIDATES_START) / max(1, len(runnable))
        order = {c.index: n for n, c in enumerate(runnable)}

        def percent(index: int, fraction: float) -> int:
            return int(_CANDIDATES_START + span * (order.get(index, 0) + fraction))

        sctx = SearchContext(
            source_dir=source_dir,
            task=task,
            device=device,
            trust_remote_code=spec.model.trust_remote_code,
            calibration=texts.calibration,
            sequence_length=spec.calibration.sequence_length,
            inputs=inputs,
            reference=reference,
            gate=gate,
            staging_root=self.staging_root,
            repeats=settings.bench_repeats,
            reporter=self.reporter,
            percent=percent,
        )
        outcomes = search(sctx, runnable, auto=auto) + skipped
        outcomes.sort(key=lambda o: o.candidate.index)
        if auto:
            self.result.candidates = [o.to_result(original_size, baseline) for o in outcomes]
        winner = pick_winner(outcomes)
        shown = winner or best_failing(outcomes)
        if shown is not None:
            self._fill(shown, original_size)
        else:
            self.result.quality_gate = GateVerdict.FAILED

        if winner is None:
            if all(o.incompatible is not None for o in outcomes):
                first = outcomes[0].incompatible
                assert first is not None
                raise first
            if all(o.artifact_dir is None for o in outcomes):
                # Nothing was produced to judge: a crash, which a retry may fix (exit 1).
                crashed = "; ".join(f"{o.candidate.name}: {o.error}" for o in outcomes)
                raise KubequantError(f"no candidate produced an artifact ({crashed})")
            failures = shown.gate_failures if shown else []
            errors = [o.error for o in outcomes if o.error]
            message = "quality gate failed: " + "; ".join(failures or errors or ["no artifact"])
            if auto:
                message = f"no candidate passed the quality gate; best: {message}"
            log.warning(message, extra=self.ctx.log_extra())
            doc = artifact.results_document(
                self.result, int(ExitCode.QUALITY_GATE_FAILED), Reason.QUALITY_GATE_FAILED, message
            )
            return RunOutcome(
                ExitCode.QUALITY_GATE_FAILED,
                Reason.QUALITY_GATE_FAILED.value,
                message,
                self.result,
                doc,
            )

        self.reporter.stage(Stage.SAVING, _CANDIDATES_END)
        assert winner.artifact_dir is not None
        digest = artifact.digest(winner.artifact_dir)
        self.result.output_uri = redact(spec.output.uri)
        self.result.output_digest = digest
        message = (
            f"{winner.candidate.name}: compression ratio {self.result.compression_ratio}, "
            f"quality gate {self.result.quality_gate}"
        )
        doc = artifact.results_document(self.result, 0, Reason.SUCCEEDED, message)
        artifact.write_results(winner.artifact_dir, doc)
        card = artifact.model_card(
            self.result,
            source_uri=redact(spec.model.uri),
            task=str(task),
            gate=gate.to_api() if gate else None,
            digest_value=digest,
        )
        (winner.artifact_dir / "README.md").write_text(card)
        sink.publish(winner.artifact_dir, digest)
        self.reporter.stage(Stage.DONE, 100)
        return RunOutcome(ExitCode.SUCCESS, Reason.SUCCEEDED.value, message, self.result, doc)

    def _fill(self, outcome: Outcome, original_size: int) -> None:
        r = self.result
        c = outcome.comparison
        r.method = outcome.candidate.name
        r.params = outcome.candidate.params_dict
        r.optimized_size_bytes = outcome.size_bytes
        r.compression_ratio = ratio(original_size, outcome.size_bytes)
        r.optimized = outcome.measurements
        r.speedup = speedup(r.baseline, outcome.measurements)
        if c is not None:
            r.cosine_similarity = c.cosine_similarity
            r.top1_agreement = c.top1_agreement
            r.perplexity_increase_percent = c.perplexity_increase_percent
        r.quality_gate = outcome.verdict

    def _dry_run(self, candidates: list[Candidate], sink: OutputSink, device: str) -> RunOutcome:
        plan = preflight.build_plan(self.spec, self.settings, candidates, sink, device)
        self.result.plan = plan
        errors = plan.get("errors") or []
        if errors:
            first = errors[0]
            message = f"preflight failed: {first['field']}: {first['message']}"
            doc = artifact.results_document(self.result, 2, Reason.INVALID_SPEC, message)
            return RunOutcome(
                ExitCode.INVALID_SPEC, Reason.INVALID_SPEC.value, message, self.result, doc
            )
        self.reporter.stage(Stage.DONE, 100)
        message = "preflight passed: " + ", ".join(
            f"{c['method']} ok" for c in plan.get("candidates", [])
        )
        doc = artifact.results_document(self.result, 0, Reason.DRY_RUN_SUCCEEDED, message)
        return RunOutcome(
            ExitCode.SUCCESS, Reason.DRY_RUN_SUCCEEDED.value, message, self.result, doc
        )


def run(
    spec: ModelOptimizationSpec,
    ctx: RunContext,
    settings: EngineSettings,
    reporter: Reporter,
) -> RunOutcome:
    """Run ``spec`` and report; never raises (the exit code says how it went)."""
    return Pipeline(spec, ctx, settings, reporter).execute()


Runner = Callable[[ModelOptimizationSpec, RunContext, EngineSettings, Reporter], RunOutcome]
__all__ = ["Pipeline", "RunOutcome", "Runner", "exit_code_for", "run"]
