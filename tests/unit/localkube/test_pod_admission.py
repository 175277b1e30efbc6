"""The admission a Job's pods meet on a real cluster (Priority, ResourceQuota, PodSecurity,
ServiceAccount, OwnerReferencesPermissionEnforcement) and the Job controller's FailedCreate
events, driven through the real kubectl."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubequant_api.models import parse_spec
from kubequant_localkube.cluster import LocalCluster
from kubequant_operator import builders
from kubequant_operator.settings import Settings
from tests.fixtures.cluster import Kubectl, make_kubectl
from tests.fixtures.operator import make_object


def wait_for(fn: Callable[[], Any], timeout: float = 15.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {fn}")


def job(name: str, namespace: str = "default", **pod_spec: Any) -> dict[str, Any]:
    container = {"name": "engine", "image": "kubequant/engine:test"}
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], **pod_spec}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"backoffLimit": 0, "template": {"spec": spec}},
    }


def get_json(kubectl: Kubectl, *args: str) -> Any:
    return json.loads(kubectl("get", *args, "-o", "json", check=True).stdout)


def events(kubectl: Kubectl, selector: str, namespace: str = "default") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(
        kubectl, "events", "-n", namespace, "--field-selector", selector
    )["items"]
    return items


def pods_of(kubectl: Kubectl, name: str, namespace: str = "default") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(
        kubectl, "pods", "-n", namespace, "-l", f"job-name={name}"
    )["items"]
    return items


def completed(kubectl: Kubectl, name: str, namespace: str = "default") -> bool:
    status = get_json(kubectl, "job", name, "-n", namespace).get("status") or {}
    return any(c["type"] == "Complete" for c in status.get("conditions") or [])


@pytest.fixture
def fast(local_cluster: LocalCluster) -> LocalCluster:
    """The cluster with a short create backoff (the emulator's default: 0.5 s to 10 s)."""
    local_cluster.jobs.create_backoff_initial = 0.05
    local_cluster.jobs.create_backoff_max = 0.2
    return local_cluster


def test_missing_priority_class_is_recorded_on_the_job_and_retried(
    fast: LocalCluster, kubectl: Kubectl
) -> None:
    body = job("prio", priorityClassName="batch-high")
    kubectl("apply", "-f", "-", input=json.dumps(body), check=True)
    uid = get_json(kubectl, "job", "prio")["metadata"]["uid"]

    # aggregated as the real event correlator does: one Event whose count grows
    recorded = wait_for(
        lambda: [e for e in events(kubectl, "involvedObject.name=prio") if e["count"] >= 3]
    )
    (event,) = events(kubectl, "involvedObject.name=prio")
    assert event["message"] == (
        'Error creating: pods "prio-" is forbidden: no PriorityClass with name batch-high was found'
    )
    assert event["reason"] == "FailedCreate" and event["type"] == "Warning"
    assert event["source"] == {"component": "job-controller"}
    assert event["reportingComponent"] == "job-controller"
    assert event["involvedObject"] | {"resourceVersion": ""} == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "prio",
        "namespace": "default",
        "uid": uid,
        "resourceVersion": "",
    }
    assert event["metadata"]["name"].startswith("prio.")
    assert event["lastTimestamp"] >= event["firstTimestamp"] == recorded[0]["firstTimestamp"]
    # the fields the real server selects events by
    for selector in (
        f"involvedObject.uid={uid}",
        "involvedObject.kind=Job,reason=FailedCreate",
        "type=Warning,involvedObject.name=prio",
    ):
        assert [e["metadata"]["name"] for e in events(kubectl, selector)] == [
            event["metadata"]["name"]
        ]
    assert events(kubectl, "type=Normal") == []
    assert events(kubectl, "involvedObject.name=other") == []
    assert pods_of(kubectl, "prio") == []

    pc = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": "batch-high"},
        "value": 1000,
    }
    kubectl("apply", "-f", "-", input=json.dumps(pc), check=True)
    wait_for(lambda: completed(kubectl, "prio"))
    (pod,) = pods_of(kubectl, "prio")
    assert pod["spec"]["priority"] == 1000
    assert pod["spec"]["preemptionPolicy"] == "PreemptLowerPriority"


