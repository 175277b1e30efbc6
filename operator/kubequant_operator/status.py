"""Pure status computation: (object, its Job, the Job's pods, settings, now) -> status.

Nothing here does I/O. The operator owns ``phase``, ``conditions``, ``observedGeneration``,
``jobName``, ``attempts``, the times, ``message`` and ``failure``; it writes ``result`` only
when it harvests one the engine could not write (from the termination message or
``results.json``). Conditions follow kstatus: ``Ready`` is True only when the run of the
current generation is done, ``Reconciling`` is True while work is under way, ``Stalled`` is
True with a reason when the object cannot progress without a change.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from kubequant_api.constants import ConditionType, ExitCode, GateVerdict, Phase, Reason
from kubequant_api.models import ModelOptimizationSpec, Result
from kubequant_operator.builders import CONTAINER_NAME, generation_of_child
from kubequant_operator.settings import Settings

IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
MESSAGE_MAX = 1024
OPERATOR_FIELDS = (
    "phase",
    "observedGeneration",
    "conditions",
    "jobName",
    "attempts",
    "startTime",
    "completionTime",
    "message",
    "failure",
)
_RESULT_KEYS = frozenset(f.alias or n for n, f in Result.model_fields.items())


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _clip(text: str, limit: int = MESSAGE_MAX) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Blocker:
    """Why no Job runs for this generation (invalid spec, missing Secret or PVC)."""

    reason: Reason
    message: str
    terminal: bool  # True: only a spec change helps (phase Failed); False: phase Pending


@dataclass(frozen=True)
class Observation:
    obj: Mapping[str, Any]
    spec: ModelOptimizationSpec | None
    job: Mapping[str, Any] | None = None
    pods: Sequence[Mapping[str, Any]] = ()
    blocker: Blocker | None = None
    harvested: Result | None = None
    harvest_note: str = ""  # why nothing could be harvested (for ResultsUnavailable)


@dataclass(frozen=True)
class EventSpec:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class StatusUpdate:
    status: dict[str, Any]  # the operator-owned fields, full (None = remove)
    patch: dict[str, Any] | None  # merge patch of .status, None when nothing changed
    events: list[EventSpec] = field(default_factory=list)

    @property
    def phase(self) -> str | None:
        value = self.status.get("phase")
        return str(value) if value is not None else None


# --------------------------------------------------------------------------- pods and jobs


def job_condition(job: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return dict(cond)
    return None


def job_finished(job: Mapping[str, Any] | None) -> str | None:
    """'Complete', 'Failed' or None."""
    if job_condition(job, "Failed") is not None:
        return "Failed"
    if job_condition(job, "Complete") is not None:
        return "Complete"
    return None


def _engine_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == CONTAINER_NAME:
            return dict(cs)
    return dict(statuses[0]) if statuses else {}


def _sorted_pods(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    def key(p: Mapping[str, Any]) -> str:
        return str((p.get("metadata") or {}).get("creationTimestamp") or "")

    return sorted(pods, key=key)


def terminated_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    cs = _engine_status(pod)
    state = (cs.get("state") or {}).get("terminated")
    if state:
        return dict(state)
    last = (cs.get("lastState") or {}).get("terminated")
    return dict(last) if last else None


def waiting_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    state = (_engine_status(pod).get("state") or {}).get("waiting")
    return dict(state) if state else None


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """The engine's JSON summary from a termination message, if it is one."""
    if not message:
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def result_from_summary(summary: Mapping[str, Any], generation: int) -> Result | None:
    """A Result from the engine's summary (``{"result": {...}}`` or the result itself)."""
    raw = summary.get("result") if isinstance(summary.get("result"), dict) else summary
    if not isinstance(raw, Mapping):
        return None
    picked = {k: v for k, v in raw.items() if k in _RESULT_KEYS}
    if not picked.get("method") and not picked.get("plan") and not picked.get("candidates"):
        return None
    try:
        result = Result.model_validate(picked)
    except ValidationError:
        return None
    if result.generation is None:
        outer = summary.get("generation")
        result.generation = outer if isinstance(outer, int) else generation
    return result if result.generation == generation else None


