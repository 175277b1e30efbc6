"""Process mode: a pod's container runs as a local process.

The container's command runs with the pod's environment (:mod:`.podenv`), its volumes mapped
to local directories, ``/dev/termination-log`` mapped to a file whose content becomes the
terminated state's message, its output published as the pod's log. Deleting the pod kills
the process (SIGTERM to its process group, then SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kubequant_localkube import errors, podenv
from kubequant_localkube.jobmodel import ts
from kubequant_localkube.objects import Obj
from kubequant_localkube.outcomes import TERMINATION_MESSAGE_LIMIT, PodResult, log_tail

if TYPE_CHECKING:
    from kubequant_localkube.kubelet import Kubelet

# (namespace, container, mounts, termination path, termination file, *, pod_dir,
# service_account) -> the process's environment; see podenv.container_env.
EnvBuilder = Callable[..., dict[str, str]]


class ProcessRunner:
    """Runs one pod's first container as a local process for the kubelet."""

    def __init__(self, kubelet: Kubelet, *, dirs: podenv.StateDirs, env: EnvBuilder, cwd: Path):
        self.kubelet = kubelet
        self.dirs = dirs
        self.env = env
        self.cwd = cwd

    async def run(self, job: Obj, ns: str, pod: str) -> PodResult:
        kubelet, store = self.kubelet, self.kubelet.store
        pod_obj = store.get(store.resource("", "v1", "pods"), ns, pod)
        spec = pod_obj.get("spec") or {}
        containers = spec.get("containers") or []
        if not containers:
            result = PodResult(1, "Error", "the pod has no container")
            kubelet.set_terminated(job, ns, pod, ts(), result)
            return result
        container = containers[0]
        if not await kubelet.wait_config(job, ns, pod):
            return PodResult(137, "Error", "", killed=True)
        pdir = self.dirs.pod(ns, pod)
        mounts = podenv.mounts(store, self.dirs, ns, spec, container, pdir=pdir)
        term_path = container.get("terminationMessagePath") or "/dev/termination-log"
        term_file = pdir / "termination-log"
        term_file.write_text("")
        try:
            env = self.env(
                ns,
                container,
                mounts,
                term_path,
                term_file,
                pod_dir=pdir,
                service_account=spec.get("serviceAccountName"),
            )
        except errors.ApiError as exc:  # the Secret went between the check and here
            kubelet.set_waiting(
                job, ns, pod, "CreateContainerConfigError", exc.message, scheduled=True
            )
            await kubelet.wait_pod_deleted(ns, pod, None)
            return PodResult(137, "Error", "", killed=True)
        argv = [
            podenv.rewrite(str(a), mounts)
            for a in (container.get("command") or []) + (container.get("args") or [])
        ]
        if not argv:
            result = PodResult(1, "Error", "process mode needs the container's command")
            kubelet.set_terminated(job, ns, pod, ts(), result)
            return result
        if argv[0] in ("python", "python3") or argv[0].startswith("python3."):
            argv[0] = sys.executable
        cwd = (
            podenv.rewrite(container["workingDir"], mounts)
            if container.get("workingDir")
            else str(self.cwd)
        )
        Path(cwd).mkdir(parents=True, exist_ok=True)
        log_path = pdir / "container.log"
        await asyncio.sleep(kubelet.pod_start_delay)
        if kubelet.pod_gone(ns, pod):
            return PodResult(137, "Error", "", killed=True)
        started = ts()
        with log_path.open("wb") as log_file:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    cwd=cwd,
                    env=env,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as exc:
                result = PodResult(128, "StartError", f"failed to start {argv[0]}: {exc}")
                kubelet.set_terminated(job, ns, pod, started, result)
                return result
            kubelet.set_running(job, ns, pod, started)
            try:
                code, killed = await self._watch(proc, ns, pod, log_path)
            except asyncio.CancelledError:  # the controller stops: the pod's process goes too
                await self._kill(proc, grace=0.5)
                raise
        self._publish_log(ns, pod, log_path)
        if code < 0:
            code = 128 - code
        message = term_file.read_text(errors="replace")[:TERMINATION_MESSAGE_LIMIT]
        policy = container.get("terminationMessagePolicy", "File")
        if not message.strip() and code != 0 and policy == "FallbackToLogsOnError":
            message = log_tail(log_path.read_text(errors="replace"))
        reason = (
            "Completed" if code == 0 else ("OOMKilled" if code == 137 and not killed else "Error")
        )
        result = PodResult(code, reason, message, killed=killed)
        if not killed:
            kubelet.set_terminated(job, ns, pod, started, result)
        return result

    async def _watch(
        self, proc: asyncio.subprocess.Process, ns: str, pod: str, log_path: Path
    ) -> tuple[int, bool]:
        """Wait for the process; kill it when its pod is deleted. Returns (exit code, killed)."""
        killed = False
        waiter = asyncio.create_task(proc.wait())
        while not waiter.done():
            gone = asyncio.create_task(self.kubelet.wait_pod_deleted(ns, pod, 1.0))
            try:
                await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                gone.cancel()
                waiter.cancel()
                raise
            self._publish_log(ns, pod, log_path)
            if gone.done() and gone.result() and not waiter.done():
                killed = True
                await self._kill(proc)
            if not gone.done():
                gone.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await gone
        return await waiter, killed

    async def _kill(self, proc: asyncio.subprocess.Process, grace: float = 2.0) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    def _publish_log(self, ns: str, pod: str, path: Path) -> None:
        if self.kubelet.pod_logs is not None and path.exists():
            self.kubelet.publish_log(ns, pod, path.read_text(errors="replace"))
