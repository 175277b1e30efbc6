"""A realistic ``status.result`` of an ``auto`` search on all-MiniLM-L6-v2 (an encoder: its
quality measure is the cosine similarity), built with the models the engine fills."""

from __future__ import annotations

from kubequant_api.constants import GateVerdict
from kubequant_api.status import (
    CandidateResult,
    HistoryEntry,
    Measurements,
    Result,
    RunSummary,
)

ORIGINAL = 90_864_192  # MiniLM's fp32 weights


def candidate(
    method: str,
    size: int | None,
    cosine: float | None,
    gate: GateVerdict | None,
    *,
    speedup: float | None = None,
    error: str | None = None,
    **params: object,
) -> CandidateResult:
    return CandidateResult(
        method=method,
        params=dict(params),
        optimized_size_bytes=size,
        compression_ratio=round(ORIGINAL / size, 4) if size else None,
        speedup=speedup,
        cosine_similarity=cosine,
        quality_gate=gate,
        error=error,
    )


def auto_result() -> Result:
    """torchao and quanto int8 pass; onnx-int8 is smaller but fails the gate; bnb-nf4 could
    not run on this machine. quanto-int8 (smaller of the two passing) won."""
    winner = candidate("quanto-int8", 23_912_448, 0.99812, GateVerdict.PASSED, speedup=1.08)
    return Result(
        generation=1,
        method=winner.method,
        params=winner.params,
        original_size_bytes=ORIGINAL,
        optimized_size_bytes=winner.optimized_size_bytes,
        compression_ratio=winner.compression_ratio,
        baseline=Measurements(
            latency_ms=11.83, tokens_per_second=2705.0, peak_memory_bytes=182_452_224
        ),
        optimized=Measurements(
            latency_ms=10.95, tokens_per_second=2922.4, peak_memory_bytes=96_124_928
        ),
        speedup=winner.speedup,
        cosine_similarity=winner.cosine_similarity,
        quality_gate=GateVerdict.PASSED,
        output_uri="s3://models/minilm-auto",
        output_digest="sha256:" + "ab" * 32,
        candidates=[
            candidate("torchao-int8-weight", 24_101_376, 0.99934, GateVerdict.PASSED, speedup=0.91),
            winner,
            candidate("onnx-int8", 23_051_264, 0.97412, GateVerdict.FAILED, speedup=1.62),
            candidate(
                "bnb-nf4",
                None,
                None,
                None,
                error="bnb-nf4 needs a CUDA GPU: no GPU on this node",
            ),
        ],
    )


def causal_result() -> Result:
    """A single-method GPTQ run on a causal LM (perplexity and top-1 agreement)."""
    return Result(
        generation=3,
        method="gptq",
        params={"bits": 4, "groupSize": 128},
        original_size_bytes=988_097_536,
        optimized_size_bytes=457_179_136,
        compression_ratio=2.1613,
        baseline=Measurements(latency_ms=412.7, tokens_per_second=310.2, perplexity=13.41),
        optimized=Measurements(latency_ms=1_530.2, tokens_per_second=83.66, perplexity=13.98),
        speedup=0.2697,
        perplexity_increase_percent=4.25,
        top1_agreement=0.9612,
        quality_gate=GateVerdict.PASSED,
        output_uri="s3://models/qwen-gptq",
    )


def history() -> list[HistoryEntry]:
    """``status.history`` of an object that succeeded, was rerun and failed its gate, then
    got a new spec that failed before measuring anything (newest first)."""
    return [
        HistoryEntry(
            generation=2,
            run=1,
            job_name="minilm-auto-g2-1a2b",
            method="auto",
            outcome="Failed",
            reason="InvalidSpec",
            start_time="2026-11-25T12:00:00Z",
            completion_time="2026-11-25T12:00:41Z",
        ),
        HistoryEntry(
            generation=1,
            run=2,
            job_name="minilm-auto-g1r2-3c4d",
            method="onnx-int8",
            outcome="Failed",
            reason="QualityGateFailed",
            compression_ratio=3.9418,
            quality_metric="cosineSimilarity",
            quality_value=0.97412,
            quality_gate=GateVerdict.FAILED,
            start_time="2026-11-25T11:00:00Z",
            completion_time="2026-11-25T11:04:12Z",
        ),
        HistoryEntry(
            generation=1,
            run=1,
            job_name="minilm-auto-g1-5e6f",
            method="quanto-int8",
            outcome="Succeeded",
            reason="Succeeded",
            compression_ratio=3.7999,
            quality_metric="cosineSimilarity",
            quality_value=0.99812,
            quality_gate=GateVerdict.PASSED,
            start_time="2026-11-25T09:00:00Z",
            completion_time="2026-11-25T09:03:05Z",
        ),
    ]


def last_successful() -> RunSummary:
    """``status.lastSuccessful`` matching the oldest entry of :func:`history`."""
    return RunSummary(
        generation=1,
        run=1,
        job_name="minilm-auto-g1-5e6f",
        method="quanto-int8",
        compression_ratio=3.7999,
        quality_gate=GateVerdict.PASSED,
        completion_time="2026-11-25T09:03:05Z",
        output_uri="s3://models/minilm-auto",
        output_digest="sha256:" + "ab" * 32,
    )
