"""Status computation: phases, kstatus conditions, failure reasons, harvesting. Pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubequant_api.constants import Reason
from kubequant_api.errors import InvalidSpecError
from kubequant_api.models import parse_spec
from kubequant_operator import builders
from kubequant_operator.checks import compatibility_problem
from kubequant_operator.harvest import harvest_from_pods
from kubequant_operator.settings import Settings
from kubequant_operator.status import (
    Blocker,
    Observation,
    StatusUpdate,
    compute_status,
    is_terminal_for_generation,
    rfc3339,
)
from tests.fixtures.operator import job_with, make_object, pod_for

S = Settings(pending_deadline_seconds=300)
NOW = datetime(2026, 11, 25, 10, 5, 0, tzinfo=UTC)
RESULT: dict[str, Any] = {
    "generation": 1,
    "method": "torchao-int8-weight",
    "compressionRatio": 3.1,
    "cosineSimilarity": 0.9996,
    "qualityGate": "Passed",
    "outputUri": "pvc://models/minilm-int8",
}
SUMMARY: dict[str, Any] = {"exitCode": 0, "result": RESULT}


def _compute(
    obj: dict[str, Any],
    job: dict[str, Any] | None = None,
    pods: list[dict[str, Any]] | None = None,
    *,
    blocker: Blocker | None = None,
    harvested: Any = None,
    now: datetime = NOW,
) -> StatusUpdate:
    spec = parse_spec(obj["spec"]) if blocker is None or not blocker.terminal else None
    return compute_status(
        Observation(
            obj=obj, spec=spec, job=job, pods=pods or [], blocker=blocker, harvested=harvested
        ),
        S,
        now,
    )


def _conds(update: StatusUpdate) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in update.status["conditions"]}


def _job(obj: dict[str, Any]) -> dict[str, Any]:
    return builders.build_job(obj, parse_spec(obj["spec"]), S)


def _assert_kstatus(update: StatusUpdate, generation: int) -> None:
    conds = _conds(update)
    assert set(conds) == {"Ready", "Reconciling", "Stalled", "Suspended"}
    for c in conds.values():
        assert c["observedGeneration"] == generation
        assert c["status"] in ("True", "False")
        assert c["lastTransitionTime"]
        assert c["reason"]
    assert update.status["observedGeneration"] == generation
    # kstatus: never Ready and Reconciling at once; never Ready and Stalled at once
    if conds["Ready"]["status"] == "True":
        assert conds["Reconciling"]["status"] == "False"
        assert conds["Stalled"]["status"] == "False"


def test_new_job_is_pending_and_reconciling() -> None:
    obj = make_object()
    job = job_with(_job(obj), start=None)
    up = _compute(obj, job)
    _assert_kstatus(up, 1)
    c = _conds(up)
    assert up.phase == "Pending"
    assert c["Reconciling"]["status"] == "True"
    assert c["Reconciling"]["reason"] == Reason.JOB_CREATED
    assert c["Ready"]["status"] == "False"
    assert up.status["jobName"] == job["metadata"]["name"]
    assert up.patch is not None and up.patch["observedGeneration"] == 1
    assert [e.reason for e in up.events] == ["JobCreated"]


def test_running() -> None:
    obj = make_object()
    job = job_with(_job(obj), active=1)
    up = _compute(obj, job, [pod_for(job)])
    _assert_kstatus(up, 1)
    assert up.phase == "Running"
    assert _conds(up)["Reconciling"]["reason"] == Reason.RUNNING
    assert up.status["attempts"] == 1
    assert up.status["startTime"] == "2026-11-25T10:00:05Z"


def test_succeeded_with_result_written_by_engine() -> None:
    obj = make_object(status={"result": RESULT, "phase": "Running"})
    job = job_with(
        _job(obj),
        succeeded=1,
        completion="2026-11-25T10:04:00Z",
        conditions=[{"type": "Complete", "status": "True"}],
    )
    up = _compute(obj, job, [pod_for(job, phase="Succeeded", terminated={"exitCode": 0})])
    _assert_kstatus(up, 1)
    c = _conds(up)
    assert up.phase == "Succeeded"
    assert c["Ready"] == {**c["Ready"], "status": "True", "reason": "Succeeded"}
    assert c["Stalled"]["status"] == "False"
    assert up.status["completionTime"] == "2026-11-25T10:04:00Z"
    assert "3.10x" in up.status["message"]
    assert up.patch is not None and "result" not in up.patch  # the engine's result stays
    assert any(e.type == "Normal" and e.reason == "Succeeded" for e in up.events)


def test_succeeded_dry_run_reason() -> None:
    result = {"generation": 1, "plan": {"memoryBytes": 1}}
    obj = make_object(dryRun=True, status={"result": result})
    job = job_with(_job(obj), succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    up = _compute(obj, job)
    assert up.phase == "Succeeded"
    assert _conds(up)["Ready"]["reason"] == Reason.DRY_RUN_SUCCEEDED


def test_result_of_older_generation_is_not_enough_and_harvest_from_termination_message() -> None:
    old_result = {**RESULT, "generation": 1}
    obj = make_object(generation=2, status={"result": old_result})
    job = job_with(_job(obj), succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    summary = json.loads(json.dumps(SUMMARY))
    summary["result"]["generation"] = 2
    pods = [
        pod_for(job, phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps(summary)})
    ]
    harvested = harvest_from_pods(pods, 2)
    assert harvested is not None and harvested.compression_ratio == 3.1
    up = _compute(obj, job, pods, harvested=harvested)
    assert up.phase == "Succeeded"
    assert up.patch is not None
    assert up.patch["result"]["generation"] == 2
    assert up.patch["result"]["method"] == "torchao-int8-weight"


def test_harvest_ignores_other_generations_and_non_json() -> None:
    job = _job(make_object())
    pods = [pod_for(job, phase="Succeeded", terminated={"exitCode": 0, "message": "plain"})]
    assert harvest_from_pods(pods, 1) is None
    pods = [
        pod_for(job, phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps(SUMMARY)})
    ]
    assert harvest_from_pods(pods, 2) is None
    # a summary without a generation is taken as the run's own
    bare = {"result": {k: v for k, v in RESULT.items() if k != "generation"}}
    pods = [
        pod_for(job, phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps(bare)})
    ]
    got = harvest_from_pods(pods, 5)
    assert got is not None and got.generation == 5


def test_results_unavailable() -> None:
    obj = make_object()
    job = job_with(_job(obj), succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    up = compute_status(
        Observation(
            obj=obj,
            spec=parse_spec(obj["spec"]),
            job=job,
            pods=[],
            harvest_note="pvc:// outputs are not readable",
        ),
        S,
        NOW,
    )
    _assert_kstatus(up, 1)
    c = _conds(up)
    assert c["Stalled"]["status"] == "True"
    assert c["Stalled"]["reason"] == Reason.RESULTS_UNAVAILABLE
    assert "pvc://" in c["Stalled"]["message"]
    assert c["Ready"]["status"] == "False"
    assert up.phase == "Failed"
    assert [e.type for e in up.events] == ["Warning"]


def _failed(obj: dict[str, Any], reason: str, message: str = "") -> dict[str, Any]:
    return job_with(
        _job(obj),
        failed=1,
        conditions=[
            {
                "type": "Failed",
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2026-11-25T10:03:00Z",
            }
        ],
    )


@pytest.mark.parametrize(
    ("terminated", "cond_reason", "want_reason", "want_code", "want_text"),
    [
        (
            {"exitCode": 137, "reason": "OOMKilled"},
            "BackoffLimitExceeded",
            "OOMKilled",
            137,
            "memory",
        ),
        (
            {
                "exitCode": 2,
                "reason": "Error",
                "message": json.dumps({"exitCode": 2, "message": "spec.model.uri: no such repo"}),
            },
            "PodFailurePolicy",
            "InvalidSpec",
            2,
            "spec.model.uri",
        ),
        (
            {
                "exitCode": 3,
                "reason": "Error",
                "message": json.dumps({"exitCode": 3, "message": "cosine 0.93 < 0.99"}),
            },
            "PodFailurePolicy",
            "QualityGateFailed",
            3,
            "cosine 0.93",
        ),
        (
            {"exitCode": 1, "reason": "Error", "message": "Traceback ...\nRuntimeError: boom"},
            "BackoffLimitExceeded",
            "EngineFailed",
            1,
            "RuntimeError: boom",
        ),
    ],
)
def test_failure_reasons_from_the_pod(
    terminated: dict[str, Any], cond_reason: str, want_reason: str, want_code: int, want_text: str
) -> None:
    obj = make_object(resources={"memory": "2Gi"})
    job = _failed(obj, cond_reason)
    up = _compute(obj, job, [pod_for(job, phase="Failed", terminated=terminated)])
    _assert_kstatus(up, 1)
    c = _conds(up)
    assert up.phase == "Failed"
    assert c["Stalled"]["status"] == "True"
    assert c["Stalled"]["reason"] == want_reason
    assert c["Reconciling"]["status"] == "False"
    assert up.status["failure"]["reason"] == want_reason
    assert up.status["failure"]["exitCode"] == want_code
    assert want_text in up.status["failure"]["message"]
    assert up.status["completionTime"] == "2026-11-25T10:03:00Z"
    warnings = [e for e in up.events if e.type == "Warning"]
    assert warnings and warnings[0].reason == want_reason


def test_deadline_exceeded() -> None:
    obj = make_object(timeoutSeconds=600)
    job = _failed(obj, "DeadlineExceeded", "Job was active longer than specified deadline")
    up = _compute(obj, job, [])
    assert _conds(up)["Stalled"]["reason"] == "DeadlineExceeded"
    assert "spec.timeoutSeconds (600s)" in up.status["failure"]["message"]


def test_quality_gate_message_uses_harvested_metrics() -> None:
    obj = make_object()
    job = _failed(obj, "PodFailurePolicy")
    result = {**RESULT, "qualityGate": "Failed", "cosineSimilarity": 0.91}
    summary = json.dumps({"exitCode": 3, "result": result})
    pods = [pod_for(job, phase="Failed", terminated={"exitCode": 3, "message": summary})]
    up = _compute(obj, job, pods, harvested=harvest_from_pods(pods, 1))
    assert _conds(up)["Stalled"]["reason"] == "QualityGateFailed"
    assert "cosineSimilarity=0.91" in up.status["failure"]["message"]
    assert up.patch is not None and up.patch["result"]["qualityGate"] == "Failed"


def test_failed_job_with_pods_gone_uses_condition() -> None:
    obj = make_object()
    job = _failed(obj, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    up = _compute(obj, job, [])
    assert up.status["failure"]["reason"] == "EngineFailed"
    assert "backoff limit" in up.status["failure"]["message"]


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_image_pull_failure_is_stalled_at_once(reason: str) -> None:
    obj = make_object(image="registry.invalid/nope:1")
    job = job_with(_job(obj), active=1)
    pod = pod_for(job, phase="Pending", waiting={"reason": reason, "message": "not found"})
    up = _compute(obj, job, [pod])
    _assert_kstatus(up, 1)
    c = _conds(up)
    assert up.phase == "Pending"
    assert c["Stalled"]["status"] == "True"
    assert c["Stalled"]["reason"] == "ImagePullBackOff"
    assert "registry.invalid/nope:1" in c["Stalled"]["message"]
    assert up.status["failure"]["reason"] == "ImagePullBackOff"


def test_unschedulable_only_after_pending_deadline() -> None:
    obj = make_object()
    job = job_with(_job(obj), active=1)
    since = NOW - timedelta(seconds=100)
    pod = pod_for(
        job,
        phase="Pending",
        waiting={"reason": "ContainerCreating"},
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes: Insufficient nvidia.com/gpu",
                "lastTransitionTime": rfc3339(since),
            }
        ],
    )
    early = _compute(obj, job, [pod])
    assert _conds(early)["Stalled"]["status"] == "False"
    assert _conds(early)["Reconciling"]["status"] == "True"
    late = _compute(obj, job, [pod], now=NOW + timedelta(seconds=250))
    c = _conds(late)
    assert c["Stalled"]["status"] == "True"
    assert c["Stalled"]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in c["Stalled"]["message"]
    assert late.phase == "Pending"


def test_invalid_spec_blocker_is_terminal_and_names_the_field() -> None:
    obj = make_object(method="gptq", model={"uri": "pvc://m/x", "task": "feature-extraction"})
    problem = compatibility_problem(parse_spec(obj["spec"]))
    assert isinstance(problem, InvalidSpecError)
    assert problem.field == "spec.method"
    up = _compute(obj, None, blocker=Blocker(Reason.INVALID_SPEC, str(problem), terminal=True))
    _assert_kstatus(up, 1)
    c = _conds(up)
    assert up.phase == "Failed"
    assert c["Stalled"]["reason"] == "InvalidSpec"
    assert "spec.method" in c["Stalled"]["message"]
    assert c["Reconciling"]["status"] == "False"
    assert up.status["jobName"] is None
    assert up.status["failure"]["reason"] == "InvalidSpec"


def test_compatibility_checks_candidates_and_allows_auto_task() -> None:
    spec = parse_spec(
        {
            **make_object()["spec"],
            "method": "auto",
            "candidates": [{"method": "torchao-int8-weight"}, {"method": "awq"}],
        }
    )
    problem = compatibility_problem(spec)
    assert problem is not None and problem.field == "spec.candidates[1].method"
    spec = parse_spec(
        {**make_object()["spec"], "method": "gptq", "model": {"uri": "hf://a/b", "task": "auto"}}
    )
    assert compatibility_problem(spec) is None


def test_credentials_missing_is_pending_and_stalled() -> None:
    obj = make_object()
    msg = "spec.model.credentialsSecret: Secret 'hf' not found in namespace team-a"
    up = _compute(obj, None, blocker=Blocker(Reason.CREDENTIALS_MISSING, msg, terminal=False))
    assert up.phase == "Pending"
    assert _conds(up)["Stalled"]["reason"] == "CredentialsMissing"
    assert up.status["message"] == msg


def test_suspended_by_spec() -> None:
    obj = make_object(suspend=True)
    up = _compute(obj, None)
    _assert_kstatus(up, 1)
    c = _conds(up)
    assert c["Suspended"]["status"] == "True"
    assert c["Suspended"]["reason"] == "Suspended"
    assert c["Reconciling"]["status"] == "False"
    assert c["Stalled"]["status"] == "False"
    assert up.phase == "Pending"
    assert any(e.reason == "Suspended" for e in up.events)


def test_kueue_held_job_is_suspended_queued_and_reconciling() -> None:
    obj = make_object(queueName="team-q")
    job = job_with(_job(obj), start=None)
    assert job["spec"]["suspend"] is True
    up = _compute(obj, job)
    c = _conds(up)
    assert c["Suspended"] == {**c["Suspended"], "status": "True", "reason": "Queued"}
    assert c["Reconciling"]["status"] == "True"
    assert "team-q" in up.status["message"]
    # Kueue admitted it (suspend false) and the pod runs
    admitted = job_with(_job(obj), active=1, suspend=False)
    up2 = _compute({**obj, "status": up.status}, admitted, [pod_for(admitted)])
    assert up2.phase == "Running"
    assert _conds(up2)["Suspended"]["status"] == "False"


def test_last_transition_time_kept_when_status_unchanged() -> None:
    obj = make_object()
    job = job_with(_job(obj), active=1)
    first = _compute(obj, job, [pod_for(job)])
    later = NOW + timedelta(minutes=3)
    obj2 = {**obj, "status": first.status}
    second = _compute(obj2, job, [pod_for(job)], now=later)
    for ctype in ("Ready", "Reconciling", "Stalled", "Suspended"):
        assert _conds(second)[ctype]["lastTransitionTime"] == rfc3339(NOW)
    assert second.patch is None  # nothing changed: no write
    assert second.events == []
    done = job_with(_job(obj), succeeded=1, conditions=[{"type": "Complete", "status": "True"}])
    obj3 = {**obj, "status": {**first.status, "result": RESULT}}
    third = _compute(obj3, done, [], now=later)
    c = _conds(third)
    assert c["Ready"]["lastTransitionTime"] == rfc3339(later)  # False -> True
    assert c["Stalled"]["lastTransitionTime"] == rfc3339(NOW)  # False -> False


def test_new_generation_resets_ready_and_updates_observed_generation() -> None:
    done_status = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "jobName": "minilm-g1-abcd",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Succeeded",
                "lastTransitionTime": "2026-11-25T09:00:00Z",
                "observedGeneration": 1,
            }
        ],
        "result": RESULT,
    }
    obj = make_object(generation=2, status=done_status)
    assert not is_terminal_for_generation(obj)
    assert is_terminal_for_generation(make_object(status=done_status))
    job = job_with(_job(obj), start=None)
    up = _compute(obj, job)
    assert up.patch is not None and up.patch["observedGeneration"] == 2
    assert _conds(up)["Ready"]["status"] == "False"
    assert up.status["jobName"] != "minilm-g1-abcd"
    _assert_kstatus(up, 2)
