"""Trust boundaries through the local control plane and the real operator.

A stranger who may create Jobs (or ServiceAccounts, Roles) in the namespace pre-creates a
child with the per-run name and the owner labels: it is never adopted, nothing is read from
it, the object stalls with ChildConflict naming it. Names from a spec are refused at admission
(the real kubectl) and never reach a path unescaped. The policy settings refuse images,
PriorityClasses and placements before any child exists.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubequant_api.constants import API_VERSION, KIND
from kubequant_api.models import parse_spec
from kubequant_localkube.jobs import Outcome
from kubequant_localkube.podenv import StateDirs
from kubequant_operator import builders
from kubequant_operator.kube import PathSegmentError
from tests.fixtures.cluster import make_kubectl
from tests.fixtures.operator import (
    OperatorHarness,
    condition,
    make_object,
    operator_harness,
    summary_for,
)

pytestmark = pytest.mark.integration

TRAVERSALS = ["../x", "a/b", "%2F", "..", "../../kube-system/secrets/x"]
FORGED = summary_for(1, compressionRatio=99.0, qualityGate="Passed")


@pytest.fixture
async def idle(tmp_path: Path) -> AsyncIterator[OperatorHarness]:
    """A cluster with the CRD and the operator not yet started (a stranger moves first)."""
    async with operator_harness(tmp_path, start=False) as h:
        yield h


async def _object_and_child(h: OperatorHarness, name: str) -> tuple[dict[str, Any], str]:
    created = await h.create(make_object(name=name))
    meta = created["metadata"]
    child = builders.job_name("default", name, meta["uid"], int(meta.get("generation") or 1))
    return created, child


def _stranger_job(obj: dict[str, Any], h: OperatorHarness) -> dict[str, Any]:
    """The operator's own Job, as anyone can build it: predictable name, owner labels, no
    controller reference; its pod runs as the namespace's default ServiceAccount."""
    job = builders.build_job(obj, parse_spec(obj["spec"]), h.settings)
    del job["metadata"]["ownerReferences"]
    job["spec"]["template"]["spec"]["serviceAccountName"] = "default"
    return job


async def _no_result_for(h: OperatorHarness, name: str, seconds: float) -> dict[str, Any]:
    """The object over ``seconds`` (several resyncs): never Ready, never a result."""
    deadline = asyncio.get_running_loop().time() + seconds
    obj: dict[str, Any] | None = None
    while asyncio.get_running_loop().time() < deadline:
        obj = await h.get(name)
        assert obj is not None
        st = obj.get("status") or {}
        assert st.get("result") is None, json.dumps(st, indent=1)
        assert condition(obj, "Ready").get("status") != "True", json.dumps(st, indent=1)
        await asyncio.sleep(0.2)
    assert obj is not None
    return obj


async def test_a_forged_job_is_never_adopted_nor_believed(idle: OperatorHarness) -> None:
    h = idle
    obj, child = await _object_and_child(h, "forged")
    h.cluster.outcomes[child] = Outcome(message=FORGED)
    job = await h.kube.create(_stranger_job(obj, h))
    assert job["metadata"]["labels"]["kubequant.io/owner-uid"] == obj["metadata"]["uid"]
    # the stranger's pod ran and wrote the forged summary before the operator looks
    for _ in range(200):
        got = await h.kube.get("batch/v1", "Job", "default", child)
        if got and any(c["type"] == "Complete" for c in got["status"].get("conditions") or []):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the stranger's Job did not complete")

    await h.start_operator()
    stalled = await h.wait_condition("forged", "Stalled", reason="ChildConflict", timeout=20)
    st = stalled["status"]
    assert st["phase"] == "Pending"
    assert st["failure"]["reason"] == "ChildConflict"
    assert f"Job {child} (no controller) is not controlled by this object" in st["message"]
    assert st.get("result") is None and st.get("job") is None and not st.get("jobName")
    event = await h.wait_event("forged", "Warning", "ChildConflict")
    assert child in event["message"]
    await _no_result_for(h, "forged", 3 * h.settings.reconcile_interval_seconds)
    # nothing was created beside it, and the stranger's Job was left alone
    assert await h.kube.get("v1", "ServiceAccount", "default", child) is None
    assert await h.kube.get("batch/v1", "Job", "default", child) is not None

    # once the stranger's Job is gone the operator creates its own and the run goes on
    await h.kube.delete("batch/v1", "Job", "default", child)
    h.cluster.outcomes[child] = Outcome(message=summary_for(1))
    ready = await h.wait_condition("forged", "Ready", timeout=30, fail_on_stalled=False)
    ours = await h.kube.get("batch/v1", "Job", "default", child)
    assert ours is not None and builders.controlled_by(ours, obj["metadata"]["uid"])
    assert ready["status"]["job"] == {"name": child, "uid": ours["metadata"]["uid"]}
    assert ready["status"]["result"]["compressionRatio"] == 3.2


