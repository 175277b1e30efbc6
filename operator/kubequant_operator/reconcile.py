"""The one reconcile every trigger runs: read, decide, act, write status.

``Reconciler.reconcile(namespace, name)`` is idempotent and level-based: it reads the object
and its children afresh, converges them on the object's current generation and writes the
operator-owned status with a merge patch of the status subresource. Concurrent triggers for
one object are serialized and coalesced (a trigger that arrives while a reconcile runs causes
exactly one more run).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from kubequant_api.constants import (
    OWNER_UID_LABEL,
    Phase,
    Reason,
)
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.models import ModelOptimizationSpec, Result, parse_spec
from kubequant_operator import builders
from kubequant_operator.checks import compatibility_problem, policy_problem
from kubequant_operator.children import (
    awaits_pods,
    controlled_pods,
    job_conflict,
    job_finished,
    job_started,
    parse_time,
    stranger,
)
from kubequant_operator.failures import FAILED_CREATE, REFUSAL_STATUSES, ChildRefusal
from kubequant_operator.harvest import (
    harvest_from_pods,
    read_results_file,
    result_for_generation,
    verify_output_digest,
)
from kubequant_operator.kube import Kube, KubeError, collection_path
from kubequant_operator.metrics import Metrics, run_outcome
from kubequant_operator.settings import Settings
from kubequant_operator.status import (
    Blocker,
    Observation,
    StatusUpdate,
    compute_status,
    decide_rerun,
    is_terminal_for_generation,
)

log = logging.getLogger("kubequant.operator")
STATUS_CONFLICT_RETRIES = 5
RBAC_API = "rbac.authorization.k8s.io/v1"
# The per-run identity, deleted in this order (the ServiceAccount last: while it exists, the
# next sweep finds the set again, so an interrupted sweep is finished later).
RUN_IDENTITY_KINDS = ((RBAC_API, "RoleBinding"), (RBAC_API, "Role"), ("v1", "ServiceAccount"))


class ReconcileError(KubequantError):
    """A reconcile could not finish (an API error); the trigger retries it."""


class ChildRefusedError(ReconcileError):
    """The API server refused a child's create (403, 422). The status already says so
    (Stalled with the reason and the server's message); the trigger retries with backoff."""

    def __init__(self, message: str, refusal: ChildRefusal) -> None:
        super().__init__(message)
        self.refusal = refusal


class ChildConflictError(ReconcileError):
    """A child with the per-run name exists and is not controlled by this object."""


@dataclass
class _KeyState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    requested: int = 0
    covered: int = 0
    users: int = 0


@dataclass(frozen=True)
class ReconcileOutcome:
    """What one reconcile did (for tests and logs)."""

    phase: str | None
    job_name: str | None
    created: bool = False
    patched: bool = False
    deleted_jobs: tuple[str, ...] = ()


def _conflict_blocker(conflict: str) -> Blocker:
    """Stalled ChildConflict (not terminal: once the stranger is gone the run goes on)."""
    return Blocker(
        Reason.CHILD_CONFLICT,
        f"{conflict}; it is not adopted and nothing is read from it (delete it, and the "
        "operator creates its own)",
        terminal=False,
    )


class Reconciler:
    def __init__(self, s: Settings, kube: Kube, metrics: Metrics) -> None:
        self.settings = s
        self.kube = kube
        self.metrics = metrics
        self._keys: dict[tuple[str, str], _KeyState] = {}

    # ------------------------------------------------------------------ serialization

    async def reconcile(self, namespace: str, name: str) -> ReconcileOutcome | None:
        """Reconcile one object; None when a concurrent run already covered this trigger."""
        key = (namespace, name)
        state = self._keys.setdefault(key, _KeyState())
        state.requested += 1
        ticket = state.requested
        state.users += 1
        try:
            async with state.lock:
                if state.covered >= ticket:
                    return None
                before = state.covered
                state.covered = state.requested
                started = time.perf_counter()
                self.metrics.reconciles.inc()
                try:
                    return await self._reconcile(namespace, name)
                except BaseException:
                    state.covered = before  # the triggers queued behind must run themselves
                    raise
                finally:
                    self.metrics.reconcile_duration.observe(time.perf_counter() - started)
        finally:
            state.users -= 1
            if state.users == 0:
                self._keys.pop(key, None)

    # ------------------------------------------------------------------ the work

    async def _reconcile(self, namespace: str, name: str) -> ReconcileOutcome | None:
        for _ in range(STATUS_CONFLICT_RETRIES):
            try:
                return await self._reconcile_once(namespace, name)
            except KubeError as exc:
                if exc.conflict:
                    continue  # the object changed under us: read it again
                if exc.not_found and await self._gone(namespace, name):
                    # Deleted while we worked (e.g. the status patch): nothing is left to do.
                    self.metrics.index.forget(namespace, name)
                    return None
                raise ReconcileError(f"{namespace}/{name}: {exc}") from exc
        raise ReconcileError(f"{namespace}/{name}: status kept conflicting; retrying later")

    async def _gone(self, namespace: str, name: str) -> bool:
        """True when the object no longer exists or is being deleted."""
        obj = await self.kube.get_object(namespace, name)
        return obj is None or bool((obj.get("metadata") or {}).get("deletionTimestamp"))

    async def _reconcile_once(self, namespace: str, name: str) -> ReconcileOutcome | None:
        obj = await self.kube.get_object(namespace, name)
        if obj is None:
            self.metrics.index.forget(namespace, name)
            return None
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return None  # children go by ownerReference garbage collection
        generation = int(meta.get("generation") or 1)
        uid = str(meta.get("uid"))
        extra = {"namespace": namespace, "object": name, "generation": generation}

        spec: ModelOptimizationSpec | None = None
        blocker: Blocker | None = None
        try:
            spec = parse_spec(obj.get("spec") or {})
            problem = compatibility_problem(spec)
            if problem is not None:
                raise problem
        except InvalidSpecError as exc:
            blocker = Blocker(Reason.INVALID_SPEC, str(exc), terminal=True)
            spec = None
        if spec is not None:
            extra["method"] = str(spec.method)

        # The annotation kubequant.io/rerun may ask for one more run of this generation.
        rerun = decide_rerun(obj, spec_valid=spec is not None)
        current_name = builders.job_name(namespace, name, uid, generation, rerun.run)
        job, deleted, live = await self._stop_stale_jobs(
            namespace, uid, generation, current_name, extra
        )
        if generation > 1:
            await self._delete_stale_identities(namespace, uid, generation, live, extra)
        conflict: str | None = None
        if job is not None:
            conflict = job_conflict(job, uid, (obj.get("status") or {}).get("job"))
            if conflict is not None:
                job = None  # a stranger's Job: never adopted, nothing read from it
        created = False
        refusal: ChildRefusal | None = None
        if spec is not None and spec.suspend:
            if job is not None and job_finished(job) is None:
                await self.kube.delete("batch/v1", "Job", namespace, current_name)
                deleted.append(current_name)
                log.info("suspended: stopped the Job", extra={**extra, "job": current_name})
            job = None
        elif spec is not None and job is None:
            if is_terminal_for_generation(obj) and not rerun.start:
                # This run already ended; its Job may be gone (TTL). Only a rerun runs again.
                self.metrics.index.update(obj)
                return ReconcileOutcome(phase=(obj.get("status") or {}).get("phase"), job_name=None)
            if conflict is not None:
                blocker = _conflict_blocker(conflict)
            if blocker is None:
                policy = policy_problem(spec, self.settings)
                if policy is not None:
                    blocker = Blocker(policy.reason, policy.message, terminal=False)
            if blocker is None:
                blocker = await self._missing_references(namespace, spec)
            if blocker is None:
                try:
                    job, refusal = await self._create_children(obj, spec, rerun.run)
                except ChildConflictError as exc:
                    blocker = _conflict_blocker(str(exc))
            if job is not None:
                created = True
                log.info("created the engine's Job", extra={**extra, "job": current_name})
                # told at once: a later failure of this reconcile must not lose the event
                await self._event(obj, "Normal", Reason.JOB_CREATED, f"created Job {current_name}")

        observation = await self._observe(
            namespace, obj, spec, job, blocker, refusal=refusal, fresh=created
        )
        observation = replace(observation, rerun=rerun)
        now = datetime.now(UTC)
        update = compute_status(observation, self.settings, now)
        patched = await self._write_status(namespace, name, obj, update, now=now, extra=extra)
        if refusal is not None:
            # The status says Stalled (and its event is posted); the trigger retries later.
            raise ChildRefusedError(
                f"{namespace}/{name}: the API server refused to create {refusal.kind} "
                f"{refusal.name} (HTTP {refusal.status}): {refusal.message}",
                refusal,
            )
        return ReconcileOutcome(
            phase=update.phase,
            job_name=current_name if job is not None else None,
            created=created,
            patched=patched,
            deleted_jobs=tuple(deleted),
        )

    async def _stop_stale_jobs(
        self, namespace: str, uid: str, generation: int, current_name: str, extra: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, list[str], set[str]]:
        """The current generation's Job (or None), after deleting the unfinished others.

        Also the names of every Job of the object that still exists (deleted ones included:
        their pods may still run as their ServiceAccount until the Job is gone)."""
        if generation > 1:
            # Jobs of older generations may still run: find them all by the owner's uid.
            jobs = await self.kube.list("batch/v1", "Job", namespace, {OWNER_UID_LABEL: uid})
            job = next((j for j in jobs if j["metadata"]["name"] == current_name), None)
        else:
            # Generation 1 has no older Jobs: one GET by the deterministic name (O(1)).
            job = await self.kube.get("batch/v1", "Job", namespace, current_name)
            jobs = [job] if job is not None else []
        deleted: list[str] = []
        for other in jobs:
            other_name = other["metadata"]["name"]
            if (
                other_name == current_name
                or job_finished(other) is not None
                or not builders.controlled_by(other, uid)
            ):
                continue  # the current one, a finished one, or a stranger's (never touched)
            # A Job of an older generation (or one our own suspend must stop).
            if await self.kube.delete("batch/v1", "Job", namespace, other_name):
                deleted.append(other_name)
                log.info(
                    "stopped the Job of an older generation", extra={**extra, "job": other_name}
                )
        return job, deleted, {str(j["metadata"]["name"]) for j in jobs}

    async def _delete_stale_identities(
        self, namespace: str, uid: str, generation: int, live_jobs: set[str], extra: dict[str, Any]
    ) -> None:
        """Delete the per-run ServiceAccount, Role and RoleBinding of older generations whose
        Job is gone (404 is done). The current generation's set is never touched."""
        accounts = await self.kube.list("v1", "ServiceAccount", namespace, {OWNER_UID_LABEL: uid})
        for account in accounts:
            child = str(account["metadata"]["name"])
            child_generation = builders.generation_of_child(account)
            if (
                child_generation is None
                or child_generation >= generation
                or child in live_jobs
                or not builders.controlled_by(account, uid)
            ):
                continue  # not an older run's identity made by kubequant for this object
            for api_version, kind in RUN_IDENTITY_KINDS:
                await self.kube.delete(api_version, kind, namespace, child)
            log.info(
                "deleted the identity of an older generation's run",
                extra={**extra, "job": child},
            )

    async def _observe(
        self,
        namespace: str,
        obj: Mapping[str, Any],
        spec: ModelOptimizationSpec | None,
        job: Mapping[str, Any] | None,
        blocker: Blocker | None,
        *,
        refusal: ChildRefusal | None = None,
        fresh: bool = False,
    ) -> Observation:
        """The Job's pods and, once it finished without status.result, the harvested result.

        While the Job has no live pod (and was not just created), also its FailedCreate
        events: the Job controller's only record of a pod the API server refused to create."""
        meta = obj.get("metadata") or {}
        generation = int(meta.get("generation") or 1)
        uid = str(meta.get("uid"))
        pods: list[dict[str, Any]] = []
        harvested: Result | None = None
        note = ""
        if job is not None and job_started(job):
            pods = await self.kube.list(
                "v1",
                "Pod",
                namespace,
                {OWNER_UID_LABEL: uid, "kubequant.io/generation": str(generation)},
            )
            # Only the pods this run's Job controls: a rerun's generation also labels the earlier
            # runs' pods, and labels prove nothing (anyone may set them).
            pods = [dict(p) for p in controlled_pods(pods, job)]
            if job_finished(job) is not None and result_for_generation(obj, generation) is None:
                harvested = harvest_from_pods(pods, generation)
                if harvested is None and spec is not None:
                    harvested, note = await asyncio.to_thread(
                        read_results_file, spec.output.uri, generation
                    )
                if harvested is not None and spec is not None:
                    doubt = await asyncio.to_thread(
                        verify_output_digest, harvested, spec.output.uri
                    )
                    if doubt is not None:
                        harvested, note = None, f"the result is not believed: {doubt}"
        events: list[dict[str, Any]] = []
        if job is not None and not fresh and awaits_pods(job, pods):
            events = await self._failed_create_events(namespace, job)
        return Observation(
            obj=obj,
            spec=spec,
            job=job,
            pods=pods,
            blocker=blocker,
            refusal=refusal,
            harvested=harvested,
            harvest_note=note,
            pod_create_events=events,
        )

    async def _failed_create_events(
        self, namespace: str, job: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """The Job's FailedCreate events (one LIST narrowed by a field selector on its uid).

        Events are not watched: the periodic resync re-reads them while the Job waits."""
        uid = (job.get("metadata") or {}).get("uid")
        if not uid:
            return []
        try:
            data = await self.kube.request(
                "GET",
                collection_path("v1", "Event", namespace),
                query=[("fieldSelector", f"involvedObject.uid={uid},reason={FAILED_CREATE}")],
            )
        except KubeError as exc:
            if exc.status != 403:
                raise
            # Without `list` on events (an older chart) the run still goes on; only the
            # cause of a refused pod goes unreported.
            log.warning(
                "cannot read the Job's FailedCreate events: %s",
                exc,
                extra={"namespace": namespace, "job": (job.get("metadata") or {}).get("name")},
            )
            return []
        return list(data.get("items") or [])

    async def _write_status(
        self,
        namespace: str,
        name: str,
        obj: Mapping[str, Any],
        update: StatusUpdate,
        *,
        now: datetime,
        extra: dict[str, Any],
    ) -> bool:
        """Merge-patch the status when it changed, then post the transitions' events."""
        meta = obj.get("metadata") or {}
        patched = False
        if update.patch is not None:
            new_obj = await self.kube.patch_status(
                namespace, name, update.patch, meta.get("resourceVersion")
            )
            patched = True
            self._count_run(obj, update, now)
            log.info(
                "status: %s (%s)",
                update.phase,
                update.status.get("message"),
                extra={**extra, "phase": update.phase},
            )
            if new_obj:
                self.metrics.index.update(new_obj)
        for ev in update.events:
            if ev.reason == Reason.JOB_CREATED:
                continue  # told by whoever created the Job, once per Job
            await self._event(obj, ev.type, ev.reason, ev.message)
        return patched

    async def _missing_references(
        self, namespace: str, spec: ModelOptimizationSpec
    ) -> Blocker | None:
        """PVCs the spec names must exist. Secrets are not checked (the operator holds no
        Secret permission): a missing one shows as the engine pod's CreateContainerConfigError,
        which :func:`.failures.pod_blocked` reports as CredentialsMissing."""
        for fld, claim in builders.referenced_claim_fields(spec):
            if not await self.kube.exists("v1", "PersistentVolumeClaim", namespace, claim):
                return Blocker(
                    Reason.INVALID_SPEC,
                    f"{fld}: PersistentVolumeClaim {claim!r} not found in namespace {namespace}",
                    terminal=False,
                )
        return None

    async def _create_children(
        self, obj: Mapping[str, Any], spec: ModelOptimizationSpec, run: int = 1
    ) -> tuple[dict[str, Any] | None, ChildRefusal | None]:
        """SA, Role, RoleBinding, then the Job; "already exists" is success.

        The Job, or the first child the API server refused (403, 422): those are reported in
        the status rather than raised, since only a change elsewhere (RBAC, admission, the
        spec) makes the same create succeed."""
        job: dict[str, Any] | None = None
        for manifest in builders.build_children(obj, spec, self.settings, run):
            meta = manifest["metadata"]
            try:
                made = await self.kube.create(manifest)
            except KubeError as exc:
                if exc.status in REFUSAL_STATUSES:
                    log.warning(
                        "the API server refused to create %s %s: %s",
                        manifest["kind"],
                        meta["name"],
                        exc.message,
                        extra={
                            "namespace": meta["namespace"],
                            "object": (obj.get("metadata") or {}).get("name"),
                        },
                    )
                    return None, ChildRefusal(
                        str(manifest["kind"]), str(meta["name"]), exc.status, exc.message
                    )
                if not exc.conflict:
                    raise
                made = (
                    await self.kube.get(
                        manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]
                    )
                    or {}
                )
                if not made:
                    raise  # a 409 for something that does not exist: retry later
                problem = stranger(made, str((obj.get("metadata") or {}).get("uid")))
                if problem is not None:
                    raise ChildConflictError(
                        f"{problem} has the per-run name but is not controlled by this object"
                    ) from exc
            if manifest["kind"] == "Job":
                job = made or manifest
        assert job is not None
        return job, None

    async def _event(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        try:
            await self.kube.post_event(obj, kind, reason, message)
        except KubeError as exc:
            meta = obj.get("metadata") or {}
            log.warning(
                "could not post an event: %s",
                exc,
                extra={"namespace": meta.get("namespace"), "object": meta.get("name")},
            )

    def _count_run(self, obj: Mapping[str, Any], update: StatusUpdate, now: datetime) -> None:
        old_phase = (obj.get("status") or {}).get("phase")
        old_gen = (obj.get("status") or {}).get("observedGeneration")
        new_phase = update.phase
        if new_phase not in (Phase.SUCCEEDED, Phase.FAILED):
            return
        if old_phase == new_phase and old_gen == update.status.get("observedGeneration"):
            return
        self.metrics.runs.labels(result=str(new_phase).lower()).inc()
        harvested = (update.patch or {}).get("result")
        self.metrics.outcomes.labels(**run_outcome(obj, update.status, harvested)).inc()
        start = parse_time(update.status.get("startTime"))
        end = parse_time(update.status.get("completionTime")) or now
        if start is not None:
            self.metrics.run_duration.observe(max((end - start).total_seconds(), 0.0))
