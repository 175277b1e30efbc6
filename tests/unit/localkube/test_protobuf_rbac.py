"""kubectl's imperative ``create role/rolebinding/clusterrole/clusterrolebinding/priorityclass/
quota`` send protobuf bodies; the local control plane decodes them (field numbers from
k8s.io/api's generated.proto) and stores what a real server stores. Driven by the real kubectl.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest

from kubequant_localkube import protobuf
from kubequant_localkube.cluster import LocalCluster
from tests.fixtures.cluster import Kubectl

DEV = "system:serviceaccount:default:dev"
GROUPS = '["system:serviceaccounts" "system:serviceaccounts:default" "system:authenticated"]'

# dev may create roles and holds get/list on pods and configmaps, nothing on secrets.
SETUP = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: dev, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: dev, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods, configmaps]
  verbs: [get, list]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles]
  verbs: [get, create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dev, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: dev}
subjects: [{kind: ServiceAccount, name: dev, namespace: default}]
"""


def _get(kubectl: Kubectl, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kubectl("get", *args, "-o", "json", check=True).stdout)
    return out


def test_create_role_and_rolebinding(kubectl: Kubectl) -> None:
    kubectl(
        "create", "role", "r", "--verb=get,list", "--resource=pods,deployments.apps", check=True
    )
    role = _get(kubectl, "role", "r")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]},
    ]
    assert role["metadata"]["namespace"] == "default"
    assert "generateName" not in role["metadata"]  # empty optional fields are omitted

    kubectl(
        "create",
        "rolebinding",
        "rb",
        "--role=r",
        "--user=jane",
        "--group=team",
        "--serviceaccount=default:sa",
        check=True,
    )
    binding = _get(kubectl, "rolebinding", "rb")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "r",
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "jane"},
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "team"},
        {"kind": "ServiceAccount", "name": "sa", "namespace": "default"},
    ]


def test_create_clusterrole_with_aggregation_rule_and_clusterrolebinding(kubectl: Kubectl) -> None:
    kubectl("create", "clusterrole", "agg", "--aggregation-rule=team=ml,tier=gpu", check=True)
    agg = _get(kubectl, "clusterrole", "agg")
    assert agg["aggregationRule"] == {
        "clusterRoleSelectors": [{"matchLabels": {"team": "ml", "tier": "gpu"}}]
    }
    assert "namespace" not in agg["metadata"]

    kubectl(
        "create",
        "clusterrole",
        "urls",
        "--verb=get",
        "--non-resource-url=/healthz",
        "--non-resource-url=/metrics",
        check=True,
    )
    assert _get(kubectl, "clusterrole", "urls")["rules"] == [
        {"nonResourceURLs": ["/healthz", "/metrics"], "verbs": ["get"]}
    ]
    kubectl(
        "create",
        "clusterrole",
        "named",
        "--verb=get",
        "--resource=secrets",
        "--resource-name=a",
        "--resource-name=b",
        check=True,
    )
    assert _get(kubectl, "clusterrole", "named")["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a", "b"], "verbs": ["get"]}
    ]

    kubectl("create", "clusterrolebinding", "crb", "--clusterrole=urls", "--group=ops", check=True)
    crb = _get(kubectl, "clusterrolebinding", "crb")
    assert crb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "urls",
    }
    assert crb["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ops"}
    ]


def test_create_priorityclass_and_quota(kubectl: Kubectl) -> None:
    kubectl("create", "priorityclass", "low", "--value=-5", "--description=batch", check=True)
    low = _get(kubectl, "priorityclass", "low")
    assert (low["value"], low["description"]) == (-5, "batch")  # int32 sent as a 10-byte varint
    assert low["preemptionPolicy"] == "PreemptLowerPriority"
    assert "globalDefault" not in low
    kubectl(
        "create",
        "priorityclass",
        "zero",
        "--value=0",
        "--global-default=true",
        "--preemption-policy=Never",
        check=True,
    )
    zero = _get(kubectl, "priorityclass", "zero")
    assert (zero["value"], zero["globalDefault"], zero["preemptionPolicy"]) == (0, True, "Never")

    kubectl(
        "create",
        "quota",
        "q",
        "--hard=pods=3,cpu=500m,requests.memory=1Gi",
        "--scopes=BestEffort",
        check=True,
    )
    quota = _get(kubectl, "quota", "q")
    assert quota["spec"] == {
        "hard": {"pods": "3", "cpu": "500m", "requests.memory": "1Gi"},
        "scopes": ["BestEffort"],
    }


