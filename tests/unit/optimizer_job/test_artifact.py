"""Artifact bookkeeping: the digest and the model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from kubequant_api.constants import ARTIFACT_META_FILE
from kubequant_api.models import CandidateResult, Measurements, Reproducibility, Result
from optimizer_job import artifact
from optimizer_job.snippets import load_snippet


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
    data = _card_data(card)
    assert data["tags"] == ["kubequant", "quanto-int8", "int8", "8-bit", "quanto", "quantized"]
    assert "## How to load" in card


def _card_data(card: str) -> dict[str, Any]:
    data: dict[str, Any] = ModelCard(card).data.to_dict()  # type: ignore[no-untyped-call]
    return data


def test_the_card_is_a_hub_card_whose_metadata_follows_the_method(tmp_path: Path) -> None:
    onnx_dir, gptq_dir = tmp_path / "onnx", tmp_path / "gptq"
    for d, fmt in ((onnx_dir, "onnx"), (gptq_dir, "safetensors")):
        d.mkdir()
        (d / ARTIFACT_META_FILE).write_text(json.dumps({"format": fmt}))
    onnx = artifact.model_card(
        Result(method="onnx-int8", params={"perChannel": True}),
        source_uri="hf://org/name@v1",
        task="sequence-classification",
        gate=None,
        digest_value="sha256:d",
        artifact_dir=onnx_dir,
    )
    data = _card_data(onnx)
    assert data["base_model"] == "org/name" and data["base_model_relation"] == "quantized"
    assert data["library_name"] == "onnx"
    assert data["pipeline_tag"] == "text-classification"
    assert data["tags"] == ["kubequant", "onnx-int8", "int8", "8-bit", "onnx", "quantized"]
    assert "license" not in data  # no source card
    assert "No bound was requested." in onnx

    gptq = artifact.model_card(
        Result(method="gptq", params={"bits": 3, "groupSize": 128}),
        source_uri="s3://***@bucket/model",
        task="causal-lm",
        gate=None,
        digest_value="sha256:d",
        artifact_dir=gptq_dir,
    )
    data = _card_data(gptq)
    assert "base_model" not in data and "base_model_relation" not in data
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["tags"] == ["kubequant", "gptq", "int3", "3-bit", "llmcompressor", "quantized"]
    assert artifact.precision_tags("bnb-nf4", {"doubleQuant": True}) == ["nf4", "4-bit"]
    assert artifact.library_tag("quanto-int4") == "quanto"
    assert artifact.library_tag("bnb-fp4") == "bitsandbytes"


def test_the_license_comes_from_the_source_card_when_it_has_one(tmp_path: Path) -> None:
    def card_for(readme: str | None) -> dict[str, Any]:
        src = tmp_path / f"src{len(list(tmp_path.iterdir()))}"
        src.mkdir()
        if readme is not None:
            (src / "README.md").write_text(readme)
        return _card_data(
            artifact.model_card(
                Result(method="quanto-int8"),
                source_uri="file:///m",
                task="feature-extraction",
                gate=None,
                digest_value="sha256:d",
                source_dir=src,
            )
        )

    assert card_for("---\nlicense: mit\ntags: [x]\n---\n# M\n")["license"] == "mit"
    other = card_for("---\nlicense: other\nlicense_name: acme\nlicense_link: LICENSE\n---\n")
    assert (other["license"], other["license_name"], other["license_link"]) == (
        "other",
        "acme",
        "LICENSE",
    )
    for readme in (None, "# no metadata\n", "---\nlanguage: en\n---\n"):
        assert "license" not in card_for(readme), readme


def test_the_card_shows_the_gate_the_spec_and_the_record() -> None:
    record = Reproducibility(
        source_uri="hf://org/name",
        source_revision="a" * 40,
        library_versions={"python": "3.11.9", "torch": "2.13.0"},
        calibration_source="builtin",
        calibration_samples=2,
        calibration_digest="sha256:cal",
        evaluation_samples=3,
        evaluation_digest="sha256:eval",
        seed=7,
    )
    spec = {"model": {"uri": "s3://key:secret@bucket/m"}, "method": "awq"}
    card = artifact.model_card(
        Result(method="awq", params={"bits": 4}, perplexity_increase_percent=1.5),
        source_uri="hf://org/name",
        task="causal-lm",
        gate={"maxPerplexityIncreasePercent": 2.0},
        digest_value="sha256:d",
        spec=spec,
        reproducibility=record,
        load_path="/models/out",
    )
    assert "| perplexity increase (%) | <= 2 | 1.5 |" in card
    assert "secret" not in card and "uri: s3://***@bucket/m" in card  # no credentials
    for needle in (
        "| source revision | `" + "a" * 40 + "` |",
        "| seed | 7 |",
        "| torch | 2.13.0 |",
    ):
        assert needle in card, needle
    assert "2 texts from builtin, `sha256:cal`" in card and "3 texts, `sha256:eval`" in card
    load = card.split("## How to load", 1)[1]
    assert load.count("```python") == 1
    assert load_snippet("awq", "causal-lm", "/models/out").rstrip("\n") in load


def test_a_source_revision_is_the_hub_commit_or_the_digest_of_every_file(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--org--name" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "README.md").write_text("card")
    assert artifact.source_revision("hf://org/name@main", snapshot) == commit
    local = artifact.source_revision("file:///x", snapshot)
    manifest = "".join(
        f"{name}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}\n"
        for name, data in (("README.md", b"card"), ("config.json", b"{}"))
    )
    assert local == "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()  # README too
    (snapshot / "README.md").write_text("changed")
    assert artifact.source_revision("file:///x", snapshot) != local
    assert artifact.load_path_for("file:///data/out?x=1") == "/data/out"
    assert artifact.load_path_for("s3://b/out") == "."
