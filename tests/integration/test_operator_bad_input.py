"""Bad input against the real operator: admission rejections, stalls with reasons, failures.

One cluster and operator serve the whole module, so every case also shows that the operator
keeps serving other objects while some are broken.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import yaml

from kubequant_api.models import METHOD_PARAMS
from kubequant_localkube.jobs import Outcome
from kubequant_operator.kube import KubeError
from tests.fixtures.operator import (
    CRD_FILE,
    OperatorHarness,
    condition,
    make_object,
    summary_for,
)

pytestmark = pytest.mark.integration

PARAM_VALUES: dict[str, Any] = {
    "threshold": 6.0,
    "doubleQuant": True,
    "computeDtype": "float32",
    "bits": 4,
    "groupSize": 128,
    "descAct": False,
    "sym": True,
    "perChannel": True,
}


def _forbidden_param(method: str) -> dict[str, Any]:
    model = METHOD_PARAMS[method]
    accepted = {f.alias or n for n, f in model.model_fields.items()}
    key = next(k for k in PARAM_VALUES if k not in accepted)
    return {key: PARAM_VALUES[key]}


def _violations() -> list[tuple[str, dict[str, Any]]]:
    """(rule message, a spec that breaks exactly that rule) for every CEL rule in the CRD."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    base = make_object()["spec"]
    cases: list[tuple[str, dict[str, Any]]] = []
    for rule in schema["x-kubernetes-validations"]:
        msg = rule["message"]
        if msg.startswith("spec.candidates: required"):
            cases.append((msg, {**base, "method": "auto"}))
        elif msg.startswith("spec.params: method auto"):
            cases.append(
                (
                    msg,
                    {
                        **base,
                        "method": "auto",
                        "candidates": [{"method": "quanto-int8"}],
                        "params": {"bits": 4},
                    },
                )
            )
        elif msg.startswith("spec.params: method "):
            method = msg.split()[2]
            cases.append((msg, {**base, "method": method, "params": _forbidden_param(method)}))
        elif msg.startswith("spec.resources.gpuResourceName"):
            cases.append((msg, {**base, "resources": {"gpu": 1, "gpuResourceName": ""}}))
        else:
            raise AssertionError(f"no violating case written for the CEL rule {msg!r}")
    for rule in schema["properties"]["candidates"]["items"]["x-kubernetes-validations"]:
        msg = rule["message"]
        method = msg.split("method ")[1].split()[0]
        cand = {"method": method, "params": _forbidden_param(method)}
        cases.append((msg, {**base, "method": "auto", "candidates": [cand]}))
    return cases


VIOLATIONS = _violations()


def test_every_cel_rule_has_a_case() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    n_rules = len(schema["x-kubernetes-validations"]) + len(
        schema["properties"]["candidates"]["items"]["x-kubernetes-validations"]
    )
    assert len(VIOLATIONS) == n_rules
    assert n_rules >= 20


@pytest.mark.parametrize(("message", "spec"), VIOLATIONS, ids=[m[:60] for m, _ in VIOLATIONS])
async def test_cel_rule_rejected_at_admission(
    shared_harness: OperatorHarness, message: str, spec: dict[str, Any]
) -> None:
    obj = make_object(name="cel-case", spec=spec)
    with pytest.raises(KubeError) as info:
        await shared_harness.create(obj)
    assert info.value.status == 422, info.value.message
    assert message in info.value.message
    assert await shared_harness.get("cel-case") is None


async def test_still_serving_after_rejections(shared_harness: OperatorHarness) -> None:
    shared_harness.cluster.outcomes["healthy-g1-*"] = Outcome(message=summary_for(1))
    await shared_harness.create(make_object(name="healthy"))
    obj = await shared_harness.wait_condition("healthy", "Ready", status="True")
    assert obj["status"]["result"]["compressionRatio"] == 3.2


async def _stalled(
    h: OperatorHarness, name: str, reason: str, timeout: float = 30.0
) -> dict[str, Any]:
    obj = await h.wait_condition(name, "Stalled", status="True", reason=reason, timeout=timeout)
    assert condition(obj, "Ready")["status"] == "False"
    assert condition(obj, "Reconciling")["status"] == "False"
    await h.wait_event(name, "Warning", reason)
    return obj


