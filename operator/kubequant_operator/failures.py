"""Why a run cannot progress: pure classifiers of failures, read by :mod:`.status`.

- :func:`classify_failed_job`: a Job that failed, from its condition and its pods;
- :func:`pod_blocked`: a pod that cannot start (image pull, a missing credentials Secret,
  unschedulable past the deadline);
- :func:`refusal_failure`: a child the API server refused to create (403, 422);
- :func:`pod_create_refused`: the Job controller cannot create the engine's pod (the Job's
  ``FailedCreate`` events: a missing PriorityClass, an exhausted quota, Pod Security...);
- :func:`oom_failure` / :func:`oom_failing_job`: the engine was OOMKilled, naming the memory
  limit on its container and the preflight's estimate; reported as soon as the pod failed when
  the Job's podFailurePolicy fails the Job on it (:func:`pod_failure_action`).

Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubequant_api.constants import ExitCode, Reason
from kubequant_api.models import ModelOptimizationSpec
from kubequant_operator.builders import OOM_EXIT_CODE, referenced_secret_fields
from kubequant_operator.children import (
    awaits_pods,
    config_error_waiting,
    engine_image,
    engine_limit,
    engine_status,
    event_time,
    image_pull_waiting,
    job_condition,
    job_name,
    parse_time,
    pod_has_condition,
    pod_pending,
    sorted_pods,
    terminated_state,
    unschedulable,
)
from kubequant_operator.estimates import dry_run_estimate
from kubequant_operator.harvest import MESSAGE_MAX, clip, summary_detail
from kubequant_operator.settings import Settings

# HTTP statuses of a create that no retry of the same request can change by itself:
# 403 (RBAC, escalation prevention, admission) and 422 (validation).
REFUSAL_STATUSES = (403, 422)

# The kubelet's words when a container's environment names a Secret it cannot read
# (makeEnvironmentVariables in pkg/kubelet/kubelet_pods.go): the API's NotFound for the
# Secret, or a missing key.
_SECRET_NOT_FOUND = re.compile(r'secrets? "(?P<name>[^"]+)" not found')
_SECRET_KEY_MISSING = re.compile(
    r"couldn't find key (?P<key>\S+) in Secret (?P<ns>[^/\s]+)/(?P<name>\S+)", re.IGNORECASE
)

# The Job controller's event when it cannot create a pod (FailedCreatePodReason in
# pkg/controller/controller_utils.go; message "Error creating: <the API server's error>").
FAILED_CREATE = "FailedCreate"
# Admission's words (NewForbidden: 'pods "x-" is forbidden: <cause>'): the priority plugin,
# the ResourceQuota evaluator and Pod Security admission.
_PRIORITY_CLASS = re.compile(r"no PriorityClass with name (?P<name>\S+) was found", re.I)
_QUOTA = re.compile(r"exceeded quota: (?P<name>[^,\s]+)", re.I)
_POD_SECURITY = re.compile(r'violates PodSecurity "(?P<level>[^"]+)"', re.I)
# A refusal that only a change elsewhere ends (admission, a webhook, validation); other
# errors (timeouts, a terminating namespace) are transient and the Job controller's retry
# alone ends them.
_REFUSED = re.compile(r"is forbidden:|denied the request|is invalid:", re.I)


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


@dataclass(frozen=True)
class ChildRefusal:
    """The API server refused to create one of the run's children (an input to classify)."""

    kind: str  # ServiceAccount | Role | RoleBinding | Job
    name: str
    status: int  # the HTTP status: 403 or 422
    message: str  # the server's own message


def refusal_failure(refusal: ChildRefusal) -> FailureInfo:
    """Forbidden for a 403; InvalidJobSpec for a 422 on the Job, InvalidChildSpec otherwise."""
    if refusal.status == 403:
        reason = Reason.FORBIDDEN
    elif refusal.kind == "Job":
        reason = Reason.INVALID_JOB_SPEC
    else:
        reason = Reason.INVALID_CHILD_SPEC
    head = (
        f"the API server refused to create {refusal.kind} {refusal.name} "
        f"(HTTP {refusal.status}; retrying with backoff): "
    )
    return FailureInfo(reason, head + clip(refusal.message, MESSAGE_MAX - len(head) - 32))


def missing_secret(
    waiting: Mapping[str, Any], spec: ModelOptimizationSpec | None
) -> FailureInfo | None:
    """CredentialsMissing when a CreateContainerConfigError names a Secret, naming it and the
    spec field it came from; None when the kubelet's message names no Secret."""
    text = str(waiting.get("message") or "")
    key: str | None = None
    found = _SECRET_NOT_FOUND.search(text)
    if found is None:
        found = _SECRET_KEY_MISSING.search(text)
        if found is None:
            return None
        key = found.group("key")
    secret = found.group("name")
    fields = [f for f, name in referenced_secret_fields(spec) if name == secret] if spec else []
    where = " and ".join(fields) or "the engine's environment"
    what = f"has no key {key}" if key else "not found"
    message = (
        f"{where}: Secret {secret!r} {what} (the engine pod waits with "
        f"CreateContainerConfigError and starts once it exists): {text}"
    )
    return FailureInfo(Reason.CREDENTIALS_MISSING, clip(message))


