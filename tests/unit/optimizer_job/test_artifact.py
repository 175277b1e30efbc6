"""Artifact bookkeeping: the digest and the model card."""

from __future__ import annotations

import hashlib
from pathlib import Path

from kubequant_api.models import CandidateResult, Measurements, Result
from optimizer_job import artifact


def test_digest_covers_model_files_but_not_card_results_or_marker(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.json").write_text("{}")
    first = artifact.digest(tmp_path)
    manifest = (
        f"model.safetensors\t3\t{hashlib.sha256(b'abc').hexdigest()}\n"
        f"sub/t.json\t2\t{hashlib.sha256(b'{}').hexdigest()}\n"
    )
    assert first == "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()
    for name in ("README.md", "results.json", "_KUBEQUANT_COMPLETE"):
        (tmp_path / name).write_text("anything")
    assert artifact.digest(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    assert artifact.digest(tmp_path) != first


def test_model_card_lists_every_figure() -> None:
    result = Result(
        method="quanto-int8",
        params={"x": 1},
        original_size_bytes=1000,
        optimized_size_bytes=250,
        compression_ratio=4.0,
        baseline=Measurements(latency_ms=10.5, tokens_per_second=100, perplexity=20.25),
        optimized=Measurements(latency_ms=5.25, tokens_per_second=200, perplexity=21.5),
        speedup=2.0,
        perplexity_increase_percent=6.17,
        top1_agreement=0.93,
        quality_gate="Failed",
        candidates=[CandidateResult(method="gptq", error="boom")],
    )
    card = artifact.model_card(
        result, source_uri="s3://b/m", task="causal-lm", gate={"x": 1}, digest_value="sha256:d"
    )
    needles: tuple[str, ...] = ("quanto-int8", "s3://b/m", "sha256:d", "10.5", "5.25", "20.25")
    needles += ("21.5", "6.17%", "0.93", "4x", "2x", "Failed", "boom", "1000 bytes", "250 bytes")
    for needle in needles:
        assert needle in card, needle