async def test_unknown_secret_is_credentials_missing_until_created(
    shared_harness: OperatorHarness,
) -> None:
    h = shared_harness
    h.cluster.outcomes["needs-secret-g1-*"] = Outcome(message=summary_for(1))
    model = {"uri": "hf://org/model", "task": "feature-extraction", "credentialsSecret": "hf-tok"}
    await h.create(make_object(name="needs-secret", model=model))
    obj = await _stalled(h, "needs-secret", "CredentialsMissing")
    assert obj["status"]["phase"] == "Pending"
    msg = condition(obj, "Stalled")["message"]
    assert "spec.model.credentialsSecret" in msg and "hf-tok" in msg
    # Learned from the engine pod (the operator holds no Secret permission), so the Job exists
    # and its pod waits with the kubelet's CreateContainerConfigError until the Secret does.
    assert 'secret "hf-tok" not found' in obj["status"]["failure"]["message"]
    (waiting_job,) = await h.jobs("needs-secret")
    await h.create_secret("hf-tok", {"HF_TOKEN": "hf_dummy_value_never_shown"})
    obj = await h.wait_condition(
        "needs-secret", "Ready", status="True", timeout=30, fail_on_stalled=False
    )
    (job,) = await h.jobs("needs-secret")
    assert job["metadata"]["uid"] == waiting_job["metadata"]["uid"]  # the same Job started
    env_from = job["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from == [{"secretRef": {"name": "hf-tok"}}]
    assert "hf_dummy_value_never_shown" not in json.dumps(obj)
    assert "hf_dummy_value_never_shown" not in json.dumps(await h.events("needs-secret"))
    secret_calls = {
        (c.verb, c.name)
        for c in h.cluster.emulator.api_calls()
        if c.resource == "secrets" and c.verb != "create"  # the test's own create
    }
    assert secret_calls == set(), secret_calls


async def test_unknown_pvc_is_invalid_spec_naming_the_field(
    shared_harness: OperatorHarness,
) -> None:
    h = shared_harness
    await h.create(make_object(name="no-pvc", output={"uri": "pvc://missing-claim/out"}))
    obj = await _stalled(h, "no-pvc", "InvalidSpec")
    msg = condition(obj, "Stalled")["message"]
    assert "spec.output.uri" in msg and "missing-claim" in msg
    assert obj["status"]["failure"]["reason"] == "InvalidSpec"
    assert await h.jobs("no-pvc") == []


async def test_incompatible_method_and_task_is_invalid_spec_without_retries(
    shared_harness: OperatorHarness,
) -> None:
    h = shared_harness
    await h.create(make_object(name="gptq-encoder", method="gptq", resources={"gpu": 0}))
    obj = await _stalled(h, "gptq-encoder", "InvalidSpec")
    assert obj["status"]["phase"] == "Failed"
    msg = condition(obj, "Stalled")["message"]
    assert msg.startswith("spec.method:") and "feature-extraction" in msg
    assert await h.jobs("gptq-encoder") == []
    rv = obj["metadata"]["resourceVersion"]
    await asyncio.sleep(2.5 * h.settings.reconcile_interval_seconds)
    again = await h.get("gptq-encoder")
    assert again is not None and again["metadata"]["resourceVersion"] == rv  # no churn


@pytest.mark.parametrize(
    ("name", "outcome", "reason", "text", "code"),
    [
        (
            "exit-two",
            Outcome(
                exit_code=2,
                message=json.dumps(
                    {
                        "exitCode": 2,
                        "reason": "InvalidSpec",
                        "generation": 1,
                        "message": "spec.model.uri: no model files at pvc://models/all-MiniLM-L6-v2",
                    }
                ),
            ),
            "InvalidSpec",
            "spec.model.uri",
            2,
        ),
        (
            "exit-three",
            Outcome(
                exit_code=3,
                message=summary_for(1, qualityGate="Failed", cosineSimilarity=0.95).replace(
                    '"exitCode": 0', '"exitCode": 3'
                ),
            ),
            "QualityGateFailed",
            "cosineSimilarity=0.95",
            3,
        ),
        ("oom", Outcome(exit_code=137, reason="OOMKilled"), "OOMKilled", "memory", 137),
        (
            "crash",
            Outcome(exit_code=1, message="Traceback\nRuntimeError: boom"),
            "EngineFailed",
            "RuntimeError: boom",
            1,
        ),
    ],
)
async def test_engine_failures(
    shared_harness: OperatorHarness,
    *,
    name: str,
    outcome: Outcome,
    reason: str,
    text: str,
    code: int,
) -> None:
    h = shared_harness
    h.cluster.outcomes[f"{name}-g1-*"] = outcome
    await h.create(make_object(name=name, retries=1))
    obj = await _stalled(h, name, reason)
    st = obj["status"]
    assert st["phase"] == "Failed"
    assert st["failure"]["reason"] == reason
    assert st["failure"]["exitCode"] == code
    assert text in st["failure"]["message"], st["failure"]
    # exit codes 2, 3 and 137 (OOMKilled) fail the Job at once (podFailurePolicy); others
    # use the retries
    assert st["attempts"] == (1 if code in (2, 3, 137) else 2)
    assert len(await h.jobs(name)) == 1


async def test_image_pull_failure(shared_harness: OperatorHarness) -> None:
    h = shared_harness
    h.cluster.outcomes["bad-image-g1-*"] = Outcome(
        waiting="ImagePullBackOff", waiting_message="Back-off pulling image"
    )
    await h.create(make_object(name="bad-image", image="registry.invalid/engine:nope"))
    obj = await _stalled(h, "bad-image", "ImagePullBackOff")
    assert obj["status"]["phase"] == "Pending"
    assert "registry.invalid/engine:nope" in obj["status"]["failure"]["message"]


async def test_unschedulable_after_pending_deadline(shared_harness: OperatorHarness) -> None:
    h = shared_harness
    h.cluster.outcomes["no-gpu-g1-*"] = Outcome(pending="Unschedulable")
    await h.create(make_object(name="no-gpu", resources={"gpu": 8}))
    obj = await _stalled(h, "no-gpu", "Unschedulable")
    assert obj["status"]["phase"] == "Pending"
    assert "unschedulable for over 1s" in condition(obj, "Stalled")["message"]


async def test_deadline_exceeded(shared_harness: OperatorHarness) -> None:
    h = shared_harness
    h.cluster.outcomes["too-slow-g1-*"] = Outcome(duration=120)
    await h.create(make_object(name="too-slow", timeoutSeconds=60))
    await h.wait_for("too-slow", lambda o: o.get("status", {}).get("phase") == "Running")
    (job,) = await h.jobs("too-slow")
    # Shorten the Job's deadline (a mutable field) so the test need not wait a minute.
    await h.kube.request(
        "PATCH",
        f"/apis/batch/v1/namespaces/default/jobs/{job['metadata']['name']}",
        {"spec": {"activeDeadlineSeconds": 1}},
        content_type="application/merge-patch+json",
    )
    obj = await _stalled(h, "too-slow", "DeadlineExceeded")
    assert obj["status"]["phase"] == "Failed"
    assert "spec.timeoutSeconds (60s)" in obj["status"]["failure"]["message"]
