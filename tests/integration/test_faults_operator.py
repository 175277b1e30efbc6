"""Faults with nothing lost or duplicated: API errors, cut watches, restarts, hand edits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubequant_localkube.jobs import Outcome
from tests.fixtures.operator import OperatorHarness, condition, make_object, summary_for

pytestmark = pytest.mark.integration


def _phase(phase: str) -> Any:
    return lambda o: (o.get("status") or {}).get("phase") == phase


async def _created_events(h: OperatorHarness, name: str) -> int:
    return sum(1 for e in await h.events(name) if e["reason"] == "JobCreated")


async def test_api_errors_on_writes_are_retried_without_duplicates(
    harness: OperatorHarness,
) -> None:
    h = harness
    emu = h.cluster.emulator
    h.cluster.outcomes["flaky-g1-*"] = Outcome(message=summary_for(1))
    emu.inject_failures("create", "serviceaccounts", count=2, status=500)
    emu.inject_failures("create", "jobs", count=2, status=500)
    emu.inject_failures("create", "jobs", count=1, status=409, message="injected conflict")
    emu.inject_failures("patch", "modeloptimizations", count=3, status=409, subresource="status")
    emu.inject_failures("patch", "modeloptimizations", count=2, status=500, subresource="status")
    await h.create(make_object(name="flaky"))
    obj = await h.wait_condition("flaky", "Ready", status="True", timeout=60)
    assert obj["status"]["result"]["generation"] == 1
    assert len(await h.jobs("flaky")) == 1
    assert all(f.count == 0 for f in emu.faults), [f for f in emu.faults if f.count]
    assert await _created_events(h, "flaky") == 1
    assert "kubequant_reconcile_errors_total" in h.scrape_metrics()


async def test_watch_cut_mid_run(harness: OperatorHarness) -> None:
    h = harness
    h.cluster.outcomes["cut-g1-*"] = Outcome(duration=2.0, message=summary_for(1))
    await h.create(make_object(name="cut"))
    await h.wait_for("cut", _phase("Running"))
    assert h.cluster.emulator.cut_watches() > 0
    obj = await h.wait_condition("cut", "Ready", status="True", timeout=30)
    assert obj["status"]["phase"] == "Succeeded"
    assert len(await h.jobs("cut")) == 1


async def test_operator_restart_mid_run(harness: OperatorHarness) -> None:
    h = harness
    h.cluster.outcomes["restart-g1-*"] = Outcome(duration=2.5, message=summary_for(1))
    await h.create(make_object(name="restart"))
    await h.wait_for("restart", _phase("Running"))
    await h.restart_operator()
    obj = await h.wait_condition("restart", "Ready", status="True", timeout=30)
    assert obj["status"]["attempts"] == 1
    assert len(await h.jobs("restart")) == 1
    assert await _created_events(h, "restart") == 1
    # a restart after the end changes nothing either
    rv = obj["metadata"]["resourceVersion"]
    await h.restart_operator()
    await asyncio.sleep(1.0)
    again = await h.get("restart")
    assert again is not None and again["metadata"]["resourceVersion"] == rv
    assert len(await h.jobs("restart")) == 1


async def test_job_deleted_by_hand_mid_run_is_recreated(harness: OperatorHarness) -> None:
    h = harness
    h.cluster.outcomes["handdel-g1-*"] = Outcome(duration=2.0, message=summary_for(1))
    await h.create(make_object(name="handdel"))
    await h.wait_for("handdel", _phase("Running"))
    (job,) = await h.jobs("handdel")
    await h.kube.delete("batch/v1", "Job", "default", job["metadata"]["name"])
    obj = await h.wait_condition("handdel", "Ready", status="True", timeout=30)
    (again,) = await h.jobs("handdel")
    assert again["metadata"]["name"] == job["metadata"]["name"]
    assert again["metadata"]["uid"] != job["metadata"]["uid"]
    assert obj["status"]["jobName"] == job["metadata"]["name"]
    assert await _created_events(h, "handdel") == 2


async def test_finished_job_removed_is_not_rerun(harness: OperatorHarness) -> None:
    h = harness
    h.cluster.outcomes["ttl-g1-*"] = Outcome(message=summary_for(1))
    await h.create(make_object(name="ttl"))
    await h.wait_condition("ttl", "Ready", status="True")
    (job,) = await h.jobs("ttl")
    await h.kube.delete("batch/v1", "Job", "default", job["metadata"]["name"])  # as TTL would
    await asyncio.sleep(2.5 * h.settings.reconcile_interval_seconds)
    assert await h.jobs("ttl") == []
    obj = await h.get("ttl")
    assert obj is not None and obj["status"]["phase"] == "Succeeded"


async def test_object_deleted_mid_run(harness: OperatorHarness) -> None:
    h = harness
    h.cluster.outcomes["doomed-g1-*"] = Outcome(duration=3.0, message=summary_for(1))
    await h.create(make_object(name="doomed"))
    await h.wait_for("doomed", _phase("Running"))
    (job,) = await h.jobs("doomed")
    child = job["metadata"]["name"]
    await h.delete("doomed")
    for _ in range(100):
        if not await h.jobs("doomed") and 'name="doomed"' not in h.scrape_metrics():
            break
        await asyncio.sleep(0.1)
    assert await h.jobs("doomed") == []
    assert 'name="doomed"' not in h.scrape_metrics()
    for path in (
        f"/api/v1/namespaces/default/serviceaccounts/{child}",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles/{child}",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/{child}",
    ):
        with pytest.raises(Exception, match="404"):
            await h.kube.request("GET", path)
    # the operator goes on serving others
    h.cluster.outcomes["after-g1-*"] = Outcome(message=summary_for(1))
    await h.create(make_object(name="after"))
    await h.wait_condition("after", "Ready", status="True")
    assert "kubequant_reconcile_errors_total 0.0" in h.scrape_metrics()


async def test_spec_edited_mid_run(harness: OperatorHarness) -> None:
    h = harness
    h.cluster.outcomes["edited-g1-*"] = Outcome(duration=60.0, message=summary_for(1))
    h.cluster.outcomes["edited-g2-*"] = Outcome(duration=0.5, message=summary_for(2))
    await h.create(make_object(name="edited"))
    await h.wait_for("edited", _phase("Running"))
    (first,) = await h.jobs("edited")
    await h.patch_spec("edited", {"evaluation": {"samples": 16}})
    obj = await h.wait_condition("edited", "Ready", status="True", timeout=30)
    assert obj["metadata"]["generation"] == 2
    assert obj["status"]["observedGeneration"] == 2
    assert obj["status"]["result"]["generation"] == 2
    assert condition(obj, "Ready")["observedGeneration"] == 2
    jobs = await h.jobs("edited")
    assert [j["metadata"]["name"] for j in jobs] == [obj["status"]["jobName"]]
    assert obj["status"]["jobName"] != first["metadata"]["name"]
    assert obj["status"]["jobName"].startswith("edited-g2-")
