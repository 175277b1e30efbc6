"""Reading the object's children: the engine's Job and its Pods, as the API serves them.

Pure readers, no I/O and no judgement: which conditions a Job carries, whether it finished,
how many attempts it made, the engine container's states in a Pod. What those facts mean
for the object's status is decided in :mod:`kubequant_operator.status`.

One judgement lives here, whose children are ours (docs/security.md, "trust boundaries"):
labels can be set by anyone who may create the kind, so a child is the object's only when
its controller ownerReference carries the object's uid (:func:`stranger`), a Job is the one
the operator created only when its uid is the one recorded in ``status.job``
(:func:`job_conflict`), and a pod is the Job's only when the Job controls it
(:func:`controlled_pods`). Nothing is read from any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from kubequant_operator.builders import CONTAINER_NAME, controlled_by

IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)


def parse_time(value: Any) -> datetime | None:
    """An API timestamp (RFC 3339 text or a datetime) as an aware datetime; None if absent."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


# --------------------------------------------------------------------------- whose children


def controller_ref(child: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The child's controller ownerReference, if it has one."""
    for ref in (child.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def describe(child: Mapping[str, Any]) -> str:
    """``Kind name`` and who controls it: for messages about a child that is not ours."""
    meta = child.get("metadata") or {}
    what = f"{child.get('kind') or 'object'} {meta.get('name')}"
    ref = controller_ref(child)
    if ref is None:
        return f"{what} (no controller)"
    return f"{what} (controlled by {ref.get('kind')} {ref.get('name')}, uid {ref.get('uid')})"


def stranger(child: Mapping[str, Any], uid: str) -> str | None:
    """None when ``child`` is controlled by the object with ``uid``; else what it is and who
    controls it. Labels and names are not proof: anyone who may create the kind sets them."""
    if controlled_by(child, uid):
        return None
    return describe(child)


def job_record(job: Mapping[str, Any]) -> dict[str, str]:
    """What ``status.job`` records of the Job the operator created: its name and uid."""
    meta = job.get("metadata") or {}
    return {"name": str(meta.get("name") or ""), "uid": str(meta.get("uid") or "")}


def job_conflict(
    job: Mapping[str, Any], uid: str, recorded: Mapping[str, Any] | None
) -> str | None:
    """Why the current generation's Job cannot be trusted, or None.

    It must be controlled by the object, and when ``status.job`` recorded a Job of this name,
    have the recorded uid (a Job deleted and re-created by someone else is not ours)."""
    problem = stranger(job, uid)
    if problem is not None:
        return f"{problem} is not controlled by this object"
    record = recorded if isinstance(recorded, Mapping) else {}
    mine = job_record(job)
    if record.get("name") == mine["name"] and record.get("uid") and record["uid"] != mine["uid"]:
        return (
            f"Job {mine['name']} has uid {mine['uid']}, not the uid {record['uid']} of the Job "
            "the operator created (status.job): it was replaced"
        )
    return None


def controlled_pods(
    pods: Sequence[Mapping[str, Any]], job: Mapping[str, Any]
) -> list[Mapping[str, Any]]:
    """The pods the Job controls (found by label, which anyone can set)."""
    job_uid = str((job.get("metadata") or {}).get("uid") or "")
    return [p for p in pods if job_uid and controlled_by(p, job_uid)]


# --------------------------------------------------------------------------- jobs


def job_condition(job: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any] | None:
    """The Job's condition of type ``ctype`` when it is True."""
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


def job_started(job: Mapping[str, Any]) -> bool:
    """Whether the Job has had pods (a Job just created or still suspended has none)."""
    st = job.get("status") or {}
    return bool(st.get("active") or st.get("failed") or st.get("succeeded") or st.get("conditions"))


def job_suspended(job: Mapping[str, Any]) -> bool:
    """Whether the Job is held (``spec.suspend``), e.g. by Kueue until admission."""
    return bool((job.get("spec") or {}).get("suspend"))


def job_name(job: Mapping[str, Any]) -> str:
    return str((job.get("metadata") or {}).get("name"))


def attempts(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> int:
    """How many pods the Job has run (its counters, or the pods seen when more)."""
    st = job.get("status") or {}
    counted = int(st.get("failed") or 0) + int(st.get("succeeded") or 0)
    counted += int(st.get("active") or 0)
    return max(counted, len(pods))


# --------------------------------------------------------------------------- pods


def sorted_pods(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Oldest first, by creation time."""

    def key(p: Mapping[str, Any]) -> str:
        return str((p.get("metadata") or {}).get("creationTimestamp") or "")

    return sorted(pods, key=key)


def engine_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The engine container's status (the first container's when it is not named)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for cs in statuses:
        if cs.get("name") == CONTAINER_NAME:
            return dict(cs)
    return dict(statuses[0]) if statuses else {}


def engine_image(pod: Mapping[str, Any]) -> str | None:
    """The image the pod's engine container runs ("" when the pod has no engine container)."""
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == CONTAINER_NAME:
            image = c.get("image")
            return None if image is None else str(image)
    return ""


def terminated_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The engine container's terminated state, or its last one after a restart."""
    cs = engine_status(pod)
    state = (cs.get("state") or {}).get("terminated")
    if state:
        return dict(state)
    last = (cs.get("lastState") or {}).get("terminated")
    return dict(last) if last else None


def waiting_state(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    state = (engine_status(pod).get("state") or {}).get("waiting")
    return dict(state) if state else None


def image_pull_waiting(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The engine container's waiting state when it waits because its image cannot be pulled."""
    waiting = waiting_state(pod)
    if waiting and waiting.get("reason") in IMAGE_PULL_REASONS:
        return waiting
    return None


def config_error_waiting(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The engine container's waiting state when the kubelet cannot make its configuration
    (``CreateContainerConfigError``: e.g. a Secret its environment names does not exist)."""
    waiting = waiting_state(pod)
    if waiting and waiting.get("reason") == "CreateContainerConfigError":
        return waiting
    return None


def pod_pending(pod: Mapping[str, Any]) -> bool:
    """Not yet running (phase Pending, or no phase reported yet)."""
    return (pod.get("status") or {}).get("phase") in (None, "Pending")


def unschedulable(pod: Mapping[str, Any]) -> tuple[datetime | None, str] | None:
    """(since when, the scheduler's message) while the pod cannot be scheduled, else None."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            since = parse_time(cond.get("lastTransitionTime")) or parse_time(
                (pod.get("metadata") or {}).get("creationTimestamp")
            )
            return since, str(cond.get("message", ""))
    return None


def pod_running(pods: Sequence[Mapping[str, Any]]) -> bool:
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods)


def pod_finished(pod: Mapping[str, Any]) -> bool:
    """The pod ended (phase Succeeded or Failed): it no longer counts as the Job's live pod."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pod_has_condition(pod: Mapping[str, Any], ctype: str) -> bool:
    """The pod carries condition ``ctype`` with status True (e.g. DisruptionTarget)."""
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == ctype and c.get("status") == "True" for c in conds)


def engine_limit(pod: Mapping[str, Any] | None, job: Mapping[str, Any] | None) -> str | None:
    """The engine container's memory limit: from the pod, else from the Job's pod template."""
    specs = [(pod or {}).get("spec") or {}]
    specs.append((((job or {}).get("spec") or {}).get("template") or {}).get("spec") or {})
    for pod_spec in specs:
        for c in pod_spec.get("containers") or []:
            if c.get("name") == CONTAINER_NAME:
                limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
                if limit:
                    return str(limit)
    return None


def awaits_pods(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> bool:
    """The Job runs (not finished, not suspended) and has no live pod: it is creating one,
    or cannot (the Job controller then records ``FailedCreate`` events on the Job)."""
    if job_finished(job) is not None or job_suspended(job):
        return False
    return all(pod_finished(p) for p in pods)


# --------------------------------------------------------------------------- events


def event_time(event: Mapping[str, Any]) -> datetime | None:
    """When an Event was last seen: its series, lastTimestamp, eventTime, or creation time."""
    series = event.get("series") or {}
    for value in (
        series.get("lastObservedTime"),
        event.get("lastTimestamp"),
        event.get("eventTime"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    ):
        when = parse_time(value)
        if when is not None:
            return when
    return None