def harvest_from_pods(pods: Sequence[Mapping[str, Any]], generation: int) -> Result | None:
    """The newest pod's termination message, parsed as the engine's summary."""
    for pod in reversed(_sorted_pods(pods)):
        term = terminated_state(pod)
        summary = parse_summary((term or {}).get("message"))
        if summary is not None:
            result = result_from_summary(summary, generation)
            if result is not None:
                return result
    return None


def _summary_message(term: Mapping[str, Any] | None) -> str:
    text = str((term or {}).get("message") or "")
    summary = parse_summary(text)
    if summary is not None:
        for key in ("message", "error", "detail"):
            if summary.get(key):
                return _clip(str(summary[key]))
        return ""
    return _clip(text)


@dataclass(frozen=True)
class FailureInfo:
    reason: Reason
    message: str
    exit_code: int | None = None

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": str(self.reason), "message": self.message}
        if self.exit_code is not None:
            out["exitCode"] = self.exit_code
        return out


def classify_failed_job(
    job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], spec: ModelOptimizationSpec | None
) -> FailureInfo:
    """Why a Job failed, from its Failed condition and its pods' last container states."""
    cond = job_condition(job, "Failed") or {}
    cond_reason = str(cond.get("reason") or "")
    cond_message = str(cond.get("message") or "")
    if cond_reason == "DeadlineExceeded":
        limit = spec.timeout_seconds if spec is not None else None
        text = cond_message or "Job was active longer than specified deadline"
        if limit is not None:
            text = f"spec.timeoutSeconds ({limit}s) exceeded: {text}"
        return FailureInfo(Reason.DEADLINE_EXCEEDED, _clip(text))
    ordered = _sorted_pods(pods)
    for pod in reversed(ordered):
        term = terminated_state(pod)
        if term is None:
            continue
        code = term.get("exitCode")
        exit_code = int(code) if code is not None else None
        detail = _summary_message(term)
        if term.get("reason") == "OOMKilled":
            mem = (spec.resources.memory if spec is not None else None) or "the memory limit"
            text = f"the engine ran out of memory (limit {mem}); raise spec.resources.memory"
            return FailureInfo(Reason.OOM_KILLED, _clip(text), exit_code or 137)
        if exit_code == ExitCode.INVALID_SPEC:
            return FailureInfo(Reason.INVALID_SPEC, detail or "the engine rejected the spec", 2)
        if exit_code == ExitCode.QUALITY_GATE_FAILED:
            return FailureInfo(
                Reason.QUALITY_GATE_FAILED,
                detail or "the optimized model failed spec.evaluation.qualityGate",
                3,
            )
        return FailureInfo(
            Reason.ENGINE_FAILED,
            detail or f"the engine exited with code {exit_code} ({cond_reason or 'Failed'})",
            exit_code,
        )
    for pod in reversed(ordered):
        waiting = waiting_state(pod)
        if waiting and waiting.get("reason") in IMAGE_PULL_REASONS:
            return FailureInfo(Reason.IMAGE_PULL_BACK_OFF, _clip(str(waiting.get("message", ""))))
    return FailureInfo(
        Reason.ENGINE_FAILED,
        _clip(cond_message or f"the Job failed ({cond_reason or 'no reason given'})"),
    )


