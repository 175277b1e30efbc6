"""Refused child creates (403, 422) stall with the cause and recover; old run identities go."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kubequant_localkube.jobs import Outcome
from tests.fixtures.operator import OperatorHarness, condition, make_object, summary_for

pytestmark = pytest.mark.integration

RBAC = "/apis/rbac.authorization.k8s.io/v1/namespaces/default"
ESCALATION = (
    'roles.rbac.authorization.k8s.io "x" is forbidden: user "system:serviceaccount:kubequant:'
    'kubequant" is attempting to grant RBAC permissions not currently held'
)
INVALID = (
    'Job.batch "x" is invalid: spec.template.spec.tolerations[0].value: Invalid value: "a": '
    "value must be empty when `operator` is 'Exists'"
)


def _creates(h: OperatorHarness, resource: str) -> int:
    return sum(
        1 for c in h.cluster.emulator.api_calls() if c.verb == "create" and c.resource == resource
    )


@pytest.mark.parametrize(
    ("resource", "status", "reason", "message"),
    [("roles", 403, "Forbidden", ESCALATION), ("jobs", 422, "InvalidJobSpec", INVALID)],
)
async def test_refused_create_stalls_with_the_cause_then_recovers(
    harness: OperatorHarness, resource: str, status: int, reason: str, message: str
) -> None:
    h = harness
    emu = h.cluster.emulator
    h.cluster.outcomes["refused-g1-*"] = Outcome(message=summary_for(1))
    emu.inject_failures("create", resource, count=10_000, status=status, message=message)
    await h.create(make_object(name="refused"))

    obj = await h.wait_condition("refused", "Stalled", reason=reason, timeout=20)
    st = obj["status"]
    assert st["phase"] == "Pending"
    assert st["failure"]["reason"] == reason
    assert message in st["message"]
    assert message in condition(obj, "Stalled")["message"]
    assert condition(obj, "Ready")["status"] == "False"
    event = await h.wait_event("refused", "Warning", reason)
    assert message in event["message"]
    assert await h.jobs("refused") == []

    # retried (kopf's backoff, and the resync), each time refused again
    before = _creates(h, resource)
    for _ in range(100):
        if _creates(h, resource) > before:
            break
        await asyncio.sleep(0.1)
    assert _creates(h, resource) > before
    assert await h.jobs("refused") == []
    warnings = [e for e in await h.events("refused") if e["reason"] == reason]
    assert len(warnings) == 1  # one Warning per transition, not one per retry

    # the cause goes away: the next create succeeds and the run goes on by itself
    emu.clear_faults()
    obj = await h.wait_condition(
        "refused", "Ready", status="True", timeout=30, fail_on_stalled=False
    )
    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"].get("failure") is None
    assert condition(obj, "Stalled")["status"] == "False"
    (job,) = await h.jobs("refused")
    assert obj["status"]["jobName"] == job["metadata"]["name"]


async def _exists(h: OperatorHarness, path: str) -> bool:
    try:
        await h.kube.request("GET", path)
    except Exception as exc:  # the client's error (KubeError) names the status
        if "404" in str(exc):
            return False
        raise
    return True


def _identity_paths(child: str) -> list[str]:
    return [
        f"/api/v1/namespaces/default/serviceaccounts/{child}",
        f"{RBAC}/roles/{child}",
        f"{RBAC}/rolebindings/{child}",
    ]


async def _all_exist(h: OperatorHarness, child: str) -> list[bool]:
    return [await _exists(h, p) for p in _identity_paths(child)]


async def test_older_generations_identity_is_deleted_once_its_job_is_gone(
    harness: OperatorHarness,
) -> None:
    h = harness
    h.cluster.outcomes["gens-g1-*"] = Outcome(message=summary_for(1))
    h.cluster.outcomes["gens-g2-*"] = Outcome(duration=8.0, message=summary_for(2))
    await h.create(make_object(name="gens"))
    first: dict[str, Any] = await h.wait_condition("gens", "Ready", status="True")
    old = first["status"]["jobName"]

    await h.patch_spec("gens", {"evaluation": {"samples": 16}})
    await h.wait_for("gens", lambda o: str(o["status"].get("jobName", "")).startswith("gens-g2-"))
    obj = await h.get("gens")
    assert obj is not None
    new = obj["status"]["jobName"]
    # the finished Job of generation 1 is still there: so is its identity
    await asyncio.sleep(2.5 * h.settings.reconcile_interval_seconds)
    assert old in [j["metadata"]["name"] for j in await h.jobs("gens")]
    assert await _all_exist(h, old) == [True, True, True]

    # the old Job goes (as its TTL would): its ServiceAccount, Role and RoleBinding follow
    await h.kube.delete("batch/v1", "Job", "default", old)
    for _ in range(100):
        if await _all_exist(h, old) == [False, False, False]:
            break
        await asyncio.sleep(0.1)
    assert await _all_exist(h, old) == [False, False, False]
    # the new generation's run keeps its own and finishes
    assert await _all_exist(h, new) == [True, True, True]
    done = await h.wait_condition("gens", "Ready", status="True", timeout=30)
    assert done["status"]["result"]["generation"] == 2
    assert await _all_exist(h, new) == [True, True, True]
