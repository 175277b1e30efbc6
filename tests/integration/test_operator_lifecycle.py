"""The real kopf operator against the local cluster: Job, per-run RBAC, status, events, metrics."""

from __future__ import annotations

import asyncio

import pytest

from kubequant_localkube.jobs import Outcome
from tests.fixtures.operator import OperatorHarness, condition, make_object, summary_for

pytestmark = pytest.mark.integration


async def test_object_runs_to_ready_with_rbac_events_and_metrics(harness: OperatorHarness) -> None:
    harness.cluster.outcomes["minilm-g1-*"] = Outcome(exit_code=0, message=summary_for(1))
    await harness.create(make_object(labels={"app.kubernetes.io/instance": "argo-app"}))
    obj = await harness.wait_condition("minilm", "Ready", status="True", reason="Succeeded")
    status = obj["status"]
    uid = obj["metadata"]["uid"]
    assert status["phase"] == "Succeeded"
    assert status["observedGeneration"] == 1
    assert status["result"]["compressionRatio"] == 3.2
    assert status["result"]["generation"] == 1
    assert status["attempts"] == 1
    assert status["startTime"] and status["completionTime"]
    assert condition(obj, "Reconciling")["status"] == "False"
    assert condition(obj, "Stalled")["status"] == "False"
    assert "status" not in (obj["metadata"].get("annotations") or {})
    assert "kopf" not in status  # kopf keeps its bookkeeping out of our status
    assert not obj["metadata"].get("finalizers")

    (job,) = await harness.jobs("minilm")
    job_name = job["metadata"]["name"]
    assert status["jobName"] == job_name
    assert job_name.startswith("minilm-g1-")
    for kind, path in (
        ("ServiceAccount", f"/api/v1/namespaces/default/serviceaccounts/{job_name}"),
        ("Role", f"/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/{job_name}"),
        (
            "RoleBinding",
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/{job_name}",
        ),
        ("Job", f"/apis/batch/v1/namespaces/default/jobs/{job_name}"),
    ):
        child = await harness.kube.request("GET", path)
        assert child["kind"] == kind
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == uid and ref["controller"] is True
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubequant"
        assert "app.kubernetes.io/instance" not in child["metadata"]["labels"]

    await harness.wait_event("minilm", "Normal", "JobCreated")
    await harness.wait_event("minilm", "Normal", "Succeeded")

    text = harness.scrape_metrics()
    ratio = 'kubequant_optimization_compression_ratio{method="torchao-int8-weight",name="minilm"'
    assert ratio in text
    assert 'kubequant_runs_total{result="succeeded"} 1.0' in text
    phase = 'kubequant_optimization_phase{name="minilm",namespace="default",phase="Succeeded"}'
    assert f"{phase} 1.0" in text

    # deleting the object removes its series (and its children by garbage collection)
    await harness.delete("minilm")
    for _ in range(100):
        if 'name="minilm"' not in harness.scrape_metrics() and not await harness.jobs("minilm"):
            break
        await asyncio.sleep(0.1)
    assert 'name="minilm"' not in harness.scrape_metrics()
    assert await harness.jobs("minilm") == []


async def test_kueue_queue_creates_suspended_job_and_operator_never_unsuspends(
    shared_harness: OperatorHarness,
) -> None:
    h = shared_harness
    h.cluster.outcomes["queued-g1-*"] = Outcome(message=summary_for(1))
    await h.create(make_object(name="queued", queueName="team-queue"))
    obj = await h.wait_condition("queued", "Suspended", status="True", reason="Queued")
    assert obj["status"]["phase"] == "Pending"
    assert condition(obj, "Reconciling")["status"] == "True"
    (job,) = await h.jobs("queued")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
    await asyncio.sleep(1.5 * h.settings.reconcile_interval_seconds)
    (job,) = await h.jobs("queued")
    assert job["spec"]["suspend"] is True  # the operator leaves admission to Kueue
    # Kueue admits the workload by un-suspending the Job
    await h.kube.request(
        "PATCH",
        f"/apis/batch/v1/namespaces/default/jobs/{job['metadata']['name']}",
        {"spec": {"suspend": False}},
        content_type="application/merge-patch+json",
    )
    obj = await h.wait_condition("queued", "Ready", status="True")
    assert condition(obj, "Suspended")["status"] == "False"
    (job,) = await h.jobs("queued")
    assert job["spec"]["suspend"] is False  # and never sets it back


async def test_suspend_stops_the_job_and_resume_runs_a_new_one(
    shared_harness: OperatorHarness,
) -> None:
    h = shared_harness
    h.cluster.outcomes["pausable-g1-*"] = Outcome(duration=60.0)
    h.cluster.outcomes["pausable-g3-*"] = Outcome(message=summary_for(3))
    await h.create(make_object(name="pausable"))
    await h.wait_for("pausable", lambda o: (o.get("status") or {}).get("phase") == "Running")
    await h.patch_spec("pausable", {"suspend": True})
    obj = await h.wait_condition("pausable", "Suspended", status="True", reason="Suspended")
    assert obj["status"]["phase"] == "Pending"
    assert condition(obj, "Reconciling")["status"] == "False"
    for _ in range(50):
        if not await h.jobs("pausable"):
            break
        await asyncio.sleep(0.1)
    assert await h.jobs("pausable") == []
    await h.wait_event("pausable", "Normal", "Suspended")
    await h.patch_spec("pausable", {"suspend": False})
    obj = await h.wait_condition("pausable", "Ready", status="True")
    assert obj["metadata"]["generation"] == 3
    assert condition(obj, "Suspended")["status"] == "False"
    assert [j["metadata"]["name"] for j in await h.jobs("pausable")] == [obj["status"]["jobName"]]


async def test_dry_run_still_runs_a_job(shared_harness: OperatorHarness) -> None:
    h = shared_harness
    plan = summary_for(1, plan={"estimatedPeakMemoryBytes": 1000, "compatible": True})
    h.cluster.outcomes["preflight-g1-*"] = Outcome(message=plan)
    await h.create(make_object(name="preflight", dryRun=True))
    obj = await h.wait_condition("preflight", "Ready", status="True", reason="DryRunSucceeded")
    assert obj["status"]["result"]["plan"]["compatible"] is True
    assert len(await h.jobs("preflight")) == 1
