"""The engine's CLI end to end on a real model (all-MiniLM-L6-v2)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubequant_api.constants import ARTIFACT_META_FILE, COMPLETE_MARKER, MODEL_CARD_FILE
from kubequant_api.models import Result
from optimizer_job import artifact
from optimizer_job.preflight import local_probe, model_weights
from tests.fixtures.storage import EngineEnv, run_engine, write_manifest

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "engine" / "minilm-torchao-int8.yaml"


def independent_digest(root: Path) -> str:
    lines = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in ("results.json", "README.md", COMPLETE_MARKER):
            lines.append(
                f"{rel}\t{p.stat().st_size}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
            )
    return "sha256:" + hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


@pytest.mark.slow
def test_example_runs_locally_and_writes_a_measured_artifact(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out" / "minilm-int8"
    code, text = run_engine(
        ["run", "-f", str(EXAMPLE), "--model", str(minilm_path), "--output", str(out)], capsys
    )
    assert code == 0, text
    assert "Succeeded" in text and "cosineSimilarity" in text  # the printed table

    doc = json.loads((out / "results.json").read_text())
    assert doc["exitCode"] == 0 and doc["reason"] == "Succeeded"
    result = Result.model_validate(doc["result"])
    assert result.method == "torchao-int8-weight"
    assert result.output_uri == f"file://{out}"
    # Sizes are the weight files on disk, before and after.
    assert result.original_size_bytes == (minilm_path / "model.safetensors").stat().st_size
    assert result.optimized_size_bytes == (out / "model.safetensors").stat().st_size
    assert result.compression_ratio == pytest.approx(
        result.original_size_bytes / result.optimized_size_bytes, rel=1e-3
    )
    assert result.compression_ratio is not None and result.compression_ratio > 1.3
    # the run's own plan (status.result.plan.fit) and a dry run expect this size: MiniLM's
    # embeddings, half its parameters, stay fp32 (measured 58.7 MB expected 59.4 MB)
    expected = model_weights(local_probe(minilm_path)).expected_size("torchao-int8-weight")
    assert expected == pytest.approx(result.optimized_size_bytes, rel=0.05)
    # int8 weights keep MiniLM's embeddings (~0.9996, docs/findings.md); the 0.99 gate passes.
    assert result.cosine_similarity is not None and 0.99 < result.cosine_similarity <= 1.0
    assert result.quality_gate == "Passed"
    assert result.top1_agreement is None and result.perplexity_increase_percent is None
    for m in (result.baseline, result.optimized):
        assert m is not None
        assert m.latency_ms is not None and m.latency_ms > 0
        assert m.tokens_per_second is not None and m.tokens_per_second > 0
        assert m.peak_memory_bytes is not None and m.peak_memory_bytes > 0
        assert m.perplexity is None
    base_ms, opt_ms = result.baseline.latency_ms, result.optimized.latency_ms  # type: ignore[union-attr]
    assert base_ms is not None and opt_ms is not None
    assert result.speedup == pytest.approx(base_ms / opt_ms, rel=1e-2)

    # The digest covers every file but the card, results and marker; recomputed two ways.
    assert result.output_digest == independent_digest(out) == artifact.digest(out)
    marker = json.loads((out / COMPLETE_MARKER).read_text())
    assert marker["digest"] == result.output_digest
    meta = json.loads((out / ARTIFACT_META_FILE).read_text())
    assert meta["method"] == "torchao-int8-weight"
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()

    card = (out / MODEL_CARD_FILE).read_text()
    for needle in (
        "torchao-int8-weight",
        f"file://{minilm_path}",
        result.output_digest,
        "Passed",
        '"minCosineSimilarity": 0.99',
        f"{result.cosine_similarity:.4g}",
        f"{result.compression_ratio:.4g}x",
        f"{result.baseline.latency_ms:.4g}",  # type: ignore[union-attr]
        str(result.optimized.peak_memory_bytes),  # type: ignore[union-attr]
        str(result.original_size_bytes),
    ):
        assert needle in card, needle

    summary = engine_env.termination_log.read_bytes()
    assert len(summary) < 4096
    assert json.loads(summary)["result"]["outputDigest"] == result.output_digest
    assert not list(engine_env.work_dir.glob("run-*")), "staging must be cleaned up"

    # A second run refuses to overwrite the complete artifact (before loading anything).
    code, text = run_engine(
        ["run", "-f", str(EXAMPLE), "--model", str(minilm_path), "--output", str(out)], capsys
    )
    assert code == 2
    assert "spec.output.uri" in text and "already holds a complete artifact" in text
    assert artifact.digest(out) == result.output_digest


def test_dry_run_reports_a_plan_and_writes_nothing(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    results = tmp_path / "results.json"
    manifest = write_manifest(
        tmp_path / "m.yaml",
        {
            "model": {"uri": f"file://{minilm_path}"},
            "method": "auto",
            "candidates": [{"method": "torchao-int8-weight"}, {"method": "gptq"}],
            "output": {"uri": f"file://{out}"},
            "dryRun": True,
        },
    )
    code, text = run_engine(["run", "-f", str(manifest), "--results", str(results)], capsys)
    assert code == 0, text
    doc = json.loads(results.read_text())
    assert doc["reason"] == "DryRunSucceeded"
    plan = doc["result"]["plan"]
    assert plan["errors"] == []
    assert plan["source"]["reachable"] is True
    assert plan["output"] == {
        "uri": f"file://{out}",
        "reachable": True,
        "writable": True,
        "existingArtifact": False,
        "overwrite": False,
    }
    assert plan["model"]["task"] == "feature-extraction"
    # all-MiniLM-L6-v2 has 22.7M parameters (counted from the safetensors header).
    assert 22_000_000 < plan["model"]["parameters"] < 23_500_000
    int8, gptq = plan["candidates"]
    assert int8["method"] == "torchao-int8-weight" and int8["compatible"] is True
    # the matrices at int8's ratio, the embeddings and norms as stored (fp32)
    params = plan["model"]["parameters"]
    kept = plan["model"]["embeddingParameters"] + plan["model"]["vectorParameters"]
    assert 0.4 < kept / params < 0.6  # MiniLM's 30522 x 384 word embeddings
    assert int8["expectedSizeBytes"] == int((params - kept) * 4 * 0.27) + kept * 4
    assert int8["estimatedPeakMemoryBytes"] > plan["model"]["parameters"] * 8
    assert int8["estimatedSeconds"] > 0
    assert gptq["compatible"] is False and "feature-extraction" in gptq["reason"]
    # disk: the model is read in place, and of the two candidates only one can run
    assert int8["estimatedDiskBytes"] == int8["expectedSizeBytes"]
    assert gptq["estimatedDiskBytes"] > gptq["expectedSizeBytes"]  # its offload folder
    assert plan["disk"]["sourceBytes"] == 0
    assert plan["disk"]["needsBytes"] == int8["estimatedDiskBytes"]
    assert not out.exists(), "a dry run writes nothing at the output"


def test_validate_and_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer_job", "validate", "-f", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "valid (torchao-int8-weight" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("torchao-int8-weight", "int3-magic"))
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer_job", "validate", "-f", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert f"{bad}: spec.method" in proc.stderr
