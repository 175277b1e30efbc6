"""method: auto — every candidate reported, smallest passing wins, only the winner published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubequant_api.constants import ARTIFACT_META_FILE, COMPLETE_MARKER, GateVerdict
from kubequant_api.models import Measurements, NoParams, Result
from optimizer_job.search import CandidateOutcome, PlannedRun, best_failing, pick_winner
from tests.fixtures.storage import EngineEnv, run_engine, write_manifest


def outcome(index: int, size: int, latency: float, verdict: GateVerdict) -> CandidateOutcome:
    o = CandidateOutcome(
        PlannedRun(index, f"m{index}", NoParams(), f"spec.candidates[{index}].method")
    )
    o.artifact_dir = Path(f"/nonexistent/{index}")
    o.size_bytes = size
    o.measurements = Measurements(latency_ms=latency)
    o.verdict = verdict
    return o


def test_pick_winner_smallest_passing_then_fastest() -> None:
    a = outcome(0, 100, 5.0, GateVerdict.PASSED)
    b = outcome(1, 80, 9.0, GateVerdict.PASSED)
    c = outcome(2, 80, 3.0, GateVerdict.PASSED)
    d = outcome(3, 10, 1.0, GateVerdict.FAILED)
    assert pick_winner([a, b, c, d]) is c
    assert pick_winner([a, b]) is b
    assert pick_winner([d]) is None
    e = outcome(4, 50, 1.0, GateVerdict.NOT_REQUESTED)
    assert pick_winner([a, e]) is e


def test_best_failing_prefers_fewest_failed_bounds() -> None:
    from optimizer_job.evaluation import Comparison

    x = outcome(0, 10, 1.0, GateVerdict.FAILED)
    y = outcome(1, 50, 1.0, GateVerdict.FAILED)
    x.gate_failures, x.comparison = ["a", "b"], Comparison()
    y.gate_failures, y.comparison = ["a"], Comparison()
    assert best_failing([x, y]) is y


@pytest.mark.slow
def test_auto_picks_the_smallest_candidate_that_passes(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    manifest = write_manifest(
        tmp_path / "auto.yaml",
        {
            "model": {"uri": f"file://{minilm_path}"},
            "method": "auto",
            "candidates": [
                {"method": "quanto-int4"},  # smaller, but 4-bit MiniLM misses 0.999
                {"method": "gptq"},  # causal LMs only: reported with its error
                {"method": "torchao-int8-weight"},
            ],
            "evaluation": {"samples": 8, "qualityGate": {"minCosineSimilarity": 0.999}},
            "output": {"uri": f"file://{out}"},
        },
    )
    code, text = run_engine(["run", "-f", str(manifest)], capsys)
    assert code == 0, text
    result = Result.model_validate(json.loads((out / "results.json").read_text())["result"])
    assert result.method == "torchao-int8-weight"
    assert [c.method for c in result.candidates] == [
        "quanto-int4",
        "gptq",
        "torchao-int8-weight",
    ]
    int4, gptq, int8 = result.candidates
    assert int4.quality_gate == "Failed" and int4.cosine_similarity is not None
    assert int4.cosine_similarity < 0.999
    assert int4.optimized_size_bytes is not None and int8.optimized_size_bytes is not None
    assert int4.optimized_size_bytes < int8.optimized_size_bytes
    assert gptq.error is not None and "spec.candidates[1].method" in gptq.error
    assert gptq.optimized_size_bytes is None
    assert int8.quality_gate == "Passed" and int8.cosine_similarity is not None
    assert int8.cosine_similarity >= 0.999
    assert result.cosine_similarity == int8.cosine_similarity
    # Only the winner was published; no temporary or losing artifact is left anywhere.
    meta = json.loads((out / ARTIFACT_META_FILE).read_text())
    assert meta["method"] == "torchao-int8-weight"
    assert (out / COMPLETE_MARKER).is_file()
    assert not [p for p in out.parent.iterdir() if "kubequant-" in p.name]
    assert not list(engine_env.work_dir.glob("run-*"))
    card = (out / "README.md").read_text()
    assert "Candidates tried" in card and "quanto-int4" in card


@pytest.mark.slow
def test_auto_with_no_passing_candidate_fails_with_the_best_figures(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    results = tmp_path / "results.json"
    manifest = write_manifest(
        tmp_path / "auto.yaml",
        {
            "model": {"uri": f"file://{minilm_path}"},
            "method": "auto",
            "candidates": [{"method": "quanto-int4"}],
            "evaluation": {"samples": 8, "qualityGate": {"minCosineSimilarity": 0.9999}},
            "output": {"uri": f"file://{out}"},
        },
    )
    code, text = run_engine(["run", "-f", str(manifest), "--results", str(results)], capsys)
    assert code == 3, text
    doc = json.loads(results.read_text())
    assert doc["reason"] == "QualityGateFailed"
    assert "minCosineSimilarity" in doc["message"]
    result = Result.model_validate(doc["result"])
    assert result.quality_gate == "Failed"
    assert result.method == "quanto-int4"
    assert result.cosine_similarity is not None and result.cosine_similarity < 0.9999
    assert result.compression_ratio is not None and result.compression_ratio > 1
    assert result.output_uri is None and result.output_digest is None
    assert len(result.candidates) == 1
    assert not out.exists()
    summary = json.loads(engine_env.termination_log.read_text())
    assert summary["exitCode"] == 3 and summary["reason"] == "QualityGateFailed"
