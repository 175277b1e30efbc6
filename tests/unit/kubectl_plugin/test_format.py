"""The plugin's figures and tables (kubequant_kubectl.format), also used by the demo."""

from __future__ import annotations

import pytest

from kubequant_api.constants import GateVerdict
from kubequant_kubectl.format import (
    candidates_table,
    human_bytes,
    human_ms,
    results_table,
    sig3,
    winner_index,
)
from tests.unit.kubectl_plugin.sample import auto_result, causal_result


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
