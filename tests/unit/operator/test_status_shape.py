"""The status's shape and the run bookkeeping (rerun, lastSuccessful, history). Pure.

The CRD's status schema documents every field and declares conditions as metav1.Condition;
every condition the operator writes validates against that model; a rerun annotation starts
exactly one new run of the same generation; each new run clears the previous run's figures.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from kubequant_api import crd
from kubequant_api.constants import Phase, Reason, Stage
from kubequant_api.models import Condition, ModelOptimizationStatus, Progress, parse_spec
from kubequant_api.status import (
    CONDITION_REASON_PATTERN,
    HISTORY_MAX,
    RERUN_ANNOTATION,
    progress_summary,
)
from kubequant_operator import builders
from kubequant_operator.failures import FailureInfo
from kubequant_operator.settings import Settings, SettingsError
from kubequant_operator.status import (
    RERUN_QUEUED,
    RERUN_REFUSED,
    RERUN_STARTED,
    Observation,
    RerunDecision,
    State,
    StatusUpdate,
    compute_status,
    conditions_for,
    current_run,
    decide_rerun,
    merge_conditions,
    primary_quality,
    rerun_wanted,
    updated_history,
)
from tests.fixtures.operator import job_with, make_object, pod_for

S = Settings(pending_deadline_seconds=300, history_limit=3)
NOW = datetime(2026, 11, 25, 10, 5, 0, tzinfo=UTC)
RESULT: dict[str, Any] = {
    "generation": 1,
    "method": "torchao-int8-weight",
    "compressionRatio": 3.1,
    "cosineSimilarity": 0.9996,
    "qualityGate": "Passed",
    "outputUri": "pvc://models/minilm-int8",
}
COMPLETE = [{"type": "Complete", "status": "True"}]
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _status_schema() -> dict[str, Any]:
    version = crd.build_crd()["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["status"])


def _undescribed(node: dict[str, Any], path: str) -> list[str]:
    missing: list[str] = []
    for key, child in (node.get("properties") or {}).items():
        where = f"{path}.{key}"
        if not str(child.get("description") or "").strip():
            missing.append(where)
        missing += _undescribed(child, where)
    if isinstance(node.get("items"), dict):
        missing += _undescribed(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        missing += _undescribed(node["additionalProperties"], f"{path}{{}}")
    return missing


# --------------------------------------------------------------------------- the schema


def test_every_status_field_of_the_crd_is_described() -> None:
    schema = _status_schema()
    assert schema.get("description")
    assert _undescribed(schema, "status") == []
    # the walk sees nested objects and list items (it would find a bare field there)
    assert "lastSuccessful" in schema["properties"]
    assert "summary" in schema["properties"]["progress"]["properties"]
    assert "qualityValue" in schema["properties"]["history"]["items"]["properties"]
    bare = {"properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}}
    assert _undescribed(bare, "x") == ["x.a", "x.a.b"]


def test_conditions_are_declared_as_metav1_condition() -> None:
    conditions = _status_schema()["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "reason", "lastTransitionTime"}
    props = item["properties"]
    assert props["status"]["enum"] == ["True", "False", "Unknown"]
    assert props["reason"]["pattern"] == "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    assert props["reason"]["maxLength"] == 1024
    assert props["message"]["maxLength"] == 32768
    assert props["lastTransitionTime"] == {
        "type": "string",
        "format": "date-time",
        "description": props["lastTransitionTime"]["description"],
    }
    assert props["observedGeneration"]["format"] == "int64"
    assert props["observedGeneration"]["minimum"] == 0


def test_printer_columns_show_progress_and_the_ready_reason() -> None:
    columns = {
        c["name"]: c for c in crd.build_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    }
    assert columns["Progress"]["jsonPath"] == ".status.progress.summary"
    assert "priority" not in columns["Progress"]
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Reason"]["priority"] == 1
    assert columns["Ratio"]["jsonPath"] == ".status.result.compressionRatio"
    assert columns["Last-Ratio"]["jsonPath"] == ".status.lastSuccessful.compressionRatio"


@pytest.mark.parametrize("reason", list(Reason))
def test_every_reason_is_a_valid_condition_reason(reason: Reason) -> None:
    assert re.fullmatch(CONDITION_REASON_PATTERN, reason.value)


@pytest.mark.parametrize("reason", ["", "not camel", "Bad.", "9Lives", "x" * 1025])
def test_condition_model_refuses_what_metav1_refuses(reason: str) -> None:
    with pytest.raises(ValidationError):
        Condition.model_validate(
            {"type": "Ready", "status": "True", "reason": reason, "lastTransitionTime": "x"}
        )


def test_condition_model_requires_a_transition_time() -> None:
    with pytest.raises(ValidationError):
        Condition.model_validate({"type": "Ready", "status": "True", "reason": "Succeeded"})


def _states() -> list[State]:
    long = "m" * 40000
    return [
        State(Phase.PENDING, Reason.PROGRESSING, "creating", reconciling=True),
        State(Phase.RUNNING, Reason.RUNNING, "running", reconciling=True),
        State(Phase.SUCCEEDED, Reason.SUCCEEDED, "done"),
        State(Phase.PENDING, Reason.QUEUED, "queued", reconciling=True, suspended=True),
        State(
            Phase.FAILED,
            Reason.OOM_KILLED,
            long,
            failure=FailureInfo(Reason.OOM_KILLED, long),
        ),
    ]


@pytest.mark.parametrize("state", _states(), ids=lambda s: str(s.reason))
def test_every_condition_the_operator_writes_is_a_valid_metav1_condition(state: State) -> None:
    written = merge_conditions([], conditions_for(state), 3, "2026-11-25T10:05:00Z")
    assert [c["type"] for c in written] == ["Ready", "Reconciling", "Stalled", "Suspended"]
    for cond in written:
        model = Condition.model_validate(cond)
        assert RFC3339.match(model.last_transition_time)
        assert model.observed_generation == 3
        assert len(cond["message"]) <= 32768
    # the whole status validates too (the same models the CRD is generated from)
    ModelOptimizationStatus.model_validate({"conditions": written})


# --------------------------------------------------------------------------- progress


def test_progress_summary_is_filled_from_stage_and_percent() -> None:
    assert Progress(stage=Stage.QUANTIZING, percent=40).summary == "Quantizing 40%"
    with_candidate = Progress(stage=Stage.EVALUATING, percent=75, candidate="gptq")
    assert with_candidate.to_api()["summary"] == "Evaluating 75% (gptq)"
    assert progress_summary("Done", 100) == "Done 100%"
    given = Progress(stage=Stage.LOADING, percent=5, summary="Loading model")
    assert given.summary == "Loading model"


# --------------------------------------------------------------------------- job names


def test_a_rerun_job_name_is_distinct_short_and_read_back() -> None:
    ns, uid = "team-a", "0b7c1f2e-0000-4000-8000-000000000001"
    first = builders.job_name(ns, "minilm", uid, 4)
    assert first == builders.job_name(ns, "minilm", uid, 4, 1)  # run 1 keeps its old name
    second = builders.job_name(ns, "minilm", uid, 4, 2)
    third = builders.job_name(ns, "minilm", uid, 4, 3)
    assert len({first, second, third}) == 3
    assert re.fullmatch(r"minilm-g4r2-[0-9a-f]{4}", second)
    long = "a" * 253
    for run in (1, 2, 999):
        name = builders.job_name(ns, long, uid, 123456, run)
        assert len(name) <= 63
        assert builders.generation_of_child({"metadata": {"name": name}}) == 123456
    obj = make_object(generation=4)
    job = builders.build_job(obj, parse_spec(obj["spec"]), S, run=2)
    account = builders.build_service_account(obj, 2)
    assert job["metadata"]["name"] == account["metadata"]["name"]
    assert job["metadata"]["name"] == builders.job_name(
        "team-a", "minilm", obj["metadata"]["uid"], 4, 2
    )
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


# --------------------------------------------------------------------------- rerun


def _done(
    generation: int = 1, run: int = 1, rerun: str | None = None, **status: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "phase": "Succeeded",
        "observedGeneration": generation,
        "run": run,
        "result": {**RESULT, "generation": generation},
        **status,
    }
    obj = make_object(generation=generation, status=body)
    if rerun is not None:
        obj["metadata"]["annotations"] = {RERUN_ANNOTATION: rerun}
    return obj


def test_no_annotation_or_a_handled_value_changes_nothing() -> None:
    assert decide_rerun(_done(), spec_valid=True) == RerunDecision(1)
    handled = _done(run=2, rerun="t1")
    handled["status"]["rerun"] = {"requested": "t1", "run": 2}
    assert decide_rerun(handled, spec_valid=True) == RerunDecision(2)
    assert not rerun_wanted(handled)


def test_a_new_value_after_the_run_ended_starts_the_next_run_once() -> None:
    obj = _done(rerun="2026-11-25T11:00:00Z")
    assert rerun_wanted(obj)
    decision = decide_rerun(obj, spec_valid=True)
    assert decision.start and decision.run == 2
    assert decision.record == {"requested": "2026-11-25T11:00:00Z", "run": 2}
    assert decision.event is not None and decision.event.reason == RERUN_STARTED
    # once recorded, the same value never triggers again
    obj["status"].update(run=2, rerun=decision.record, phase="Pending")
    assert decide_rerun(obj, spec_valid=True) == RerunDecision(2)
    assert not rerun_wanted(obj)


def test_a_rerun_while_the_run_is_active_is_queued_then_started() -> None:
    obj = _done(rerun="v1", phase="Running")
    decision = decide_rerun(obj, spec_valid=True)
    assert not decision.start and decision.run == 1
    assert decision.record == {"run": 1, "queued": "v1"}
    assert decision.event is not None and decision.event.reason == RERUN_QUEUED
    obj["status"]["rerun"] = decision.record
    ModelOptimizationStatus.model_validate(obj["status"])  # what the CRD admits
    assert decide_rerun(obj, spec_valid=True) == RerunDecision(1)  # told once
    assert not rerun_wanted(obj)  # progress writes do not reconcile it again
    obj["status"]["phase"] = "Failed"  # the run ended: the queued value starts now
    assert rerun_wanted(obj)
    started = decide_rerun(obj, spec_valid=True)
    assert started.start and started.run == 2
    assert started.record == {"requested": "v1", "run": 2}


def test_a_new_generation_covers_the_rerun_and_an_invalid_spec_refuses_it() -> None:
    obj = _done(rerun="v1")
    obj["metadata"]["generation"] = 2
    covered = decide_rerun(obj, spec_valid=True)
    assert covered == RerunDecision(1, record={"requested": "v1", "run": 1})
    refused = decide_rerun(_done(rerun="v2", phase="Failed"), spec_valid=False)
    assert not refused.start
    assert refused.event is not None and refused.event.reason == RERUN_REFUSED
    assert refused.event.type == "Warning"


def test_current_run_resets_with_a_new_generation() -> None:
    obj = _done(run=3)
    assert current_run(obj) == 3
    obj["metadata"]["generation"] = 2
    assert current_run(obj) == 1


# --------------------------------------------------------------------------- the status


def _compute(obj: dict[str, Any], job: dict[str, Any] | None, run: int = 1) -> StatusUpdate:
    decision = decide_rerun(obj, spec_valid=True)
    assert decision.run == run
    pods = (
        [pod_for(job, phase="Succeeded")] if job and job.get("status", {}).get("succeeded") else []
    )
    obs = Observation(obj=obj, spec=parse_spec(obj["spec"]), job=job, pods=pods, rerun=decision)
    return compute_status(obs, S, NOW)


def test_a_rerun_clears_result_and_progress_in_the_patch_that_records_it() -> None:
    obj = _done(rerun="again", jobName="minilm-g1-abcd")
    obj["status"]["progress"] = {"stage": "Done", "percent": 100, "generation": 1}
    obj["status"]["lastSuccessful"] = {"generation": 1, "run": 1, "compressionRatio": 3.1}
    job = builders.build_job(obj, parse_spec(obj["spec"]), S, run=2)
    update = _compute(obj, job, run=2)
    assert update.patch is not None
    assert update.patch["result"] is None and update.patch["progress"] is None
    assert update.patch["run"] == 2
    assert update.patch["jobName"] == job["metadata"]["name"]
    assert update.patch["rerun"] == {"requested": "again", "run": 2}
    assert "lastSuccessful" not in update.patch  # kept as it was
    assert update.events[0].reason == RERUN_STARTED


def test_a_new_generation_clears_the_old_generations_result_and_progress() -> None:
    obj = _done()
    obj["status"]["progress"] = {"stage": "Done", "percent": 100, "generation": 1}
    obj["metadata"]["generation"] = 2
    update = _compute(obj, None)
    assert update.patch is not None
    assert update.patch["result"] is None and update.patch["progress"] is None
    # the engine's result for the new generation (written before the operator's first
    # patch of it) is kept
    obj["status"]["result"] = {**RESULT, "generation": 2}
    obj["status"]["progress"] = {"stage": "Loading", "percent": 5, "generation": 2}
    update = _compute(obj, None)
    assert update.patch is not None
    assert "result" not in update.patch and "progress" not in update.patch


def test_success_records_last_successful_and_history_newest_first_capped() -> None:
    history = [
        {"generation": 1, "run": r, "outcome": "Failed", "reason": "OOMKilled"} for r in (3, 2, 1)
    ]
    obj = make_object(
        status={
            "phase": "Running",
            "observedGeneration": 1,
            "run": 4,
            "result": RESULT,
            "history": history,
            "lastSuccessful": {"generation": 1, "run": 1, "outputDigest": "sha256:old"},
        }
    )
    job = job_with(
        builders.build_job(obj, parse_spec(obj["spec"]), S, run=4),
        succeeded=1,
        completion="2026-11-25T10:04:00Z",
        conditions=COMPLETE,
    )
    update = _compute(obj, job, run=4)
    assert update.phase == "Succeeded"
    ModelOptimizationStatus.model_validate({k: v for k, v in update.status.items() if v})
    assert update.patch is not None
    last = update.patch["lastSuccessful"]
    assert last["generation"] == 1 and last["run"] == 4
    assert last["compressionRatio"] == 3.1 and last["qualityGate"] == "Passed"
    assert last["completionTime"] == "2026-11-25T10:04:00Z"
    assert last["outputUri"] == "pvc://models/minilm-int8"
    assert last["outputDigest"] is None  # a merge patch: the old run's key goes
    entries = update.patch["history"]
    assert [e["run"] for e in entries] == [4, 3, 2]  # history_limit=3
    newest = entries[0]
    assert newest["outcome"] == "Succeeded" and newest["reason"] == "Succeeded"
    assert newest["qualityMetric"] == "cosineSimilarity" and newest["qualityValue"] == 0.9996
    assert newest["jobName"] == job["metadata"]["name"]
    assert newest["startTime"] == "2026-11-25T10:00:05Z"
    # level-based: the same observation again changes nothing
    obj["status"].update(update.status)
    obj["status"]["phase"] = "Succeeded"
    again = _compute(obj, job, run=4)
    assert again.patch is None or "history" not in again.patch


def test_history_replaces_the_entry_of_the_same_run() -> None:
    old = [{"generation": 2, "run": 1, "outcome": "Failed"}, {"generation": 1, "run": 1}]
    new = updated_history(old, {"generation": 2, "run": 1, "outcome": "Succeeded"}, 10)
    assert new == [{"generation": 2, "run": 1, "outcome": "Succeeded"}, old[1]]
    assert updated_history(old, {"generation": 3, "run": 1}, 0) == []


def test_primary_quality_follows_the_gate() -> None:
    spec = parse_spec(
        {
            **make_object()["spec"],
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B", "task": "causal-lm"},
            "evaluation": {"qualityGate": {"minTop1Agreement": 0.9}},
        }
    )
    result = {"perplexityIncreasePercent": 2.0, "top1Agreement": 0.95}
    assert primary_quality(result, spec) == ("top1Agreement", 0.95)
    assert primary_quality(result, None) == ("perplexityIncreasePercent", 2.0)
    assert primary_quality({}, None) is None


def test_history_limit_setting_is_bounded() -> None:
    assert Settings().history_limit == 10
    assert Settings.load({"KUBEQUANT_HISTORY_LIMIT": "0"}).history_limit == 0
    with pytest.raises(SettingsError, match="KUBEQUANT_HISTORY_LIMIT"):
        Settings.load({"KUBEQUANT_HISTORY_LIMIT": str(HISTORY_MAX + 1)})
