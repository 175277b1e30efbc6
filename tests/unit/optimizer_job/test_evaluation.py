"""Evaluation: comparisons, the quality gate's verdicts, peak memory, text datasets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from kubequant_api.constants import GateVerdict, Task
from kubequant_api.errors import InvalidSpecError
from kubequant_api.models import QualityGate, parse_spec
from optimizer_job.calibration import parse_texts, select_texts
from optimizer_job.evaluation import (
    Comparison,
    Inputs,
    Outputs,
    PeakMemory,
    _collect,
    check_gate_fits_task,
    compare,
    gate_verdict,
)
from optimizer_job.settings import load_settings


def inputs_of(ids: np.ndarray, mask: np.ndarray) -> Inputs:
    return Inputs([(ids, mask)], (ids[:1], mask[:1]), int(mask.sum()))


def test_causal_lm_perplexity_and_top1_agreement() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, size=(2, 6))
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    logits = rng.normal(size=(2, 6, 5)).astype(np.float32)
    ref, same, other = Outputs(Task.CAUSAL_LM), Outputs(Task.CAUSAL_LM), Outputs(Task.CAUSAL_LM)
    _collect(ref, logits, ids, mask)
    _collect(same, logits.copy(), ids, mask)
    flipped = logits.copy()
    flipped[0, 0] = -flipped[0, 0]  # changes the argmax at one valid position
    _collect(other, flipped, ids, mask)
    # Perplexity by hand: mean NLL of each next token over valid positions.
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = [-logp[b, t, ids[b, t + 1]] for b in range(2) for t in range(5) if mask[b, t + 1]]
    assert ref.perplexity == pytest.approx(float(np.exp(np.mean(nll))), rel=1e-5)
    c = compare(ref, same, inputs_of(ids, mask))
    assert c.top1_agreement == 1.0 and c.perplexity_increase_percent == 0.0
    c = compare(ref, other, inputs_of(ids, mask))
    assert c.top1_agreement == pytest.approx(8 / 9, abs=1e-6)  # 9 valid positions


def test_mean_pooled_cosine_ignores_padding() -> None:
    ids = np.zeros((1, 3), dtype=np.int64)
    mask = np.array([[1, 1, 0]])
    hidden = np.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 50.0]]], dtype=np.float32)
    ref, cand = Outputs(Task.FEATURE_EXTRACTION), Outputs(Task.FEATURE_EXTRACTION)
    _collect(ref, hidden, ids, mask)
    shifted = hidden.copy()
    shifted[0, 2] = [-7.0, 3.0]  # padding only: must not matter
    _collect(cand, shifted, ids, mask)
    assert compare(ref, cand, inputs_of(ids, mask)).cosine_similarity == pytest.approx(1.0)


def test_non_finite_outputs_fail_even_without_a_gate() -> None:
    ids = np.zeros((1, 2), dtype=np.int64)
    mask = np.ones((1, 2), dtype=np.int64)
    ref, bad = Outputs(Task.FEATURE_EXTRACTION), Outputs(Task.FEATURE_EXTRACTION)
    _collect(ref, np.ones((1, 2, 3), np.float32), ids, mask)
    _collect(bad, np.full((1, 2, 3), np.nan, np.float32), ids, mask)
    comparison = compare(ref, bad, inputs_of(ids, mask))
    assert comparison.finite is False and comparison.cosine_similarity is None
    verdict, why = gate_verdict(None, comparison)
    assert verdict == GateVerdict.FAILED and "non-finite" in why[0]
    assert gate_verdict(None, None)[0] == GateVerdict.FAILED  # artifact did not reload


def test_a_non_finite_value_in_any_chunk_of_positions_is_seen() -> None:
    ids = np.zeros((2, 10), dtype=np.int64)
    mask = np.ones((2, 10), dtype=np.int64)
    logits = np.zeros((2, 10, 4), np.float32)
    logits[1, 9, 3] = np.inf  # the last position of the second row: the last chunk
    out = Outputs(Task.CAUSAL_LM)
    _collect(out, logits, ids, mask, budget_bytes=2 * 4 * 4 * 2 * 3)  # 3 positions a chunk
    assert out.finite is False
    clean = Outputs(Task.CAUSAL_LM)
    _collect(clean, np.zeros_like(logits), ids, mask, budget_bytes=2 * 4 * 4 * 2 * 3)
    assert clean.finite is True and clean.count == 18


def test_gate_verdicts() -> None:
    gate = QualityGate(max_perplexity_increase_percent=5, min_top1_agreement=0.9)
    ok = Comparison(top1_agreement=0.95, perplexity_increase_percent=4.9)
    assert gate_verdict(gate, ok) == (GateVerdict.PASSED, [])
    bad = Comparison(top1_agreement=0.95, perplexity_increase_percent=7.5)
    verdict, why = gate_verdict(gate, bad)
    assert verdict == GateVerdict.FAILED and why == [
        "maxPerplexityIncreasePercent: measured 7.5, bound 5"
    ]
    assert gate_verdict(QualityGate(), ok)[0] == GateVerdict.NOT_REQUESTED
    assert gate_verdict(QualityGate(min_cosine_similarity=0.9), ok)[1] == [
        "minCosineSimilarity: not measured"
    ]


def test_gate_bounds_must_fit_the_task() -> None:
    check_gate_fits_task(QualityGate(min_top1_agreement=0.9), Task.SEQUENCE_CLASSIFICATION)
    with pytest.raises(InvalidSpecError, match=r"qualityGate\.minCosineSimilarity"):
        check_gate_fits_task(QualityGate(min_cosine_similarity=0.9), Task.CAUSAL_LM)


def test_peak_memory_sees_an_allocation() -> None:
    with PeakMemory("cpu") as peak:
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
        del block
    assert 60 * 1024 * 1024 < peak.peak < 200 * 1024 * 1024


def test_text_formats(tmp_path: Path) -> None:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    assert parse_texts(b"one\ntwo\n\nthree", "a.txt", "f") == ["one\ntwo", "three"]
    assert parse_texts(b"one\ntwo\n", "a.txt", "f") == ["one", "two"]
    jsonl = "\n".join(json.dumps({"text": t}) for t in ("a", "b")).encode()
    assert parse_texts(jsonl, "d.jsonl", "f") == ["a", "b"]
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": ["x", "y"]}), buf)
    assert parse_texts(buf.getvalue(), "d.parquet", "f") == ["x", "y"]
    with pytest.raises(InvalidSpecError, match="no 'text' column"):
        buf2 = io.BytesIO()
        pq.write_table(pa.table({"body": ["x"]}), buf2)
        parse_texts(buf2.getvalue(), "d.parquet", "spec.calibration.datasetUri")


def test_held_out_evaluation_never_overlaps_calibration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBEQUANT_WORK_DIR", str(tmp_path))
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"text {i}"}) for i in range(40)))
    base = {"model": {"uri": "file:///m"}, "method": "gptq", "output": {"uri": "file:///o"}}
    spec = parse_spec({**base, "calibration": {"datasetUri": f"file://{data}", "samples": 30}})
    texts = select_texts(spec, load_settings(), needs_calibration=True)
    assert len(texts.calibration) == 30 and len(texts.evaluation) == 10
    assert not set(texts.calibration) & set(texts.evaluation)
    builtin = select_texts(parse_spec(base), load_settings(), needs_calibration=True)
    assert len(builtin.calibration) == 128 and builtin.evaluation
    assert not set(builtin.calibration) & set(builtin.evaluation)


def test_sequence_classification_label_agreement() -> None:
    ids = np.zeros((4, 3), dtype=np.int64)
    mask = np.ones((4, 3), dtype=np.int64)
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    ref, cand = Outputs(Task.SEQUENCE_CLASSIFICATION), Outputs(Task.SEQUENCE_CLASSIFICATION)
    _collect(ref, logits, ids, mask)
    _collect(cand, logits[:, ::-1].copy(), ids, mask)  # every label flipped
    c = compare(ref, cand, inputs_of(ids, mask))
    assert c.top1_agreement == 0.0 and c.perplexity_increase_percent is None
    assert ref.perplexity is None
