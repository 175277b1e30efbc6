"""Why a run cannot progress: pure classifiers of failures, read by :mod:`.status`.

- :func:`classify_failed_job`: a Job that failed, from its condition and its pods;
- :func:`pod_blocked`: a pod that cannot start (image pull, a missing credentials Secret,
  unschedulable past the deadline);
- :func:`refusal_failure`: a child the API server refused to create (403, 422).

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
from kubequant_operator.builders import referenced_secret_fields
from kubequant_operator.children import (
    config_error_waiting,
    engine_image,
    image_pull_waiting,
    job_condition,
    pod_pending,
    sorted_pods,
    terminated_state,
    unschedulable,
)
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
            mem = (spec.resources.memory if spec is not None else None) or "the memory limit"
            text = f"the engine ran out of memory (limit {mem}); raise spec.resources.memory"
            return FailureInfo(Reason.OOM_KILLED, clip(text), exit_code or 137)
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
