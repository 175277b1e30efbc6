"""The status half of the ModelOptimization API: what the operator and the engine report.

Part of the API models (:mod:`kubequant_api.models` re-exports every class here); the CRD's
status schema is generated from them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from kubequant_api.base import ApiModel
from kubequant_api.constants import MAX_CANDIDATES, GateVerdict, Phase, Stage

# metav1.Condition's validation, as its Go type declares it (apimachinery meta/v1 types.go).
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
CONDITION_REASON_MAX = 1024
CONDITION_MESSAGE_MAX = 32768
# Annotate the object with any new value to run its current generation again.
RERUN_ANNOTATION = "kubequant.io/rerun"
# The most runs status.history may hold (the operator keeps KUBEQUANT_HISTORY_LIMIT of them).
HISTORY_MAX = 100


class Condition(ApiModel):
    """One condition, shaped and validated like Kubernetes' ``metav1.Condition``."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    type: str = Field(
        max_length=316, description="Ready, Reconciling, Stalled or Suspended (the list's key)."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=CONDITION_REASON_MAX,
        pattern=CONDITION_REASON_PATTERN,
        description="Why the condition has this status: one CamelCase word (e.g. Succeeded, "
        "OOMKilled), the same on every condition of one state.",
    )
    message: str = Field(
        "", max_length=CONDITION_MESSAGE_MAX, description="Human-readable details."
    )
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"},
        description="When the status last changed (RFC 3339).",
    )
    observed_generation: int | None = Field(
        None,
        ge=0,
        json_schema_extra={"format": "int64"},
        description="The spec generation the condition was computed for.",
    )


def progress_summary(stage: str, percent: int, candidate: str | None = None) -> str:
    """The Progress column's text: ``Quantizing 40%``, with auto ``Quantizing 40% (gptq)``."""
    text = f"{stage} {percent}%"
    return f"{text} ({candidate})" if candidate else text


class Progress(ApiModel):
    stage: Stage = Field(
        description="Pending, Loading, Calibrating, Quantizing, Evaluating, " "Saving or Done."
    )
    percent: int = Field(0, ge=0, le=100, description="How much of the run is done (%).")
    generation: int | None = Field(None, description="The spec generation this progress is for.")
    candidate: str | None = Field(None, description="With method auto: the candidate running.")
    summary: str | None = Field(
        None,
        description="Stage and percent in one line, e.g. 'Quantizing 40%' (the Progress "
        "column); filled from stage, percent and candidate when not given.",
    )

    @model_validator(mode="after")
    def _fill_summary(self) -> Progress:
        if self.summary is None:
            self.summary = progress_summary(str(self.stage), self.percent, self.candidate)
        return self


class Failure(ApiModel):
    reason: str = Field(description="Why the run failed or cannot start: a Stalled reason.")
    message: str = Field("", description="What went wrong, naming the field or file if it can.")
    exit_code: int | None = Field(
        None, description="The engine container's exit code, when it ran and ended."
    )


class Measurements(ApiModel):
    latency_ms: float | None = Field(
        None, description="Median time of one forward pass over the benchmark input (ms)."
    )
    tokens_per_second: float | None = Field(
        None, description="Tokens of the benchmark input per second of that latency."
    )
    perplexity: float | None = Field(
        None, description="Causal LMs: perplexity on the evaluation texts."
    )
    peak_memory_bytes: int | None = Field(
        None,
        description="Peak memory added by loading and running the model (CUDA allocated, "
        "else resident set).",
    )


class CandidateResult(ApiModel):
    method: str = Field(description="The candidate's method.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="The candidate's params, defaults filled in."
    )
    optimized_size_bytes: int | None = Field(None, description="Size of its artifact's weights.")
    compression_ratio: float | None = Field(
        None, description="originalSizeBytes / its optimizedSizeBytes."
    )
    speedup: float | None = Field(None, description="Baseline latency / its latency.")
    perplexity_increase_percent: float | None = Field(
        None, description="Causal LMs: its perplexity increase over the original (%)."
    )
    cosine_similarity: float | None = Field(
        None, description="Encoders: mean cosine of its embeddings vs the original's."
    )
    top1_agreement: float | None = Field(
        None, description="Causal LMs: share of next-token predictions equal to the original's."
    )
    quality_gate: GateVerdict | None = Field(None, description="Its quality-gate verdict.")
    error: str | None = Field(None, description="Why this candidate produced no artifact.")


