"""LocalCluster: the emulated API server (and Job controller) on 127.0.0.1, in a thread.

The server runs its own event loop in a background thread, so synchronous code (the
kubernetes client, ``kubectl`` subprocesses) and asynchronous code (kopf in the test's loop)
can both talk to it over HTTP at the same time::

    with LocalCluster(kubeconfig_path=path) as cluster:
        subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), "get", "ns"])
        cluster.emulator.inject_failures("patch", "modeloptimizations", count=2)
        cluster.jobs.outcomes["my-job-*"] = Outcome(exit_code=3, message="gate failed")
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp.web

from kubequant_localkube.emulator import LocalKubeEmulator
from kubequant_localkube.errors import LocalKubeError
from kubequant_localkube.jobs import JobController, OutcomeTable
from kubequant_localkube.rbac import kubeconfig_text
from kubequant_localkube.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class LocalCluster:
    """The local control plane: API emulator + Job controller, served over real HTTP.

    ``port`` 0 picks a free port. ``kubeconfig_path`` (default ``<state_dir>/kubeconfig``) is
    written on start. ``run_pods`` makes the Job controller run pods as local processes
    (process mode); otherwise it follows ``outcomes`` (scripted mode; default: succeed).
    """

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        kubeconfig_path: str | os.PathLike[str] | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        run_pods: bool = False,
        job_controller: bool = True,
        pod_start_delay: float = 0.05,
        validate_builtins: bool = True,
        owner_references_permission_enforcement: bool = False,
    ) -> None:
        self.host = host or "127.0.0.1"
        self.requested_port = int(port or 0)
        self._own_state_dir: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._own_state_dir = tempfile.TemporaryDirectory(prefix="kubequant-localkube-")
            state_dir = self._own_state_dir.name
        self.state_dir = Path(state_dir)
        self.kubeconfig_path = Path(kubeconfig_path or self.state_dir / "kubeconfig")
        self.store = Store()
        self.store.validate_builtins = validate_builtins
        self.emulator = LocalKubeEmulator(
            store=self.store,
            owner_references_permission_enforcement=owner_references_permission_enforcement,
        )
        self.jobs = JobController(
            self.store,
            emulator=self.emulator,
            state_dir=self.state_dir,
            run_pods=run_pods,
            kubeconfig_path=self.kubeconfig_path,
            pod_start_delay=pod_start_delay,
        )
        self._job_controller = job_controller
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0

    # ------------------------------------------------------------------ properties
    @property
    def url(self) -> str:
        if not self.port:
            raise LocalKubeError("the local cluster is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def outcomes(self) -> OutcomeTable:
        """The Job controller's scripted outcomes (see :class:`~.jobs.OutcomeTable`)."""
        return self.jobs.outcomes

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise LocalKubeError("the local cluster is not started")
        return self._loop

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> Self:
        if self._thread is not None:
            raise LocalKubeError("the local cluster is already started")
        self._thread = threading.Thread(target=self._run, name="localkube", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise LocalKubeError(f"the local cluster did not start within {timeout} s")
        if self._error is not None:
            raise LocalKubeError(
                f"the local cluster failed to start: {self._error}"
            ) from self._error
        self.write_kubeconfig()
        log.info("local cluster serving", extra={"component": "localkube", "url": self.url})
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None or self._loop is None or self._stop is None:
            return
        stop = self._stop
        with contextlib.suppress(RuntimeError):  # the loop already closed
            self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout)
        self._thread = None
        if self._own_state_dir is not None:
            self._own_state_dir.cleanup()
            self._own_state_dir = None

    def write_kubeconfig(self, path: str | os.PathLike[str] | None = None) -> Path:
        target = Path(path) if path is not None else self.kubeconfig_path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(kubeconfig_text(self.url))
        tmp.replace(target)
        return target

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    def run_in_loop(
        self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float | None = 60.0
    ) -> T:
        """Run a coroutine in the cluster's own loop and wait for its result."""
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(fn(), self.loop)
        return fut.result(timeout)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start() when it happens while starting
            self._error = exc
            self._ready.set()
            log.exception("local cluster crashed", extra={"component": "localkube"})
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = aiohttp.web.Server(self.emulator, handler_cancellation=True, access_log=None)
        runner = aiohttp.web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, self.host, self.requested_port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else self.requested_port
        self.jobs.api_url = f"http://{self.host}:{self.port}"
        if self._job_controller:
            await self.jobs.start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            self.store.cut_watches()
            if self._job_controller:
                await self.jobs.stop()
            await asyncio.sleep(0.05)
            await runner.cleanup()