def pod_create_reason(message: str) -> Reason | None:
    """The class of a pod create the API server refused (None: not a refusal, e.g. a timeout)."""
    if _PRIORITY_CLASS.search(message):
        return Reason.PRIORITY_CLASS_NOT_FOUND
    if _QUOTA.search(message):
        return Reason.QUOTA_EXCEEDED
    if _POD_SECURITY.search(message):
        return Reason.POD_SECURITY_VIOLATION
    if _REFUSED.search(message):
        return Reason.POD_CREATE_FORBIDDEN
    return None


def _pod_create_hint(reason: Reason, message: str, namespace: str) -> str:
    if reason == Reason.PRIORITY_CLASS_NOT_FOUND:
        found = _PRIORITY_CLASS.search(message)
        name = found.group("name") if found else "?"
        return f"spec.resources.priorityClassName: PriorityClass {name!r} not found"
    if reason == Reason.QUOTA_EXCEEDED:
        found = _QUOTA.search(message)
        name = found.group("name") if found else "?"
        return f"ResourceQuota {name!r} in namespace {namespace} has no room for the engine's pod"
    if reason == Reason.POD_SECURITY_VIOLATION:
        found = _POD_SECURITY.search(message)
        level = found.group("level") if found else "?"
        return f"Pod Security admission ({level}) of namespace {namespace} refuses the engine's pod"
    return "the API server refuses the engine's pod"


def pod_create_refused(
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
) -> FailureInfo | None:
    """Why the Job controller cannot create the engine's pod, from the Job's FailedCreate
    events; None while the Job has a live pod, or the latest refusal is older than its newest
    pod, or is not a refusal at all (a transient error the controller's retry ends)."""
    if not awaits_pods(job, pods):
        return None
    meta = job.get("metadata") or {}
    uid = meta.get("uid")
    newest_pod = max(
        (
            t
            for t in (parse_time((p.get("metadata") or {}).get("creationTimestamp")) for p in pods)
            if t is not None
        ),
        default=None,
    )
    latest: Mapping[str, Any] | None = None
    latest_at: datetime | None = None
    for event in events:
        involved = event.get("involvedObject") or {}
        if event.get("reason") != FAILED_CREATE or (uid and involved.get("uid") != uid):
            continue
        when = event_time(event)
        if newest_pod is not None and (when is None or when <= newest_pod):
            continue  # a refusal from before the newest pod was made: since overcome
        if latest is None or (when is not None and (latest_at is None or when >= latest_at)):
            latest, latest_at = event, when
    if latest is None:
        return None
    text = str(latest.get("message") or "")
    reason = pod_create_reason(text)
    if reason is None:
        return None
    namespace = str(meta.get("namespace") or "")
    head = (
        f"{_pod_create_hint(reason, text, namespace)} (the Job controller retries Job "
        f"{job_name(job)}; the run goes on once the cause is fixed): "
    )
    return FailureInfo(reason, head + clip(text, MESSAGE_MAX - len(head) - 32))


# --------------------------------------------------------------------------- OOMKilled


