"""MetricsReporter: Prometheus metrics of one engine run.

The metrics live in a private registry (never the process-global one), are served on
``/metrics`` while the run lasts (when a port is given), and at finish are pushed once to a
Pushgateway (when a URL is given), grouped by ``job=kubequant-engine, namespace, name``.

Labels are ``namespace``, ``name`` and ``method`` (the method the spec asks for, ``auto``
included) on every metric, plus ``stage`` (one of seven values) on the per-stage metrics:
cardinality stays bounded and no label ever carries a URI, a path or a secret.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.exposition import basic_auth_handler, default_handler, push_to_gateway

from kubequant_api.constants import ExitCode, GateVerdict, Stage
from kubequant_api.models import Result
from optimizer_job.redact import redact, scrub, split_url_credentials
from optimizer_job.report.base import RunContext
from optimizer_job.settings import DEFAULT_PUSH_TIMEOUT_S, EngineSettings, load_settings

log = logging.getLogger("optimizer_job.report.metrics")

PREFIX = "kubequant_engine_"
PUSH_JOB = "kubequant-engine"
LABELS: tuple[str, ...] = ("namespace", "name", "method")

Handler = Callable[[str, str, float | None, list[tuple[str, str]], bytes], Callable[[], None]]


def default_bind_address(in_cluster: bool, settings: EngineSettings | None = None) -> str:
    """The configured address (``KUBEQUANT_ENGINE_METRICS_BIND``; ``settings`` default: loaded
    from the environment); else all interfaces in a pod, loopback locally."""
    configured = (load_settings() if settings is None else settings).metrics_bind
    if configured:
        return configured
    # In a pod Prometheus scrapes the pod IP; on a workstation nothing outside should.
    return "0.0.0.0" if in_cluster else "127.0.0.1"  # noqa: S104


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
    ) -> None:
        self.ctx = ctx
        self.clock = clock
        self.pushgateway_url = pushgateway_url or None
        self.push_timeout = push_timeout
        self.registry = CollectorRegistry(auto_describe=True)
        self._label_values = (ctx.namespace or "", ctx.name, ctx.method or "")
        self._lock = threading.Lock()
        self._started = clock()
        self._stage: str | None = None
        self._stage_started = self._started
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

        def gauge(name: str, doc: str, extra: Sequence[str] = ()) -> Gauge:
            return Gauge(PREFIX + name, doc, [*LABELS, *extra], registry=self.registry)

        self.stage_info = gauge(
            "stage_info", "1 for the stage the run is in, 0 for the other stages.", ["stage"]
        )
        self.progress = gauge("progress_percent", "Progress of the whole run (0-100).")
        self.stage_duration = gauge(
            "stage_duration_seconds", "Wall time spent in each stage so far.", ["stage"]
        )
        self.run_duration = gauge("run_duration_seconds", "Wall time of the run so far.")
        self.original_size = gauge("original_size_bytes", "Size of the original model.")
        self.optimized_size = gauge("optimized_size_bytes", "Size of the written artifact.")
        self.compression_ratio = gauge("compression_ratio", "Original size / artifact size.")
        self.speedup = gauge("speedup", "Baseline latency / optimized latency.")
        self.baseline_latency = gauge(
            "baseline_latency_seconds", "Latency of one evaluation batch, original model."
        )
        self.optimized_latency = gauge(
            "optimized_latency_seconds", "Latency of one evaluation batch, reloaded artifact."
        )
        self.ppl_increase = gauge(
            "perplexity_increase_percent", "Perplexity increase of the artifact vs the original."
        )
        self.cosine = gauge(
            "cosine_similarity", "Mean-pooled embedding cosine similarity vs the original."
        )
        self.top1 = gauge("top1_agreement", "Next-token argmax agreement with the original (0-1).")
        self.gate_passed = gauge(
            "quality_gate_passed", "1 when the quality gate passed, 0 when it failed."
        )
        self.candidates = gauge("candidates_evaluated", "Candidates tried (method auto).")
        self.exit_code = gauge("exit_code", "Exit code of the engine (set at finish).")
        self.finished = gauge("finished", "1 once the run has finished.")
        self.finished.labels(*self._label_values).set(0)

        if port:
            self._serve(port, bind)

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

    def _lv(self, *extra: str) -> Any:
        return self._label_values + extra

    def _close_stage(self, now: float) -> None:
        if self._stage is not None:
            self.stage_duration.labels(*self._lv(self._stage)).inc(now - self._stage_started)

    def stage(self, stage: Stage, percent: int, candidate: str | None = None) -> None:
        now = self.clock()
        name = Stage(stage).value
        with self._lock:
            if name != self._stage:
                self._close_stage(now)
                self._stage, self._stage_started = name, now
                for s in Stage:
                    self.stage_info.labels(*self._lv(s.value)).set(1 if s.value == name else 0)
            self.progress.labels(*self._lv()).set(max(0, min(100, percent)))
            self.run_duration.labels(*self._lv()).set(now - self._started)

    def result(self, result: Result) -> None:
        pairs: list[tuple[Gauge, float | int | None]] = [
            (self.original_size, result.original_size_bytes),
            (self.optimized_size, result.optimized_size_bytes),
            (self.compression_ratio, result.compression_ratio),
            (self.speedup, result.speedup),
            (self.ppl_increase, result.perplexity_increase_percent),
            (self.cosine, result.cosine_similarity),
            (self.top1, result.top1_agreement),
            (self.candidates, len(result.candidates) if result.candidates else None),
        ]
        for measurements, g in (
            (result.baseline, self.baseline_latency),
            (result.optimized, self.optimized_latency),
        ):
            if measurements is not None and measurements.latency_ms is not None:
                pairs.append((g, measurements.latency_ms / 1000.0))
        if result.quality_gate in (GateVerdict.PASSED, GateVerdict.FAILED):
            pairs.append((self.gate_passed, 1 if result.quality_gate == GateVerdict.PASSED else 0))
        with self._lock:
            for g, value in pairs:
                if value is not None:
                    g.labels(*self._lv()).set(value)

    def finish(self, exit_code: ExitCode, summary: dict[str, Any]) -> None:
        now = self.clock()
        with self._lock:
            self._close_stage(now)
            self._stage = None
            self.run_duration.labels(*self._lv()).set(now - self._started)
            self.exit_code.labels(*self._lv()).set(int(exit_code))
            self.finished.labels(*self._lv()).set(1)
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

        grouping = {"namespace": self._label_values[0], "name": self._label_values[1]}
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
