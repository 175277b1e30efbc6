"""Prometheus metrics: served over HTTP, linted by promtool, pushed to a real Pushgateway."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest

from kubequant_api.constants import ExitCode, GateVerdict, Stage
from kubequant_api.models import CandidateResult, Measurements, Result
from optimizer_job.report import MetricsReporter, RunContext
from optimizer_job.report.metrics import PUSH_JOB, default_bind_address
from tests.fixtures.observability import Pushgateway, free_port, http_get
from tests.fixtures.observability import metric_value as sample

SECRET = "hf_s3cr3tT0kenValue1234567890"
PASSWORD = "pushP4ssw0rd"


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def a_result() -> Result:
    return Result(
        method="gptq",
        params={"bits": 4},
        original_size_bytes=86_700_000,
        optimized_size_bytes=22_000_000,
        compression_ratio=3.94,
        baseline=Measurements(latency_ms=41.0),
        optimized=Measurements(latency_ms=35.2, peak_memory_bytes=1_500_000_000),
        speedup=1.16,
        perplexity_increase_percent=2.9,
        top1_agreement=0.97,
        quality_gate=GateVerdict.PASSED,
        output_uri=f"s3://bucket/models/out?token={SECRET}",
        candidates=[CandidateResult(method="gptq"), CandidateResult(method="awq")],
    )


def run_through(r: MetricsReporter, clock: FakeClock, before: list[str] | None = None) -> None:
    r.stage(Stage.LOADING, 5)
    clock.now += 2.0
    r.stage(Stage.QUANTIZING, 40, candidate="gptq")
    clock.now += 3.0
    r.stage(Stage.EVALUATING, 80, candidate="gptq")
    if before is not None and r.port is not None:
        before.append(http_get(f"http://127.0.0.1:{r.port}/metrics"))
    r.result(a_result())
    clock.now += 1.0


def test_metrics_served_over_http_pass_promtool(
    promtool_check: Callable[[str], tuple[int, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    clock = FakeClock()
    ctx = RunContext(name="qwen", namespace="team-a", uid="u", generation=2, method="auto")
    r = MetricsReporter(
        ctx, port=free_port(), bind="127.0.0.1", clock=clock, peak_rss=lambda: 3 << 30
    )
    before: list[str] = []
    try:
        assert r.port is not None
        run_through(r, clock, before)
        during = http_get(f"http://127.0.0.1:{r.port}/metrics")
        r.finish(ExitCode.SUCCESS, {"exitCode": 0})
        text = http_get(f"http://127.0.0.1:{r.port}/metrics")
    finally:
        r.close()
    rc, problems = promtool_check(text)
    assert rc == 0 and problems.strip() == "", problems

    # Before a result names a method, `method` is the requested one; then the winner's.
    undecided = {"namespace": "team-a", "name": "qwen", "method": "auto"}
    assert sample(before[0], "kubequant_engine_progress_percent", **undecided) == 80
    ours = {"namespace": "team-a", "name": "qwen", "method": "gptq", "requested_method": "auto"}
    assert 'method="auto"' not in during.replace('requested_method="auto"', "")
    assert sample(during, "kubequant_engine_stage_info", stage="Evaluating", **ours) == 1
    assert sample(during, "kubequant_engine_stage_info", stage="Loading", **ours) == 0
    assert sample(during, "kubequant_engine_progress_percent", **ours) == 80
    assert sample(during, "kubequant_engine_finished", **ours) == 0
    assert sample(text, "kubequant_engine_compression_ratio", **ours) == pytest.approx(3.94)
    assert sample(text, "kubequant_engine_speedup", **ours) == pytest.approx(1.16)
    assert sample(text, "kubequant_engine_optimized_size_bytes", **ours) == 22_000_000
    assert sample(text, "kubequant_engine_original_size_bytes", **ours) == 86_700_000
    assert sample(text, "kubequant_engine_perplexity_increase_percent", **ours) == 2.9
    assert sample(text, "kubequant_engine_top1_agreement", **ours) == pytest.approx(0.97)
    assert sample(text, "kubequant_engine_baseline_latency_seconds", **ours) == 0.041
    assert sample(text, "kubequant_engine_quality_gate_passed", **ours) == 1
    assert sample(text, "kubequant_engine_candidates_evaluated", **ours) == 2
    assert sample(text, "kubequant_engine_exit_code", **ours) == 0
    assert sample(text, "kubequant_engine_finished", **ours) == 1
    assert sample(text, "kubequant_engine_run_duration_seconds", **ours) == 6.0
    assert sample(text, "kubequant_engine_peak_rss_bytes", **ours) == 3 << 30
    assert sample(text, "kubequant_engine_optimized_peak_memory_bytes", **ours) == 1_500_000_000
    stage_s = {
        s: sample(text, "kubequant_engine_stage_duration_seconds", stage=s, **ours)
        for s in ("Loading", "Quantizing", "Evaluating")
    }
    assert stage_s == {"Loading": 2.0, "Quantizing": 3.0, "Evaluating": 1.0}
    # No cosine for a causal LM: an unset measurement is absent, not 0.
    assert "kubequant_engine_cosine_similarity{" not in text
    # Bounded labels only: never a URI, a uid or a secret.
    label_names = set(re.findall(r"[{,](\w+)=", text))
    assert label_names == {"namespace", "name", "method", "requested_method", "stage"}
    assert SECRET not in text and "s3://" not in text


def test_push_to_real_pushgateway(
    pushgateway: Pushgateway,
    promtool_check: Callable[[str], tuple[int, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    ctx = RunContext(name="pushed", namespace="team-b", method="torchao-int8-weight")
    # Credentials in the URL go into a basic-auth header, never into a log line.
    host = pushgateway.url.removeprefix("http://")
    url = f"http://engine:{PASSWORD}@{host}"
    r = MetricsReporter(ctx, pushgateway_url=url, clock=clock)
    assert r.port is None  # port 0: nothing served
    run_through(r, clock)
    with caplog.at_level(logging.INFO, logger="optimizer_job.report.metrics"):
        r.finish(ExitCode.QUALITY_GATE_FAILED, {})
    r.close()
    assert any("pushed metrics" in rec.getMessage() for rec in caplog.records)
    assert PASSWORD not in caplog.text

    text = pushgateway.metrics_text()
    group = {"job": PUSH_JOB, "namespace": "team-b", "name": "pushed"}
    labels = {**group, "method": "gptq", "requested_method": "torchao-int8-weight"}
    assert sample(text, "kubequant_engine_exit_code", **labels) == 3
    assert sample(text, "kubequant_engine_compression_ratio", **labels) == pytest.approx(3.94)
    assert sample(text, "kubequant_engine_finished", **labels) == 1
    assert sample(text, "push_time_seconds", **group) > 0
    ours = "\n".join(
        line
        for line in text.splitlines()
        if "kubequant_engine_" in line and ('name="pushed"' in line or line.startswith("#"))
    )
    rc, problems = promtool_check(ours + "\n")
    assert rc == 0, problems
    pushgateway.delete_group(PUSH_JOB, namespace="team-b", name="pushed")
    assert 'name="pushed"' not in pushgateway.metrics_text()


def test_push_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ctx = RunContext(name="x", namespace="ns", method="quanto-int8")
    dead = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}"
    r = MetricsReporter(ctx, pushgateway_url=dead, push_timeout=2)
    with caplog.at_level(logging.WARNING, logger="optimizer_job.report.metrics"):
        r.finish(ExitCode.RETRYABLE, {})
    assert r.push() is False
    assert any("pushing metrics" in rec.getMessage() for rec in caplog.records)
    assert PASSWORD not in caplog.text


def test_port_in_use_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    ctx = RunContext(name="x")
    first = MetricsReporter(ctx, port=free_port())
    try:
        with caplog.at_level(logging.ERROR, logger="optimizer_job.report.metrics"):
            second = MetricsReporter(ctx, port=first.port or 0)
        assert second.port is None
        assert any("cannot serve metrics" in rec.getMessage() for rec in caplog.records)
        second.stage(Stage.LOADING, 1)  # still records
        second.close()
    finally:
        first.close()


def test_bind_address_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBEQUANT_ENGINE_METRICS_BIND", raising=False)
    assert default_bind_address(in_cluster=True) == "0.0.0.0"
    assert default_bind_address(in_cluster=False) == "127.0.0.1"
    monkeypatch.setenv("KUBEQUANT_ENGINE_METRICS_BIND", "::1")
    assert default_bind_address(in_cluster=True) == "::1"
