"""Built-in kinds are always validated as a real API server validates them: the official
schema, then the cross-field rules of its validation code (pod spec, Job, RBAC, labels), with
the real field paths and wording; driven through the real kubectl and plain HTTP."""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from kubequant_localkube import validation
from kubequant_localkube.cluster import LocalCluster
from tests.fixtures.cluster import Kubectl, make_kubectl

JOBS = "/apis/batch/v1/namespaces/default/jobs"
PODS = "/api/v1/namespaces/default/pods"
RBAC = "/apis/rbac.authorization.k8s.io/v1/namespaces/default"
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def kubectl(local_cluster_module: LocalCluster) -> Kubectl:
    return make_kubectl(local_cluster_module)


def _post(cluster: LocalCluster, path: str, body: Obj) -> tuple[int, Obj]:
    request = urllib.request.Request(
        cluster.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _pod_spec() -> Obj:
    return {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "engine",
                "image": "kubequant/engine:1",
                "env": [{"name": "MODEL_ID", "value": "m"}],
                "resources": {
                    # Quantities compare by value, not as strings ("900m" < "1", "1e3" == "1k").
                    "requests": {"cpu": "900m", "memory": "1e3", "nvidia.com/gpu": "1"},
                    "limits": {"cpu": "1", "memory": "1k", "nvidia.com/gpu": 1},
                },
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            }
        ],
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "pool", "operator": "Equal", "value": "gpu"},
        ],
    }


def _job(name: str, mutate: Callable[[Obj], None] | None = None) -> Obj:
    job: Obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "kubequant"}},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": {"app": "kubequant"}}, "spec": _pod_spec()},
        },
    }
    if mutate is not None:
        mutate(job["spec"]["template"]["spec"])
    return job


def _pod(name: str, mutate: Callable[[Obj], None] | None = None) -> Obj:
    pod: Obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": _pod_spec(),
    }
    if mutate is not None:
        mutate(pod["spec"])
    return pod


def _only_cause(status: int, body: Obj) -> dict[str, str]:
    assert status == 422, body
    assert body["reason"] == "Invalid" and body["code"] == 422
    causes: list[dict[str, str]] = body["details"]["causes"]
    assert len(causes) == 1, causes
    return causes[0]


TOLERATION = "value must be empty when `operator` is 'Exists'"


def _exists_with_value(spec: Obj) -> None:
    spec["tolerations"] = [{"key": "gpu", "operator": "Exists", "value": "yes"}]


def test_toleration_exists_with_a_value_is_refused_through_kubectl(kubectl: Kubectl) -> None:
    job = _job("tol-kubectl", _exists_with_value)
    proc = kubectl("apply", "-f", "-", input=json.dumps(job))
    assert proc.returncode != 0
    assert (
        'spec.template.spec.tolerations[0].operator: Invalid value: "yes": ' + TOLERATION
    ) in proc.stderr
    assert kubectl("get", "job", "tol-kubectl").returncode != 0  # nothing was stored


def test_toleration_exists_with_a_value_is_refused_over_http(
    local_cluster_module: LocalCluster,
) -> None:
    status, body = _post(local_cluster_module, JOBS, _job("tol-http", _exists_with_value))
    cause = _only_cause(status, body)
    assert cause == {
        "field": "spec.template.spec.tolerations[0].operator",
        "reason": "FieldValueInvalid",
        "message": f'Invalid value: "yes": {TOLERATION}',
    }
    assert body["message"] == (
        'Job.batch "tol-http" is invalid: spec.template.spec.tolerations[0].operator: '
        f'Invalid value: "yes": {TOLERATION}'
    )
    assert body["details"]["name"] == "tol-http" and body["details"]["kind"] == "Job"


@pytest.mark.parametrize(
    ("requests", "limits", "message"),
    [
        (
            {"cpu": "2"},
            {"cpu": "1"},
            'Invalid value: "2": must be less than or equal to cpu ' "limit of 1",
        ),
        (
            {"memory": "1Gi"},
            {"memory": "512Mi"},
            'Invalid value: "1Gi": must be less than or ' "equal to memory limit of 512Mi",
        ),
        (
            {"cpu": "1001m"},
            {"cpu": "1"},
            'Invalid value: "1001m": must be less than or equal ' "to cpu limit of 1",
        ),
        # an extended resource cannot be overcommitted: requests must equal limits
        (
            {"nvidia.com/gpu": "1"},
            {"nvidia.com/gpu": "2"},
            'Invalid value: "1": must be equal ' "to nvidia.com/gpu limit of 2",
        ),
    ],
)
def test_requests_above_limits_are_refused(
    local_cluster_module: LocalCluster, requests: Obj, limits: Obj, message: str
) -> None:
    def mutate(spec: Obj) -> None:
        spec["containers"][0]["resources"] = {"requests": requests, "limits": limits}

    status, body = _post(local_cluster_module, JOBS, _job("over", mutate))
    cause = _only_cause(status, body)
    assert cause["field"] == "spec.template.spec.containers[0].resources.requests"
    assert cause["message"] == message


