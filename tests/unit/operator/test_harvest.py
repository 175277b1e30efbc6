"""Harvesting results: results.json beside a file:// output, and the summary's detail."""

from __future__ import annotations

import json
from pathlib import Path

from kubequant_api.constants import RESULTS_FILE
from kubequant_operator.harvest import clip, read_results_file, summary_detail

RESULT = {"generation": 2, "method": "torchao-int8-weight", "compressionRatio": 3.1}


def test_results_file_beside_a_file_output(tmp_path: Path) -> None:
    (tmp_path / RESULTS_FILE).write_text(json.dumps({"exitCode": 0, "result": RESULT}))
    result, note = read_results_file(tmp_path.as_uri(), 2)
    assert note == ""
    assert result is not None and result.compression_ratio == 3.1 and result.generation == 2


def test_results_file_says_why_it_could_not_be_read(tmp_path: Path) -> None:
    result, note = read_results_file("pvc://models/out", 1)
    assert result is None and "pvc://" in note
    result, note = read_results_file(tmp_path.as_uri(), 1)
    assert result is None and "does not exist" in note
    (tmp_path / RESULTS_FILE).write_text("not json")
    assert "not readable JSON" in read_results_file(tmp_path.as_uri(), 1)[1]
    (tmp_path / RESULTS_FILE).write_text("[1]")
    assert "JSON object" in read_results_file(tmp_path.as_uri(), 1)[1]
    (tmp_path / RESULTS_FILE).write_text(json.dumps(RESULT))
    result, note = read_results_file(tmp_path.as_uri(), 3)  # written for generation 2
    assert result is None and "generation 3" in note


def test_summary_detail_prefers_the_summary_message_and_clips_raw_text() -> None:
    assert summary_detail({"message": json.dumps({"error": "bad uri"})}) == "bad uri"
    assert summary_detail({"message": json.dumps({"exitCode": 1})}) == ""
    raw = "x" * 2000 + "RuntimeError: boom"
    got = summary_detail({"message": raw})
    assert got.endswith("RuntimeError: boom") and got.startswith("...") and len(got) == 1024
    assert clip("  short  ") == "short"