def _pod_blocked(
    pods: Sequence[Mapping[str, Any]], s: Settings, now: datetime
) -> FailureInfo | None:
    """ImagePullBackOff at once; Unschedulable once pending longer than the deadline."""
    for pod in reversed(_sorted_pods(pods)):
        status = pod.get("status") or {}
        if status.get("phase") not in (None, "Pending"):
            continue
        waiting = waiting_state(pod)
        if waiting and waiting.get("reason") in IMAGE_PULL_REASONS:
            image = next(
                (
                    c.get("image")
                    for c in (pod.get("spec") or {}).get("containers") or []
                    if c.get("name") == CONTAINER_NAME
                ),
                "",
            )
            text = f"cannot pull engine image {image!r}: {waiting.get('message', '')}".strip()
            return FailureInfo(Reason.IMAGE_PULL_BACK_OFF, _clip(text))
        for cond in status.get("conditions") or []:
            if (
                cond.get("type") == "PodScheduled"
                and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"
            ):
                since = parse_time(cond.get("lastTransitionTime")) or parse_time(
                    (pod.get("metadata") or {}).get("creationTimestamp")
                )
                if since is not None and (now - since).total_seconds() >= (
                    s.pending_deadline_seconds
                ):
                    text = (
                        f"pod unschedulable for over {s.pending_deadline_seconds}s: "
                        f"{cond.get('message', '')}"
                    )
                    return FailureInfo(Reason.UNSCHEDULABLE, _clip(text.strip()))
    return None


def _pod_running(pods: Sequence[Mapping[str, Any]]) -> bool:
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods)


# --------------------------------------------------------------------------- conditions


def _cond(ctype: ConditionType, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": str(ctype),
        "status": "True" if status else "False",
        "reason": str(reason),
        "message": message,
    }


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[dict[str, Any]], generation: int, now: str
) -> list[dict[str, Any]]:
    """New conditions, keeping lastTransitionTime where a condition's status is unchanged."""
    by_type = {c.get("type"): c for c in old}
    merged: list[dict[str, Any]] = []
    for cond in new:
        prev = by_type.get(cond["type"])
        ltt = now
        if prev is not None and prev.get("status") == cond["status"]:
            ltt = str(prev.get("lastTransitionTime") or now)
        merged.append({**cond, "lastTransitionTime": ltt, "observedGeneration": generation})
    known = {c["type"] for c in merged}
    merged.extend(dict(c) for c in old if c.get("type") not in known)
    return merged


def result_for_generation(obj: Mapping[str, Any], generation: int) -> dict[str, Any] | None:
    result = (obj.get("status") or {}).get("result")
    if isinstance(result, dict) and result.get("generation") == generation:
        return result
    return None


