"""A Job controller for the local control plane.

For every batch/v1 Job it creates the Pod the real Job controller would create, has the
:class:`~.kubelet.Kubelet` run it and writes Job status like the real controller
(active/ready/succeeded/failed, startTime, completionTime, conditions
SuccessCriteriaMet/Complete, FailureTarget/Failed, Suspended). It honours ``suspend``,
``activeDeadlineSeconds``, ``backoffLimit``, ``podFailurePolicy`` and
``ttlSecondsAfterFinished``.

What a pod does comes from one of two modes, per Job:

* scripted: an :class:`~.outcomes.Outcome` from the :class:`~.outcomes.OutcomeTable` (exit
  code, termination message, reason such as OOMKilled, a pod stuck Pending/Unschedulable or
  waiting in ImagePullBackOff, a disruption);
* process: the container's command runs as a local process (:mod:`.processes`), with the
  pod's env; volumes map to local directories (PVCs to ``<state_dir>/pvc/<claim>``,
  emptyDirs to per-pod dirs), ``/dev/termination-log`` to a file whose content becomes the
  terminated state's message, and ``KUBECONFIG`` points at the emulator with a token naming
  the pod's ServiceAccount: the emulator authorizes its requests with the namespace's RBAC,
  like a real API server.

A pod the API server refuses (admission: a missing PriorityClass or ServiceAccount, an
exceeded ResourceQuota, PodSecurity) is recorded as a ``FailedCreate`` Warning Event on the
Job, worded and aggregated as the real event recorder does, and retried with an exponential
backoff (the real controller requeues the Job through its rate limiter). The controller also
keeps ResourceQuota status current, as kube-controller-manager's quota controller does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubequant_localkube import errors, podadmission, podenv
from kubequant_localkube.jobmodel import (
    cond,
    container_name,
    deadline_left,
    failure_action,
    finished,
    parse_ts,
    patch_job_status,
    pod_for,
    set_conditions,
    ts,
)
from kubequant_localkube.kubelet import Kubelet
from kubequant_localkube.objects import Obj
from kubequant_localkube.outcomes import (
    RUN_PROCESS,
    SUCCEED,
    Outcome,
    OutcomeSpec,
    OutcomeTable,
    PodResult,
)
from kubequant_localkube.store import Store, WatchEvent

if TYPE_CHECKING:
    from kubequant_localkube.emulator import LocalKubeEmulator

__all__ = [
    "RUN_PROCESS",
    "SUCCEED",
    "JobController",
    "Outcome",
    "OutcomeSpec",
    "OutcomeTable",
    "PodResult",
]

log = logging.getLogger(__name__)


class JobController:
    """Runs beside the emulator in its event loop and uses the store in-process."""

    # Retrying a refused pod create: the first wait, doubled after each refusal up to the cap
    # (the real controller's rate limiter: 1 s doubling to 60 s).
    create_backoff_initial: float = 0.5
    create_backoff_max: float = 10.0
    EVENT_COMPONENT = "job-controller"
    SIMILAR_MAX = 10  # client-go's EventAggregator: maxEvents, maxIntervalInSeconds
    SIMILAR_WINDOW = 600.0

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
        self.dirs = podenv.StateDirs(self.state_dir)
        self.run_pods = run_pods
        self.kubeconfig_path = kubeconfig_path
        self.backoff_seconds = backoff_seconds
        self.kubelet = Kubelet(
            store,
            dirs=self.dirs,
            env=self._pod_env,
            pod_logs=emulator.pod_logs if emulator is not None else None,
            pod_start_delay=pod_start_delay,
            process_cwd=process_cwd,
        )
        self.outcomes = OutcomeTable()
        self.extra_env: dict[str, str] = {}
        self.api_url: str | None = None
        # Process-mode pods talk to the API as their ServiceAccount (RBAC applies); False:
        # they get the admin kubeconfig.
        self.pod_identity = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._changed: dict[tuple[str, str], asyncio.Event] = {}
        self._queue: asyncio.Queue[WatchEvent] | None = None
        self._main: asyncio.Task[None] | None = None
        self._pod_tasks: set[asyncio.Task[PodResult]] = set()
        # The event correlator's caches: an identical event's key -> (Event name, count,
        # first), and per object/type/reason the distinct messages seen (with when, seconds).
        self._recorded: dict[tuple[str, ...], tuple[str, int, str]] = {}
        self._similar: dict[tuple[str, ...], tuple[float, set[str]]] = {}

    # ------------------------------------------------------------------ paths and settings
    def pvc_dir(self, claim: str) -> Path:
        return self.dirs.pvc(claim)

    def pod_dir(self, namespace: str, pod: str) -> Path:
        return self.dirs.pod(namespace, pod)

    @property
    def pod_start_delay(self) -> float:
        return self.kubelet.pod_start_delay

    @pod_start_delay.setter
    def pod_start_delay(self, seconds: float) -> None:
        self.kubelet.pod_start_delay = seconds

    @property
    def process_cwd(self) -> Path:
        return self.kubelet.processes.cwd

    @process_cwd.setter
    def process_cwd(self, path: Path) -> None:
        self.kubelet.processes.cwd = path

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
        if event.key not in {("batch", "jobs"), ("", "pods"), podadmission.QUOTAS_KEY}:
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
            if event.key in (("", "pods"), podadmission.QUOTAS_KEY):
                if event.key == ("", "pods"):
                    self.kubelet.on_pod_event(event.type, key)
                self._sync_quotas(key[0])
                continue
            if ev := self._changed.get(key):
                ev.set()
            if event.type in ("ADDED", "MODIFIED"):
                self._ensure_task(event.obj)

    def _ensure_task(self, job: Obj) -> None:
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"], meta["uid"])
        task = self._tasks.get(key)
        if task is None or (task.done() and not finished(job)):
            self._changed.setdefault((key[0], key[1]), asyncio.Event())
            self._tasks[key] = asyncio.create_task(self._job_main(*key))

    # ------------------------------------------------------------------ store helpers
    def _get_job(self, ns: str, name: str, uid: str) -> Obj | None:
        job = self.store.try_get(self.store.resource("batch", "v1", "jobs"), ns, name)
        if job is None or job["metadata"]["uid"] != uid:
            return None
        return job

    def _patch_job_status(self, job: Obj, status: Obj) -> Obj | None:
        return patch_job_status(self.store, job, status)

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
        refusals = 0  # pod creates refused in a row
        while True:
            job = self._get_job(ns, name, uid)
            if job is None:
                return
            if finished(job):
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
            left = deadline_left(job)
            if left is not None and left <= 0:
                self._fail(
                    job,
                    {"active": 0, "ready": 0},
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )
                continue
            outcome = self.outcomes.resolve(job, attempt)
            pod_name = self._create_pod(job)
            if pod_name is None:
                delay = min(self.create_backoff_initial * 2**refusals, self.create_backoff_max)
                refusals += 1
                await self._wait_change(ns, name, delay if left is None else min(delay, left))
                continue
            refusals = 0
            run = asyncio.create_task(self._run_pod(job, ns, pod_name, outcome))
            self._pod_tasks.add(run)
            run.add_done_callback(self._pod_tasks.discard)
            result = await self._supervise(job, run, pod_name=pod_name)
            job = self._get_job(ns, name, uid)
            if job is None or result is None:
                if job is not None:
                    continue  # suspended meanwhile
                return
            if finished(job):
                return
            status = job.get("status") or {}
            if result.exit_code == 0 and not result.disruption:
                self._complete(job)
                continue
            action, rule_index = failure_action(job, result)
            failed = int(status.get("failed", 0))
            if action != "Ignore":
                failed += 1
            patch: Obj = {"active": 0, "ready": 0, "failed": failed}
            if action == "FailJob":
                msg = (
                    f"Container {container_name(job)} for pod {ns}/{pod_name} failed "
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
            deadline = deadline_left(job)
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
            left = deadline_left(job)
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

    def _start_or_resume(self, job: Obj) -> Obj | None:
        status = job.get("status") or {}
        patch: Obj = {}
        if not status.get("startTime"):
            patch["startTime"] = ts()
        susp = [c for c in status.get("conditions") or [] if c["type"] == "Suspended"]
        if susp and susp[0]["status"] == "True":
            patch["conditions"] = set_conditions(
                status, cond("Suspended", "JobResumed", "Job resumed", "False")
            )
            patch["startTime"] = ts()
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
                    "conditions": set_conditions(
                        status, cond("Suspended", "JobSuspended", "Job suspended")
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
                "completionTime": ts(),
                "conditions": set_conditions(
                    status,
                    cond("SuccessCriteriaMet", "CompletionsReached", msg),
                    cond("Complete", "CompletionsReached", msg),
                ),
            },
        )

    def _fail(self, job: Obj, patch: Obj, reason: str, message: str) -> None:
        status = job.get("status") or {}
        patch = dict(patch)
        patch["conditions"] = set_conditions(
            status, cond("FailureTarget", reason, message), cond("Failed", reason, message)
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
            wait -= (datetime.now(UTC) - parse_ts(finished_at)).total_seconds()
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

    # ------------------------------------------------------------------ pods
    def _create_pod(self, job: Obj) -> str | None:
        """Create the Job's pod; None when the API server refuses it (a FailedCreate event
        on the Job records why; the caller retries)."""
        meta = job["metadata"]
        pod = pod_for(job)
        try:
            created = self.store.create(
                self.store.resource("", "v1", "pods"), meta["namespace"], pod
            )
        except errors.ApiError as exc:
            log.info(
                "pod create refused",
                extra={"component": "localkube", "job": meta["name"], "error": exc.message},
            )
            self.record_event(job, "Warning", "FailedCreate", f"Error creating: {exc.message}")
            return None
        name = str(created["metadata"]["name"])
        self._patch_job_status(job, {"active": 1, "ready": 0})
        return name

    # ------------------------------------------------------------------ events and quotas
    def record_event(self, job: Obj, etype: str, reason: str, message: str) -> None:
        """A core/v1 Event on ``job`` as client-go's event recorder writes it: named
        ``<job>.<hex nanoseconds>``; an identical event (same object, type, reason, message)
        is aggregated by bumping ``count`` and ``lastTimestamp`` on the same Event; from the
        10th distinct message of the same object/type/reason within 10 minutes, they are
        combined into one Event ``(combined from similar events): <latest message>``."""
        meta = job["metadata"]
        ns = meta["namespace"]
        ref = {
            "kind": "Job",
            "namespace": ns,
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": "batch/v1",
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        similar_key = (self.EVENT_COMPONENT, ns, meta["name"], meta["uid"], etype, reason)
        since, messages = self._similar.get(similar_key, (time.monotonic(), set()))
        if time.monotonic() - since > self.SIMILAR_WINDOW:
            since, messages = time.monotonic(), set()
        messages.add(message)
        self._similar[similar_key] = (since, messages)
        key: tuple[str, ...] = (*similar_key, message)
        if len(messages) >= self.SIMILAR_MAX:
            key = similar_key
            message = f"(combined from similar events): {message}"
        events = self.store.resource("", "v1", "events")
        now = ts()
        seen = self._recorded.get(key)
        if seen is not None:
            event_name, count, first = seen
            patch = {"count": count + 1, "lastTimestamp": now, "message": message}
            try:
                self.store.patch(events, ns, event_name, "strategic", patch)
            except errors.ApiError:
                pass  # deleted meanwhile: record it anew
            else:
                self._recorded[key] = (event_name, count + 1, first)
                return
        event_name = f"{meta['name']}.{time.time_ns():x}"
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name, "namespace": ns},
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "source": {"component": self.EVENT_COMPONENT},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": etype,
            "eventTime": None,
            "reportingComponent": self.EVENT_COMPONENT,
            "reportingInstance": "",
        }
        try:
            self.store.create(events, ns, body)
        except errors.ApiError:
            return  # e.g. the namespace is terminating: the real recorder drops it too
        self._recorded[key] = (event_name, 1, now)

    def _sync_quotas(self, namespace: str) -> None:
        with contextlib.suppress(errors.ApiError):
            podadmission.sync_quota_status(self.store, namespace)

    async def _run_pod(self, job: Obj, ns: str, pod: str, outcome: Outcome) -> PodResult:
        process = outcome.run_process or (self.run_pods and outcome is self.outcomes.default)
        return await self.kubelet.run(job, ns, pod, outcome, process=process)

    # ------------------------------------------------------------------ process mode
    def _env(
        self,
        ns: str,
        container: Obj,
        mounts: podenv.Mounts,
        term_path: str,
        term_file: Path,
        *,
        pod_dir: Path | None = None,
        service_account: str | None = None,
    ) -> dict[str, str]:
        """A process-mode pod's environment (the kubelet calls it through this attribute)."""
        return podenv.container_env(
            self.store,
            ns,
            container,
            mounts,
            term_path=term_path,
            term_file=term_file,
            extra_env=self.extra_env,
            pod_dir=pod_dir,
            service_account=service_account,
            pod_identity=self.pod_identity,
            api_url=self.api_url,
            kubeconfig_path=self.kubeconfig_path,
        )

    def _pod_env(self, *args: Any, **kwargs: Any) -> dict[str, str]:
        # _env is looked up on every call, so that it can be wrapped on a running controller.
        return self._env(*args, **kwargs)

    def cleanup_pod_dirs(self) -> None:
        self.dirs.cleanup_pods()
