"""The engine's one code path: spec in, measured artifact (or plan) out, exit code back.

A run is four steps: prepare (the candidates, the device and the output; then the output
checked, the source fetched, the task resolved and the evaluation inputs encoded), baseline
(the original model loaded and measured), search (every candidate quantized, reloaded,
measured and gated) and publish (results, card and artifact written to the output). A dry
run stops after the first part of prepare with a preflight plan.

Stages (reported through a Reporter): Loading, Calibrating, Quantizing, Evaluating, Saving,
Done. Exit codes: 0 success, 2 invalid spec (InvalidSpecError, IncompatibleError: the
message names the field or file), 3 quality gate failed, 1 anything else (retryable). How a
run ended, and the results document, are :mod:`optimizer_job.results`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubequant_api.constants import (
    MODEL_CARD_FILE,
    MODEL_FIELD,
    ExitCode,
    GateVerdict,
    Reason,
    Stage,
    Task,
)
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.models import ModelOptimizationSpec, QualityGate, Reproducibility, Result
from optimizer_job import artifact, modeling, preflight
from optimizer_job.calibration import select_texts
from optimizer_job.evaluation import (
    Inputs,
    ModelRun,
    check_gate_fits_task,
    encode,
    logits_budget,
    run_model,
)
from optimizer_job.methods.base import get_method
from optimizer_job.redact import redact
from optimizer_job.report.base import Reporter, RunContext, StaleRunError
from optimizer_job.results import (
    RunOutcome,
    exit_code_for,
    reproducibility_record,
    seed_everything,
)
from optimizer_job.search import (
    CandidateOutcome,
    PlannedRun,
    SearchContext,
    best_failing,
    check_compatible,
    pick_winner,
    ratio,
    search,
    speedup,
)
from optimizer_job.settings import EngineSettings
from optimizer_job.storage import OutputSink, fetch_model

log = logging.getLogger(__name__)

# Share of the whole run (percent) before the candidates start and after they end.
_CANDIDATES_START, _CANDIDATES_END = 15, 90


@dataclass(frozen=True)
class Setup:
    """What a run (or a dry run) settles before anything is fetched."""

    device: str
    candidates: list[PlannedRun]
    sink: OutputSink


@dataclass(frozen=True)
class Prepared:
    """The setup plus what the prepare step fetched and decided, before any model is loaded."""

    setup: Setup
    source_dir: Path
    task: Task
    gate: QualityGate | None
    calibration: list[str]
    inputs: Inputs
    source_bytes: int  # the checkpoint's weight files, on disk


@dataclass(frozen=True)
class Baseline:
    """The original model measured on the inputs: what every candidate is compared with."""

    reference: ModelRun
    size_bytes: int


def build_candidates(spec: ModelOptimizationSpec) -> list[PlannedRun]:
    """The runs the parsed spec planned (params typed once, when it was parsed), each with
    the engine's implementation of its method."""
    return [
        PlannedRun(p.index, p.name, p.params, p.field, method=get_method(p.name, p.field))
        for p in spec.planned
    ]


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
            MODEL_FIELD,
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
        self.record: Reproducibility | None = None  # once the source is fetched
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
        outcome = RunOutcome.from_error(exc, self.result, self.record)
        log.error(
            "run failed (%s): %s", outcome.reason, outcome.message, extra=self.ctx.log_extra()
        )
        return outcome

    @property
    def auto(self) -> bool:
        return self.spec.method == "auto"

    # -- the happy path: the steps in order

    def _run(self) -> RunOutcome:
        self.reporter.stage(Stage.LOADING, 0)
        setup = self._setup()
        if self.spec.dry_run:
            return self._dry_run(setup)
        prepared = self._prepare(setup)
        baseline = self._baseline(prepared)
        outcomes = self._search(prepared, baseline)
        winner = self._judge(outcomes, baseline)
        if winner is None:
            return self._no_winner(outcomes)
        return self._publish(prepared, winner)

    # -- prepare

    def _setup(self) -> Setup:
        spec, settings = self.spec, self.settings
        device = settings.resolved_device()
        candidates = build_candidates(spec)
        sink = OutputSink.for_spec(spec, settings)
        return Setup(device, candidates, sink)

    def _prepare(self, setup: Setup) -> Prepared:
        """Check the output, fetch the source, resolve the task, encode the evaluation inputs."""
        spec = self.spec
        candidates, device = setup.candidates, setup.device
        setup.sink.check()

        source_dir = fetch_model(spec.model.uri, self.settings)
        modeling.check_remote_code(source_dir, spec.model.trust_remote_code)
        self._state_fit(source_dir)
        task = (
            modeling.detect_task(source_dir)
            if spec.model.task == Task.AUTO
            else Task(spec.model.task)
        )
        # The one compatibility check, now that the task is known: a single method that cannot
        # run is an invalid spec (exit 2); with auto it is reported, never tried.
        check_compatible(candidates, task, device)
        if not self.auto and candidates[0].incompatible is not None:
            raise candidates[0].incompatible
        gate = spec.evaluation.quality_gate
        check_gate_fits_task(gate, task)

        self.reporter.stage(Stage.CALIBRATING, 5)
        needs_cal = any(c.method is not None and c.method.needs_calibration for c in candidates)
        texts = select_texts(spec, self.settings, needs_calibration=needs_cal)
        source_bytes = modeling.weights_size(source_dir)
        inputs = self._encode(source_dir, texts.evaluation, task, source_bytes)
        self.record = reproducibility_record(
            source_uri=redact(spec.model.uri),
            source_revision=artifact.source_revision(spec.model.uri, source_dir),
            methods=[c.name for c in candidates],
            texts=texts,
        )
        return Prepared(setup, source_dir, task, gate, texts.calibration, inputs, source_bytes)

    def _state_fit(self, source_dir: Path) -> None:
        """Say whether the run should fit its memory limit and its work directory's free
        space before any model loads (logged, and status.result.plan.fit)."""
        try:
            self.settings.work_dir.mkdir(parents=True, exist_ok=True)
            fit = preflight.run_fit(
                source_dir, self.spec, self.settings.work_dir, self.settings.resolved_device()
            )
        except (OSError, ValueError, KeyError) as exc:
            log.warning("no memory estimate for this model: %s", exc, extra=self.ctx.log_extra())
            return
        self.result.plan = {"fit": fit}
        level = logging.INFO if fit["fits"] else logging.WARNING
        log.log(level, "memory: %s", fit["summary"], extra=self.ctx.log_extra())
        level = logging.INFO if fit["disk"]["fits"] else logging.WARNING
        log.log(level, "disk: %s", fit["disk"]["summary"], extra=self.ctx.log_extra())

    def _encode(self, source_dir: Path, texts: list[str], task: Task, source_bytes: int) -> Inputs:
        """The evaluation texts tokenized once (the tokenizer is dropped before any model)."""
        tokenizer = modeling.load_tokenizer(source_dir, self.spec.model.trust_remote_code)
        config = modeling.read_config(source_dir)
        vocab = config.get("vocab_size")
        return encode(
            tokenizer,
            texts,
            self.spec.calibration.sequence_length,
            vocab if isinstance(vocab, int) else None,
            task,
            max_tokens=self.spec.evaluation.max_tokens,
            budget_bytes=logits_budget(self.settings.resolved_device(), source_bytes),
        )

    # -- baseline

    def _baseline(self, prepared: Prepared) -> Baseline:
        """Load the original model and measure it on the inputs every candidate will see."""
        source_dir, task, device = prepared.source_dir, prepared.task, prepared.setup.device
        model = self.spec.model
        self.reporter.stage(Stage.LOADING, 10)
        self._preload_runtimes(prepared)
        seed_everything()
        reference = run_model(
            lambda: load_original(source_dir, task, device, model.trust_remote_code, model.uri),
            prepared.inputs,
            task,
            device,
            self.settings.bench_repeats,
        )
        baseline = Baseline(reference, prepared.source_bytes)
        self.result.original_size_bytes = baseline.size_bytes
        self.result.baseline_dtype = modeling.checkpoint_dtype(source_dir)
        self.result.baseline = reference.measurements
        return baseline

    def _preload_runtimes(self, prepared: Prepared) -> None:
        # Import every library the run will use first, so that the baseline's peak memory
        # measures the model, not one-time library imports.
        for name in dict.fromkeys(c.name for c in prepared.setup.candidates):
            try:
                modeling.preload_runtime(name, prepared.source_dir, prepared.task)
            except ImportError as exc:
                log.warning("cannot preload the runtime of %s: %s", name, exc)

    # -- search

    def _search(self, prepared: Prepared, baseline: Baseline) -> list[CandidateOutcome]:
        """Every candidate that can run here, in order; the ones that cannot are reported."""
        runnable, skipped = self._runnable(prepared)
        seed_everything()  # the candidates draw the same numbers whatever the baseline drew
        sctx = SearchContext(
            source_dir=prepared.source_dir,
            task=prepared.task,
            device=prepared.setup.device,
            trust_remote_code=self.spec.model.trust_remote_code,
            calibration=prepared.calibration,
            sequence_length=self.spec.calibration.sequence_length,
            inputs=prepared.inputs,
            reference=baseline.reference,
            gate=prepared.gate,
            staging_root=self.staging_root,
            repeats=self.settings.bench_repeats,
            reporter=self.reporter,
            percent=_progress(runnable),
        )
        outcomes = search(sctx, runnable, auto=self.auto) + skipped
        outcomes.sort(key=lambda o: o.candidate.index)
        if self.auto:
            self.result.candidates = [
                o.to_result(baseline.size_bytes, baseline.reference.measurements) for o in outcomes
            ]
        return outcomes

    def _runnable(self, prepared: Prepared) -> tuple[list[PlannedRun], list[CandidateOutcome]]:
        # Candidates that cannot run here are reported as such (auto), never tried.
        runnable: list[PlannedRun] = []
        skipped: list[CandidateOutcome] = []
        for cand in prepared.setup.candidates:
            if cand.incompatible is None:
                runnable.append(cand)
            else:
                error = str(cand.incompatible)
                skipped.append(CandidateOutcome(cand, error=error, incompatible=cand.incompatible))
        return runnable, skipped

    def _judge(
        self, outcomes: list[CandidateOutcome], baseline: Baseline
    ) -> CandidateOutcome | None:
        """The winner, if any; the result shows it, or else the candidate closest to passing."""
        winner = pick_winner(outcomes)
        shown = winner or best_failing(outcomes)
        if shown is not None:
            self._fill(shown, baseline.size_bytes)
        else:
            self.result.quality_gate = GateVerdict.FAILED
        return winner

    def _fill(self, outcome: CandidateOutcome, original_size: int) -> None:
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

    def _no_winner(self, outcomes: list[CandidateOutcome]) -> RunOutcome:
        """Every candidate incompatible (exit 2) or crashed (exit 1) raises; else the gate
        failed (exit 3)."""
        if all(o.incompatible is not None for o in outcomes):
            first = outcomes[0].incompatible
            assert first is not None
            raise first
        if all(o.artifact_dir is None for o in outcomes):
            # Nothing was produced to judge: a crash, which a retry may fix (exit 1).
            crashed = "; ".join(f"{o.candidate.name}: {o.error}" for o in outcomes)
            raise KubequantError(f"no candidate produced an artifact ({crashed})")
        shown = best_failing(outcomes)
        failures = shown.gate_failures if shown else []
        errors = [o.error for o in outcomes if o.error]
        message = "quality gate failed: " + "; ".join(failures or errors or ["no artifact"])
        if self.auto:
            message = f"no candidate passed the quality gate; best: {message}"
        log.warning(message, extra=self.ctx.log_extra())
        return RunOutcome(
            ExitCode.QUALITY_GATE_FAILED,
            Reason.QUALITY_GATE_FAILED,
            message,
            self.result,
            self.record,
        )

    # -- publish

    def _publish(self, prepared: Prepared, winner: CandidateOutcome) -> RunOutcome:
        """Results and card into the winner's artifact, then the artifact to the output."""
        spec = self.spec
        self.reporter.stage(Stage.SAVING, _CANDIDATES_END)
        assert winner.artifact_dir is not None
        digest = artifact.digest(winner.artifact_dir)
        self.result.output_uri = redact(spec.output.uri)
        self.result.output_digest = digest
        message = (
            f"{winner.candidate.name}: compression ratio {self.result.compression_ratio}, "
            f"quality gate {self.result.quality_gate}"
        )
        outcome = RunOutcome(ExitCode.SUCCESS, Reason.SUCCEEDED, message, self.result, self.record)
        artifact.write_results(winner.artifact_dir, outcome.results_document)
        card = artifact.model_card(
            self.result,
            source_uri=redact(spec.model.uri),
            task=str(prepared.task),
            gate=prepared.gate.to_api() if prepared.gate else None,
            digest_value=digest,
            spec=spec.to_api(),
            reproducibility=self.record,
            source_dir=prepared.source_dir,
            artifact_dir=winner.artifact_dir,
            load_path=artifact.load_path_for(spec.output.uri),
        )
        (winner.artifact_dir / MODEL_CARD_FILE).write_text(card)
        prepared.setup.sink.publish(winner.artifact_dir, digest)
        self.reporter.stage(Stage.DONE, 100)
        return outcome

    # -- dry run

    def _dry_run(self, setup: Setup) -> RunOutcome:
        plan = preflight.build_plan(
            self.spec, self.settings, setup.candidates, setup.sink, setup.device
        )
        self.result.plan = plan
        errors = plan.get("errors") or []
        if errors:
            first = errors[0]
            message = f"preflight failed: {first['field']}: {first['message']}"
            return RunOutcome(ExitCode.INVALID_SPEC, Reason.INVALID_SPEC, message, self.result)
        self.reporter.stage(Stage.DONE, 100)
        message = "preflight passed: " + ", ".join(
            f"{c['method']} ok" for c in plan.get("candidates", [])
        )
        return RunOutcome(ExitCode.SUCCESS, Reason.DRY_RUN_SUCCEEDED, message, self.result)


def _progress(runnable: list[PlannedRun]) -> Callable[[int, float], int]:
    """(candidate index, fraction within it) -> the run's percent; candidates share the span
    between the baseline and saving in the order they run."""
    span = (_CANDIDATES_END - _CANDIDATES_START) / max(1, len(runnable))
    order = {c.index: n for n, c in enumerate(runnable)}

    def percent(index: int, fraction: float) -> int:
        return int(_CANDIDATES_START + span * (order.get(index, 0) + fraction))

    return percent


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
