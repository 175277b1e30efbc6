"""Pods the Job controller cannot create (FailedCreate events) and OOMKilled engines. Pure.

A refused pod create leaves the Job with no pod and no condition; the Job controller records a
Warning ``FailedCreate`` event on the Job and retries. The object is Stalled (Pending) with a
reason naming the class of cause and the server's message, and recovers by itself once a pod
exists. An OOMKilled engine fails the Job at once (podFailurePolicy), and the status names the
memory limit on the container and the preflight's estimate.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from kubequant_api.constants import STALLED_REASONS, Reason
from kubequant_api.models import parse_spec
from kubequant_operator import builders
from kubequant_operator.children import awaits_pods
from kubequant_operator.failures import (
    classify_failed_job,
    pod_create_reason,
    pod_failure_action,
    preflight_estimate,
)
from kubequant_operator.harvest import MESSAGE_MAX
from kubequant_operator.settings import Settings
from kubequant_operator.status import Observation, StatusUpdate, compute_status
from tests.fixtures.operator import job_with, make_object, pod_for

S = Settings(pending_deadline_seconds=300)
NOW = datetime(2026, 11, 25, 10, 5, 0, tzinfo=UTC)
JOB_UID = "7d1e0c7a-0000-4000-8000-00000000000a"
PRIORITY = (
    'Error creating: pods "minilm-g1-abcd-" is forbidden: '
    "no PriorityClass with name missing-class was found"
)
QUOTA = (
    'Error creating: pods "minilm-g1-abcd-" is forbidden: exceeded quota: team-quota, '
    "requested: limits.memory=4Gi, used: limits.memory=10Gi, limited: limits.memory=12Gi"
)
PSA = (
    'Error creating: pods "minilm-g1-abcd-" is forbidden: violates PodSecurity '
    '"restricted:latest": allowPrivilegeEscalation != false (container "engine" must set '
    "securityContext.allowPrivilegeEscalation=false)"
)
SERVICE_ACCOUNT = (
    'Error creating: pods "minilm-g1-abcd-" is forbidden: error looking up service account '
    'team-a/minilm-g1-abcd: serviceaccount "minilm-g1-abcd" not found'
)
WEBHOOK = (
    'Error creating: admission webhook "validate.kyverno.svc-fail" denied the request: '
    "policy require-labels: label team is required"
)
TIMEOUT = "Error creating: Timeout: request did not complete within requested timeout"


def _job(obj: dict[str, Any], **status: Any) -> dict[str, Any]:
    job = job_with(builders.build_job(obj, parse_spec(obj["spec"]), S), **status)
    job["metadata"]["uid"] = JOB_UID
    return job


def _event(
    message: str,
    *,
    last: str = "2026-11-25T10:00:10Z",
    uid: str = JOB_UID,
    reason: str = "FailedCreate",
) -> dict[str, Any]:
    """A core/v1 Event as the Job controller's recorder writes it."""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"minilm-g1-abcd.{last}", "namespace": "team-a"},
        "involvedObject": {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "minilm-g1-abcd",
            "namespace": "team-a",
            "uid": uid,
        },
        "type": "Warning",
        "reason": reason,
        "message": message,
        "source": {"component": "job-controller"},
        "firstTimestamp": "2026-11-25T10:00:06Z",
        "lastTimestamp": last,
        "count": 3,
    }


def _compute(
    obj: dict[str, Any],
    job: dict[str, Any],
    pods: list[dict[str, Any]] | None = None,
    events: list[dict[str, Any]] | None = None,
) -> StatusUpdate:
    spec = parse_spec(obj["spec"])
    obs = Observation(obj=obj, spec=spec, job=job, pods=pods or [], pod_create_events=events or [])
    return compute_status(obs, S, NOW)


def _conds(update: StatusUpdate) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in update.status["conditions"]}


# --------------------------------------------------------------------------- FailedCreate


@pytest.mark.parametrize(
    ("message", "reason", "named"),
    [
        (PRIORITY, "PriorityClassNotFound", "spec.resources.priorityClassName: PriorityClass"),
        (QUOTA, "QuotaExceeded", "ResourceQuota 'team-quota' in namespace team-a"),
        (PSA, "PodSecurityViolation", "Pod Security admission (restricted:latest)"),
        (SERVICE_ACCOUNT, "PodCreateForbidden", "the API server refuses the engine's pod"),
        (WEBHOOK, "PodCreateForbidden", "the API server refuses the engine's pod"),
    ],
)
def test_a_refused_pod_create_stalls_pending_with_the_class_of_cause(
    message: str, reason: str, named: str
) -> None:
    obj = make_object(resources={"priorityClassName": "missing-class"})
    job = _job(obj)  # no pods, no condition: what the Job controller leaves
    up = _compute(obj, job, events=[_event(message)])
    c = _conds(up)
    assert up.phase == "Pending"  # not terminal: the Job controller retries
    assert c["Stalled"]["status"] == "True"
    assert c["Stalled"]["reason"] == reason
    assert c["Reconciling"]["status"] == "False"
    assert c["Ready"]["status"] == "False"
    assert up.status["failure"]["reason"] == reason
    for text in (message, named, job["metadata"]["name"]):
        assert text in c["Stalled"]["message"]
        assert text in up.status["message"]
    assert up.status["jobName"] == job["metadata"]["name"]
    assert [(e.type, e.reason) for e in up.events] == [("Warning", reason)]
    assert message in up.events[0].message
    assert Reason(reason) in STALLED_REASONS