def is_terminal_for_generation(obj: Mapping[str, Any]) -> bool:
    """The current generation already ended (Succeeded or Failed): never start it again."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    return status.get("observedGeneration") == generation and status.get("phase") in (
        Phase.SUCCEEDED,
        Phase.FAILED,
    )


def _attempts(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> int:
    st = job.get("status") or {}
    counted = int(st.get("failed") or 0) + int(st.get("succeeded") or 0)
    counted += int(st.get("active") or 0)
    return max(counted, len(pods))


def _success_message(result: Mapping[str, Any], dry_run: bool) -> str:
    if dry_run:
        return "dry run done: the plan is in status.result.plan"
    parts = [f"{result.get('method') or 'optimized'}"]
    ratio = result.get("compressionRatio")
    if ratio is not None:
        parts.append(f"compression {float(ratio):.2f}x")
    verdict = result.get("qualityGate")
    if verdict:
        parts.append(f"quality gate {verdict}")
    uri = result.get("outputUri")
    if uri:
        parts.append(f"written to {uri}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- the computation


def compute_status(obs: Observation, s: Settings, now: datetime) -> StatusUpdate:
    """The operator-owned status for the object's current generation, and the events."""
    obj = obs.obj
    meta = obj.get("metadata") or {}
    generation = int(meta.get("generation") or 1)
    old = dict(obj.get("status") or {})
    stamp = rfc3339(now)
    spec = obs.spec

    phase: Phase
    ready: tuple[bool, str, str]
    reconciling: tuple[bool, str, str]
    stalled: tuple[bool, str, str]
    suspended: tuple[bool, str, str] = (False, Reason.NOT_SUSPENDED, "")
    failure: FailureInfo | None = None
    job_name: str | None = None
    attempts: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    result_patch: dict[str, Any] | None = None

    if obs.blocker is not None:
        b = obs.blocker
        phase = Phase.FAILED if b.terminal else Phase.PENDING
        ready = (False, b.reason, b.message)
        reconciling = (False, b.reason, "")
        stalled = (True, b.reason, b.message)
        failure = FailureInfo(b.reason, b.message)
        message = b.message
    elif spec is not None and spec.suspend:
        phase = Phase.PENDING
        message = "suspended by spec.suspend: no Job runs"
        ready = (False, Reason.SUSPENDED, message)
        reconciling = (False, Reason.SUSPENDED, "")
        stalled = (False, Reason.SUSPENDED, "")
        suspended = (True, Reason.SUSPENDED, message)
    elif obs.job is None:
        phase = Phase.PENDING
        message = "creating the engine's Job"
        ready = (False, Reason.PROGRESSING, message)
        reconciling = (True, Reason.PROGRESSING, message)
        stalled = (False, Reason.PROGRESSING, "")
    else:
        job = obs.job
        pods = [p for p in obs.pods if generation_of_child(p) in (None, generation)]
        job_name = str((job.get("metadata") or {}).get("name"))
        attempts = _attempts(job, pods)
        job_status = job.get("status") or {}
        start_time = job_status.get("startTime")
        finished = job_finished(job)
        dry_run = bool(spec is not None and spec.dry_run)
        existing = result_for_generation(obj, generation)
        if existing is None and obs.harvested is not None and finished is not None:
            result_patch = obs.harvested.to_api()
            existing = result_patch
        if finished == "Complete":
            completion_time = job_status.get("completionTime") or stamp
            if existing is not None:
                phase = Phase.SUCCEEDED
                message = _success_message(existing, dry_run)
                why = Reason.DRY_RUN_SUCCEEDED if dry_run else Reason.SUCCEEDED
                ready = (True, why, message)
                reconciling = (False, why, "")
                stalled = (False, why, "")
            else:
                phase = Phase.FAILED
                message = (
                    "the engine finished but its results could not be read from "
                    "status.result, the termination message or results.json"
                )
                if obs.harvest_note:
                    message += f" ({obs.harvest_note})"
                failure = FailureInfo(Reason.RESULTS_UNAVAILABLE, message, 0)
                ready = (False, Reason.RESULTS_UNAVAILABLE, message)
                reconciling = (False, Reason.RESULTS_UNAVAILABLE, "")
                stalled = (True, Reason.RESULTS_UNAVAILABLE, message)
        elif finished == "Failed":
            failed_cond = job_condition(job, "Failed") or {}
            completion_time = (
                job_status.get("completionTime") or failed_cond.get("lastTransitionTime") or stamp
            )
            failure = classify_failed_job(job, pods, spec)
            if failure.reason == Reason.QUALITY_GATE_FAILED and existing is not None:
                failure = FailureInfo(
                    failure.reason, _gate_message(existing) or failure.message, failure.exit_code
                )
            phase = Phase.FAILED
            message = f"{failure.reason}: {failure.message}"
            ready = (False, failure.reason, message)
            reconciling = (False, failure.reason, "")
            stalled = (True, failure.reason, message)
        elif (job.get("spec") or {}).get("suspend"):
            queued = bool(spec is not None and spec.queue_name)
            why = Reason.QUEUED if queued else Reason.SUSPENDED
            phase = Phase.PENDING
            message = (
                f"waiting for admission by Kueue queue {spec.queue_name!r}"
                if queued and spec is not None
                else "the Job is suspended"
            )
            ready = (False, why, message)
            reconciling = (True, why, message)
            stalled = (False, why, "")
            suspended = (True, why, message)
        else:
            blocked = _pod_blocked(pods, s, now)
            if blocked is not None:
                failure = blocked
                phase = Phase.PENDING
                message = f"{blocked.reason}: {blocked.message}"
                ready = (False, blocked.reason, message)
                reconciling = (False, blocked.reason, "")
                stalled = (True, blocked.reason, message)
            elif _pod_running(pods):
                phase = Phase.RUNNING
                message = f"the engine is running (Job {job_name}, attempt {max(attempts, 1)})"
                ready = (False, Reason.RUNNING, message)
                reconciling = (True, Reason.RUNNING, message)
                stalled = (False, Reason.RUNNING, "")
            else:
                phase = Phase.PENDING
                message = f"Job {job_name} created, waiting for its pod"
                ready = (False, Reason.JOB_CREATED, message)
                reconciling = (True, Reason.JOB_CREATED, message)
                stalled = (False, Reason.JOB_CREATED, "")

    conditions = merge_conditions(
        old.get("conditions") or [],
        [
            _cond(ConditionType.READY, *ready),
            _cond(ConditionType.RECONCILING, *reconciling),
            _cond(ConditionType.STALLED, *stalled),
            _cond(ConditionType.SUSPENDED, *suspended),
        ],
        generation,
        stamp,
    )
    desired: dict[str, Any] = {
        "phase": str(phase),
        "observedGeneration": generation,
        "conditions": conditions,
        "jobName": job_name,
        "attempts": attempts,
        "startTime": start_time,
        "completionTime": completion_time,
        "message": _clip(message),
        "failure": failure.to_api() if failure is not None else None,
    }
    patch: dict[str, Any] = {}
    for key in OPERATOR_FIELDS:
        if _normal(old.get(key)) != _normal(desired[key]):
            patch[key] = desired[key]
    if result_patch is not None:
        patch["result"] = result_patch
    events = transition_events(old, desired)
    return StatusUpdate(status=desired, patch=patch or None, events=events)


