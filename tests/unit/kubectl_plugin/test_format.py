"""The plugin's figures and tables (kubequant_kubectl.format), also used by the demo."""

from __future__ import annotations

import pytest

from kubequant_api.constants import GateVerdict
from kubequant_kubectl.format import (
    candidates_table,
    history_table,
    human_bytes,
    human_duration,
    human_ms,
    last_successful_text,
    quality_text,
    results_table,
    seconds_between,
    sig3,
    winner_index,
)
from tests.unit.kubectl_plugin.sample import auto_result, causal_result, history, last_successful


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.99812, "0.998"),
        (3.79987, "3.80"),
        (9.996, "10.0"),
        (1234.5, "1230"),
        (0.000123456, "0.000123"),
        (0, "0"),
        (-4.256, "-4.26"),
        (None, "-"),
    ],
)
def test_sig3(value: float | None, text: str) -> None:
    assert sig3(value) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (512, "512 B"),
        (23_912_448, "23.9 MB"),
        (90_864_192, "90.9 MB"),
        (988_097_536, "988 MB"),
        (1_234_567_890, "1.23 GB"),
        (None, "-"),
    ],
)
def test_human_bytes(n: int | None, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("ms", "text"), [(0.41234, "0.412 ms"), (11.83, "11.8 ms"), (1530.2, "1.53 s")]
)
def test_human_ms(ms: float, text: str) -> None:
    assert human_ms(ms) == text


def _rows(table: str) -> dict[str, list[str]]:
    lines = table.splitlines()
    return {line.split()[0]: line.split() for line in lines[1:]}


def test_candidates_table_marks_the_winner_and_shows_errors() -> None:
    result = auto_result()
    table = candidates_table(result)
    header, *lines = table.splitlines()
    assert header.split() == [
        "METHOD", "PARAMS", "SIZE", "RATIO", "SPEEDUP", "COSINE", "GATE", "WINNER", "ERROR",
    ]  # fmt: skip
    assert len(lines) == 4
    rows = _rows(table)
    assert rows["quanto-int8"] == [
        "quanto-int8", "-", "23.9", "MB", "3.80x", "1.08x", "0.998", "Passed", "*",
    ]  # fmt: skip
    assert rows["torchao-int8-weight"][-1] == "Passed"  # not the winner: larger
    assert rows["onnx-int8"][-2:] == ["0.974", "Failed"]
    assert "needs a CUDA GPU" in lines[3]
    # The dict the API serves gives the same table.
    assert candidates_table(result.to_api()) == table


def test_no_winner_when_the_gate_failed() -> None:
    result = auto_result()
    result.quality_gate = GateVerdict.FAILED
    assert winner_index(result) is None
    assert "*" not in candidates_table(result)
    assert winner_index(auto_result()) == 1


def test_candidates_table_for_a_causal_lm_shows_its_measures() -> None:
    result = causal_result()
    result.candidates = []
    assert candidates_table(result).split() == [
        "METHOD", "PARAMS", "SIZE", "RATIO", "SPEEDUP", "COSINE", "GATE", "WINNER",
    ]  # fmt: skip


def test_results_table_encoder() -> None:
    text = results_table(auto_result().to_api())
    assert "METHOD:" in text and "quanto-int8" in text
    assert "QUALITY GATE:  Passed" in text
    assert "s3://models/minilm-auto" in text
    table = text.split("\n\n")[1]
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    assert rows["size"].split()[1:] == ["90.9", "MB", "23.9", "MB", "ratio", "3.80x"]
    assert rows["latency"].split()[1:] == ["11.8", "ms", "10.9", "ms", "speedup", "1.08x"]
    assert rows["cosine similarity"].split()[2:] == ["-", "0.998", "-"]
    # An encoder has no perplexity nor top-1 row.
    assert "perplexity" not in rows and "top-1 agreement" not in rows


def test_results_table_causal_lm() -> None:
    text = results_table(causal_result())
    table = text.split("\n\n")[1]
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    assert rows["perplexity"].split()[1:] == ["13.4", "14.0", "+4.25%"]
    assert rows["top-1 agreement"].split()[2:] == ["-", "0.961", "-"]
    assert rows["latency"].split()[1:] == ["413", "ms", "1.53", "s", "speedup", "0.270x"]
    assert "PARAMS:" in text and "bits=4,groupSize=128" in text
    assert "cosine similarity" not in rows


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (-5, "<invalid>"),
        (-0.5, "0s"),
        (41, "41s"),
        (119, "119s"),
        (120, "2m"),
        (252, "4m12s"),
        (600, "10m"),
        (10_799, "179m"),
        (10_800, "3h"),
        (11_100, "3h5m"),
        (28_800, "8h"),
        (172_799, "47h"),
        (180_000, "2d2h"),
        (700_000, "8d"),
        (2 * 365 * 86_400 + 3 * 86_400, "2y3d"),
        (9 * 365 * 86_400, "9y"),
    ],
)
def test_human_duration_as_kubectl_prints_ages(seconds: float | None, text: str) -> None:
    # apimachinery's duration.HumanDuration, which kubectl uses for AGE.
    assert human_duration(seconds) == text