def test_the_missing_priority_class_is_named() -> None:
    obj = make_object(resources={"priorityClassName": "missing-class"})
    up = _compute(obj, _job(obj), events=[_event(PRIORITY)])
    assert "PriorityClass 'missing-class' not found" in up.status["message"]


@pytest.mark.parametrize(
    ("message", "want"),
    [
        (PRIORITY, Reason.PRIORITY_CLASS_NOT_FOUND),
        (QUOTA, Reason.QUOTA_EXCEEDED),
        (PSA, Reason.POD_SECURITY_VIOLATION),
        (SERVICE_ACCOUNT, Reason.POD_CREATE_FORBIDDEN),
        (WEBHOOK, Reason.POD_CREATE_FORBIDDEN),
        (
            'Error creating: Pod "x" is invalid: spec.containers: Required value',
            Reason.POD_CREATE_FORBIDDEN,
        ),
        (TIMEOUT, None),
        ("Error creating: pods is being created in a terminating namespace", None),
        ("", None),
    ],
)
def test_pod_create_reason(message: str, want: Reason | None) -> None:
    assert pod_create_reason(message) == want


def test_a_transient_create_error_is_not_a_stall() -> None:
    obj = make_object()
    up = _compute(obj, _job(obj), events=[_event(TIMEOUT)])
    c = _conds(up)
    assert c["Stalled"]["status"] == "False"
    assert up.status["failure"] is None
    assert c["Reconciling"]["status"] == "True"


def test_events_of_another_job_or_reason_are_ignored() -> None:
    obj = make_object()
    events = [
        _event(PRIORITY, uid="someone-else"),
        _event(PRIORITY, reason="SuccessfulCreate"),
    ]
    up = _compute(obj, _job(obj), events=events)
    assert _conds(up)["Stalled"]["status"] == "False"


def test_the_latest_refusal_is_the_one_reported() -> None:
    obj = make_object()
    events = [
        _event(QUOTA, last="2026-11-25T10:02:00Z"),
        _event(PRIORITY, last="2026-11-25T10:01:00Z"),
    ]
    up = _compute(obj, _job(obj), events=events)
    assert up.status["failure"]["reason"] == "QuotaExceeded"


def test_a_live_pod_ends_the_stall() -> None:
    obj = make_object()
    job = _job(obj, active=1)
    stalled = _compute(obj, _job(obj), events=[_event(PRIORITY)])
    obj = {**obj, "status": stalled.status}
    # the PriorityClass exists now: the Job controller's retry made the pod
    up = _compute(obj, job, [pod_for(job, created="2026-11-25T10:03:00Z")], [_event(PRIORITY)])
    c = _conds(up)
    assert up.phase == "Running"
    assert c["Stalled"]["status"] == "False"
    assert up.status["failure"] is None
    assert up.patch is not None and up.patch["failure"] is None


def test_a_refusal_older_than_the_newest_pod_is_history() -> None:
    obj = make_object()
    job = _job(obj, failed=1)
    failed = pod_for(
        job, phase="Failed", terminated={"exitCode": 1}, created="2026-11-25T10:01:00Z"
    )
    old = _event(PRIORITY, last="2026-11-25T10:00:30Z")
    up = _compute(obj, job, [failed], [old])
    assert _conds(up)["Stalled"]["status"] == "False"
    # the retry after that pod failed is refused again: reported
    new = _event(QUOTA, last="2026-11-25T10:02:00Z")
    up = _compute(obj, job, [failed], [old, new])
    assert up.status["failure"]["reason"] == "QuotaExceeded"


def test_a_finished_or_suspended_job_is_not_read_for_refusals() -> None:
    obj = make_object()
    suspended = _job(obj, suspend=True)
    up = _compute(obj, suspended, events=[_event(PRIORITY)])
    assert _conds(up)["Stalled"]["status"] == "False"
    assert not awaits_pods(suspended, [])
    done = _job(
        obj, succeeded=1, conditions=[{"type": "Complete", "status": "True"}], completion="x"
    )
    assert not awaits_pods(done, [])
    job = _job(obj, active=1)
    assert not awaits_pods(job, [pod_for(job)])
    assert awaits_pods(job, [pod_for(job, phase="Failed", terminated={"exitCode": 1})])
    assert awaits_pods(_job(obj), [])


