"""A Job controller (and kubelet) for the local control plane.

For every batch/v1 Job it creates the Pod the real Job controller would create, drives the
Pod through Pending -> Running -> Succeeded/Failed and writes Job status like the real
controller (active/ready/succeeded/failed, startTime, completionTime, conditions
SuccessCriteriaMet/Complete, FailureTarget/Failed, Suspended). It honours ``suspend``,
``activeDeadlineSeconds``, ``backoffLimit``, ``podFailurePolicy`` and
``ttlSecondsAfterFinished``.

What a pod does comes from one of two modes, per Job:

* scripted: an :class:`Outcome` from the :class:`OutcomeTable` (exit code, termination
  message, reason such as OOMKilled, a pod stuck Pending/Unschedulable or waiting in
  ImagePullBackOff, a disruption);
* process: the container's command runs as a local process, with the pod's env; volumes map
  to local directories (PVCs to ``<state_dir>/pvc/<claim>``, emptyDirs to per-pod dirs),
  ``/dev/termination-log`` to a file whose content becomes the terminated state's message,
  and ``KUBECONFIG`` points at the emulator with a token naming the pod's ServiceAccount:
  the emulator authorizes its requests with the namespace's RBAC, like a real API server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import fnmatch
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubequant_localkube import errors, rbac
from kubequant_localkube.store import Obj, Store, WatchEvent, now_rfc3339

if TYPE_CHECKING:
    from kubequant_localkube.emulator import LocalKubeEmulator

log = logging.getLogger(__name__)

TERMINATION_MESSAGE_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one pod of a Job does in scripted mode.

    ``pending`` (e.g. "Unschedulable") keeps the pod Pending with that PodScheduled reason;
    ``waiting`` (e.g. "ImagePullBackOff", "CreateContainerConfigError") keeps its container
    waiting. Both stay until the pod is deleted (or the Job's deadline passes).
    ``disruption`` fails the pod with a DisruptionTarget condition (podFailurePolicy Ignore).
    ``run_process`` runs the container as a local process instead (process mode).
    """

    exit_code: int = 0
    message: str = ""
    reason: str | None = None
    duration: float = 0.05
    pending: str | None = None
    waiting: str | None = None
    waiting_message: str = ""
    disruption: bool = False
    logs: str = ""
    run_process: bool = False


SUCCEED = Outcome()
RUN_PROCESS = Outcome(run_process=True)

OutcomeSpec = Outcome | list[Outcome] | Callable[[Obj, int], Outcome]


class OutcomeTable(MutableMapping[str, OutcomeSpec]):
    """Scripted outcomes by Job name (``fnmatch`` patterns, also ``namespace/name``).

    A value is an Outcome, a list of Outcomes (one per attempt; the last repeats), or a
    callable ``(job, attempt) -> Outcome``. ``default`` applies when nothing matches.
    """

    def __init__(self, default: Outcome = SUCCEED) -> None:
        self._items: dict[str, OutcomeSpec] = {}
        self.default: OutcomeSpec = default
        self.resolver: Callable[[Obj, int], Outcome | None] | None = None

    def __getitem__(self, key: str) -> OutcomeSpec:
        return self._items[key]

    def __setitem__(self, key: str, value: OutcomeSpec) -> None:
        self._items[key] = value

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def resolve(self, job: Obj, attempt: int) -> Outcome:
        if self.resolver is not None:
            found = self.resolver(job, attempt)
            if found is not None:
                return found
        meta = job.get("metadata", {})
        name, ns = meta.get("name", ""), meta.get("namespace", "")
        spec: OutcomeSpec = self.default
        for pattern, value in self._items.items():
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(f"{ns}/{name}", pattern):
                spec = value
                break
        if callable(spec) and not isinstance(spec, Outcome):
            return spec(job, attempt)
        if isinstance(spec, list):
            return spec[min(attempt, len(spec) - 1)] if spec else SUCCEED
        return spec


