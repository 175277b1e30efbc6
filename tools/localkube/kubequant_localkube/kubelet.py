"""The kubelet of the local control plane: runs a Job's pod and writes the pod's status.

A pod either follows a scripted :class:`~.outcomes.Outcome` (exit code, termination message,
a reason such as OOMKilled, stuck Pending/Unschedulable or waiting in ImagePullBackOff, a
disruption) or runs its container as a local process (:mod:`.processes`). Either way the
pod goes Pending -> Running -> Succeeded/Failed with the container statuses a real kubelet
writes, and a pod deleted meanwhile is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from kubequant_localkube.jobmodel import patch_job_status, patch_pod_status, ts
from kubequant_localkube.objects import Obj
from kubequant_localkube.outcomes import TERMINATION_MESSAGE_LIMIT, Outcome, PodResult, log_tail
from kubequant_localkube.podenv import StateDirs, config_error
from kubequant_localkube.processes import EnvBuilder, ProcessRunner
from kubequant_localkube.store import Store

log = logging.getLogger(__name__)

PodKey = tuple[str, str]  # (namespace, pod name)


class Kubelet:
    """Runs pods beside the emulator in its event loop; uses the store in-process."""

    def __init__(
        self,
        store: Store,
        *,
        dirs: StateDirs,
        env: EnvBuilder,
        pod_logs: dict[PodKey, str] | None = None,
        pod_start_delay: float = 0.05,
        process_cwd: Path | None = None,
        config_retry_seconds: float = 0.2,
    ) -> None:
        self.store = store
        self.pod_logs = pod_logs  # the emulator's, served at .../pods/<name>/log
        self.pod_start_delay = pod_start_delay
        # how often a container waiting in CreateContainerConfigError is retried
        self.config_retry_seconds = config_retry_seconds
        self.processes = ProcessRunner(self, dirs=dirs, env=env, cwd=process_cwd or Path.cwd())
        self._deleted_pods: set[PodKey] = set()
        self._pod_events: dict[PodKey, asyncio.Event] = {}

    # ------------------------------------------------------------------ pod deletion
    def on_pod_event(self, etype: str, key: PodKey) -> None:
        """A watch event of a pod (from the Job controller's dispatcher)."""
        if etype == "DELETED":
            self._deleted_pods.add(key)
        if ev := self._pod_events.get(key):
            ev.set()

    def pod_gone(self, ns: str, pod: str) -> bool:
        return (ns, pod) in self._deleted_pods

    async def wait_pod_deleted(self, ns: str, pod: str, timeout: float | None) -> bool:
        """Whether the pod was deleted within ``timeout`` seconds (None: wait for it)."""
        ev = self._pod_events.get((ns, pod))
        end = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while not self.pod_gone(ns, pod):
            left = None if end is None else end - asyncio.get_running_loop().time()
            if left is not None and left <= 0:
                return False
            if ev is None:
                await asyncio.sleep(min(left or 0.1, 0.1))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), left)
            ev.clear()
        return True

    # ------------------------------------------------------------------ running a pod
    async def run(
        self, job: Obj, ns: str, pod: str, outcome: Outcome, *, process: bool
    ) -> PodResult:
        """Run the pod to its end: as a local process, or as ``outcome`` scripts it."""
        key = (ns, pod)
        self._pod_events[key] = asyncio.Event()
        try:
            if process:
                return await self.processes.run(job, ns, pod)
            return await self.run_scripted(job, ns, pod, outcome)
        finally:
            self._pod_events.pop(key, None)

    async def run_scripted(self, job: Obj, ns: str, pod: str, outcome: Outcome) -> PodResult:
        await asyncio.sleep(self.pod_start_delay)
        if outcome.pending:
            self.set_status(
                ns,
                pod,
                {
                    "phase": "Pending",
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": outcome.pending,
                            "message": outcome.waiting_message
                            or "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
                            "lastTransitionTime": ts(),
                        }
                    ],
                },
            )
            await self.wait_pod_deleted(ns, pod, None)
            return PodResult(137, "Error", "", killed=True)
        if outcome.waiting:
            self.set_waiting(
                job,
                ns,
                pod,
                outcome.waiting,
                outcome.waiting_message or outcome.waiting,
                scheduled=True,
            )
            await self.wait_pod_deleted(ns, pod, None)
            return PodResult(137, "Error", "", killed=True)
        if not await self.wait_config(job, ns, pod):
            return PodResult(137, "Error", "", killed=True)
        started = ts()
        self.set_running(job, ns, pod, started)
        if await self.wait_pod_deleted(ns, pod, outcome.duration):
            return PodResult(137, "Error", "", killed=True)
        if self.pod_logs is not None and outcome.logs:
            self.pod_logs[(ns, pod)] = outcome.logs
        reason = outcome.reason or ("Completed" if outcome.exit_code == 0 else "Error")
        message = outcome.message
        if not message and outcome.exit_code != 0 and outcome.logs:
            message = log_tail(outcome.logs)
        result = PodResult(
            outcome.exit_code, reason, message[:TERMINATION_MESSAGE_LIMIT], outcome.disruption
        )
        self.set_terminated(job, ns, pod, started, result)
        return result

    async def wait_config(self, job: Obj, ns: str, pod: str) -> bool:
        """Until the containers' Secrets/ConfigMaps (and keys) exist: waiting with reason
        CreateContainerConfigError and the kubelet's message, retried every
        ``config_retry_seconds``. False when the pod was deleted meanwhile."""
        told: str | None = None
        while True:
            if self.pod_gone(ns, pod):
                return False
            current = self.store.try_get(self.store.resource("", "v1", "pods"), ns, pod)
            if current is None:
                return False
            containers = list((current.get("spec") or {}).get("containers") or [])
            problem = config_error(self.store, ns, containers)
            if problem is None:
                return True
            if problem != told:
                log.info(
                    "pod waiting: CreateContainerConfigError",
                    extra={"component": "localkube", "namespace": ns, "pod": pod},
                )
                self.set_waiting(
                    job, ns, pod, "CreateContainerConfigError", problem, scheduled=True
                )
                told = problem
            if await self.wait_pod_deleted(ns, pod, self.config_retry_seconds):
                return False

    # ------------------------------------------------------------------ pod status
    def set_status(self, ns: str, pod: str, status: Obj) -> None:
        patch_pod_status(self.store, ns, pod, status)

    def container_statuses(self, job: Obj, state: Obj, ready: bool) -> list[Obj]:
        containers = ((job.get("spec") or {}).get("template", {}).get("spec") or {}).get(
            "containers"
        ) or []
        return [
            {
                "name": c.get("name", "main"),
                "image": c.get("image", ""),
                "imageID": "",
                "containerID": f"localkube://{c.get('name', 'main')}",
                "ready": ready,
                "started": "running" in state,
                "restartCount": 0,
                "state": state,
            }
            for c in containers
        ] or [{"name": "main", "ready": ready, "restartCount": 0, "state": state, "image": ""}]

    def set_waiting(
        self, job: Obj, ns: str, pod: str, reason: str, message: str, *, scheduled: bool
    ) -> None:
        """The pod stays Pending with its container waiting (``reason``)."""
        status: Obj = {"phase": "Pending"}
        if scheduled:
            status["conditions"] = [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": ts()}
            ]
        waiting = {"waiting": {"reason": reason, "message": message}}
        status["containerStatuses"] = self.container_statuses(job, waiting, False)
        self.set_status(ns, pod, status)

    def set_running(self, job: Obj, ns: str, pod: str, started: str) -> None:
        log.info(
            "pod running",
            extra={
                "component": "localkube",
                "namespace": ns,
                "pod": pod,
                "job": job["metadata"]["name"],
            },
        )
        self.set_status(
            ns,
            pod,
            {
                "phase": "Running",
                "startTime": started,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": started},
                    {"type": "Ready", "status": "True", "lastTransitionTime": started},
                ],
                "containerStatuses": self.container_statuses(
                    job, {"running": {"startedAt": started}}, True
                ),
            },
        )
        current = self.store.try_get(
            self.store.resource("batch", "v1", "jobs"), ns, job["metadata"]["name"]
        )
        if current is not None and current["metadata"]["uid"] == job["metadata"]["uid"]:
            patch_job_status(self.store, current, {"active": 1, "ready": 1})

    def set_terminated(self, job: Obj, ns: str, pod: str, started: str, result: PodResult) -> None:
        log.info(
            "pod terminated",
            extra={
                "component": "localkube",
                "namespace": ns,
                "pod": pod,
                "job": job["metadata"]["name"],
                "exit_code": result.exit_code,
                "reason": result.reason,
            },
        )
        finished = ts()
        term = {
            "exitCode": result.exit_code,
            "reason": result.reason,
            "startedAt": started,
            "finishedAt": finished,
            "containerID": "localkube://main",
        }
        if result.message:
            term["message"] = result.message
        status: Obj = {
            "phase": "Succeeded" if result.exit_code == 0 and not result.disruption else "Failed",
            "containerStatuses": self.container_statuses(job, {"terminated": term}, False),
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "PodCompleted",
                    "lastTransitionTime": finished,
                },
            ],
        }
        if result.disruption:
            status["conditions"].append(
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "EvictionByEvictionAPI",
                    "message": "Eviction API: evicting",
                    "lastTransitionTime": finished,
                }
            )
        self.set_status(ns, pod, status)

    def publish_log(self, ns: str, pod: str, text: str) -> None:
        if self.pod_logs is not None:
            self.pod_logs[(ns, pod)] = text