def test_a_long_refusal_is_clipped_and_keeps_its_cause() -> None:
    obj = make_object()
    message = PSA + "; " + "x" * 3000 + " END"
    up = _compute(obj, _job(obj), events=[_event(message)])
    text = up.status["failure"]["message"]
    assert len(text) <= MESSAGE_MAX
    assert text.startswith("Pod Security admission (restricted:latest)")
    assert text.endswith(" END")


# --------------------------------------------------------------------------- OOMKilled

OOM = {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-11-25T10:04:00Z"}
PLAN = {
    "source": {"uri": "hf://facebook/opt-125m", "reachable": True},
    "candidates": [
        {"method": "gptq", "compatible": True, "estimatedPeakMemoryBytes": 3_328_599_654},
        {"method": "awq", "compatible": True, "estimatedPeakMemoryBytes": 3_600_000_000},
    ],
    "estimatedPeakMemoryBytes": 3_600_000_000,
}
OPT: dict[str, Any] = {
    "model": {"uri": "hf://facebook/opt-125m", "task": "causal-lm"},
    "method": "gptq",
    "output": {"uri": "pvc://models/opt-gptq"},
    "resources": {"memory": "2Gi", "gpu": 0},
    "retries": 3,
}


def _dry_run_status(plan: dict[str, Any] = PLAN) -> dict[str, Any]:
    return {"result": {"generation": 1, "plan": plan}}


def test_the_job_fails_at_once_on_oom_after_the_disruption_rule() -> None:
    obj = make_object(retries=3)
    rules = builders.build_job(obj, parse_spec(obj["spec"]), S)["spec"]["podFailurePolicy"]
    assert [r["action"] for r in rules["rules"]] == ["FailJob", "Ignore", "FailJob"]
    assert rules["rules"][2] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "engine", "operator": "In", "values": [137]},
    }


@pytest.mark.parametrize(
    ("terminated", "conditions", "action"),
    [
        ({"exitCode": 137, "reason": "OOMKilled"}, [], "FailJob"),
        # an eviction or preemption that SIGKILLs the engine: the Ignore rule comes first
        (
            {"exitCode": 137, "reason": "Error"},
            [{"type": "DisruptionTarget", "status": "True"}],
            "Ignore",
        ),
        ({"exitCode": 143}, [{"type": "DisruptionTarget", "status": "True"}], "Ignore"),
        # the exit-code rule before it still wins (first match)
        ({"exitCode": 2}, [{"type": "DisruptionTarget", "status": "True"}], "FailJob"),
        ({"exitCode": 3}, [], "FailJob"),
        ({"exitCode": 1}, [], "Count"),
        ({"exitCode": 1}, [{"type": "DisruptionTarget", "status": "False"}], "Count"),
    ],
)
def test_pod_failure_action_follows_the_rules_in_order(
    terminated: dict[str, Any], conditions: list[dict[str, Any]], action: str
) -> None:
    obj = make_object()
    job = _job(obj)
    pod = pod_for(job, phase="Failed", terminated=terminated, conditions=conditions)
    assert pod_failure_action(job, pod) == action