def test_global_default_priority_class_and_a_second_default(kubectl: Kubectl) -> None:
    pc = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": "normal"},
        "value": 100,
        "globalDefault": True,
    }
    kubectl("apply", "-f", "-", input=json.dumps(pc), check=True)
    second = dict(pc, metadata={"name": "another"})
    refused = kubectl("apply", "-f", "-", input=json.dumps(second))
    assert refused.returncode != 0
    assert (
        'priorityclasses.scheduling.k8s.io "another" is forbidden: PriorityClass normal is '
        "already marked as default. Only one default can exist"
    ) in refused.stderr
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    }
    kubectl("apply", "-f", "-", input=json.dumps(pod), check=True)
    spec = get_json(kubectl, "pod", "p")["spec"]
    assert (spec["priorityClassName"], spec["priority"]) == ("normal", 100)


def test_exceeded_quota_is_recorded_and_the_pod_created_once_raised(
    fast: LocalCluster, kubectl: Kubectl
) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "mem", "namespace": "default"},
        "spec": {"hard": {"requests.memory": "2Gi", "pods": "5", "count/pods": "10"}},
    }
    kubectl("apply", "-f", "-", input=json.dumps(quota), check=True)
    hog = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hog"},
        "spec": {
            "containers": [
                {"name": "c", "image": "i", "resources": {"requests": {"memory": "1Gi"}}}
            ]
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(hog), check=True)
    status = wait_for(
        lambda: (s := get_json(kubectl, "quota", "mem").get("status") or {}).get("used")
        == {
            "requests.memory": "1Gi",
            "pods": "1",
            "count/pods": "1",
        }
        and s
    )
    assert status["hard"] == {"requests.memory": "2Gi", "pods": "5", "count/pods": "10"}

    # a pod without a memory request cannot be counted: refused as the real evaluator does
    bare = dict(hog, metadata={"name": "bare"})
    bare["spec"] = {"containers": [{"name": "c", "image": "i"}]}
    refused = kubectl("apply", "-f", "-", input=json.dumps(bare))
    assert (
        'pods "bare" is forbidden: failed quota: mem: must specify requests.memory for: c'
        in refused.stderr
    )

    big = job("big")
    big["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"memory": "2Gi"}}
    kubectl("apply", "-f", "-", input=json.dumps(big), check=True)
    # each attempt has a new generated name, so a new message: separate Events, then (from
    # the 10th) one combined Event, as client-go's EventAggregator does
    combined = "(combined from similar events): "
    recorded = wait_for(
        lambda: [
            e
            for e in events(kubectl, "involvedObject.name=big,reason=FailedCreate")
            if e["message"].startswith(combined) and e["count"] >= 2
        ]
    )
    assert len(recorded) == 1
    refusals = events(kubectl, "involvedObject.name=big,reason=FailedCreate")
    assert len(refusals) == 10  # 9 distinct ones, then the combined one
    for event in refusals:
        assert re.fullmatch(
            r"(\(combined from similar events\): )?"
            r'Error creating: pods "big-[a-z0-9]{5}" is forbidden: exceeded quota: mem, '
            r"requested: requests\.memory=2Gi, used: requests\.memory=1Gi, "
            r"limited: requests\.memory=2Gi",
            event["message"],
        ), event["message"]
    assert pods_of(kubectl, "big") == []

    kubectl(
        "patch",
        "quota",
        "mem",
        "--type=merge",
        "-p",
        '{"spec": {"hard": {"requests.memory": "4Gi"}}}',
        check=True,
    )
    wait_for(lambda: completed(kubectl, "big"))
    # the finished pod no longer counts against compute resources or "pods", but still
    # against count/pods (the real pod evaluator's rule for terminal pods)
    wait_for(
        lambda: get_json(kubectl, "quota", "mem")["status"]["used"]
        == {"requests.memory": "1Gi", "pods": "1", "count/pods": "2"}
    )


def test_extended_resource_quota(kubectl: Kubectl) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "gpus", "namespace": "default"},
        "spec": {"hard": {"requests.nvidia.com/gpu": "1"}},
    }
    kubectl("apply", "-f", "-", input=json.dumps(quota), check=True)

    def pod(name: str) -> str:
        limits = {"nvidia.com/gpu": "1"}  # requests default to limits
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": {
                    "containers": [{"name": "c", "image": "i", "resources": {"limits": limits}}]
                },
            }
        )

    kubectl("apply", "-f", "-", input=pod("first"), check=True)
    refused = kubectl("apply", "-f", "-", input=pod("second"))
    assert (
        'pods "second" is forbidden: exceeded quota: gpus, requested: '
        "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=1, "
        "limited: requests.nvidia.com/gpu=1"
    ) in refused.stderr


