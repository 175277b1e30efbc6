"""The termination message: compact JSON under 4 KiB, deterministic, secrets scrubbed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubequant_api.constants import (
    MAX_CANDIDATES,
    TERMINATION_MESSAGE_MAX_BYTES,
    ExitCode,
    GateVerdict,
)
from kubequant_api.models import CandidateResult, Measurements, Result
from optimizer_job.report import RunContext, TerminationMessageReporter, compact_summary

SECRET = "AKIAxSECRETxVALUEx0123456789"


def full_summary(candidates: int = MAX_CANDIDATES, error_len: int = 300) -> dict[str, Any]:
    methods = ["gptq", "awq", "bnb-nf4", "quanto-int4", "torchao-int8-weight", "onnx-int8"]
    cands = [
        CandidateResult(
            method=methods[i % len(methods)],
            params={"bits": 4, "groupSize": 128, "descAct": bool(i % 2), "sym": True},
            optimized_size_bytes=20_000_000 + i,
            compression_ratio=3.5 + i / 100,
            speedup=1.0 + i / 1000,
            perplexity_increase_percent=2.0 + i / 10,
            cosine_similarity=None,
            top1_agreement=0.95 - i / 1000,
            quality_gate=GateVerdict.FAILED if i % 3 else GateVerdict.PASSED,
            error=("Traceback (most recent call last): " + "x" * error_len) if i % 4 == 0 else None,
        )
        for i in range(candidates)
    ]
    result = Result(
        generation=7,
        method="gptq",
        params={"bits": 4, "groupSize": 128},
        original_size_bytes=988_097_536,
        optimized_size_bytes=458_227_712,
        compression_ratio=2.16,
        baseline=Measurements(latency_ms=41.0, tokens_per_second=780, perplexity=13.9),
        optimized=Measurements(latency_ms=35.2, tokens_per_second=910, perplexity=14.3),
        speedup=1.16,
        perplexity_increase_percent=2.9,
        top1_agreement=0.97,
        quality_gate=GateVerdict.PASSED,
        output_uri="s3://bucket/models/qwen-gptq",
        output_digest="sha256:" + "ab" * 32,
        candidates=cands,
        plan={"estimatedPeakMemoryBytes": 3_000_000_000, "notes": ["n" * 200] * 5},
    )
    return {"exitCode": 0, "generation": 7, "result": result.to_api(), "message": "m" * 2000}


def test_small_summary_is_kept_whole() -> None:
    summary = {"exitCode": 0, "generation": 1, "result": {"method": "quanto-int8"}}
    out = compact_summary(summary)
    assert json.loads(out) == summary


def test_sixteen_candidates_fit_under_4kib_deterministically() -> None:
    summary = full_summary()
    assert len(json.dumps(summary)) > 2 * TERMINATION_MESSAGE_MAX_BYTES  # really must shrink
    out = compact_summary(summary)
    assert len(out) < TERMINATION_MESSAGE_MAX_BYTES
    assert compact_summary(full_summary()) == out  # deterministic
    data = json.loads(out)
    assert data["truncated"] is True
    assert data["exitCode"] == 0 and data["generation"] == 7
    res = data["result"]
    # The winner's figures survive intact.
    assert res["method"] == "gptq" and res["compressionRatio"] == 2.16
    assert res["outputUri"] == "s3://bucket/models/qwen-gptq"
    assert res["outputDigest"] == "sha256:" + "ab" * 32
    assert res["qualityGate"] == "Passed"
    # Candidates keep their verdicts, in order; any dropped from the end are counted.
    kept = res["candidates"]
    assert len(kept) + res.get("candidatesOmitted", 0) == MAX_CANDIDATES
    assert [c["compressionRatio"] for c in kept] == [
        pytest.approx(3.5 + i / 100) for i in range(len(kept))
    ]
    assert all("qualityGate" in c for c in kept)
    assert len(data["message"]) >= 128  # the human-readable reason survives


@pytest.mark.parametrize("candidates", [0, 1, 8, 16])
@pytest.mark.parametrize("error_len", [0, 5000])
def test_always_fits(candidates: int, error_len: int) -> None:
    out = compact_summary(full_summary(candidates, error_len))
    assert len(out) < TERMINATION_MESSAGE_MAX_BYTES
    assert json.loads(out)["exitCode"] == 0


def test_pathological_summary_still_fits() -> None:
    summary = {"exitCode": 2, **{f"k{i}": "v" * 1000 for i in range(100)}}
    out = compact_summary(summary)
    assert len(out) < TERMINATION_MESSAGE_MAX_BYTES
    assert json.loads(out)["exitCode"] == 2


def test_reporter_writes_the_file_and_scrubs_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    path = tmp_path / "dev" / "termination-log"
    r = TerminationMessageReporter(path, RunContext(name="x", namespace="ns", generation=1))
    summary = {
        "exitCode": 1,
        "reason": "EngineFailed",
        "message": f"download failed: https://user:hunter22@host/x?sig={SECRET}",
    }
    r.finish(ExitCode.RETRYABLE, summary)
    text = path.read_text()
    assert SECRET not in text and "hunter22" not in text
    assert json.loads(text)["exitCode"] == 1


def test_unwritable_path_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = TerminationMessageReporter(blocker / "termination-log")  # parent is a file
    r.finish(ExitCode.SUCCESS, {"exitCode": 0})
    assert any("termination message" in rec.getMessage() for rec in caplog.records)
