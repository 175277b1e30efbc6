"""Entry points: ``kubequant-operator`` (``main``) and in-process ``run_operator``.

``run_operator(settings, stop_flag)`` runs the real kopf operator in the current event loop
(tests and the local demo use it); ``main()`` is the container's command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import threading
from importlib import metadata
from typing import Any

import kopf
import shtab

from kubequant_api.errors import KubequantError
from kubequant_api.logs import JsonFormatter, setup_logging
from kubequant_operator.handlers import build_registry, periodic_resync
from kubequant_operator.kube import Kube
from kubequant_operator.metrics import Metrics
from kubequant_operator.pushgateway import PushgatewayJanitor
from kubequant_operator.reconcile import Reconciler
from kubequant_operator.settings import Settings

log = logging.getLogger("kubequant.operator")
StopFlag = asyncio.Event | asyncio.Future[Any] | threading.Event


def free_port(address: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


class OperatorJsonFormatter(JsonFormatter):
    """JSON lines; kopf's per-object records get namespace/object/kind, minus its settings."""

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(vars(record))
        ref = fields.pop("k8s_ref", None)
        fields.pop("settings", None)
        fields.pop("k8s_skip", None)
        if isinstance(ref, dict):
            fields.setdefault("namespace", ref.get("namespace"))
            fields.setdefault("object", ref.get("name"))
            fields.setdefault("kind", ref.get("kind"))
        return super().format(logging.makeLogRecord(fields))


def configure_logging(settings: Settings) -> None:
    """JSON logs on stderr at the configured level; kopf's chatter only from WARNING."""
    setup_logging("operator", settings.log_level)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(OperatorJsonFormatter("operator"))
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("kopf").setLevel(logging.WARNING)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class OperatorRuntime:
    """One operator: its API client, metrics server, reconciler and kopf registry."""

    def __init__(self, settings: Settings, kube: Kube | None = None) -> None:
        self.settings = settings
        self.kube = kube or Kube(settings)
        self.metrics = Metrics()
        self.reconciler = Reconciler(settings, self.kube, self.metrics)
        self.registry = build_registry(settings, self.reconciler, self.metrics)
        bind = settings.bind_address
        self.health_port = settings.health_port or free_port(
            "127.0.0.1" if bind in ("0.0.0.0", "") else bind  # noqa: S104
        )
        self.metrics_port: int | None = None

    @property
    def liveness_endpoint(self) -> str:
        return f"http://{self.settings.bind_address}:{self.health_port}/healthz"

    async def run(
        self, stop_flag: StopFlag | None = None, ready_flag: StopFlag | None = None
    ) -> None:
        s = self.settings
        self.metrics_port = self.metrics.serve(s.metrics_port, s.bind_address)
        stop = asyncio.Event()
        resync = asyncio.create_task(periodic_resync(s, self.reconciler, self.metrics, stop))
        tasks = [resync]
        if s.engine_pushgateway_url:  # delete the engine's groups once they are not needed
            janitor = PushgatewayJanitor(s, self.kube, self.metrics)
            tasks.append(asyncio.create_task(janitor.run(stop)))
        log.info(
            "kubequant operator starting",
            extra={
                "namespaces": ",".join(s.namespaces) or "*",
                "metrics_port": self.metrics_port,
                "health_port": self.health_port,
            },
        )
        try:
            await kopf.operator(
                registry=self.registry,
                standalone=True,
                clusterwide=s.clusterwide,
                namespaces=list(s.namespaces),
                liveness_endpoint=self.liveness_endpoint,
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.metrics.stop()
            await self.kube.close()
            log.info("kubequant operator stopped")


async def run_operator(
    settings: Settings,
    stop_flag: StopFlag | None = None,
    ready_flag: StopFlag | None = None,
) -> None:
    """Run the operator in this event loop until ``stop_flag`` is set (or a signal).

    Give the operator a loop of its own (a thread with ``asyncio.run``, as the tests and the
    demo do): when kopf stops, it cancels every task of the loop it did not see at startup.
    """
    await OperatorRuntime(settings).run(stop_flag=stop_flag, ready_flag=ready_flag)


def _version() -> str:
    try:
        return metadata.version("kubequant")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kubequant-operator",
        description="The kubequant operator. Configured by KUBEQUANT_* environment variables "
        "and the YAML file named by KUBEQUANT_CONFIG_FILE.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    shtab.add_argument_to(parser, ["--print-completion"], help="print a shell completion script")
    parser.parse_args(argv)
    try:
        settings = Settings.load()
    except KubequantError as exc:
        setup_logging("operator")
        log.error("invalid configuration: %s", exc)
        return 2
    configure_logging(settings)
    asyncio.run(run_operator(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
