"""Metrics: served over HTTP, valid for promtool, per-object series vanish on delete."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Iterator

import pytest

from kubequant_operator.metrics import Metrics
from tests.fixtures.operator import make_object


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    m.serve(0, "127.0.0.1")
    yield m
    m.stop()


def _scrape(m: Metrics) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{m.port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _done(name: str) -> dict[str, object]:
    return make_object(
        name=name,
        status={
            "phase": "Succeeded",
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True"}],
            "result": {
                "generation": 1,
                "compressionRatio": 3.5,
                "speedup": 1.2,
                "cosineSimilarity": 0.999,
            },
        },
    )


def test_per_object_series_and_promtool(metrics: Metrics) -> None:
    metrics.index.update(_done("a"))
    metrics.index.update(make_object(name="b", status={"phase": "Running"}))
    metrics.runs.labels(result="succeeded").inc()
    metrics.reconcile_errors.inc()
    metrics.run_duration.observe(42)
    text = _scrape(metrics)
    assert (
        'kubequant_optimization_compression_ratio{method="torchao-int8-weight",name="a",'
        'namespace="team-a"} 3.5' in text
    )
    assert 'kubequant_optimization_phase{name="a",namespace="team-a",phase="Succeeded"} 1.0' in text
    assert 'kubequant_optimization_phase{name="b",namespace="team-a",phase="Running"} 1.0' in text
    assert 'kubequant_optimization_ready{name="a",namespace="team-a"} 1.0' in text
    assert 'kubequant_optimizations{phase="Running"} 1.0' in text
    assert 'kubequant_runs_total{result="succeeded"} 1.0' in text
    assert "kubequant_reconcile_errors_total 1.0" in text
    assert "kubequant_run_duration_seconds_count 1.0" in text
    assert 'name="b",namespace="team-a"} 3.5' not in text  # no result, no value
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_series_vanish_when_object_is_deleted(metrics: Metrics) -> None:
    metrics.index.update(_done("gone"))
    assert 'name="gone"' in _scrape(metrics)
    metrics.index.forget("team-a", "gone")
    assert 'name="gone"' not in _scrape(metrics)


def test_result_of_older_generation_is_not_reported(metrics: Metrics) -> None:
    obj = _done("old")
    obj["metadata"]["generation"] = 2  # type: ignore[index]
    metrics.index.update(obj)
    assert "kubequant_optimization_compression_ratio{" not in _scrape(metrics)