def _human_bytes(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{max(n / 2**20, 0.1):.1f} MiB"


def preflight_estimate(
    status: Mapping[str, Any] | None, spec: ModelOptimizationSpec | None
) -> str | None:
    """The dry run's peak-memory estimate for this spec's method and model, as the OOMKilled
    message names it (:mod:`.estimates`; None when there is none for this model)."""
    found = dry_run_estimate(status, spec)
    if found is None:
        return None
    return (
        f"preflight estimate {_human_bytes(found.peak_bytes)} for {found.method} "
        f"on {found.source}"
    )


def oom_failure(
    pod: Mapping[str, Any] | None,
    job: Mapping[str, Any] | None,
    spec: ModelOptimizationSpec | None,
    status: Mapping[str, Any] | None,
    exit_code: int | None = None,
) -> FailureInfo:
    """OOMKilled naming the memory limit on the engine container and the preflight estimate."""
    limit = engine_limit(pod, job) or (spec.resources.memory if spec is not None else None)
    at = f"at the memory limit {limit}" if limit else "at its memory limit"
    estimate = preflight_estimate(status, spec) or (
        "no preflight estimate: a run with spec.dryRun reports one in status.preflight"
    )
    text = f"the engine was OOMKilled {at} ({estimate}); raise spec.resources.memory"
    return FailureInfo(Reason.OOM_KILLED, clip(text), exit_code or OOM_EXIT_CODE)


def pod_failure_action(job: Mapping[str, Any], pod: Mapping[str, Any]) -> str:
    """What the Job's podFailurePolicy does with a failed pod: FailJob, Ignore or Count.

    As the Job controller (matchPodFailurePolicy in pkg/controller/job/pod_failure_policy.go):
    rules in order, the first match wins; onExitCodes matches a terminated container (the named
    one, or any) with a non-zero code, onPodConditions a condition with that type and status."""
    policy = (job.get("spec") or {}).get("podFailurePolicy") or {}
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    for rule in policy.get("rules") or []:
        action = str(rule.get("action") or "Count")
        codes = rule.get("onExitCodes")
        if codes is not None:
            values = {int(v) for v in codes.get("values") or []}
            wanted = codes.get("containerName")
            for cs in statuses:
                term = (cs.get("state") or {}).get("terminated") or {}
                code = int(term.get("exitCode") or 0)
                if not term or code == 0 or (wanted and cs.get("name") != wanted):
                    continue
                op = codes.get("operator")
                if (op == "In" and code in values) or (op == "NotIn" and code not in values):
                    return action
        elif rule.get("onPodConditions") is not None:
            for pattern in rule.get("onPodConditions") or []:
                ctype = str(pattern.get("type") or "")
                if str(pattern.get("status") or "True") == "True" and pod_has_condition(pod, ctype):
                    return action
    return "Count"


def oom_failing_job(
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    spec: ModelOptimizationSpec | None,
    status: Mapping[str, Any] | None,
) -> tuple[FailureInfo, str | None] | None:
    """(OOMKilled, when) as soon as the Job's newest pod failed OOMKilled and the Job's
    podFailurePolicy fails the Job on it (not retried at the same limit), before the Job
    controller marks the Job Failed; None otherwise."""
    ordered = sorted_pods(pods)
    if not ordered:
        return None
    pod = ordered[-1]
    if (pod.get("status") or {}).get("phase") != "Failed":
        return None
    term = (engine_status(pod).get("state") or {}).get("terminated") or {}
    if term.get("reason") != "OOMKilled" or pod_failure_action(job, pod) != "FailJob":
        return None
    code = term.get("exitCode")
    failure = oom_failure(pod, job, spec, status, int(code) if code is not None else None)
    finished = term.get("finishedAt")
    return failure, str(finished) if finished else None


def classify_failed_job(
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    spec: ModelOptimizationSpec | None,
    status: Mapping[str, Any] | None = None,
) -> FailureInfo:
    """Why a Job failed, from its Failed condition and its pods' last container states
    (``status``: the object's, for the preflight estimate an OOMKilled message names)."""
    cond = job_condition(job, "Failed") or {}
    cond_reason = str(cond.get("reason") or "")
    cond_message = str(cond.get("message") or "")
    if cond_reason == "DeadlineExceeded":
        limit = spec.timeout_seconds if spec is not None else None
        text = cond_message or "Job was active longer than specified deadline"
        if limit is not None:
            text = f"spec.timeoutSeconds ({limit}s) exceeded: {text}"
        return FailureInfo(Reason.DEADLINE_EXCEEDED, clip(text))
    ordered = sorted_pods(pods)
    for pod in reversed(ordered):
        term = terminated_state(pod)
        if term is None:
            continue
        code = term.get("exitCode")
        exit_code = int(code) if code is not None else None
        detail = summary_detail(term)
        if term.get("reason") == "OOMKilled":
            return oom_failure(pod, job, spec, status, exit_code)
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
        waiting = image_pull_waiting(pod)
        if waiting is not None:
            return FailureInfo(Reason.IMAGE_PULL_BACK_OFF, clip(str(waiting.get("message", ""))))
        config = config_error_waiting(pod)
        credentials = missing_secret(config, spec) if config is not None else None
        if credentials is not None:
            return credentials
    return FailureInfo(
        Reason.ENGINE_FAILED,
        clip(cond_message or f"the Job failed ({cond_reason or 'no reason given'})"),
    )


def pod_blocked(
    pods: Sequence[Mapping[str, Any]],
    s: Settings,
    now: datetime,
    spec: ModelOptimizationSpec | None = None,
) -> FailureInfo | None:
    """ImagePullBackOff and CredentialsMissing (CreateContainerConfigError naming a Secret)
    at once; Unschedulable once pending longer than the deadline."""
    for pod in reversed(sorted_pods(pods)):
        if not pod_pending(pod):
            continue
        waiting = image_pull_waiting(pod)
        if waiting is not None:
            text = f"cannot pull engine image {engine_image(pod)!r}: {waiting.get('message', '')}"
            return FailureInfo(Reason.IMAGE_PULL_BACK_OFF, clip(text.strip()))
        config = config_error_waiting(pod)
        credentials = missing_secret(config, spec) if config is not None else None
        if credentials is not None:
            return credentials
        stuck = unschedulable(pod)
        if stuck is not None:
            since, why = stuck
            deadline = s.pending_deadline_seconds
            if since is not None and (now - since).total_seconds() >= deadline:
                text = f"pod unschedulable for over {deadline}s: {why}"
                return FailureInfo(Reason.UNSCHEDULABLE, clip(text.strip()))
    return None
