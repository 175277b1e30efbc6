"""The pipeline: broken artifacts fail the gate, failures leave nothing at the output,
S3 in and out on a real S3 server, hf:// from a local cache, and a causal LM's figures."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from kubequant_api.constants import COMPLETE_MARKER, Stage
from kubequant_api.models import Result, parse_spec
from optimizer_job import pipeline
from optimizer_job.methods.base import ArtifactInfo, QuantizeRequest, registry
from optimizer_job.report.base import RunContext
from optimizer_job.settings import load_settings
from tests.fixtures.storage import EngineEnv, S3Env, make_hf_cache, run_engine, write_manifest


class RecordingReporter:
    """A Reporter that keeps what it was told (the real ones are tested by their area)."""

    def __init__(self) -> None:
        self.stages: list[tuple[Stage, int, str | None]] = []
        self.results: list[Result] = []
        self.finished: list[tuple[int, dict[str, Any]]] = []

    def stage(self, stage: Stage, percent: int, candidate: str | None = None) -> None:
        self.stages.append((stage, percent, candidate))

    def result(self, result: Result) -> None:
        self.results.append(result)

    def finish(self, exit_code: Any, summary: dict[str, Any]) -> None:
        self.finished.append((int(exit_code), summary))


def spec_for(model: Path | str, out: Path | str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": model if isinstance(model, str) else f"file://{model}"},
        "method": "torchao-int8-weight",
        "evaluation": {"samples": 8},
        "output": {"uri": out if isinstance(out, str) else f"file://{out}"},
    }
    spec.update(extra)
    return spec


def wrap_quantize(monkeypatch: pytest.MonkeyPatch, damage: Any) -> None:
    """Let torchao-int8-weight quantize for real, then damage what it wrote."""
    cls = registry()["torchao-int8-weight"]
    real = cls.quantize

    def quantize(self: Any, request: QuantizeRequest) -> ArtifactInfo:
        info = real(self, request)
        damage(request.out_dir)
        return info

    monkeypatch.setattr(cls, "quantize", quantize)


def poison_tensor(path: Path, name_part: str) -> None:
    """Overwrite one float32 tensor of a safetensors file with NaN, in place."""
    with path.open("r+b") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(size))
        _, entry = next(
            (k, v) for k, v in header.items() if name_part in k and v.get("dtype") == "F32"
        )
        start, end = entry["data_offsets"]
        fh.seek(8 + size + start)
        fh.write(struct.pack("<f", float("nan")) * ((end - start) // 4))


@pytest.mark.slow
def test_stages_and_a_truncated_artifact_fails_the_gate(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    def truncate(out_dir: Path) -> None:
        weights = out_dir / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    wrap_quantize(monkeypatch, truncate)
    out = tmp_path / "out"
    reporter = RecordingReporter()
    spec = parse_spec(spec_for(minilm_path, out))
    outcome = pipeline.run(spec, RunContext(name="t", generation=4), load_settings(), reporter)
    assert int(outcome.exit_code) == 3
    assert outcome.reason == "QualityGateFailed"
    assert outcome.result.quality_gate == "Failed"
    assert outcome.result.generation == 4
    assert "reload" in outcome.message or "could not be reloaded" in outcome.message
    assert not out.exists()
    seen = [s for s, _, _ in reporter.stages]
    assert seen[:3] == [Stage.LOADING, Stage.CALIBRATING, Stage.LOADING]
    assert Stage.QUANTIZING in seen and Stage.EVALUATING in seen and Stage.DONE not in seen
    percents = [p for _, p, _ in reporter.stages]
    assert percents == sorted(percents)
    assert reporter.finished[-1][0] == 3
    assert reporter.results[-1].quality_gate == "Failed"


@pytest.mark.slow
def test_nan_outputs_fail_the_gate_even_without_bounds(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrap_quantize(monkeypatch, lambda d: poison_tensor(d / "model.safetensors", "LayerNorm"))
    out = tmp_path / "out"
    spec = parse_spec(spec_for(minilm_path, out))  # no qualityGate at all
    outcome = pipeline.run(spec, RunContext(name="t"), load_settings(), RecordingReporter())
    assert int(outcome.exit_code) == 3
    assert outcome.result.quality_gate == "Failed"
    assert "non-finite" in outcome.message
    assert outcome.result.cosine_similarity is None
    assert not out.exists()


@pytest.mark.slow
def test_a_failed_publish_leaves_nothing_at_the_output(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out" / "model"
    real_rename = Path.rename

    def failing_rename(self: Path, target: Any) -> Path:
        if "kubequant-tmp" in self.name:
            raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    spec = parse_spec(spec_for(minilm_path, out))
    outcome = pipeline.run(spec, RunContext(name="t"), load_settings(), RecordingReporter())
    assert int(outcome.exit_code) == 1
    assert "spec.output.uri" in outcome.message
    assert not out.exists()
    assert list(out.parent.iterdir()) == []
    assert not list(engine_env.work_dir.glob("run-*"))


@pytest.mark.slow
def test_s3_source_and_output_through_a_real_s3_server(
    minilm_path: Path,
    tmp_path: Path,
    engine_env: EngineEnv,
    s3_env: S3Env,
    capsys: pytest.CaptureFixture[str],
) -> None:
    s3_env.upload_dir(minilm_path, "src/minilm")
    manifest = write_manifest(
        tmp_path / "m.yaml",
        spec_for(f"s3://{s3_env.bucket}/src/minilm", f"s3://{s3_env.bucket}/out/minilm-int8"),
    )
    code, text = run_engine(["run", "-f", str(manifest)], capsys)
    assert code == 0, text
    keys = s3_env.list_keys("out/")
    assert f"out/minilm-int8/{COMPLETE_MARKER}" in keys
    assert "out/minilm-int8/model.safetensors" in keys
    assert not [k for k in s3_env.list_keys() if "kubequant-tmp" in k]
    body = s3_env.client.get_object(Bucket=s3_env.bucket, Key="out/minilm-int8/results.json")
    result = Result.model_validate(json.loads(body["Body"].read())["result"])
    assert result.output_uri == f"s3://{s3_env.bucket}/out/minilm-int8"
    marker = s3_env.client.get_object(
        Bucket=s3_env.bucket, Key=f"out/minilm-int8/{COMPLETE_MARKER}"
    )
    assert json.loads(marker["Body"].read())["digest"] == result.output_digest
    assert "kqtest-secret" not in text


def test_hf_source_dry_run_from_the_local_cache(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    make_hf_cache(
        tmp_path / "hf-cache", "sentence-transformers/all-MiniLM-L6-v2", "main", minilm_path
    )
    results = tmp_path / "r.json"
    manifest = write_manifest(
        tmp_path / "m.yaml",
        spec_for("hf://sentence-transformers/all-MiniLM-L6-v2@main", tmp_path / "o", dryRun=True),
    )
    code, text = run_engine(["run", "-f", str(manifest), "--results", str(results)], capsys)
    assert code == 0, text
    plan = json.loads(results.read_text())["result"]["plan"]
    assert plan["source"]["uri"] == "hf://sentence-transformers/all-MiniLM-L6-v2@main"
    assert plan["model"]["task"] == "feature-extraction"


@pytest.mark.slow
def test_causal_lm_reports_perplexity_and_top1_agreement(
    tiny_lm_path: Path, tmp_path: Path, engine_env: EngineEnv
) -> None:
    out = tmp_path / "out"
    spec = parse_spec(
        spec_for(
            tiny_lm_path,
            out,
            evaluation={
                "samples": 8,
                "qualityGate": {"maxPerplexityIncreasePercent": 10, "minTop1Agreement": 0.8},
            },
            calibration={"sequenceLength": 64},
        )
    )
    outcome = pipeline.run(spec, RunContext(name="t"), load_settings(), RecordingReporter())
    assert int(outcome.exit_code) == 0, outcome.message
    r = outcome.result
    assert r.baseline is not None and r.optimized is not None
    assert r.baseline.perplexity is not None and 1 < r.baseline.perplexity < 200
    assert r.optimized.perplexity is not None
    assert r.perplexity_increase_percent == pytest.approx(
        (r.optimized.perplexity / r.baseline.perplexity - 1) * 100, abs=0.01
    )
    assert r.top1_agreement is not None and 0.8 <= r.top1_agreement <= 1.0
    assert r.cosine_similarity is None
    assert r.quality_gate == "Passed"
    card = (out / "README.md").read_text()
    assert f"{r.baseline.perplexity:.4g}" in card


@pytest.mark.slow
def test_auto_where_every_candidate_crashed_is_retryable(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    from optimizer_job.methods.base import MethodError

    def no_space(out_dir: Path) -> None:
        raise MethodError("writing the artifact failed: no space left on device")

    wrap_quantize(monkeypatch, no_space)
    spec = parse_spec(
        spec_for(
            minilm_path,
            tmp_path / "out",
            method="auto",
            candidates=[{"method": "torchao-int8-weight"}, {"method": "awq"}],
        )
    )
    outcome = pipeline.run(spec, RunContext(name="t"), load_settings(), RecordingReporter())
    assert int(outcome.exit_code) == 1, outcome.message
    assert "no candidate produced an artifact" in outcome.message
    assert "no space left on device" in outcome.message
    assert not (tmp_path / "out").exists()
