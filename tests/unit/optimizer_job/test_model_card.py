"""The model card of an engine run: Hub metadata that ModelCard.load reads, every measured
figure, the spec verbatim, the reproducibility record and the method's loading snippet; and
results.json's reproducibility record (source revision, versions, text digests, seed)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from huggingface_hub import ModelCard

from kubequant_api.models import Reproducibility, Result, parse_spec
from optimizer_job import pipeline
from optimizer_job.calibration import select_texts
from optimizer_job.corpus import builtin_corpus, split_corpus
from optimizer_job.report.base import RunContext
from optimizer_job.results import ENGINE_SEED, reproducibility_record
from optimizer_job.settings import load_settings
from optimizer_job.snippets import load_snippet
from tests.fixtures.storage import EngineEnv, make_hf_cache
from tests.unit.optimizer_job.test_pipeline import RecordingReporter, spec_for

REPO = "sentence-transformers/all-MiniLM-L6-v2"


def _run(spec_doc: dict[str, Any]) -> tuple[Result, dict[str, Any]]:
    spec = parse_spec(spec_doc)
    outcome = pipeline.run(spec, RunContext(name="t"), load_settings(), RecordingReporter())
    assert int(outcome.exit_code) == 0, outcome.message
    return outcome.result, outcome.results_document


def _section(card: str, heading: str) -> str:
    """The text under ``heading`` up to the next ``## `` heading."""
    start = card.index(f"\n{heading}\n") + len(heading) + 2
    end = card.find("\n## ", start)
    return card[start:] if end < 0 else card[start:end]


def _fence(text: str, lang: str) -> str:
    found = re.search(rf"```{lang}\n(.*?)\n```", text, re.S)
    assert found is not None, f"no {lang} block"
    return found.group(1)


def _independent_digest(texts: list[str]) -> str:
    payload = "[" + ",".join(json.dumps(t, ensure_ascii=False) for t in texts) + "]"
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _tree_digest(root: Path) -> str:
    lines = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            lines.append(
                f"{p.relative_to(root).as_posix()}\t{len(data)}\t{hashlib.sha256(data).hexdigest()}"
            )
    manifest = "".join(line + "\n" for line in sorted(lines))
    return "sha256:" + hashlib.sha256(manifest.encode()).hexdigest()


def _figures(result: Result) -> list[str]:
    """Every figure the engine measured, as the card formats it."""
    shown: list[str] = []
    for m in (result.baseline, result.optimized):
        assert m is not None
        for value in m.to_api().values():
            shown.append(f"{value:.4g}" if isinstance(value, float) else str(value))
    for value in (result.original_size_bytes, result.optimized_size_bytes):
        shown.append(f"{value} bytes")
    for value, unit in (
        (result.compression_ratio, "x"),
        (result.speedup, "x"),
        (result.cosine_similarity, ""),
    ):
        assert value is not None
        shown.append(f"{value:.4g}{unit}")
    return shown


@pytest.mark.slow
def test_an_hf_source_gives_a_hub_card_and_its_commit(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv
) -> None:
    snapshot = make_hf_cache(tmp_path / "hf-cache", REPO, "main", minilm_path)
    out = tmp_path / "out"
    spec_doc = spec_for(
        f"hf://{REPO}@main",
        out,
        evaluation={"samples": 8, "qualityGate": {"minCosineSimilarity": 0.99}},
    )
    result, document = _run(spec_doc)

    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == REPO
    assert data["base_model_relation"] == "quantized"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "feature-extraction"
    assert data["license"] == "apache-2.0"  # the source card's
    for tag in ("kubequant", "torchao-int8-weight", "int8", "8-bit", "torchao"):
        assert tag in data["tags"], tag

    text = card.text
    table = _section(text, "## Results")
    for figure in _figures(result):
        assert figure in table, figure
    gate = _section(text, "## Quality gate")
    assert "**Passed**" in gate and "| cosine similarity | >= 0.99 |" in gate

    spec = parse_spec(spec_doc).to_api()
    block = _fence(_section(text, "## Spec"), "yaml")
    assert block + "\n" == yaml.safe_dump(spec, sort_keys=False)
    assert yaml.safe_load(block) == spec

    load = _section(text, "## How to load")
    assert load.count("```python") == 1
    snippet = _fence(load, "python")
    assert snippet + "\n" == load_snippet("torchao-int8-weight", "feature-extraction", str(out))
    assert snippet.splitlines()[0] == f"path = {json.dumps(str(out))}"

    record = Reproducibility.model_validate(document["reproducibility"])
    assert json.loads((out / "results.json").read_text())["reproducibility"] == record.to_api()
    assert record.source_revision == snapshot.name and re.fullmatch("[0-9a-f]{40}", snapshot.name)
    assert record.source_uri == f"hf://{REPO}@main"
    assert record.seed == ENGINE_SEED
    for dist in ("torch", "transformers", "torchao", "huggingface-hub", "kubequant"):
        assert record.library_versions[dist] == importlib.metadata.version(dist), dist
    # torchao-int8-weight needs no calibration; evaluation is the built-in held-out slice.
    assert record.calibration_digest is None and record.calibration_samples == 0
    held_out = split_corpus(builtin_corpus(), 0.1)[1][:8]
    assert record.evaluation_samples == len(held_out)
    assert record.evaluation_digest == _independent_digest(held_out)
    repro = _section(text, "## Reproducibility")
    for needle in (snapshot.name, str(ENGINE_SEED), record.evaluation_digest, "| torchao |"):
        assert needle in repro, needle


@pytest.mark.slow
def test_a_local_source_without_a_card_is_named_by_its_digest_and_runs_repeat(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv
) -> None:
    source = tmp_path / "src"
    shutil.copytree(minilm_path, source, ignore=shutil.ignore_patterns("README.md"))
    docs: list[tuple[Result, dict[str, Any]]] = []
    for n in (1, 2):
        out = tmp_path / f"out{n}"
        result, document = _run(spec_for(source, out))
        data = ModelCard.load(out / "README.md").data.to_dict()
        for absent in ("base_model", "base_model_relation", "license"):
            assert absent not in data, absent
        assert data["library_name"] == "transformers"
        assert "kubequant" in data["tags"]
        docs.append((result, document["reproducibility"]))
    (first, rec1), (second, rec2) = docs
    assert rec1["sourceRevision"] == _tree_digest(source)
    assert rec1 == rec2  # source revision, versions, text digests and seed
    assert first.method == second.method == "torchao-int8-weight"


def test_the_calibration_digest_names_the_texts_a_method_calibrates_on(
    tmp_path: Path, engine_env: EngineEnv
) -> None:
    data = tmp_path / "cal.jsonl"
    rows = [f"calibration sample number {n}, with some words." for n in range(12)]
    data.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    spec = parse_spec(
        spec_for(
            "hf://org/name",
            tmp_path / "out",
            method="gptq",
            calibration={"datasetUri": f"file://{data}", "samples": 5},
        )
    )
    texts = select_texts(spec, load_settings(), needs_calibration=True)
    record = reproducibility_record(
        source_uri="hf://org/name", source_revision="0" * 40, methods=["gptq"], texts=texts
    )
    assert record.calibration_samples == 5
    assert record.calibration_digest == _independent_digest(rows[:5])
    assert record.calibration_source == f"file://{data}"
    assert record.evaluation_digest == _independent_digest(rows[5:])  # the held-out rest
    assert record.library_versions["llmcompressor"] == importlib.metadata.version("llmcompressor")
