"""MetricsReporter: Prometheus metrics of one engine run.

The metrics live in a private registry (never the process-global one), are served on
``/metrics`` while the run lasts (when a port is given), and at finish are pushed once to a
Pushgateway (when a URL is given), grouped by ``job=kubequant-engine, namespace, name``.

Labels on every metric are ``namespace``, ``name``, ``method`` and ``requested_method``:
``requested_method`` is the spec's method (``auto`` included); ``method`` is the method the
run's result describes (the winner of ``auto``, or the candidate closest to passing when the
quality gate failed) once a result names one, and the requested method until then. The
per-stage metrics add ``stage`` (one of seven values): cardinality stays bounded and no label
ever carries a URI, a path or a secret. Series are computed at scrape/push time from the
reporter's state, so once the winner is known every series carries it (none is left behind
under ``method="auto"``).

The Pushgateway group is ``job=kubequant-engine, namespace, name``: one group per object, a
new run replaces the previous one (a push is a PUT), and the operator deletes the group once
it has harvested the finished run (``kubequant_operator.pushgateway``).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import basic_auth_handler, default_handler, push_to_gateway
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from kubequant_api.constants import ExitCode, GateVerdict, Stage
from kubequant_api.models import Result
from optimizer_job.redact import redact, scrub, split_url_credentials
from optimizer_job.report.base import RunContext
from optimizer_job.settings import DEFAULT_PUSH_TIMEOUT_S, EngineSettings, load_settings

log = logging.getLogger("optimizer_job.report.metrics")

PREFIX = "kubequant_engine_"
PUSH_JOB = "kubequant-engine"
LABELS: tuple[str, ...] = ("namespace", "name", "method", "requested_method")

Handler = Callable[[str, str, float | None, list[tuple[str, str]], bytes], Callable[[], None]]


def default_bind_address(in_cluster: bool, settings: EngineSettings | None = None) -> str:
    """The configured address (``KUBEQUANT_ENGINE_METRICS_BIND``; ``settings`` default: loaded
    from the environment); else all interfaces in a pod, loopback locally."""
    configured = (load_settings() if settings is None else settings).metrics_bind
    if configured:
        return configured
    # In a pod Prometheus scrapes the pod IP; on a workstation nothing outside should.
    return "0.0.0.0" if in_cluster else "127.0.0.1"  # noqa: S104


@dataclass(frozen=True)
class GaugeSpec:
    """One engine gauge: its help text and the labels it adds to :data:`LABELS`."""

    doc: str
    extra: tuple[str, ...] = ()


GAUGES: dict[str, GaugeSpec] = {
    "stage_info": GaugeSpec("1 for the stage the run is in, 0 for the other stages.", ("stage",)),
    "progress_percent": GaugeSpec("Progress of the whole run (0-100)."),
    "stage_duration_seconds": GaugeSpec("Wall time spent in each stage so far.", ("stage",)),
    "run_duration_seconds": GaugeSpec("Wall time of the run so far."),
    "peak_rss_bytes": GaugeSpec(
        "Peak resident memory of the engine process (and its children) so far."
    ),
    "original_size_bytes": GaugeSpec("Size of the original model."),
    "optimized_size_bytes": GaugeSpec("Size of the written artifact."),
    "compression_ratio": GaugeSpec("Original size / artifact size."),
    "speedup": GaugeSpec("Baseline latency / optimized latency."),
    "baseline_latency_seconds": GaugeSpec("Latency of one evaluation batch, original model."),
    "optimized_latency_seconds": GaugeSpec("Latency of one evaluation batch, reloaded artifact."),
    "baseline_peak_memory_bytes": GaugeSpec("Peak memory measuring the original model."),
    "optimized_peak_memory_bytes": GaugeSpec("Peak memory measuring the reloaded artifact."),
    "perplexity_increase_percent": GaugeSpec(
        "Perplexity increase of the artifact vs the original."
    ),
    "cosine_similarity": GaugeSpec("Mean-pooled embedding cosine similarity vs the original."),
    "top1_agreement": GaugeSpec("Next-token argmax agreement with the original (0-1)."),
    "quality_gate_passed": GaugeSpec("1 when the quality gate passed, 0 when it failed."),
    "candidates_evaluated": GaugeSpec("Candidates tried (method auto)."),
    "exit_code": GaugeSpec("Exit code of the engine (set at finish)."),
    "finished": GaugeSpec("1 once the run has finished."),
}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process and its waited-for children (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024


class _RunCollector(Collector):
    """The reporter's values as gauges, labelled with the run's labels at collect time."""

    def __init__(self, reporter: MetricsReporter) -> None:
        self.reporter = reporter

    def collect(self) -> Iterator[Metric]:
        labels, values = self.reporter.snapshot()
        for name, spec in GAUGES.items():
            family = GaugeMetricFamily(PREFIX + name, spec.doc, labels=[*LABELS, *spec.extra])
            for extra, value in sorted(values.get(name, {}).items()):
                family.add_metric([*labels, *extra], value)
            yield family


class MetricsReporter:
    """Run metrics in a private registry: served over HTTP and/or pushed at finish."""

    def __init__(
        self,
        ctx: RunContext,
        *,
        port: int = 0,
        bind: str = "127.0.0.1",
        pushgateway_url: str | None = None,
        push_timeout: float = DEFAULT_PUSH_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        peak_rss: Callable[[], int] = peak_rss_bytes,
    ) -> None:
        self.ctx = ctx
        self.clock = clock
        self.peak_rss = peak_rss
        self.pushgateway_url = pushgateway_url or None
        self.push_timeout = push_timeout
        self.requested_method = ctx.method or ""
        self.method = self.requested_method  # the result's method once a result names one
        self._values: dict[str, dict[tuple[str, ...], float]] = {}
        self._lock = threading.Lock()
        self._started = clock()
        self._stage: str | None = None
        self._stage_started = self._started
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_RunCollector(self))
        self._set("finished", 0)

        if port:
            self._serve(port, bind)

    # ----------------------------------------------------------------- state

    @property
    def labels(self) -> tuple[str, str, str, str]:
        """The run's label values, in :data:`LABELS` order."""
        return (self.ctx.namespace or "", self.ctx.name, self.method, self.requested_method)

    def snapshot(self) -> tuple[tuple[str, ...], dict[str, dict[tuple[str, ...], float]]]:
        """The label values and a copy of every gauge's values (by its extra label values)."""
        with self._lock:
            return self.labels, {k: dict(v) for k, v in self._values.items()}

    def value(self, name: str, *extra: str) -> float | None:
        """One gauge's current value (None when unset)."""
        with self._lock:
            return self._values.get(name, {}).get(extra)

    def _set(self, name: str, value: float, *extra: str) -> None:
        """Set a gauge (the caller holds the lock, or owns the reporter alone)."""
        spec = GAUGES[name]
        if len(extra) != len(spec.extra):
            raise ValueError(f"{name} takes labels {spec.extra}, got {extra}")
        self._values.setdefault(name, {})[extra] = float(value)

    def _add(self, name: str, value: float, *extra: str) -> None:
        self._set(name, (self._values.get(name, {}).get(extra) or 0.0) + value, *extra)

    # ----------------------------------------------------------------- serving

    def _serve(self, port: int, bind: str) -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=bind, registry=self.registry)
        except OSError as exc:  # port taken, bad address: the run goes on without /metrics
            log.error(
                "cannot serve metrics on %s:%d: %s",
                bind,
                port,
                exc,
                extra=self.ctx.log_extra(),
            )
        else:
            log.info("serving metrics on %s:%d", bind, self.port, extra=self.ctx.log_extra())

    @property
    def port(self) -> int | None:
        """The port /metrics is served on, or None."""
        return int(self._server.server_port) if self._server is not None else None

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ----------------------------------------------------------------- Reporter

    def _close_stage(self, now: float) -> None:
        if self._stage is not None:
            self._add("stage_duration_seconds", now - self._stage_started, self._stage)

    def _times(self, now: float) -> None:
        self._set("run_duration_seconds", now - self._started)
        self._set("peak_rss_bytes", self.peak_rss())

    def stage(self, stage: Stage, percent: int, candidate: str | None = None) -> None:
        now = self.clock()
        name = Stage(stage).value
        with self._lock:
            if name != self._stage:
                self._close_stage(now)
                self._stage, self._stage_started = name, now
                for s in Stage:
                    self._set("stage_info", 1 if s.value == name else 0, s.value)
            self._set("progress_percent", max(0, min(100, percent)))
            self._times(now)

    def result(self, result: Result) -> None:
        pairs: list[tuple[str, float | int | None]] = [
            ("original_size_bytes", result.original_size_bytes),
            ("optimized_size_bytes", result.optimized_size_bytes),
            ("compression_ratio", result.compression_ratio),
            ("speedup", result.speedup),
            ("perplexity_increase_percent", result.perplexity_increase_percent),
            ("cosine_similarity", result.cosine_similarity),
            ("top1_agreement", result.top1_agreement),
            ("candidates_evaluated", len(result.candidates) if result.candidates else None),
        ]
        for measurements, which in ((result.baseline, "baseline"), (result.optimized, "optimized")):
            if measurements is None:
                continue
            if measurements.latency_ms is not None:
                pairs.append((f"{which}_latency_seconds", measurements.latency_ms / 1000.0))
            pairs.append((f"{which}_peak_memory_bytes", measurements.peak_memory_bytes))
        if result.quality_gate in (GateVerdict.PASSED, GateVerdict.FAILED):
            pairs.append(("quality_gate_passed", int(result.quality_gate == GateVerdict.PASSED)))
        with self._lock:
            if result.method:
                self.method = result.method
            for name, value in pairs:
                if value is not None:
                    self._set(name, value)

    def finish(self, exit_code: ExitCode, summary: dict[str, Any]) -> None:
        now = self.clock()
        with self._lock:
            self._close_stage(now)
            self._stage = None
            self._times(now)
            self._set("exit_code", int(exit_code))
            self._set("finished", 1)
        if self.pushgateway_url:
            self.push()

    def push(self) -> bool:
        """Push the registry to the Pushgateway; False (and a log line) when it fails."""
        if not self.pushgateway_url:
            return False
        try:
            url, user, password = split_url_credentials(self.pushgateway_url)
        except ValueError as exc:  # e.g. a non-numeric port
            log.warning(
                "pushgateway URL %s is invalid: %s",
                redact(self.pushgateway_url),
                exc,
                extra=self.ctx.log_extra(),
            )
            return False
        handler: Handler = default_handler
        if user is not None:

            def handler(
                url: str,
                method: str,
                timeout: float | None,
                headers: list[tuple[str, str]],
                data: bytes,
            ) -> Callable[[], None]:
                return basic_auth_handler(url, method, timeout, headers, data, user, password)

        grouping = {"namespace": self.ctx.namespace or "", "name": self.ctx.name}
        try:
            push_to_gateway(
                url,
                job=PUSH_JOB,
                registry=self.registry,
                grouping_key=grouping,
                timeout=self.push_timeout,
                handler=handler,
            )
        except (OSError, ValueError) as exc:  # URLError/HTTPError are OSErrors
            log.warning(
                "pushing metrics to %s failed: %s",
                redact(self.pushgateway_url),
                scrub(str(exc)),
                extra=self.ctx.log_extra(),
            )
            return False
        log.info("pushed metrics to %s", redact(self.pushgateway_url), extra=self.ctx.log_extra())
        return True