def test_pod_failure_action_matches_the_named_container_and_operators() -> None:
    obj = make_object()
    job = _job(obj)
    pod = pod_for(job, phase="Failed", terminated={"exitCode": 137})
    pod["status"]["containerStatuses"][0]["name"] = "sidecar"
    assert pod_failure_action(job, pod) == "Count"  # the rules name the engine container
    job["spec"]["podFailurePolicy"] = {
        "rules": [{"action": "Ignore", "onExitCodes": {"operator": "NotIn", "values": [1]}}]
    }
    assert pod_failure_action(job, pod) == "Ignore"
    pod["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 1}}
    assert pod_failure_action(job, pod) == "Count"
    job["spec"].pop("podFailurePolicy")
    assert pod_failure_action(job, pod) == "Count"


def test_oom_is_reported_as_soon_as_the_pod_failed_naming_limit_and_estimate() -> None:
    obj = make_object(spec=OPT, status=_dry_run_status())
    job = _job(obj, active=0)  # the Job controller has not marked the Job Failed yet
    pod = pod_for(job, phase="Failed", terminated=OOM)
    up = _compute(obj, job, [pod])
    c = _conds(up)
    assert up.phase == "Failed"
    assert c["Stalled"]["status"] == "True"
    assert c["Stalled"]["reason"] == "OOMKilled"
    assert c["Reconciling"]["status"] == "False"
    failure = up.status["failure"]
    assert failure["reason"] == "OOMKilled"
    assert failure["exitCode"] == 137
    assert failure["message"] == (
        "the engine was OOMKilled at the memory limit 2Gi (preflight estimate 3.1 GiB for "
        "gptq on hf://facebook/opt-125m); raise spec.resources.memory"
    )
    assert up.status["completionTime"] == "2026-11-25T10:04:00Z"
    assert [(e.type, e.reason) for e in up.events] == [("Warning", "OOMKilled")]

    # then the Job fails (PodFailurePolicy): the same failure, no new Warning
    failed = _job(
        obj,
        failed=1,
        conditions=[
            {
                "type": "Failed",
                "status": "True",
                "reason": "PodFailurePolicy",
                "lastTransitionTime": "2026-11-25T10:04:01Z",
            }
        ],
    )
    later = _compute({**obj, "status": {**obj["status"], **up.status}}, failed, [pod])
    assert later.status["failure"] == failure
    assert [e for e in later.events if e.type == "Warning"] == []


def test_oom_names_the_limit_on_the_container() -> None:
    obj = make_object(spec=OPT)
    job = _job(obj)
    pod = pod_for(job, phase="Failed", terminated=OOM)
    pod["spec"] = copy.deepcopy(pod["spec"])
    pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1536Mi"  # e.g. a LimitRange
    up = _compute(obj, job, [pod])
    assert "at the memory limit 1536Mi" in up.status["failure"]["message"]
    assert "no preflight estimate" in up.status["failure"]["message"]


def test_oom_during_a_disruption_or_under_an_older_policy_is_retried() -> None:
    obj = make_object(spec=OPT, status=_dry_run_status())
    job = _job(obj, failed=0)
    evicted = pod_for(
        job,
        phase="Failed",
        terminated=OOM,
        conditions=[{"type": "DisruptionTarget", "status": "True"}],
    )
    assert _compute(obj, job, [evicted]).phase == "Pending"
    old_policy = copy.deepcopy(job)
    old_policy["spec"]["podFailurePolicy"]["rules"].pop()
    oom = pod_for(old_policy, phase="Failed", terminated=OOM)
    assert _compute(obj, old_policy, [oom]).phase == "Pending"


def test_preflight_estimate_is_for_this_model_and_method() -> None:
    spec = parse_spec(OPT)
    assert preflight_estimate(_dry_run_status(), spec) == (
        "preflight estimate 3.1 GiB for gptq on hf://facebook/opt-125m"
    )
    other_model = {**PLAN, "source": {"uri": "hf://Qwen/Qwen2.5-0.5B"}}
    assert preflight_estimate(_dry_run_status(other_model), spec) is None
    assert preflight_estimate({}, spec) is None
    assert preflight_estimate({"result": {"generation": 1}}, spec) is None
    auto = parse_spec(
        {**OPT, "method": "auto", "candidates": [{"method": "gptq"}, {"method": "awq"}]}
    )
    assert preflight_estimate(_dry_run_status(), auto) == (
        "preflight estimate 3.4 GiB for auto on hf://facebook/opt-125m"
    )
    small = {**PLAN, "candidates": [{"method": "gptq", "estimatedPeakMemoryBytes": 300 * 2**20}]}
    assert "300.0 MiB" in str(preflight_estimate(_dry_run_status(small), spec))


def test_a_failed_job_names_the_oom_limit_and_estimate() -> None:
    obj = make_object(spec=OPT, status=_dry_run_status())
    job = _job(obj, failed=1, conditions=[{"type": "Failed", "status": "True"}])
    pod = pod_for(job, phase="Failed", terminated=OOM)
    failure = classify_failed_job(job, [pod], parse_spec(OPT), obj["status"])
    assert failure.reason == Reason.OOM_KILLED
    assert "at the memory limit 2Gi" in failure.message
    assert "preflight estimate 3.1 GiB for gptq" in failure.message


def test_the_kept_dry_run_plan_outlives_a_cleared_result() -> None:
    """A new generation clears status.result; status.preflight keeps the dry run's plan for
    the OOM message and the Job's sizing, and a real run's own plan (fit only) is not one."""
    spec = parse_spec(OPT)
    kept = {"preflight": PLAN, "result": None}
    assert preflight_estimate(kept, spec) == (
        "preflight estimate 3.1 GiB for gptq on hf://facebook/opt-125m"
    )
    obj = make_object(spec=OPT, status=kept)
    assert builders.plan_estimate(obj, spec) == 3_328_599_654
    fit_only = {"result": {"generation": 2, "plan": {"fit": {"fits": True}}}}
    assert preflight_estimate(fit_only, spec) is None
    # the kept plan wins over a later result without candidates
    assert preflight_estimate({**fit_only, "preflight": PLAN}, spec) is not None