PRIVILEGED_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "priv", "namespace": "secure"},
    "spec": {
        "hostNetwork": True,
        "containers": [{"name": "x", "image": "i", "securityContext": {"privileged": True}}],
    },
}
PRIVILEGED_VIOLATIONS = (
    "host namespaces (hostNetwork=true), "
    'privileged (container "x" must not set securityContext.privileged=true), '
    'allowPrivilegeEscalation != false (container "x" must set '
    "securityContext.allowPrivilegeEscalation=false), "
    'unrestricted capabilities (container "x" must set securityContext.capabilities.drop=["ALL"]), '
    'runAsNonRoot != true (pod or container "x" must set securityContext.runAsNonRoot=true), '
    'seccompProfile (pod or container "x" must set securityContext.seccompProfile.type to '
    '"RuntimeDefault" or "Localhost")'
)


def _namespace(kubectl: Kubectl, name: str, labels: dict[str, str]) -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    kubectl("apply", "-f", "-", input=json.dumps(ns), check=True)


def test_pod_security_restricted_namespace(fast: LocalCluster, kubectl: Kubectl) -> None:
    _namespace(kubectl, "secure", {"pod-security.kubernetes.io/enforce": "restricted"})
    refused = kubectl("apply", "-f", "-", input=json.dumps(PRIVILEGED_POD))
    assert refused.returncode != 0
    assert (
        f'pods "priv" is forbidden: violates PodSecurity "restricted:latest": '
        f"{PRIVILEGED_VIOLATIONS}"
    ) in refused.stderr

    # a workload resource is admitted with a warning; its pods are refused
    bad = job("bad", "secure", **PRIVILEGED_POD["spec"])  # type: ignore[arg-type]
    created = kubectl("apply", "-f", "-", input=json.dumps(bad), check=True)
    assert (
        f'Warning: would violate PodSecurity "restricted:latest": {PRIVILEGED_VIOLATIONS}'
        in created.stderr
    )
    event = wait_for(lambda: events(kubectl, "involvedObject.name=bad", "secure"))[0]
    assert re.fullmatch(
        r'Error creating: pods "bad-[a-z0-9]{5}" is forbidden: violates PodSecurity '
        r'"restricted:latest": ' + re.escape(PRIVILEGED_VIOLATIONS),
        event["message"],
    ), event["message"]

    # the operator's own Job is restricted-compliant: admitted, its pod created
    obj = make_object("minilm", namespace="secure")
    operator_job = builders.build_job(obj, parse_spec(obj["spec"]), Settings())
    operator_job["metadata"].pop("ownerReferences", None)  # no ModelOptimization stored here
    sa = operator_job["spec"]["template"]["spec"]["serviceAccountName"]
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}}
    kubectl("apply", "-n", "secure", "-f", "-", input=json.dumps(account), check=True)
    created = kubectl("apply", "-f", "-", input=json.dumps(operator_job), check=True)
    assert "PodSecurity" not in created.stderr
    name = operator_job["metadata"]["name"]
    wait_for(lambda: completed(kubectl, name, "secure"))
    assert events(kubectl, f"involvedObject.name={name}", "secure") == []


def test_pod_security_warn_label(kubectl: Kubectl) -> None:
    _namespace(
        kubectl,
        "lenient",
        {
            "pod-security.kubernetes.io/enforce": "baseline",
            "pod-security.kubernetes.io/warn": "restricted",
        },
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain", "namespace": "lenient"},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
    }
    created = kubectl("apply", "-f", "-", input=json.dumps(pod), check=True)
    assert 'Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation' in (
        created.stderr
    )
    priv = dict(PRIVILEGED_POD, metadata={"name": "priv", "namespace": "lenient"})
    refused = kubectl("apply", "-f", "-", input=json.dumps(priv))
    assert (
        'pods "priv" is forbidden: violates PodSecurity "baseline:latest": host namespaces '
        '(hostNetwork=true), privileged (container "x" must not set '
        "securityContext.privileged=true)"
    ) in refused.stderr


def test_missing_service_account_then_created(fast: LocalCluster, kubectl: Kubectl) -> None:
    kubectl(
        "apply", "-f", "-", input=json.dumps(job("sa", serviceAccountName="runner")), check=True
    )
    (event,) = wait_for(lambda: events(kubectl, "involvedObject.name=sa"))
    assert event["message"] == (
        'Error creating: pods "sa-" is forbidden: error looking up service account '
        'default/runner: serviceaccount "runner" not found'
    )
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}}
    kubectl("apply", "-f", "-", input=json.dumps(account), check=True)
    wait_for(lambda: completed(kubectl, "sa"))


