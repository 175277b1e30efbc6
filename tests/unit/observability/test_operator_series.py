"""The operator's per-object series follow the real status computation.

Statuses come from :func:`kubequant_operator.status.compute_status` on observed Jobs and
pods (as the reconciler writes them), and the series from the operator's real /metrics:
``kubequant_optimization_stalled`` is 1 only while the CURRENT generation is Stalled and not
done, so a Failed-and-done, a Kueue-queued and a suspended object have none; progress is
exported while a run is under way; run outcomes carry the method that ran.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubequant_api.models import parse_spec
from kubequant_operator import builders
from kubequant_operator.metrics import Metrics, run_outcome
from kubequant_operator.settings import Settings
from kubequant_operator.status import Observation, StatusUpdate, compute_status, rfc3339
from tests.fixtures.observability import metric_values
from tests.fixtures.operator import job_with, make_object, pod_for

S = Settings(pending_deadline_seconds=300)
NOW = datetime(2026, 11, 25, 10, 30, 0, tzinfo=UTC)
AUTO = [{"method": "torchao-int8-weight"}, {"method": "quanto-int8"}]


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    m.serve(0, "127.0.0.1")
    yield m
    m.stop()


def _scrape(m: Metrics) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _job(obj: dict[str, Any]) -> dict[str, Any]:
    return builders.build_job(obj, parse_spec(obj["spec"]), S)


def _observe(obj: dict[str, Any], job: dict[str, Any] | None, pods: list[Any]) -> StatusUpdate:
    return compute_status(
        Observation(obj=obj, spec=parse_spec(obj["spec"]), job=job, pods=pods), S, NOW
    )


def _with_status(obj: dict[str, Any], update: StatusUpdate, **extra: Any) -> dict[str, Any]:
    status = {k: v for k, v in update.status.items() if v is not None}
    return {**obj, "status": {**status, **extra}}


def _unschedulable(name: str) -> dict[str, Any]:
    obj = make_object(name)
    job = job_with(_job(obj), active=1)
    pod = pod_for(
        job,
        phase="Pending",
        waiting={"reason": "ContainerCreating"},
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes: Insufficient nvidia.com/gpu",
                "lastTransitionTime": rfc3339(NOW - timedelta(hours=1)),
            }
        ],
    )
    return _with_status(obj, _observe(obj, job, [pod]))


def _failed_and_done(name: str) -> dict[str, Any]:
    obj = make_object(name)
    job = job_with(
        _job(obj),
        failed=1,
        conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}],
    )
    pod = pod_for(job, phase="Failed", terminated={"exitCode": 3, "reason": "Error"})
    return _with_status(obj, _observe(obj, job, [pod]))


def _queued(name: str) -> dict[str, Any]:
    obj = make_object(name, queueName="team-q")
    job = job_with(_job(obj), start=None)
    return _with_status(obj, _observe(obj, job, []))


def _suspended(name: str) -> dict[str, Any]:
    obj = make_object(name, suspend=True)
    return _with_status(obj, _observe(obj, None, []))


def _running(name: str) -> dict[str, Any]:
    obj = make_object(name, method="auto", candidates=AUTO)
    job = job_with(_job(obj), active=1)
    progress = {"stage": "Quantizing", "percent": 45, "generation": 1, "candidate": "quanto-int8"}
    return _with_status(obj, _observe(obj, job, [pod_for(job)]), progress=progress)


def test_stalled_only_for_the_current_generation_not_done(metrics: Metrics) -> None:
    objects = {
        "stuck": _unschedulable("stuck"),
        "bad": _failed_and_done("bad"),
        "queued": _queued("queued"),
        "paused": _suspended("paused"),
        "running": _running("running"),
    }
    # The statuses are what the operator really computes for each case.
    stalled = {
        name: next(c for c in o["status"]["conditions"] if c["type"] == "Stalled")["status"]
        for name, o in objects.items()
    }
    assert stalled == {
        "stuck": "True",
        "bad": "True",  # Failed is Stalled too (kstatus): only a spec change helps
        "queued": "False",
        "paused": "False",
        "running": "False",
    }
    assert objects["bad"]["status"]["phase"] == "Failed"
    assert objects["queued"]["status"]["phase"] == "Pending"
    assert objects["paused"]["status"]["phase"] == "Pending"
    for obj in objects.values():
        metrics.index.update(obj)
    text = _scrape(metrics)

    series = [
        line for line in text.splitlines() if line.startswith("kubequant_optimization_stalled{")
    ]
    assert series == [
        'kubequant_optimization_stalled{name="stuck",namespace="team-a",reason="Unschedulable"} 1.0'
    ]
    # the old alert's selector (phase Pending or Failed) would have matched all but "running"
    pending_or_failed = {
        n
        for n in objects
        for p in ("Pending", "Failed")
        if metric_values(text, "kubequant_optimization_phase", name=n, phase=p) == [1.0]
    }
    assert pending_or_failed == {"stuck", "bad", "queued", "paused"}


def test_a_stall_of_an_older_generation_is_not_the_current_ones(metrics: Metrics) -> None:
    obj = _unschedulable("edited")
    obj["metadata"] = {**obj["metadata"], "generation": 2}  # the spec changed since
    metrics.index.update(obj)
    assert "kubequant_optimization_stalled{" not in _scrape(metrics)


def test_progress_of_runs_in_progress_only(metrics: Metrics) -> None:
    running = _running("running")
    metrics.index.update(running)
    text = _scrape(metrics)
    got = metric_values(
        text, "kubequant_optimization_progress_percent", name="running", stage="Quantizing"
    )
    assert got == [45.0]
    # a progress written for an older generation is not this run's
    stale = {**running, "metadata": {**running["metadata"], "generation": 2}}
    metrics.index.update(stale)
    assert "kubequant_optimization_progress_percent{" not in _scrape(metrics)
    # once the generation is done there is no progress series
    done = _failed_and_done("running")
    metrics.index.update(
        {**done, "status": {**done["status"], "progress": running["status"]["progress"]}}
    )
    assert "kubequant_optimization_progress_percent{" not in _scrape(metrics)


def test_results_and_outcomes_carry_the_winning_method(metrics: Metrics) -> None:
    obj = make_object("auto-run", method="auto", candidates=AUTO)
    result = {
        "generation": 1,
        "method": "quanto-int8",
        "originalSizeBytes": 86_700_000,
        "optimizedSizeBytes": 22_000_000,
        "compressionRatio": 3.94,
        "qualityGate": "Passed",
    }
    job = job_with(
        _job(obj),
        succeeded=1,
        completion="2026-11-25T10:20:00Z",
        conditions=[{"type": "Complete", "status": "True"}],
    )
    obj["status"] = {"result": result}
    update = _observe(obj, job, [pod_for(job, phase="Succeeded", terminated={"exitCode": 0})])
    assert update.phase == "Succeeded"
    labels = run_outcome(obj, update.status, None)
    assert labels == {"method": "quanto-int8", "result": "succeeded", "reason": "Succeeded"}
    metrics.outcomes.labels(**labels).inc()
    metrics.index.update(_with_status(obj, update, result=result))

    failed = _failed_and_done("gated")
    gated = run_outcome(make_object("gated"), failed["status"], None)
    assert gated == {
        "method": "torchao-int8-weight",
        "result": "failed",
        "reason": "QualityGateFailed",
    }
    metrics.outcomes.labels(**gated).inc()

    text = _scrape(metrics)
    assert metric_values(
        text, "kubequant_run_outcomes_total", method="quanto-int8", result="succeeded"
    ) == [1.0]
    assert metric_values(
        text,
        "kubequant_run_outcomes_total",
        method="torchao-int8-weight",
        reason="QualityGateFailed",
    ) == [1.0]
    ours = {"name": "auto-run", "method": "quanto-int8"}
    assert metric_values(text, "kubequant_optimization_optimized_size_bytes", **ours) == [22e6]
    assert metric_values(text, "kubequant_optimization_original_size_bytes", **ours) == [86.7e6]
    assert metric_values(text, "kubequant_optimization_compression_ratio", **ours) == [3.94]
    assert 'method="auto"' not in text
