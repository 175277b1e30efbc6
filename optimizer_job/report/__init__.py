"""Progress, metrics and status reporting for the engine.

``build_reporter`` composes, in this order: structured logs, Prometheus metrics (served
and/or pushed), the termination message, and (in a cluster) the object's status. Status
goes last so that a StaleRunError it raises reaches the pipeline after every other
reporter has seen the event.
"""

from __future__ import annotations

import logging
from pathlib import Path

from optimizer_job.report.base import CompositeReporter, Reporter, RunContext, StaleRunError
from optimizer_job.report.kube import KubeApiError, KubeStatusReporter, in_cluster, load_object
from optimizer_job.report.logs import LogReporter
from optimizer_job.report.metrics import MetricsReporter, default_bind_address
from optimizer_job.report.termination import TerminationMessageReporter, compact_summary
from optimizer_job.settings import EngineSettings, load_settings

log = logging.getLogger("optimizer_job.report")


def build_reporter(
    ctx: RunContext,
    *,
    metrics_port: int,
    pushgateway_url: str | None,
    termination_log: Path | None,
    kube: bool,
    metrics_bind: str | None = None,
    settings: EngineSettings | None = None,
) -> CompositeReporter:
    """The engine's reporter for one run.

    ``metrics_port`` 0 serves no /metrics; ``metrics_bind`` defaults to the settings'
    (``KUBEQUANT_ENGINE_METRICS_BIND``), else 0.0.0.0 in a cluster and 127.0.0.1 locally.
    ``pushgateway_url`` (may carry ``user:password@``) gets the final metrics at finish.
    ``termination_log`` gets the compact summary at finish. ``kube`` writes
    status.progress/status.result of the object ``ctx`` names (needs namespace and uid).
    ``settings`` (default: loaded from the environment) gives the push timeout and the
    progress interval. Call ``close()`` on the result when done (stops the metrics server).
    """
    s = load_settings() if settings is None else settings
    reporters: list[Reporter] = [
        LogReporter(ctx),
        MetricsReporter(
            ctx,
            port=metrics_port,
            bind=metrics_bind or default_bind_address(kube or in_cluster(), s),
            pushgateway_url=pushgateway_url,
            push_timeout=s.pushgateway_timeout_seconds,
        ),
    ]
    if termination_log is not None:
        reporters.append(TerminationMessageReporter(Path(termination_log), ctx))
    if kube:
        reporters.append(KubeStatusReporter(ctx, min_interval=s.status_progress_interval_seconds))
    return CompositeReporter(reporters)


__all__ = [
    "CompositeReporter",
    "KubeApiError",
    "KubeStatusReporter",
    "LogReporter",
    "MetricsReporter",
    "Reporter",
    "RunContext",
    "StaleRunError",
    "TerminationMessageReporter",
    "build_reporter",
    "compact_summary",
    "load_object",
]