def test_active_deadline_applies_while_pods_are_refused(
    fast: LocalCluster, kubectl: Kubectl
) -> None:
    body = job("late", priorityClassName="missing")
    body["spec"]["activeDeadlineSeconds"] = 1
    kubectl("apply", "-f", "-", input=json.dumps(body), check=True)

    def failed() -> dict[str, Any] | None:
        status = get_json(kubectl, "job", "late").get("status") or {}
        conds = {c["type"]: c for c in status.get("conditions") or []}
        return conds.get("Failed")

    cond = wait_for(failed)
    assert cond["reason"] == "DeadlineExceeded"
    assert events(kubectl, "involvedObject.name=late,reason=FailedCreate")


# ------------------------------------------------------------------------------ owner refs
DEV = "system:serviceaccount:default:dev"


@pytest.fixture
def enforcing(tmp_path: Path, crd_manifest: dict[str, Any]) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        kubeconfig_path=tmp_path / "kubeconfig",
        state_dir=tmp_path / "state",
        owner_references_permission_enforcement=True,
    ).start()
    try:
        crds = cluster.store.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        cluster.store.create(crds, None, crd_manifest)
        yield cluster
    finally:
        cluster.stop()


def _grant(kubectl: Kubectl, name: str, rules: list[dict[str, Any]]) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": "default"},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "dev", "namespace": "default"}],
    }
    kubectl("apply", "-f", "-", input=json.dumps(role), check=True)
    kubectl("apply", "-f", "-", input=json.dumps(binding), check=True)


def test_owner_references_permission_enforcement(enforcing: LocalCluster) -> None:
    kubectl = make_kubectl(enforcing)
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dev"}}
    kubectl("apply", "-f", "-", input=json.dumps(account), check=True)
    mopt = make_object("mo", namespace="default")
    for key in ("uid", "resourceVersion", "creationTimestamp", "generation"):
        mopt["metadata"].pop(key)
    kubectl("apply", "-f", "-", input=json.dumps(mopt), check=True)
    uid = get_json(kubectl, "modeloptimization", "mo")["metadata"]["uid"]
    owned = job("owned")
    owned["metadata"]["ownerReferences"] = [
        {
            "apiVersion": mopt["apiVersion"],
            "kind": mopt["kind"],
            "name": "mo",
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    manifest = json.dumps(owned)

    _grant(kubectl, "jobs", [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}])
    refused = kubectl(f"--as={DEV}", "create", "-f", "-", input=manifest)
    assert (
        'jobs.batch "owned" is forbidden: cannot set an ownerRef on a resource you can\'t '
        "delete: , <nil>"
    ) in refused.stderr

    _grant(
        kubectl,
        "jobs",
        [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete"]}],
    )
    refused = kubectl(f"--as={DEV}", "create", "-f", "-", input=manifest)
    assert (
        'jobs.batch "owned" is forbidden: cannot set blockOwnerDeletion if an ownerReference '
        "refers to a resource you can't set finalizers on: , <nil>"
    ) in refused.stderr
    # without blockOwnerDeletion the reference needs no more than delete on the Job
    loose = json.loads(manifest)
    loose["metadata"]["name"] = "loose"
    loose["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] = False
    kubectl(f"--as={DEV}", "create", "-f", "-", input=json.dumps(loose), check=True)

    _grant(
        kubectl,
        "finalizers",
        [
            {
                "apiGroups": ["kubequant.io"],
                "resources": ["modeloptimizations/finalizers"],
                "verbs": ["update"],
                "resourceNames": ["mo"],
            }
        ],
    )
    kubectl(f"--as={DEV}", "create", "-f", "-", input=manifest, check=True)
    # the admin (system:masters) is never refused
    admin = json.loads(manifest)
    admin["metadata"]["name"] = "by-admin"
    kubectl("create", "-f", "-", input=json.dumps(admin), check=True)


def test_owner_references_not_enforced_by_default(
    local_cluster: LocalCluster, kubectl: Kubectl
) -> None:
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "dev"}}
    kubectl("apply", "-f", "-", input=json.dumps(account), check=True)
    _grant(kubectl, "jobs", [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}])
    owned = job("owned")
    owned["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": "c",
            "uid": "u",
            "blockOwnerDeletion": True,
        }
    ]
    kubectl(f"--as={DEV}", "create", "-f", "-", input=json.dumps(owned), check=True)