def test_seconds_between_rfc3339_times() -> None:
    assert seconds_between("2026-11-25T11:00:00Z", "2026-11-25T11:04:12Z") == 252
    assert seconds_between("2026-11-25T11:00:00Z", None) is None
    assert seconds_between("yesterday", "2026-11-25T11:04:12Z") is None


@pytest.mark.parametrize(
    ("metric", "value", "text"),
    [
        ("cosineSimilarity", 0.99812, "cosine=0.998"),
        ("top1Agreement", 0.96123, "top-1=0.961"),
        ("perplexityIncreasePercent", 4.2512, "ppl=+4.25%"),
        ("perplexityIncreasePercent", -0.5, "ppl=-0.500%"),
        ("somethingNew", 1.5, "somethingNew=1.50"),
        (None, None, "-"),
        ("cosineSimilarity", None, "-"),
    ],
)
def test_quality_text(metric: str | None, value: float | None, text: str) -> None:
    assert quality_text(metric, value) == text


def test_history_table_newest_first_in_human_units() -> None:
    entries = history()
    table = history_table(entries)
    header, *lines = table.splitlines()
    assert header.split() == [
        "GEN", "RUN", "OUTCOME", "REASON", "METHOD", "RATIO", "QUALITY", "GATE", "STARTED",
        "DURATION", "JOB",
    ]  # fmt: skip
    assert [line.split() for line in lines] == [
        [
            "2", "1", "Failed", "InvalidSpec", "auto", "-", "-", "-", "2026-11-25T12:00:00Z",
            "41s", "minilm-auto-g2-1a2b",
        ],
        [
            "1", "2", "Failed", "QualityGateFailed", "onnx-int8", "3.94x", "cosine=0.974",
            "Failed", "2026-11-25T11:00:00Z", "4m12s", "minilm-auto-g1r2-3c4d",
        ],
        [
            "1", "1", "Succeeded", "Succeeded", "quanto-int8", "3.80x", "cosine=0.998",
            "Passed", "2026-11-25T09:00:00Z", "3m5s", "minilm-auto-g1-5e6f",
        ],
    ]  # fmt: skip
    # Columns line up: every row starts its cells where the header's do.
    starts = [header.index(h) for h in ("OUTCOME", "METHOD", "QUALITY", "JOB")]
    for line, row in zip(lines, (entries[0], entries[1], entries[2]), strict=True):
        assert line[starts[0] :].startswith(row.outcome)
        assert line[starts[3] :] == row.job_name
    # The list the API serves gives the same table; a field a newer operator adds is ignored.
    served = [e.to_api() for e in entries]
    assert history_table(served) == table
    served[0]["somethingNew"] = "x"
    assert history_table(served) == table


def test_history_table_of_a_causal_lm_run_without_times() -> None:
    entry = {
        "generation": 3,
        "run": 1,
        "outcome": "Succeeded",
        "method": "gptq",
        "compressionRatio": 2.1613,
        "qualityMetric": "perplexityIncreasePercent",
        "qualityValue": 4.25,
        "qualityGate": "Passed",
    }
    row = history_table([entry]).splitlines()[1].split()
    assert row == [
        "3",
        "1",
        "Succeeded",
        "-",
        "gptq",
        "2.16x",
        "ppl=+4.25%",
        "Passed",
        "-",
        "-",
        "-",
    ]


def test_last_successful_text() -> None:
    text = last_successful_text(last_successful().to_api())
    lines = dict(line.split(":  ", 1) for line in text.splitlines())
    assert {k: v.strip() for k, v in lines.items()} == {
        "GENERATION": "1",
        "RUN": "1",
        "JOB": "minilm-auto-g1-5e6f",
        "METHOD": "quanto-int8",
        "RATIO": "3.80x",
        "QUALITY GATE": "Passed",
        "COMPLETED": "2026-11-25T09:03:05Z",
        "OUTPUT": "s3://models/minilm-auto",
        "DIGEST": "sha256:" + "ab" * 32,
    }
    assert last_successful_text(last_successful()) == text
