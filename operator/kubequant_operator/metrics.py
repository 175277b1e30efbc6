"""Prometheus metrics of the operator.

Per-object series are computed at scrape time by a custom collector from an in-memory index
of objects (filled from the watch stream), so an object's series vanish when the object is
deleted. Counters and the run-duration histogram live in the same registry: every metric
the operator exports is defined in this module. Nothing from a spec that could hold a secret
is exposed: only namespace, name, method, phase, stage and a condition reason.

Cardinality: the per-object series are labelled ``namespace`` and ``name``; an operator that
manages model optimization runs has tens to thousands of objects, each a long run, so one
series per object and gauge is acceptable. Per object there are 4 phase series, 1 ready, at
most 7 result values, and while a run is in progress 1 progress series; 1 stalled series
only while the current generation is Stalled. Labels with a bounded set of values (phase,
stage, method, reason) are never free text.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from kubequant_api.constants import Phase, Stage

PREFIX = "kubequant"
PHASES = tuple(str(p) for p in Phase)
STAGES = tuple(str(s) for s in Stage)
_VALUES = {
    "compression_ratio": ("compressionRatio", "Size of the original model / the optimized one."),
    "speedup": ("speedup", "Baseline latency / optimized latency."),
    "perplexity_increase_percent": (
        "perplexityIncreasePercent",
        "Perplexity increase of the optimized model (%).",
    ),
    "cosine_similarity": ("cosineSimilarity", "Mean embedding cosine vs the original."),
    "top1_agreement": ("top1Agreement", "Next-token argmax agreement vs the original."),
    "original_size_bytes": ("originalSizeBytes", "Size of the original model's weights."),
    "optimized_size_bytes": ("optimizedSizeBytes", "Size of the optimized artifact's weights."),
}


@dataclass(frozen=True)
class ObjectView:
    namespace: str
    name: str
    method: str  # the method of the current generation's result, else the spec's
    phase: str
    ready: bool
    values: tuple[tuple[str, float], ...]
    done: bool = False  # the current generation ended (Succeeded or Failed)
    stage: str | None = None  # the engine's stage, while the current generation runs
    percent: float | None = None
    stalled_reason: str | None = None  # Stalled=True for the current generation, not done


def _stalled_reason(status: Mapping[str, Any], generation: Any, done: bool) -> str | None:
    """The Stalled reason when the current generation is stalled and not done.

    A Failed generation is done (it never retries until its spec changes): the failure-rate
    alert tells of it, not the stalled one. Queued and suspended objects are not Stalled."""
    if done or status.get("observedGeneration") != generation:
        return None
    for c in status.get("conditions") or []:
        if (
            c.get("type") == "Stalled"
            and c.get("status") == "True"
            and c.get("observedGeneration", generation) == generation
        ):
            return str(c.get("reason") or "Unknown")
    return None


def view_of(obj: Mapping[str, Any]) -> ObjectView:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    result = status.get("result") or {}
    generation = meta.get("generation")
    values: list[tuple[str, float]] = []
    method = str(spec.get("method", ""))
    if isinstance(result, dict) and result.get("generation") == generation:
        for metric, (key, _) in _VALUES.items():
            value = result.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.append((metric, float(value)))
        method = str(result.get("method") or method)
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    done = (
        status.get("phase") in (Phase.SUCCEEDED, Phase.FAILED)
        and status.get("observedGeneration") == generation
    )
    progress = status.get("progress")
    stage: str | None = None
    percent: float | None = None
    if (
        not done
        and isinstance(progress, dict)
        and progress.get("generation") in (None, generation)
        and progress.get("stage") in STAGES
    ):
        stage = str(progress["stage"])
        raw = progress.get("percent")
        percent = float(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else 0.0
    return ObjectView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        method=method,
        phase=str(status.get("phase") or ""),
        ready=ready,
        values=tuple(values),
        done=done,
        stage=stage,
        percent=percent,
        stalled_reason=_stalled_reason(status, generation, done),
    )


def run_outcome(
    obj: Mapping[str, Any], status: Mapping[str, Any], harvested: Mapping[str, Any] | None
) -> dict[str, str]:
    """Labels of :attr:`Metrics.outcomes` for a run that just ended with ``status``.

    ``method``: the method of the run's result (the winner of ``auto``), else the spec's;
    ``reason``: the Ready condition's reason (Succeeded, DryRunSucceeded or the failure's)."""
    generation = (obj.get("metadata") or {}).get("generation")
    result = harvested or (obj.get("status") or {}).get("result") or {}
    method = ""
    if isinstance(result, Mapping) and result.get("generation") in (None, generation):
        method = str(result.get("method") or "")
    method = method or str((obj.get("spec") or {}).get("method") or "")
    reason = next(
        (str(c.get("reason")) for c in status.get("conditions") or [] if c.get("type") == "Ready"),
        "",
    )
    return {"method": method, "result": str(status.get("phase") or "").lower(), "reason": reason}


class ObjectIndex(Collector):
    """Objects by (namespace, name); a Collector that reports them at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[tuple[str, str], ObjectView] = {}

    def update(self, obj: Mapping[str, Any]) -> None:
        view = view_of(obj)
        with self._lock:
            self._objects[(view.namespace, view.name)] = view

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._objects.pop((namespace, name), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    def snapshot(self) -> list[ObjectView]:
        with self._lock:
            return list(self._objects.values())

    def collect(self) -> Iterator[Metric]:
        views = self.snapshot()
        phase = GaugeMetricFamily(
            f"{PREFIX}_optimization_phase",
            "1 for the phase the object is in, 0 for the others.",
            labels=["namespace", "name", "phase"],
        )
        ready = GaugeMetricFamily(
            f"{PREFIX}_optimization_ready",
            "1 when the object's Ready condition is True.",
            labels=["namespace", "name"],
        )
        per_value = {
            metric: GaugeMetricFamily(
                f"{PREFIX}_optimization_{metric}", help_text, labels=["namespace", "name", "method"]
            )
            for metric, (_, help_text) in _VALUES.items()
        }
        progress = GaugeMetricFamily(
            f"{PREFIX}_optimization_progress_percent",
            "Progress (0-100) of the current generation's run while it is not done, "
            "labelled with the engine's stage (status.progress).",
            labels=["namespace", "name", "stage"],
        )
        stalled = GaugeMetricFamily(
            f"{PREFIX}_optimization_stalled",
            "1 while the current generation is Stalled and not done (a Failed generation, "
            "a queued or a suspended object has no series), labelled with the reason.",
            labels=["namespace", "name", "reason"],
        )
        counts = dict.fromkeys(PHASES, 0)
        for v in views:
            if v.stage is not None and v.percent is not None:
                progress.add_metric([v.namespace, v.name, v.stage], v.percent)
            if v.stalled_reason is not None:
                stalled.add_metric([v.namespace, v.name, v.stalled_reason], 1.0)
            for p in PHASES:
                phase.add_metric([v.namespace, v.name, p], 1.0 if v.phase == p else 0.0)
            ready.add_metric([v.namespace, v.name], 1.0 if v.ready else 0.0)
            for metric, value in v.values:
                per_value[metric].add_metric([v.namespace, v.name, v.method], value)
            if v.phase in counts:
                counts[v.phase] += 1
        total = GaugeMetricFamily(
            f"{PREFIX}_optimizations", "Objects known to the operator by phase.", labels=["phase"]
        )
        for p, n in counts.items():
            total.add_metric([p], float(n))
        yield total
        yield phase
        yield ready
        yield progress
        yield stalled
        yield from per_value.values()


class Metrics:
    """The operator's registry: the object index plus counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.index = ObjectIndex()
        self.registry.register(self.index)
        self.runs = Counter(
            f"{PREFIX}_runs",
            "Runs (one per object generation) that ended, by result.",
            ["result"],
            registry=self.registry,
        )
        self.outcomes = Counter(
            f"{PREFIX}_run_outcomes",
            "Runs that ended, by the method that ran (the winner of auto), result and reason.",
            ["method", "result", "reason"],
            registry=self.registry,
        )
        self.pushgateway_deletes = Counter(
            f"{PREFIX}_pushgateway_group_deletes",
            "Engine groups the operator deleted from the Pushgateway, by why.",
            ["cause"],
            registry=self.registry,
        )
        self.pushgateway_errors = Counter(
            f"{PREFIX}_pushgateway_errors",
            "Requests to the Pushgateway that failed (listing or deleting groups).",
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors",
            "Reconciles that failed (they are retried).",
            registry=self.registry,
        )
        self.reconciles = Counter(f"{PREFIX}_reconciles", "Reconciles run.", registry=self.registry)
        self.run_duration = Histogram(
            f"{PREFIX}_run_duration_seconds",
            "Duration of ended runs, from the Job's start to its end.",
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400),
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Duration of one reconcile.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self._server: Any = None
        self.port: int | None = None

    def serve(self, port: int, address: str) -> int:
        """Serve /metrics on ``address:port`` (port 0: any free port); returns the port."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        self._server = server
        self.port = int(server.server_port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