class Result(ApiModel):
    generation: int | None = Field(None, description="The spec generation these results are for.")
    method: str | None = Field(
        None, description="The method of the artifact (with auto: the winning candidate's)."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Its params, defaults filled in."
    )
    original_size_bytes: int | None = Field(None, description="Size of the original weights.")
    optimized_size_bytes: int | None = Field(None, description="Size of the artifact's weights.")
    compression_ratio: float | None = Field(
        None, description="originalSizeBytes / optimizedSizeBytes."
    )
    baseline: Measurements | None = Field(None, description="The original model, measured.")
    baseline_dtype: str | None = Field(
        None, description="The dtype the original was loaded and measured in (as stored)."
    )
    optimized: Measurements | None = Field(
        None, description="The artifact as written and reloaded, measured the same way."
    )
    speedup: float | None = Field(None, description="Baseline latency / optimized latency.")
    perplexity_increase_percent: float | None = Field(
        None, description="Causal LMs: perplexity increase over the original (%)."
    )
    cosine_similarity: float | None = Field(
        None, description="Encoders: mean cosine of the embeddings vs the original's."
    )
    top1_agreement: float | None = Field(
        None, description="Causal LMs: share of next-token predictions equal to the original's."
    )
    quality_gate: GateVerdict | None = Field(
        None, description="Passed, Failed, or NotRequested when no bound was given."
    )
    output_uri: str | None = Field(
        None, description="Where the artifact was published (credentials removed)."
    )
    output_digest: str | None = Field(
        None, description="sha256 of the artifact's file manifest (paths, sizes, hashes)."
    )
    candidates: Annotated[list[CandidateResult], Field(max_length=MAX_CANDIDATES)] = Field(
        default_factory=list, description="With method auto: every candidate tried, in order."
    )
    plan: dict[str, Any] | None = Field(
        None, description="With dryRun: estimated memory, time, sizes, compatibility verdicts."
    )


class Reproducibility(ApiModel):
    """What a run's figures depend on besides its spec. Carried by ``results.json`` (key
    ``reproducibility``) and the model card only, never by the object's status."""

    source_uri: str = Field(description="spec.model.uri (credentials removed).")
    source_revision: str = Field(
        description="The commit an hf:// source resolved to (40 hex), otherwise 'sha256:' and "
        "the digest of the input files' manifest (as outputDigest)."
    )
    library_versions: dict[str, str] = Field(
        default_factory=dict,
        description="Installed versions of Python, the engine and the libraries the run used.",
    )
    calibration_source: str = Field(description="Where the texts came from, or 'builtin'.")
    calibration_samples: int = Field(0, ge=0, description="Calibration texts used.")
    calibration_digest: str | None = Field(
        None,
        description="'sha256:' over the calibration texts used, in order (JSON array, UTF-8); "
        "none when no method needed calibration.",
    )
    evaluation_samples: int = Field(0, ge=0, description="Evaluation texts used.")
    evaluation_digest: str | None = Field(
        None, description="'sha256:' over the evaluation texts, as calibrationDigest."
    )
    seed: int = Field(description="Seed set before quantization and evaluation.")


class RunSummary(ApiModel):
    """The last successful run, kept while later runs go on (``status.lastSuccessful``)."""

    generation: int = Field(ge=1, description="The spec generation the run was for.")
    run: int = Field(1, ge=1, description="Its run of that generation (1, plus one per rerun).")
    job_name: str | None = Field(None, description="The Job that ran it.")
    method: str | None = Field(None, description="The method of its artifact.")
    compression_ratio: float | None = Field(
        None, description="originalSizeBytes / optimizedSizeBytes of its artifact."
    )
    quality_gate: GateVerdict | None = Field(None, description="Its quality-gate verdict.")
    completion_time: str | None = Field(None, description="When it ended (RFC 3339).")
    output_uri: str | None = Field(
        None, description="Where its artifact was published (credentials removed)."
    )
    output_digest: str | None = Field(None, description="sha256 of its artifact's manifest.")