@pytest.mark.parametrize(
    ("kind", "manifest"),
    [
        ("ServiceAccount", lambda name: {"apiVersion": "v1", "kind": "ServiceAccount"}),
        (
            "Role",
            lambda name: {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
            },
        ),
    ],
)
async def test_a_strangers_identity_with_the_run_name_stalls(
    idle: OperatorHarness, kind: str, manifest: Any
) -> None:
    h = idle
    _, child = await _object_and_child(h, "ident")
    body = manifest(child)
    body["metadata"] = {
        "name": child,
        "namespace": "default",
        "labels": {"app.kubernetes.io/managed-by": "kubequant"},
    }
    await h.kube.create(body)

    await h.start_operator()
    stalled = await h.wait_condition("ident", "Stalled", reason="ChildConflict", timeout=20)
    message = stalled["status"]["message"]
    assert f"{kind} {child} (no controller) has the per-run name" in message
    await h.wait_event("ident", "Warning", "ChildConflict")
    assert await h.kube.get("batch/v1", "Job", "default", child) is None
    # still stalled at the next resyncs: the stranger's object is never taken over
    await asyncio.sleep(2 * h.settings.reconcile_interval_seconds)
    again = await h.get("ident")
    assert again is not None and condition(again, "Stalled")["reason"] == "ChildConflict"
    assert await h.kube.get("batch/v1", "Job", "default", child) is None


# --------------------------------------------------------------------------- names


def _manifest(name: str, spec: dict[str, Any]) -> str:
    obj = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }
    return yaml.safe_dump(obj)


NAME_FIELDS: list[tuple[str, Any]] = [
    ("spec.cache.pvcName", lambda v: {"cache": {"pvcName": v}}),
    ("spec.model.uri", lambda v: {"model": {"uri": f"pvc://{v}/m"}}),
    (
        "spec.output.credentialsSecret",
        lambda v: {"output": {"uri": "s3://b/o", "credentialsSecret": v}},
    ),
    (
        "spec.model.credentialsSecret",
        lambda v: {"model": {"uri": "hf://a/b", "credentialsSecret": v}},
    ),
    ("spec.resources.priorityClassName", lambda v: {"resources": {"priorityClassName": v}}),
    ("spec.queueName", lambda v: {"queueName": v}),
]


async def test_traversal_names_are_refused_at_admission_and_never_reach_a_path(
    shared_harness: OperatorHarness,
) -> None:
    h = shared_harness
    kubectl = make_kubectl(h.cluster)
    base = make_object()["spec"]
    for field, place in NAME_FIELDS:
        for i, bad in enumerate(TRAVERSALS):
            if bad == "a/b" and field == "spec.model.uri":
                continue  # pvc://a/b/m: claim "a", path b/m
            spec = copy.deepcopy(base)
            for key, value in place(bad).items():
                spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
            name = f"bad-{field.rsplit('.', 1)[-1].lower()}-{i}"
            refused = await asyncio.to_thread(
                kubectl, "apply", "-f", "-", input=_manifest(name, spec)
            )
            assert refused.returncode != 0, f"{field}={bad!r}: the CRD admitted it"
            assert field in refused.stderr, refused.stderr

    # A path the operator builds at runtime from any other source: escaped, or refused before
    # any request when it cannot be one segment.
    emu = h.cluster.emulator
    emu.clear_calls()
    assert not await h.kube.exists("v1", "PersistentVolumeClaim", "default", "a?b#c d")
    (call,) = [c for c in emu.api_calls() if c.resource == "persistentvolumeclaims"]
    assert (call.verb, call.namespace, call.name, call.code) == ("get", "default", "a?b#c d", 404)
    for bad in TRAVERSALS:
        for action in (
            h.kube.exists("v1", "PersistentVolumeClaim", "default", bad),
            h.kube.get("v1", "Secret", "default", bad),
            h.kube.delete("batch/v1", "Job", "default", bad),
        ):
            with pytest.raises(PathSegmentError):
                await action
    assert len(emu.api_calls()) == 1, [(c.verb, c.resource, c.name) for c in emu.api_calls()]


def test_local_control_plane_keeps_claim_directories_inside_its_state(tmp_path: Path) -> None:
    dirs = StateDirs(tmp_path / "state")
    root = (tmp_path / "state" / "pvc").resolve()
    for claim in [*TRAVERSALS, ".", "models"]:
        path = dirs.pvc(claim).resolve()
        assert path.parent == root, (claim, path)
    assert dirs.pvc("models") == tmp_path / "state" / "pvc" / "models"
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["pvc"]
    assert not (tmp_path / "x").exists() and not (tmp_path / "kube-system").exists()


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("name", "spec", "reason", "setting"),
    [
        ("pol-image", {"image": "docker.io/evil/miner:1"}, "ImageNotAllowed", "ALLOWED_IMAGES"),
        (
            "pol-priority",
            {"resources": {"priorityClassName": "system-node-critical"}},
            "PriorityClassNotAllowed",
            "ALLOWED_PRIORITY_CLASSES",
        ),
        (
            "pol-tolerate-all",
            {"resources": {"tolerations": [{"operator": "Exists"}]}},
            "PlacementNotAllowed",
            "ALLOW_TOLERATE_ALL",
        ),
        (
            "pol-control-plane",
            {"resources": {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}},
            "PlacementNotAllowed",
            "ALLOW_CONTROL_PLANE",
        ),
    ],
)
async def test_policy_refuses_before_any_child(
    shared_harness: OperatorHarness, name: str, spec: dict[str, Any], reason: str, setting: str
) -> None:
    h = shared_harness
    created = await h.create(make_object(name=name, **spec))
    meta = created["metadata"]
    child = builders.job_name("default", name, meta["uid"], 1)
    stalled = await h.wait_condition(name, "Stalled", reason=reason, timeout=20)
    assert stalled["status"]["phase"] == "Pending"
    assert f"KUBEQUANT_{setting}" in stalled["status"]["message"]
    await h.wait_event(name, "Warning", reason)
    assert await h.kube.get("v1", "ServiceAccount", "default", child) is None
    assert await h.kube.get("batch/v1", "Job", "default", child) is None