def _gate_message(result: Mapping[str, Any]) -> str:
    parts = []
    for key in ("perplexityIncreasePercent", "cosineSimilarity", "top1Agreement"):
        if result.get(key) is not None:
            parts.append(f"{key}={result[key]}")
    if result.get("qualityGate") == GateVerdict.FAILED and parts:
        return "quality gate failed: " + ", ".join(parts)
    return ""


def _normal(value: Any) -> Any:
    """Comparable form: empty containers and None are the same (merge patch drops both)."""
    if value in (None, "", [], {}):
        return None
    return value


def _condition(conds: Sequence[Mapping[str, Any]], ctype: str) -> Mapping[str, Any]:
    return next((c for c in conds if c.get("type") == ctype), {})


def transition_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[EventSpec]:
    """Events for what changed: phase, Stalled (Warning) and Suspended transitions."""
    events: list[EventSpec] = []
    old_conds = old.get("conditions") or []
    new_conds = new.get("conditions") or []
    o_stalled, n_stalled = _condition(old_conds, "Stalled"), _condition(new_conds, "Stalled")
    stalled_now = n_stalled.get("status") == "True"
    stalled_changed = stalled_now and (
        o_stalled.get("status") != "True" or o_stalled.get("reason") != n_stalled.get("reason")
    )
    if stalled_changed:
        events.append(
            EventSpec("Warning", str(n_stalled.get("reason")), str(n_stalled.get("message")))
        )
    o_susp, n_susp = _condition(old_conds, "Suspended"), _condition(new_conds, "Suspended")
    if o_susp.get("status", "False") != n_susp.get("status"):
        events.append(
            EventSpec(
                "Normal",
                str(n_susp.get("reason")),
                str(n_susp.get("message") or "no longer suspended"),
            )
        )
    phase_changed = old.get("phase") != new.get("phase")
    generation_changed = old.get("observedGeneration") != new.get("observedGeneration")
    if (phase_changed or generation_changed) and not stalled_changed:
        ready = _condition(new_conds, "Ready")
        kind = "Warning" if new.get("phase") == Phase.FAILED else "Normal"
        events.append(
            EventSpec(kind, str(ready.get("reason") or new.get("phase")), str(new.get("message")))
        )
    return events
