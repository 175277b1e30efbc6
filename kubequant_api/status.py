"""The status half of the ModelOptimization API: what the operator and the engine report.

Part of the API models (:mod:`kubequant_api.models` re-exports every class here); the CRD's
status schema is generated from them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubequant_api.base import ApiModel
from kubequant_api.constants import MAX_CANDIDATES, GateVerdict, Phase, Stage


class Condition(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    type: str = Field(description="Ready, Reconciling, Stalled or Suspended.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        "", max_length=1024, description="Why the condition has this status (CamelCase)."
    )
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: str | None = Field(
        None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        None, description="The spec generation the condition was computed for."
    )


class Progress(ApiModel):
    stage: Stage = Field(
        description="Pending, Loading, Calibrating, Quantizing, Evaluating, " "Saving or Done."
    )
    percent: int = Field(0, ge=0, le=100, description="How much of the run is done (%).")
    generation: int | None = Field(None, description="The spec generation this progress is for.")
    candidate: str | None = Field(None, description="With method auto: the candidate running.")


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


class ModelOptimizationStatus(ApiModel):
    phase: Phase | None = Field(None, description="Pending, Running, Succeeded or Failed.")
    observed_generation: int | None = Field(
        None, description="The spec generation this status describes."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Ready, Reconciling, Stalled and Suspended (kstatus)."
    )
    job_name: str | None = Field(
        None, description="The engine's Job for this generation (deterministic name)."
    )
    attempts: int | None = Field(None, description="Pods the Job has run so far.")
    start_time: str | None = Field(None, description="When the Job started (RFC 3339).")
    completion_time: str | None = Field(None, description="When the Job ended (RFC 3339).")
    progress: Progress | None = Field(None, description="The engine's stage; written by it.")
    message: str | None = Field(None, description="Summary of the last transition.")
    failure: Failure | None = Field(None, description="Why the run failed or is stalled.")
    result: Result | None = Field(
        None, description="What the engine measured and published; written by it."
    )