def _set(path: list[str | int], value: Any) -> Callable[[Obj], None]:
    def mutate(spec: Obj) -> None:
        node: Any = spec
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        (
            _set(["containers", 0, "name"], "Engine_1"),
            "spec.template.spec.containers[0].name",
            'Invalid value: "Engine_1": a lowercase RFC 1123 label must consist of',
        ),
        (
            _set(["containers", 0, "env", 0, "name"], "MODEL=ID"),
            "spec.template.spec.containers[0].env[0].name",
            'Invalid value: "MODEL=ID": a valid environment variable name must consist only of '
            "printable ASCII characters other than '='",
        ),
        (
            _set(["containers", 0, "resources"], {"limits": {"gpu": "1"}}),
            "spec.template.spec.containers[0].resources.limits[gpu]",
            "Invalid value: gpu: must be a standard resource type or fully qualified",
        ),
        (
            _set(["volumes", 0, "name"], "Cache"),
            "spec.template.spec.volumes[0].name",
            'Invalid value: "Cache": a lowercase RFC 1123 label',
        ),
        (
            _set(["serviceAccountName"], "Engine"),
            "spec.template.spec.serviceAccountName",
            'Invalid value: "Engine": a lowercase RFC 1123 subdomain',
        ),
        (
            _set(["priorityClassName"], "high_priority"),
            "spec.template.spec.priorityClassName",
            'Invalid value: "high_priority": a lowercase RFC 1123 subdomain',
        ),
        (
            _set(["restartPolicy"], "Always"),
            "spec.template.spec.restartPolicy",
            'Required value: valid values: "OnFailure", "Never"',
        ),
        (
            _set(["containers", 1], {"name": "engine", "image": "x"}),
            "spec.template.spec.containers[1].name",
            'Duplicate value: "engine"',
        ),
        (
            _set(["containers", 0, "volumeMounts", 0, "name"], "models"),
            "spec.template.spec.containers[0].volumeMounts[0].name",
            'Not found: "models"',
        ),
        (
            _set(["tolerations", 0, "operator"], "In"),
            "spec.template.spec.tolerations[0].operator",
            'Unsupported value: "In": supported values: "Equal", "Exists"',
        ),
    ],
)
def test_pod_template_rules_name_the_field(
    local_cluster_module: LocalCluster, mutate: Callable[[Obj], None], field: str, fragment: str
) -> None:
    def apply(spec: Obj) -> None:
        if field.endswith("containers[1].name"):
            spec["containers"].append({})
        mutate(spec)

    status, body = _post(local_cluster_module, JOBS, _job("bad-template", apply))
    causes = body.get("details", {}).get("causes", [])
    assert status == 422, body
    assert any(c["field"] == field and fragment in c["message"] for c in causes), causes


def test_bad_label_value_is_refused_through_kubectl(kubectl: Kubectl) -> None:
    job = _job("bad-label")
    job["metadata"]["labels"]["team"] = "ml team"
    proc = kubectl("apply", "-f", "-", input=json.dumps(job))
    assert proc.returncode != 0
    assert 'metadata.labels: Invalid value: "ml team": a valid label must be an empty string' in (
        proc.stderr
    )


def test_job_spec_numbers_and_pod_failure_policy(local_cluster_module: LocalCluster) -> None:
    job = _job("numbers")
    job["spec"]["backoffLimit"] = -1
    job["spec"]["ttlSecondsAfterFinished"] = -5
    job["spec"]["podFailurePolicy"] = {
        "rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [3, 2]}}]
    }
    status, body = _post(local_cluster_module, JOBS, job)
    assert status == 422
    got = {(c["field"], c["message"]) for c in body["details"]["causes"]}
    assert got == {
        ("spec.backoffLimit", "Invalid value: -1: must be greater than or equal to 0"),
        ("spec.ttlSecondsAfterFinished", "Invalid value: -5: must be greater than or equal to 0"),
        (
            "spec.podFailurePolicy.rules[0].onExitCodes.values",
            "Invalid value: []int32{3, 2}: " "must be ordered",
        ),
    }
    assert body["message"].startswith('Job.batch "numbers" is invalid: [spec.backoffLimit: ')


def test_a_valid_job_is_created_and_can_be_updated(
    kubectl: Kubectl, local_cluster_module: LocalCluster
) -> None:
    job = _job("valid-job")
    job["spec"]["podFailurePolicy"] = {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "engine", "operator": "In", "values": [2, 3]},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }
    kubectl("apply", "-f", "-", input=json.dumps(job), check=True)
    # an update re-validates the stored (defaulted) object: still valid
    kubectl("label", "job", "valid-job", "stage=two", check=True)
    got = json.loads(kubectl("get", "job", "valid-job", "-o", "json", check=True).stdout)
    assert got["metadata"]["labels"]["stage"] == "two"
    assert got["spec"]["podReplacementPolicy"] == "Failed"  # defaulted as with a failure policy


