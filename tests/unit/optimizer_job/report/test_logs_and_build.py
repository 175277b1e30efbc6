"""JSON log lines, and build_reporter wiring every reporter together."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubequant_api.constants import TERMINATION_MESSAGE_MAX_BYTES, ExitCode, GateVerdict, Stage
from kubequant_api.logs import JsonFormatter
from kubequant_api.models import CandidateResult, Result
from optimizer_job.report import (
    KubeStatusReporter,
    LogReporter,
    MetricsReporter,
    RunContext,
    StaleRunError,
    TerminationMessageReporter,
    build_reporter,
)
from tests.fixtures.observability import Pushgateway, free_port, http_get, metric_value
from tests.unit.optimizer_job.report.conftest import KubeApi

SECRET = "ghp_n0tReallyAT0kenButSecret42"


@pytest.fixture()
def json_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Everything logged under optimizer_job.report, as parsed JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("engine"))
    logger = logging.getLogger("optimizer_job.report")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def test_log_lines_are_json_with_run_context(
    json_lines: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    ctx = RunContext(name="qwen", namespace="team-a", uid="u1", generation=4, method="gptq")
    r = LogReporter(ctx)
    r.stage(Stage.QUANTIZING, 40, candidate="gptq")
    r.result(
        Result(
            method="gptq",
            compression_ratio=3.1,
            quality_gate=GateVerdict.PASSED,
            output_uri=f"file:///out?token={SECRET}",
            candidates=[CandidateResult(method="gptq")],
        )
    )
    r.finish(ExitCode.QUALITY_GATE_FAILED, {"exitCode": 3, "message": f"bad {SECRET}"})
    lines = json_lines()
    assert [line["level"] for line in lines] == ["info", "info", "warning"]
    for line in lines:
        assert line["component"] == "engine"
        assert line["namespace"] == "team-a" and line["object_name"] == "qwen"
        assert line["generation"] == 4 and line["method"] == "gptq"
    assert lines[0]["stage"] == "Quantizing" and lines[0]["percent"] == 40
    assert lines[0]["candidate"] == "gptq"
    assert lines[1]["result_compression_ratio"] == 3.1
    assert lines[1]["result_quality_gate"] == "Passed"
    assert lines[1]["result_candidates"] == 1
    assert lines[2]["exit_code"] == 3
    assert json.loads(lines[2]["summary"])["exitCode"] == 3
    everything = json.dumps(lines)
    assert SECRET not in everything


def test_build_reporter_local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEQUANT_ENGINE_METRICS_BIND", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    r = build_reporter(
        RunContext(name="local"),
        metrics_port=0,
        pushgateway_url=None,
        termination_log=None,
        kube=False,
    )
    try:
        kinds = [type(x) for x in r.reporters]
        assert kinds == [LogReporter, MetricsReporter]
        metrics = r.reporters[1]
        assert isinstance(metrics, MetricsReporter) and metrics.port is None
        r.stage(Stage.LOADING, 1)
        r.finish(ExitCode.SUCCESS, {"exitCode": 0})
    finally:
        r.close()


def test_build_reporter_in_cluster_end_to_end(  # noqa: PLR0917 (pytest fixtures)
    kube_api: KubeApi,
    pushgateway: Pushgateway,
    promtool_check: Callable[[str], tuple[int, str]],
    json_lines: Callable[[], list[dict[str, Any]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("KUBEQUANT_ENGINE_METRICS_BIND", "127.0.0.1")
    monkeypatch.setenv("KUBEQUANT_STATUS_PROGRESS_INTERVAL_SECONDS", "0")
    kube_api.create("prod", "bert", uid="uid-9", generation=2)
    ctx = RunContext(
        name="bert", namespace="prod", uid="uid-9", generation=2, method="torchao-int8-weight"
    )
    term = tmp_path / "termination-log"
    port = free_port()
    r = build_reporter(
        ctx, metrics_port=port, pushgateway_url=pushgateway.url, termination_log=term, kube=True
    )
    try:
        assert [type(x) for x in r.reporters] == [
            LogReporter,
            MetricsReporter,
            TerminationMessageReporter,
            KubeStatusReporter,
        ]
        for stage, pct in [(Stage.LOADING, 5), (Stage.QUANTIZING, 40), (Stage.EVALUATING, 80)]:
            r.stage(stage, pct)
        result = Result(
            method="torchao-int8-weight",
            compression_ratio=3.9,
            cosine_similarity=0.9996,
            quality_gate=GateVerdict.PASSED,
            output_uri="file:///out/bert",
        )
        r.result(result)
        r.stage(Stage.DONE, 100)
        summary = {"exitCode": 0, "generation": 2, "result": result.to_api()}
        r.finish(ExitCode.SUCCESS, summary)
        served = http_get(f"http://127.0.0.1:{port}/metrics")
    finally:
        r.close()

    status = kube_api.get("prod", "bert")["status"]
    assert status["progress"] == {
        "stage": "Done",
        "percent": 100,
        "generation": 2,
        "summary": "Done 100%",
    }
    assert status["result"]["cosineSimilarity"] == 0.9996
    assert status["result"]["generation"] == 2

    message = term.read_bytes()
    assert len(message) < TERMINATION_MESSAGE_MAX_BYTES
    assert json.loads(message) == summary

    assert promtool_check(served)[0] == 0
    ours = {"namespace": "prod", "name": "bert", "method": "torchao-int8-weight"}
    assert metric_value(served, "kubequant_engine_cosine_similarity", **ours) == 0.9996
    pushed = pushgateway.metrics_text()
    pushed_labels = {"job": "kubequant-engine", "namespace": "prod", "name": "bert"}
    assert metric_value(pushed, "kubequant_engine_exit_code", **pushed_labels) == 0
    assert metric_value(pushed, "kubequant_engine_compression_ratio", **pushed_labels) == 3.9

    lines = json_lines()
    assert {line.get("stage") for line in lines} >= {"Loading", "Quantizing", "Done"}
    everything = json.dumps(lines) + served + pushed + message.decode() + json.dumps(status)
    assert SECRET not in everything


def test_stale_run_reaches_the_caller_after_the_other_reporters(
    kube_api: KubeApi, tmp_path: Path, json_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    kube_api.create("prod", "bert", uid="uid-9", generation=3)  # spec moved on to 3
    ctx = RunContext(name="bert", namespace="prod", uid="uid-9", generation=2, method="awq")
    term = tmp_path / "termination-log"
    r = build_reporter(ctx, metrics_port=0, pushgateway_url=None, termination_log=term, kube=True)
    try:
        with pytest.raises(StaleRunError):
            r.stage(Stage.LOADING, 5)
        # The pipeline aborts; finishing still writes the termination message and logs.
        r.finish(ExitCode.RETRYABLE, {"exitCode": 1, "reason": "Stale"})
    finally:
        r.close()
    assert "status" not in kube_api.get("prod", "bert")
    assert json.loads(term.read_bytes())["reason"] == "Stale"
    assert any(line.get("stage") == "Loading" for line in json_lines())