class HistoryEntry(ApiModel):
    """One finished run in ``status.history``."""

    generation: int = Field(ge=1, description="The spec generation the run was for.")
    run: int = Field(1, ge=1, description="Its run of that generation (1, plus one per rerun).")
    job_name: str | None = Field(None, description="The Job that ran it.")
    method: str | None = Field(None, description="The method of its artifact (or the spec's).")
    outcome: Literal["Succeeded", "Failed"] = Field(description="Succeeded or Failed.")
    reason: str | None = Field(
        None, description="Why it ended: the Ready condition's reason (e.g. QualityGateFailed)."
    )
    compression_ratio: float | None = Field(
        None, description="originalSizeBytes / optimizedSizeBytes of its artifact."
    )
    quality_metric: str | None = Field(
        None,
        description="The primary quality metric: cosineSimilarity (encoders), "
        "perplexityIncreasePercent or top1Agreement (causal LMs).",
    )
    quality_value: float | None = Field(None, description="That metric's value.")
    quality_gate: GateVerdict | None = Field(None, description="Its quality-gate verdict.")
    start_time: str | None = Field(None, description="When its Job started (RFC 3339).")
    completion_time: str | None = Field(None, description="When it ended (RFC 3339).")


class RerunRecord(ApiModel):
    """The last value of the ``kubequant.io/rerun`` annotation the operator handled."""

    requested: str | None = Field(
        None,
        description="The annotation's value when handled; the same value never runs twice.",
    )
    run: int = Field(ge=1, description="The run it started (or the run that covered it).")
    queued: str | None = Field(
        None,
        description="A newer value waiting for the active run to end (then it starts a run).",
    )


class JobRef(ApiModel):
    name: str = Field(description="The Job's name.")
    uid: str = Field(description="The Job's uid: only this Job's results are believed.")


class ModelOptimizationStatus(ApiModel):
    phase: Phase | None = Field(None, description="Pending, Running, Succeeded or Failed.")
    observed_generation: int | None = Field(
        None, description="The spec generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Reconciling, Stalled and Suspended (kstatus), one per type.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    run: int | None = Field(
        None,
        ge=1,
        description="The run of observedGeneration this status describes: 1, plus one per "
        "rerun (annotation kubequant.io/rerun).",
    )
    job_name: str | None = Field(
        None, description="The engine's Job for the current run (deterministic name)."
    )
    job: JobRef | None = Field(
        None, description="The Job the operator created (or adopted) for the current run."
    )
    attempts: int | None = Field(None, description="Pods the Job has run so far.")
    start_time: str | None = Field(None, description="When the Job started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the Job ended (RFC 3339).")
    progress: Progress | None = Field(
        None,
        description="The engine's stage in the current run; written by it. Cleared when a new "
        "run starts.",
    )
    message: str | None = Field(None, description="Summary of the last transition.")
    failure: Failure | None = Field(None, description="Why the run failed or is stalled.")
    result: Result | None = Field(
        None,
        description="What the engine measured and published for the current run; written by "
        "it. Cleared when a new run starts.",
    )
    preflight: dict[str, Any] | None = Field(
        None,
        description="The plan of the last dry run (its status.result.plan), kept across "
        "generations until another dry run replaces it: for its model, its memory estimate "
        "sizes later runs' Jobs when spec.resources.memory is unset, its disk estimate their "
        "ephemeral-storage request, and an OOMKilled run names it.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    last_successful: RunSummary | None = Field(
        None, description="The last run that succeeded, kept while later runs go on or fail."
    )
    rerun: RerunRecord | None = Field(
        None, description="The last kubequant.io/rerun annotation value handled."
    )
    history: Annotated[list[HistoryEntry], Field(max_length=HISTORY_MAX)] = Field(
        default_factory=list,
        description="The last finished runs, newest first (KUBEQUANT_HISTORY_LIMIT of them).",
    )