def test_a_job_name_too_long_for_its_pod_labels_is_refused(
    local_cluster_module: LocalCluster,
) -> None:
    name = "j" * 64  # a valid object name, but not a label value (the Job's pods carry it)
    status, body = _post(local_cluster_module, JOBS, _job(name))
    assert status == 422
    assert {c["field"] for c in body["details"]["causes"]} == {"spec.template.labels"}
    assert "must be no more than 63 characters" in body["details"]["causes"][0]["message"]


def test_pod_rules_and_a_valid_pod(kubectl: Kubectl, local_cluster_module: LocalCluster) -> None:
    status, body = _post(local_cluster_module, PODS, _pod("tol-pod", _exists_with_value))
    cause = _only_cause(status, body)
    assert cause["field"] == "spec.tolerations[0].operator"
    assert body["message"].startswith('Pod "tol-pod" is invalid: spec.tolerations[0].operator: ')

    def over(spec: Obj) -> None:
        spec["containers"][0]["resources"] = {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}

    proc = kubectl("apply", "-f", "-", input=json.dumps(_pod("over-pod", over)))
    assert proc.returncode != 0
    assert 'spec.containers[0].resources.requests: Invalid value: "2"' in proc.stderr

    def always(spec: Obj) -> None:
        spec["restartPolicy"] = "Always"  # fine for a Pod, refused only in a Job's template

    kubectl("apply", "-f", "-", input=json.dumps(_pod("valid-pod", always)), check=True)


def test_rbac_objects(local_cluster_module: LocalCluster) -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "r"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": []}],
    }
    status, body = _post(local_cluster_module, f"{RBAC}/roles", role)
    assert _only_cause(status, body) == {
        "field": "rules[0].verbs",
        "reason": "FieldValueRequired",
        "message": "Required value: verbs must contain at least one value",
    }
    binding: Obj = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "b"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Secret", "name": "r"},
        "subjects": [{"kind": "Robot", "name": "x"}],
    }
    status, body = _post(local_cluster_module, f"{RBAC}/rolebindings", binding)
    assert status == 422
    assert {(c["field"], c["reason"], c["message"]) for c in body["details"]["causes"]} == {
        (
            "roleRef.kind",
            "FieldValueNotSupported",
            'Unsupported value: "Secret": supported values: "Role", "ClusterRole"',
        ),
        (
            "subjects[0].kind",
            "FieldValueNotSupported",
            'Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group"',
        ),
    }
    fixed = copy.deepcopy(binding)
    fixed["roleRef"]["kind"] = "Role"
    fixed["subjects"] = [
        {"kind": "ServiceAccount", "name": "engine"},
        {"kind": "User", "name": "u"},
    ]
    status, body = _post(local_cluster_module, f"{RBAC}/rolebindings", fixed)
    assert status == 201, body


def test_an_unparsable_quantity_is_a_decode_error(local_cluster_module: LocalCluster) -> None:
    def mutate(spec: Obj) -> None:
        spec["containers"][0]["resources"] = {"limits": {"cpu": "lots"}}

    status, body = _post(local_cluster_module, JOBS, _job("qty", mutate))
    assert status == 400
    assert "quantities must match the regular expression" in body["message"]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("1", "1"),
        ("500m", "500m"),
        ("0.5", "500m"),
        ("1000", "1k"),
        ("1Gi", "1Gi"),
        ("2048Mi", "2Gi"),
        ("1536Mi", "1536Mi"),
        ("1e3", "1e3"),
        ("1.5e3", "1500"),
        ("0.1m", "100u"),
        (2, "2"),
    ],
)
def test_quantity_canonical_form(text: Any, canonical: str) -> None:
    assert str(validation.parse_quantity(text)) == canonical


def test_quantity_order_is_by_value() -> None:
    q = validation.parse_quantity
    assert q("900m").value < q("1").value
    assert q("1e3").value == q("1k").value
    assert q("1Gi").value > q("1G").value
    assert q("1Mi").value == 1024 * q("1Ki").value
    with pytest.raises(validation.QuantityError):
        q("1.2.3")
    with pytest.raises(validation.QuantityError):
        q("12Qi")


def test_rbac_names_are_path_segments_not_dns_names(local_cluster_module: LocalCluster) -> None:
    """``ValidateRBACName`` is ``path.IsValidPathSegmentName``: the bootstrap roles'
    ``system:...`` names are valid, only ``.``, ``..``, ``/`` and ``%`` are refused."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "system:kubequant:Viewer"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    }
    status, body = _post(local_cluster_module, f"{RBAC}/roles", role)
    assert status == 201, body
    bad = copy.deepcopy(role)
    bad["metadata"]["name"] = "a%b"
    status, body = _post(local_cluster_module, f"{RBAC}/roles", bad)
    assert _only_cause(status, body) == {
        "field": "metadata.name",
        "reason": "FieldValueInvalid",
        "message": "Invalid value: \"a%b\": may not contain '%'",
    }