@dataclasses.dataclass
class PodResult:
    exit_code: int
    reason: str
    message: str
    disruption: bool = False
    killed: bool = False


def _ts() -> str:
    return now_rfc3339()


def _parse_ts(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _cond(ctype: str, reason: str, message: str, status: str = "True") -> Obj:
    now = _ts()
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def _set_conditions(status: Obj, *conds: Obj) -> list[Obj]:
    out = [c for c in status.get("conditions") or [] if c["type"] not in {x["type"] for x in conds}]
    return out + list(conds)


class JobController:
    """Runs beside the emulator in its event loop and uses the store in-process."""

    def __init__(
        self,
        store: Store,
        *,
        emulator: LocalKubeEmulator | None = None,
        state_dir: Path,
        run_pods: bool = False,
        kubeconfig_path: Path | None = None,
        pod_start_delay: float = 0.05,
        backoff_seconds: float = 0.2,
        process_cwd: Path | None = None,
    ) -> None:
        self.store = store
        self.emulator = emulator
        self.state_dir = Path(state_dir)
        self.run_pods = run_pods
        self.kubeconfig_path = kubeconfig_path
        self.pod_start_delay = pod_start_delay
        self.backoff_seconds = backoff_seconds
        self.process_cwd = process_cwd or Path.cwd()
        self.outcomes = OutcomeTable()
        self.extra_env: dict[str, str] = {}
        self.api_url: str | None = None
        # Process-mode pods talk to the API as their ServiceAccount (RBAC applies); False:
        # they get the admin kubeconfig.
        self.pod_identity = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._changed: dict[tuple[str, str], asyncio.Event] = {}
        self._deleted_pods: set[tuple[str, str]] = set()
        self._pod_events: dict[tuple[str, str], asyncio.Event] = {}
        self._queue: asyncio.Queue[WatchEvent] | None = None
        self._main: asyncio.Task[None] | None = None
        self._pod_tasks: set[asyncio.Task[PodResult]] = set()

    # ------------------------------------------------------------------ paths
    def pvc_dir(self, claim: str) -> Path:
        path = self.state_dir / "pvc" / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def pod_dir(self, namespace: str, pod: str) -> Path:
        path = self.state_dir / "pods" / namespace / pod
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self.store.add_listener(self._on_event)
        self._main = asyncio.create_task(self._dispatch())
        jobs = self.store.resource("batch", "v1", "jobs")
        for job in self.store.list_objects(jobs)[0]:
            self._ensure_task(job)

    async def stop(self) -> None:
        self.store.remove_listener(self._on_event)
        tasks: list[asyncio.Task[Any]] = [t for t in self._tasks.values() if not t.done()]
        tasks += [t for t in self._pod_tasks if not t.done()]
        if self._main is not None:
            tasks.append(self._main)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def _on_event(self, event: WatchEvent) -> None:
        # Called under the store's lock from any thread: hand over to our loop.
        if event.key not in {("batch", "jobs"), ("", "pods")}:
            return
        loop, queue = self._loop, self._queue
        if loop is None or queue is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, event)

    async def _dispatch(self) -> None:
        assert self._queue is not None
        while True:
            event = await self._queue.get()
            meta = event.obj.get("metadata", {})
            key = (meta.get("namespace", ""), meta["name"])
            if event.key == ("", "pods"):
                if event.type == "DELETED":
                    self._deleted_pods.add(key)
                if ev := self._pod_events.get(key):
                    ev.set()
                continue
            if ev := self._changed.get(key):
                ev.set()
            if event.type in ("ADDED", "MODIFIED"):
                self._ensure_task(event.obj)

    def _ensure_task(self, job: Obj) -> None:
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"], meta["uid"])
        task = self._tasks.get(key)
        if task is None or (task.done() and not _finished(job)):
            self._changed.setdefault((key[0], key[1]), asyncio.Event())
            self._tasks[key] = asyncio.create_task(self._job_main(*key))

    # ------------------------------------------------------------------ store helpers
    def _get_job(self, ns: str, name: str, uid: str) -> Obj | None:
        job = self.store.try_get(self.store.resource("batch", "v1", "jobs"), ns, name)
        if job is None or job["metadata"]["uid"] != uid:
            return None
        return job

    def _patch_job_status(self, job: Obj, status: Obj) -> Obj | None:
        res = self.store.resource("batch", "v1", "jobs")
        try:
            return self.store.patch(
                res,
                job["metadata"]["namespace"],
                job["metadata"]["name"],
                "merge",
                {"metadata": {"uid": job["metadata"]["uid"]}, "status": status},
                subresource="status",
            )
        except errors.ApiError:
            return None

    def _patch_pod_status(self, ns: str, name: str, status: Obj) -> None:
        res = self.store.resource("", "v1", "pods")
        with contextlib.suppress(errors.ApiError):
            self.store.patch(res, ns, name, "merge", {"status": status}, subresource="status")

    def _delete_pod(self, ns: str, name: str) -> None:
        with contextlib.suppress(errors.ApiError):
            self.store.delete(self.store.resource("", "v1", "pods"), ns, name)

    def _job_pods(self, job: Obj) -> list[Obj]:
        uid = job["metadata"]["uid"]
        pods, _ = self.store.list_objects(
            self.store.resource("", "v1", "pods"),
            job["metadata"]["namespace"],
            lambda p: any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or []),
        )
        return pods

    # ------------------------------------------------------------------ the Job's life
    async def _wait_change(self, ns: str, name: str, timeout: float | None) -> None:
        ev = self._changed.setdefault((ns, name), asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)
        ev.clear()

    async def _job_main(self, ns: str, name: str, uid: str) -> None:
        try:
            await self._job_loop(ns, name, uid)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "job controller failed",
                extra={"component": "localkube", "namespace": ns, "job": name},
            )

    async def _job_loop(self, ns: str, name: str, uid: str) -> None:
        attempt = 0
        while True:
            job = self._get_job(ns, name, uid)
            if job is None:
                return
            if _finished(job):
                await self._ttl(job)
                return
            spec = job.get("spec") or {}
            status = job.get("status") or {}
            if spec.get("suspend"):
                await self._suspend(job)
                await self._wait_change(ns, name, None)
                continue
            job = self._start_or_resume(job) or job
            status = job.get("status") or {}
            outcome = self.outcomes.resolve(job, attempt)
            pod_name = self._create_pod(job)
            if pod_name is None:
                await self._wait_change(ns, name, 1.0)
                continue
            run = asyncio.create_task(self._run_pod(job, ns, pod_name, outcome))
            self._pod_tasks.add(run)
            run.add_done_callback(self._pod_tasks.discard)
            result = await self._supervise(job, run, pod_name=pod_name)
            job = self._get_job(ns, name, uid)
            if job is None or result is None:
                if job is not None:
                    continue  # suspended meanwhile
                return
            if _finished(job):
                return
            status = job.get("status") or {}
            if result.exit_code == 0 and not result.disruption:
                self._complete(job)
                continue
            action, rule_index = self._failure_action(job, result)
            failed = int(status.get("failed", 0))
            if action != "Ignore":
                failed += 1
            patch: Obj = {"active": 0, "ready": 0, "failed": failed}
            if action == "FailJob":
                msg = (
                    f"Container {self._container_name(job)} for pod {ns}/{pod_name} failed "
                    f"with exit code {result.exit_code} matching FailJob rule at index {rule_index}"
                )
                self._fail(job, patch, "PodFailurePolicy", msg)
                continue
            backoff_limit = int(spec.get("backoffLimit", 6))
            if failed > backoff_limit:
                self._fail(
                    job,
                    patch,
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
                continue
            self._patch_job_status(job, patch)
            attempt += 1
            await asyncio.sleep(self.backoff_seconds)

    async def _supervise(
        self, job: Obj, run: asyncio.Task[PodResult], *, pod_name: str
    ) -> PodResult | None:
        """Wait for the pod; react to the Job being suspended/deleted and to its deadline."""
        meta = job["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        while True:
            deadline = self._deadline_left(job)
            waiter = asyncio.create_task(self._wait_change(ns, name, None))
            try:
                done, _ = await asyncio.wait(
                    {run, waiter}, timeout=deadline, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
            if run in done:
                return run.result()
            current = self._get_job(ns, name, uid)
            if current is None:
                # The Job is gone; its pods go with it (garbage collection) or are orphaned.
                return await run if not run.done() else run.result()
            job = current
            if (job.get("spec") or {}).get("suspend"):
                self._delete_pod(ns, pod_name)
                with contextlib.suppress(Exception):
                    await run
                return None
            left = self._deadline_left(job)
            if left is not None and left <= 0:
                self._delete_pod(ns, pod_name)
                with contextlib.suppress(Exception):
                    await run
                self._fail(
                    job,
                    {
                        "active": 0,
                        "ready": 0,
                        "failed": int((job.get("status") or {}).get("failed", 0)) + 1,
                    },
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )
                return None

    def _deadline_left(self, job: Obj) -> float | None:
        limit = (job.get("spec") or {}).get("activeDeadlineSeconds")
        start = (job.get("status") or {}).get("startTime")
        if limit is None or not start:
            return None
        elapsed = (datetime.now(UTC) - _parse_ts(start)).total_seconds()
        return max(float(limit) - elapsed, 0.0)

    def _start_or_resume(self, job: Obj) -> Obj | None:
        status = job.get("status") or {}
        patch: Obj = {}
        if not status.get("startTime"):
            patch["startTime"] = _ts()
        susp = [c for c in status.get("conditions") or [] if c["type"] == "Suspended"]
        if susp and susp[0]["status"] == "True":
            patch["conditions"] = _set_conditions(
                status, _cond("Suspended", "JobResumed", "Job resumed", "False")
            )
            patch["startTime"] = _ts()
        if patch:
            return self._patch_job_status(job, patch)
        return job

    async def _suspend(self, job: Obj) -> None:
        ns = job["metadata"]["namespace"]
        for pod in self._job_pods(job):
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Pending", "Running"):
                self._delete_pod(ns, pod["metadata"]["name"])
        status = job.get("status") or {}
        conds = {c["type"]: c for c in status.get("conditions") or []}
        if conds.get("Suspended", {}).get("status") != "True":
            self._patch_job_status(
                job,
                {
                    "active": 0,
                    "ready": 0,
                    "conditions": _set_conditions(
                        status, _cond("Suspended", "JobSuspended", "Job suspended")
                    ),
                },
            )

    def _complete(self, job: Obj) -> None:
        status = job.get("status") or {}
        msg = "Reached expected number of succeeded pods"
        self._patch_job_status(
            job,
            {
                "active": 0,
                "ready": 0,
                "succeeded": int(status.get("succeeded", 0)) + 1,
                "completionTime": _ts(),
                "conditions": _set_conditions(
                    status,
                    _cond("SuccessCriteriaMet", "CompletionsReached", msg),
                    _cond("Complete", "CompletionsReached", msg),
                ),
            },
        )

    def _fail(self, job: Obj, patch: Obj, reason: str, message: str) -> None:
        status = job.get("status") or {}
        patch = dict(patch)
        patch["conditions"] = _set_conditions(
            status, _cond("FailureTarget", reason, message), _cond("Failed", reason, message)
        )
        self._patch_job_status(job, patch)

    async def _ttl(self, job: Obj) -> None:
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        status = job.get("status") or {}
        finished_at = status.get("completionTime") or next(
            (
                c["lastTransitionTime"]
                for c in status.get("conditions") or []
                if c["type"] == "Failed"
            ),
            None,
        )
        wait = float(ttl)
        if finished_at:
            wait -= (datetime.now(UTC) - _parse_ts(finished_at)).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        with contextlib.suppress(errors.ApiError):
            self.store.delete(
                self.store.resource("batch", "v1", "jobs"),
                job["metadata"]["namespace"],
                job["metadata"]["name"],
                propagation="Background",
                preconditions={"uid": job["metadata"]["uid"]},
            )

    def _container_name(self, job: Obj) -> str:
        containers = ((job.get("spec") or {}).get("template", {}).get("spec") or {}).get(
            "containers"
        ) or []
        return str(containers[0].get("name", "")) if containers else ""

    def _failure_action(self, job: Obj, result: PodResult) -> tuple[str, int]:
        policy = (job.get("spec") or {}).get("podFailurePolicy") or {}
        for index, rule in enumerate(policy.get("rules") or []):
            action = rule.get("action", "Count")
            codes = rule.get("onExitCodes")
            if codes and not result.disruption:
                op = codes.get("operator", "In")
                values = {int(v) for v in codes.get("values") or []}
                hit = (
                    (result.exit_code in values) if op == "In" else (result.exit_code not in values)
                )
                if hit:
                    return action, index
            for pc in rule.get("onPodConditions") or []:
                if (
                    pc.get("type") == "DisruptionTarget"
                    and result.disruption
                    and pc.get("status", "True") == "True"
                ):
                    return action, index
        return "Count", -1

    # ------------------------------------------------------------------ pods
    def _create_pod(self, job: Obj) -> str | None:
        meta = job["metadata"]
        template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
        tmeta = template.get("metadata") or {}
        labels = dict(tmeta.get("labels") or {})
        labels.update(
            {
                "batch.kubernetes.io/controller-uid": meta["uid"],
                "batch.kubernetes.io/job-name": meta["name"],
                "controller-uid": meta["uid"],
                "job-name": meta["name"],
            }
        )
        pod_spec: Obj = dict(template.get("spec") or {})
        pod_spec.setdefault("restartPolicy", "Never")
        pod_spec.setdefault("serviceAccountName", "default")
        pod: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": f"{meta['name'][:57]}-",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
                "finalizers": [],
            },
            "spec": pod_spec,
        }
        sa = pod_spec.get("serviceAccountName") or "default"
        sas = self.store.resource("", "v1", "serviceaccounts")
        if sa != "default" and self.store.try_get(sas, meta["namespace"], sa) is None:
            # The ServiceAccount admission plugin refuses the pod; the controller retries.
            return None
        try:
            created = self.store.create(
                self.store.resource("", "v1", "pods"), meta["namespace"], pod
            )
        except errors.ApiError:
            return None
        name = str(created["metadata"]["name"])
        self._patch_job_status(job, {"active": 1, "ready": 0})
        return name

    async def _run_pod(self, job: Obj, ns: str, pod: str, outcome: Outcome) -> PodResult:
        key = (ns, pod)
        self._pod_events[key] = asyncio.Event()
        try:
            if outcome.run_process or (self.run_pods and outcome is self.outcomes.default):
                return await self._run_process(job, ns, pod)
            return await self._run_scripted(job, ns, pod, outcome)
        finally:
            self._pod_events.pop(key, None)

    def _pod_gone(self, ns: str, pod: str) -> bool:
        return (ns, pod) in self._deleted_pods

    async def _wait_pod_deleted(self, ns: str, pod: str, timeout: float | None) -> bool:
        ev = self._pod_events.get((ns, pod))
        end = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while not self._pod_gone(ns, pod):
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

    def _container_statuses(self, job: Obj, state: Obj, ready: bool) -> list[Obj]:
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

    def _set_running(self, job: Obj, ns: str, pod: str, started: str) -> None:
        log.info(
            "pod running",
            extra={
                "component": "localkube",
                "namespace": ns,
                "pod": pod,
                "job": job["metadata"]["name"],
            },
        )
        self._patch_pod_status(
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
                "containerStatuses": self._container_statuses(
                    job, {"running": {"startedAt": started}}, True
                ),
            },
        )
        current = self.store.try_get(
            self.store.resource("batch", "v1", "jobs"), ns, job["metadata"]["name"]
        )
        if current is not None and current["metadata"]["uid"] == job["metadata"]["uid"]:
            self._patch_job_status(current, {"active": 1, "ready": 1})

    def _set_terminated(self, job: Obj, ns: str, pod: str, started: str, result: PodResult) -> None:
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
        finished = _ts()
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
            "containerStatuses": self._container_statuses(job, {"terminated": term}, False),
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
        self._patch_pod_status(ns, pod, status)

    async def _run_scripted(self, job: Obj, ns: str, pod: str, outcome: Outcome) -> PodResult:
        await asyncio.sleep(self.pod_start_delay)
        if outcome.pending:
            self._patch_pod_status(
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
                            "lastTransitionTime": _ts(),
                        }
                    ],
                },
            )
            await self._wait_pod_deleted(ns, pod, None)
            return PodResult(137, "Error", "", killed=True)
        if outcome.waiting:
            self._patch_pod_status(
                ns,
                pod,
                {
                    "phase": "Pending",
                    "conditions": [
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": _ts()}
                    ],
                    "containerStatuses": self._container_statuses(
                        job,
                        {
                            "waiting": {
                                "reason": outcome.waiting,
                                "message": outcome.waiting_message or outcome.waiting,
                            }
                        },
                        False,
                    ),
                },
            )
            await self._wait_pod_deleted(ns, pod, None)
            return PodResult(137, "Error", "", killed=True)
        started = _ts()
        self._set_running(job, ns, pod, started)
        if await self._wait_pod_deleted(ns, pod, outcome.duration):
            return PodResult(137, "Error", "", killed=True)
        if self.emulator is not None and outcome.logs:
            self.emulator.pod_logs[(ns, pod)] = outcome.logs
        reason = outcome.reason or ("Completed" if outcome.exit_code == 0 else "Error")
        message = outcome.message
        if not message and outcome.exit_code != 0 and outcome.logs:
            message = _log_tail(outcome.logs)
        result = PodResult(
            outcome.exit_code, reason, message[:TERMINATION_MESSAGE_LIMIT], outcome.disruption
        )
        self._set_terminated(job, ns, pod, started, result)
        return result

    # ------------------------------------------------------------------ process mode
    async def _run_process(self, job: Obj, ns: str, pod: str) -> PodResult:
        pod_obj = self.store.get(self.store.resource("", "v1", "pods"), ns, pod)
        spec = pod_obj.get("spec") or {}
        containers = spec.get("containers") or []
        if not containers:
            result = PodResult(1, "Error", "the pod has no container")
            self._set_terminated(job, ns, pod, _ts(), result)
            return result
        container = containers[0]
        pdir = self.pod_dir(ns, pod)
        mounts = self._mounts(ns, pod, spec, container, pdir)
        term_path = container.get("terminationMessagePath") or "/dev/termination-log"
        term_file = pdir / "termination-log"
        term_file.write_text("")
        try:
            env = self._env(
                ns,
                container,
                mounts,
                term_path,
                term_file,
                pod_dir=pdir,
                service_account=spec.get("serviceAccountName"),
            )
        except errors.ApiError as exc:
            self._patch_pod_status(
                ns,
                pod,
                {
                    "phase": "Pending",
                    "containerStatuses": self._container_statuses(
                        job,
                        {
                            "waiting": {
                                "reason": "CreateContainerConfigError",
                                "message": exc.message,
                            }
                        },
                        False,
                    ),
                },
            )
            await self._wait_pod_deleted(ns, pod, None)
            return PodResult(137, "Error", "", killed=True)
        argv = [
            self._rewrite(str(a), mounts)
            for a in (container.get("command") or []) + (container.get("args") or [])
        ]
        if not argv:
            result = PodResult(1, "Error", "process mode needs the container's command")
            self._set_terminated(job, ns, pod, _ts(), result)
            return result
        if argv[0] in ("python", "python3") or argv[0].startswith("python3."):
            argv[0] = sys.executable
        cwd = (
            self._rewrite(container["workingDir"], mounts)
            if container.get("workingDir")
            else str(self.process_cwd)
        )
        Path(cwd).mkdir(parents=True, exist_ok=True)
        log_path = pdir / "container.log"
        await asyncio.sleep(self.pod_start_delay)
        if self._pod_gone(ns, pod):
            return PodResult(137, "Error", "", killed=True)
        started = _ts()
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
                self._set_terminated(job, ns, pod, started, result)
                return result
            self._set_running(job, ns, pod, started)
            try:
                code, killed = await self._watch_process(proc, ns, pod, log_path)
            except asyncio.CancelledError:  # the controller stops: the pod's process goes too
                await self._kill(proc, grace=0.5)
                raise
        self._publish_log(ns, pod, log_path)
        if code < 0:
            code = 128 - code
        message = term_file.read_text(errors="replace")[:TERMINATION_MESSAGE_LIMIT]
        policy = container.get("terminationMessagePolicy", "File")
        if not message.strip() and code != 0 and policy == "FallbackToLogsOnError":
            message = _log_tail(log_path.read_text(errors="replace"))
        reason = (
            "Completed" if code == 0 else ("OOMKilled" if code == 137 and not killed else "Error")
        )
        result = PodResult(code, reason, message, killed=killed)
        if not killed:
            self._set_terminated(job, ns, pod, started, result)
        return result

    async def _watch_process(
        self, proc: asyncio.subprocess.Process, ns: str, pod: str, log_path: Path
    ) -> tuple[int, bool]:
        """Wait for the process; kill it when its pod is deleted. Returns (exit code, killed)."""
        killed = False
        waiter = asyncio.create_task(proc.wait())
        while not waiter.done():
            gone = asyncio.create_task(self._wait_pod_deleted(ns, pod, 1.0))
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
        if self.emulator is not None and path.exists():
            self.emulator.pod_logs[(ns, pod)] = path.read_text(errors="replace")

    def _mounts(
        self, ns: str, pod: str, spec: Obj, container: Obj, pdir: Path
    ) -> list[tuple[str, str]]:
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        out: list[tuple[str, str]] = []
        for vm in container.get("volumeMounts") or []:
            vol = volumes.get(vm.get("name")) or {}
            if "persistentVolumeClaim" in vol:
                local = self.pvc_dir(vol["persistentVolumeClaim"]["claimName"])
            elif "hostPath" in vol:
                local = Path(vol["hostPath"]["path"])
            elif "configMap" in vol or "secret" in vol:
                local = pdir / "volumes" / str(vm.get("name"))
                self._materialize(ns, vol, local)
            else:  # emptyDir and everything else: a per-pod directory
                local = pdir / "volumes" / str(vm.get("name"))
            if vm.get("subPath"):
                local = local / vm["subPath"]
            local.mkdir(parents=True, exist_ok=True)
            out.append((str(vm["mountPath"]).rstrip("/") or "/", str(local)))
        out += _parent_mappings(out)
        out.sort(key=lambda m: len(m[0]), reverse=True)
        return out

    def _materialize(self, ns: str, vol: Obj, local: Path) -> None:
        local.mkdir(parents=True, exist_ok=True)
        if "configMap" in vol:
            cm = self.store.try_get(
                self.store.resource("", "v1", "configmaps"), ns, vol["configMap"]["name"]
            )
            for k, v in ((cm or {}).get("data") or {}).items():
                (local / k).write_text(v)
        else:
            sec = self.store.try_get(
                self.store.resource("", "v1", "secrets"), ns, vol["secret"]["secretName"]
            )
            for k, v in ((sec or {}).get("data") or {}).items():
                (local / k).write_bytes(base64.b64decode(v))

    @staticmethod
    def _rewrite(value: str, mounts: list[tuple[str, str]]) -> str:
        for mount, local in mounts:
            if value == mount or value.startswith(mount + "/"):
                return local + value[len(mount) :]
        return value

    def _env(
        self,
        ns: str,
        container: Obj,
        mounts: list[tuple[str, str]],
        term_path: str,
        term_file: Path,
        *,
        pod_dir: Path | None = None,
        service_account: str | None = None,
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env.update(self.extra_env)
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            data = self._source_data(ns, src.get("secretRef"), src.get("configMapRef"))
            for k, v in data.items():
                env[prefix + k] = v
        for item in container.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = str(item["value"])
            elif "valueFrom" in item:
                vf = item["valueFrom"]
                if "secretKeyRef" in vf or "configMapKeyRef" in vf:
                    ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                    data = self._source_data(
                        ns,
                        (
                            {"name": ref["name"], "optional": ref.get("optional")}
                            if "secretKeyRef" in vf
                            else None
                        ),
                        (
                            {"name": ref["name"], "optional": ref.get("optional")}
                            if "configMapKeyRef" in vf
                            else None
                        ),
                    )
                    if ref["key"] in data:
                        env[name] = data[ref["key"]]
                    elif not ref.get("optional"):
                        raise errors.ApiError(
                            404, f"couldn't find key {ref['key']} in {ref['name']}"
                        )
                elif "fieldRef" in vf:
                    env[name] = ""
        for k, v in list(env.items()):
            if k in {item["name"] for item in container.get("env") or []}:
                if v == term_path:
                    env[k] = str(term_file)
                else:
                    env[k] = self._rewrite(v, mounts)
        if self.pod_identity and self.api_url and pod_dir is not None:
            sa = service_account or "default"
            path = pod_dir / "kubeconfig"
            token = rbac.service_account_token(ns, sa)
            url = rbac.identity_url(self.api_url, ns, sa)
            path.write_text(rbac.kubeconfig_text(url, ns, token))
            env["KUBECONFIG"] = str(path)
        elif self.kubeconfig_path is not None:
            env["KUBECONFIG"] = str(self.kubeconfig_path)
        return env

    def _source_data(self, ns: str, secret_ref: Obj | None, cm_ref: Obj | None) -> dict[str, str]:
        if secret_ref:
            sec = self.store.try_get(
                self.store.resource("", "v1", "secrets"), ns, secret_ref["name"]
            )
            if sec is None:
                if secret_ref.get("optional"):
                    return {}
                raise errors.ApiError(404, f'secret "{secret_ref["name"]}" not found')
            out = {k: base64.b64decode(v).decode() for k, v in (sec.get("data") or {}).items()}
            out.update(sec.get("stringData") or {})
            return out
        if cm_ref:
            cm = self.store.try_get(self.store.resource("", "v1", "configmaps"), ns, cm_ref["name"])
            if cm is None:
                if cm_ref.get("optional"):
                    return {}
                raise errors.ApiError(404, f'configmap "{cm_ref["name"]}" not found')
            return dict(cm.get("data") or {})
        return {}

    def cleanup_pod_dirs(self) -> None:
        shutil.rmtree(self.state_dir / "pods", ignore_errors=True)


def _parent_mappings(mounts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Directories above mount points that map consistently, e.g. ``/mnt/kubequant/pvc`` ->
    ``<state>/pvc`` when ``/mnt/kubequant/pvc/<claim>`` -> ``<state>/pvc/<claim>`` for every
    mounted claim (the engine resolves ``pvc://claim/path`` against the mount root)."""
    found: dict[str, str | None] = {}
    for mount, local in mounts:
        parts = mount.strip("/").split("/")
        for depth in range(1, len(parts)):
            parent = "/" + "/".join(parts[:depth])
            suffix = mount[len(parent) :]
            guess = local[: -len(suffix)] if local.endswith(suffix) else None
            if parent in found and found[parent] != guess:
                guess = None
            found[parent] = guess
    taken = {m for m, _ in mounts}
    return [(p, lp) for p, lp in found.items() if lp and p not in taken]


def _finished(job: Obj) -> bool:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return True
    return False


def _log_tail(text: str) -> str:
    lines = text.splitlines()[-FALLBACK_LOG_LINES:]
    return "\n".join(lines)[-FALLBACK_LOG_BYTES:]