def test_create_role_as_a_service_account_is_checked_for_escalation(
    kubectl: Kubectl,
) -> None:
    kubectl("apply", "-f", "-", input=SETUP, check=True)

    def dev(*args: str) -> subprocess.CompletedProcess[str]:
        return kubectl(f"--as={DEV}", *args)

    refused = dev("create", "role", "too-much", "--verb=get,list", "--resource=pods,secrets")
    assert refused.returncode != 0
    assert "(Forbidden)" in refused.stderr, refused.stderr
    assert (
        f'roles.rbac.authorization.k8s.io "too-much" is forbidden: user "{DEV}" '
        f"(groups={GROUPS}) is attempting to grant RBAC permissions not currently held:\n"
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get" "list"]}'
    ) in refused.stderr
    assert kubectl("get", "role", "too-much").returncode != 0  # nothing stored

    created = dev("create", "role", "within", "--verb=get", "--resource=pods,configmaps")
    assert created.returncode == 0, created.stderr
    assert _get(kubectl, "role", "within")["rules"] == [
        {"apiGroups": [""], "resources": ["pods", "configmaps"], "verbs": ["get"]}
    ]
    # no rolebindings rights: the create itself is forbidden, with the authorizer's wording
    binding = dev("create", "rolebinding", "x", "--role=within", "--user=jane")
    assert binding.returncode != 0
    assert (
        f'rolebindings.rbac.authorization.k8s.io is forbidden: User "{DEV}" cannot create '
        'resource "rolebindings" in API group "rbac.authorization.k8s.io" in the namespace '
        '"default"'
    ) in binding.stderr, binding.stderr


def _key(num: int, wt: int) -> bytes:
    return _varint(num << 3 | wt)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _ld(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _varint(len(payload)) + payload


def _post_protobuf(cluster: LocalCluster, path: str, kind: str, obj: bytes) -> tuple[int, Any]:
    type_meta = _ld(1, b"rbac.authorization.k8s.io/v1") + _ld(2, kind.encode())
    body = protobuf.MAGIC + _ld(1, type_meta) + _ld(2, obj)
    request = urllib.request.Request(
        cluster.url + path,
        data=body,
        method="POST",
        headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_a_field_the_decoder_does_not_know_is_refused_not_dropped(
    local_cluster: LocalCluster, kubectl: Kubectl
) -> None:
    path = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles"
    rule = _ld(1, b"get") + _ld(2, b"") + _ld(3, b"pods")
    # zero-valued fields Go always writes (an empty creationTimestamp, an empty string) pass
    meta = _ld(1, b"ok") + _ld(2, b"") + _ld(8, b"")
    status, body = _post_protobuf(local_cluster, path, "Role", _ld(1, meta) + _ld(2, rule))
    assert status == 201, body
    assert body["rules"] == [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]

    # a PolicyRule field number this decoder has no schema for, carrying a value: 415
    unknown = rule + _ld(9, b"x")
    meta = _ld(1, b"bad")
    status, body = _post_protobuf(local_cluster, path, "Role", _ld(1, meta) + _ld(2, unknown))
    assert status == 415, body
    assert body["reason"] == "UnsupportedMediaType"
    assert "field number 9 of Role.rules (with a value)" in body["message"]
    assert kubectl("get", "role", "bad").returncode != 0


@pytest.mark.parametrize(
    "args", [("job", "j", "--image=busybox"), ("deployment", "d", "--image=busybox")]
)
def test_kinds_without_a_schema_get_415(kubectl: Kubectl, args: tuple[str, ...]) -> None:
    proc = kubectl("create", *args)
    assert proc.returncode != 0
    assert f"protobuf bodies of kind '{args[0].capitalize()}' are not supported" in proc.stderr
