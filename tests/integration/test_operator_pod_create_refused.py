"""Engine pods the API server refuses to create, and OOMKilled engines, end to end.

The real operator against the local control plane: its Job controller records a Warning
``FailedCreate`` event on the Job when admission refuses the pod (here: a PriorityClass that
does not exist) and retries, as the real one does. The object is Stalled with the cause named
within a reconcile interval, the Job is kept, and creating the PriorityClass lets the run go
on to Ready with no change to the object. An OOMKilled engine fails the Job at once (no retry
at the same memory limit) and the status names the limit and the preflight's estimate.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubequant_localkube.jobs import Outcome
from tests.fixtures.operator import OperatorHarness, condition, make_object, summary_for

pytestmark = pytest.mark.integration

PRIORITY_CLASSES = "/apis/scheduling.k8s.io/v1/priorityclasses"
MODEL = "pvc://models/all-MiniLM-L6-v2"


async def _pods_of(h: OperatorHarness, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods the Job controller made for ``job`` (by their controller ownerReference)."""
    namespace = job["metadata"]["namespace"]
    items = (await h.kube.request("GET", f"/api/v1/namespaces/{namespace}/pods"))["items"]
    uid = job["metadata"]["uid"]
    return [
        p
        for p in items
        if any(r.get("uid") == uid for r in (p["metadata"].get("ownerReferences") or []))
    ]


async def test_missing_priority_class_stalls_with_the_cause_then_recovers(
    harness: OperatorHarness,
) -> None:
    h = harness
    h.cluster.outcomes["prio-g1-*"] = Outcome(message=summary_for(1))
    await h.create(make_object(name="prio", resources={"priorityClassName": "missing-class"}))

    # within one reconcile interval (2 s here) of the refusal, not at a deadline
    obj = await h.wait_condition("prio", "Stalled", reason="PriorityClassNotFound", timeout=20)
    st = obj["status"]
    assert st["phase"] == "Pending"
    assert st["failure"]["reason"] == "PriorityClassNotFound"
    stalled = condition(obj, "Stalled")["message"]
    for text in (
        "spec.resources.priorityClassName: PriorityClass 'missing-class' not found",
        "no PriorityClass with name missing-class was found",
    ):
        assert text in st["message"], st["message"]
        assert text in stalled
    assert condition(obj, "Ready")["status"] == "False"
    event = await h.wait_event("prio", "Warning", "PriorityClassNotFound")
    assert "missing-class" in event["message"]

    # the Job is kept (its controller retries) and has no pod
    (job,) = await h.jobs("prio")
    assert st["jobName"] == job["metadata"]["name"]
    assert await _pods_of(h, job) == []
    job_events = [
        e
        for e in (await h.kube.request("GET", "/api/v1/namespaces/default/events"))["items"]
        if e["involvedObject"].get("uid") == job["metadata"]["uid"]
        and e["reason"] == "FailedCreate"
    ]
    assert job_events and "missing-class" in job_events[0]["message"]
    # resyncs while it stays refused: one Warning for the transition, not one per reconcile
    await asyncio.sleep(4.5)
    warnings = [e for e in await h.events("prio") if e["reason"] == "PriorityClassNotFound"]
    assert len(warnings) == 1

    # the cause goes away: the Job controller's retry makes the pod, the run goes on by itself
    await h.kube.request(
        "POST",
        PRIORITY_CLASSES,
        {
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": "missing-class"},
            "value": 1000,
        },
    )
    obj = await h.wait_condition("prio", "Ready", status="True", timeout=30, fail_on_stalled=False)
    st = obj["status"]
    assert st["phase"] == "Succeeded"
    assert st.get("failure") is None
    assert condition(obj, "Stalled")["status"] == "False"
    (after,) = await h.jobs("prio")
    assert after["metadata"]["uid"] == job["metadata"]["uid"]  # the same Job, never recreated
    (pod,) = await _pods_of(h, after)
    assert pod["spec"]["priorityClassName"] == "missing-class"


async def test_oom_fails_at_once_naming_the_limit_and_the_preflight_estimate(
    harness: OperatorHarness,
) -> None:
    h = harness
    plan = {
        "source": {"uri": MODEL, "reachable": True},
        "candidates": [
            {
                "method": "torchao-int8-weight",
                "compatible": True,
                "estimatedPeakMemoryBytes": 3_328_599_654,
                "estimatedDiskBytes": 5_000_000_000,
            }
        ],
        "estimatedPeakMemoryBytes": 3_328_599_654,
        "disk": {"needsBytes": 5_000_000_000, "sourceBytes": 0},
    }
    # generation 1: a dry run, whose plan holds the preflight's memory estimate
    h.cluster.outcomes["oom-g1-*"] = Outcome(message=summary_for(1, plan=plan))
    await h.create(make_object(name="oom", dryRun=True))
    await h.wait_condition("oom", "Ready", status="True", reason="DryRunSucceeded")

    # generation 2: the run, with retries left, killed by the OOM killer at 2Gi
    h.cluster.outcomes["oom-g2-*"] = Outcome(exit_code=137, reason="OOMKilled")
    await h.patch_spec("oom", {"dryRun": False, "retries": 3, "resources": {"memory": "2Gi"}})
    obj = await h.wait_condition("oom", "Stalled", reason="OOMKilled", timeout=20)
    st = obj["status"]
    assert obj["metadata"]["generation"] == 2
    assert st["phase"] == "Failed"
    assert st["failure"]["reason"] == "OOMKilled"
    assert st["failure"]["exitCode"] == 137
    assert st["failure"]["message"] == (
        "the engine was OOMKilled at the memory limit 2Gi (preflight estimate 3.1 GiB for "
        f"torchao-int8-weight on {MODEL}); raise spec.resources.memory"
    )
    await h.wait_event("oom", "Warning", "OOMKilled")

    # not retried at the same limit, although spec.retries is 3: one pod, the Job failed
    (job,) = [j for j in await h.jobs("oom") if j["metadata"]["name"] == st["jobName"]]
    for _ in range(100):
        job = next(j for j in await h.jobs("oom") if j["metadata"]["name"] == st["jobName"])
        if any(c["type"] == "Failed" for c in job["status"].get("conditions") or []):
            break
        await asyncio.sleep(0.1)
    # the plan's disk estimate (+25%) reached the API server as an ephemeral-storage request
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["ephemeral-storage"] == "6Gi"
    assert "ephemeral-storage" not in resources["limits"]
    failed = next(c for c in job["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert job["spec"]["backoffLimit"] == 3
    await asyncio.sleep(1.5)  # a retry would have made its pod by now
    assert len(await _pods_of(h, job)) == 1
    obj = await h.wait_for("oom", lambda o: o["status"].get("attempts") == 1, what="attempts 1")
    assert obj["status"]["failure"]["reason"] == "OOMKilled"
