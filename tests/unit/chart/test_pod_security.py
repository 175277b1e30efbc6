"""Every pod the chart renders, and every Job pod the operator builds, meets PSS restricted."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.unit.chart.pss import violations
from tests.unit.chart.render import VALUE_SETS, pod_specs, render_set


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_chart_pods_meet_restricted(value_set: str) -> None:
    specs = pod_specs(render_set(value_set))
    assert specs, "the chart renders at least the operator Deployment"
    for where, spec in specs:
        assert violations(spec) == [], where


def _good() -> dict[str, Any]:
    return {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {
                "name": "c",
                "image": "x",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
                },
            }
        ],
        "volumes": [{"name": "v", "emptyDir": {}}, {"name": "p", "persistentVolumeClaim": {}}],
    }


def _set(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    node: Any = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[keys[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("hostNetwork", True, "hostNetwork"),
        ("hostPID", True, "hostPID"),
        ("hostIPC", True, "hostIPC"),
        ("volumes", [{"name": "h", "hostPath": {"path": "/"}}], "hostPath"),
        ("volumes", [{"name": "n", "nfs": {"server": "x", "path": "/"}}], "not allowed"),
        ("securityContext.runAsNonRoot", False, "runAsNonRoot"),
        ("securityContext.seccompProfile", {"type": "Unconfined"}, "Unconfined"),
        ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "sysctl"),
        ("containers.0.securityContext.privileged", True, "privileged"),
        ("containers.0.securityContext.allowPrivilegeEscalation", True, "allowPrivilegeEscalation"),
        ("containers.0.securityContext.capabilities", {"drop": ["NET_RAW"]}, "drop must include"),
        (
            "containers.0.securityContext.capabilities",
            {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
            "SYS_ADMIN",
        ),
        ("containers.0.securityContext.runAsUser", 0, "runAsUser"),
        ("containers.0.securityContext.procMount", "Unmasked", "procMount"),
        ("containers.0.ports", [{"containerPort": 80, "hostPort": 80}], "hostPort"),
        ("containers.0.securityContext.seLinuxOptions", {"type": "spc_t"}, "seLinux"),
    ],
)
def test_checker_rejects_each_forbidden_setting(path: str, value: Any, words: str) -> None:
    assert violations(_good()) == []
    found = violations(_set(_good(), path, value))
    assert any(words in v for v in found), found


def test_checker_requires_seccomp_somewhere() -> None:
    spec = _good()
    del spec["securityContext"]["seccompProfile"]
    assert any("seccompProfile" in v for v in violations(spec))
    spec["containers"][0]["securityContext"]["seccompProfile"] = {"type": "Localhost"}
    assert violations(spec) == []


# --------------------------------------------------------------------------- engine Jobs

_OBJ = {
    "apiVersion": "kubequant.io/v1alpha1",
    "kind": "ModelOptimization",
    "metadata": {"namespace": "ml", "name": "qwen-gptq", "uid": "1f2e-33", "generation": 3},
}
SPECS: dict[str, dict[str, Any]] = {
    "cpu": {
        "model": {"uri": "hf://sentence-transformers/all-MiniLM-L6-v2"},
        "method": "torchao-int8-weight",
        "output": {"uri": "s3://bucket/out", "credentialsSecret": "s3-creds"},
    },
    "gpu-pvc-queue": {
        "model": {"uri": "pvc://models/qwen", "credentialsSecret": "hf-token"},
        "method": "gptq",
        "params": {"bits": 4},
        "calibration": {"datasetUri": "pvc://data/calib.jsonl"},
        "output": {"uri": "pvc://models/qwen-gptq"},
        "resources": {"gpu": 1, "cpu": "8", "memory": "64Gi"},
        "queueName": "gpu-queue",
        "cache": {"pvcName": "hf-cache"},
    },
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_operator_job_pods_meet_restricted(name: str) -> None:
    builders = pytest.importorskip("kubequant_operator.builders")
    settings = pytest.importorskip("kubequant_operator.settings")
    from kubequant_api.models import parse_spec

    obj = {**_OBJ, "spec": SPECS[name]}
    job = builders.build_job(
        obj, parse_spec(SPECS[name]), settings.Settings(engine_metrics_port=9090)
    )
    (where, spec), *_ = pod_specs([job])
    assert violations(spec, job["spec"]["template"]["metadata"].get("annotations")) == [], where
    # PVC-backed inputs and the cache really produce persistentVolumeClaim volumes.
    kinds = {k for v in spec["volumes"] for k in v if k != "name"}
    assert "emptyDir" in kinds
    if name == "gpu-pvc-queue":
        assert "persistentVolumeClaim" in kinds


@pytest.mark.parametrize("name", sorted(SPECS))
def test_operator_children_validate_on_every_kubernetes_version(name: str) -> None:
    """The Job, ServiceAccount, Role and RoleBinding the operator creates are valid objects."""
    import kubernetes_validate

    from tests.unit.chart.test_chart import K8S_VERSIONS

    builders = pytest.importorskip("kubequant_operator.builders")
    settings = pytest.importorskip("kubequant_operator.settings")
    from kubequant_api.models import parse_spec

    obj = {**_OBJ, "spec": SPECS[name]}
    children = builders.build_children(obj, parse_spec(SPECS[name]), settings.Settings())
    assert {c["kind"] for c in children} >= {"Job", "ServiceAccount", "Role", "RoleBinding"}
    failures = []
    for version in K8S_VERSIONS:
        for child in children:
            try:
                kubernetes_validate.validate(child, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.absolute_path)
                failures.append(f"{child['kind']} on Kubernetes {version}: {where}: {exc.message}")
    # e.g. podFailurePolicy.rules[].onPodConditions[].status is required before 1.35: the API
    # server of 1.29-1.34 rejects such a Job (status: "True" works on every version).
    assert not failures, "the operator builds objects the API server rejects:\n" + "\n".join(
        failures
    )
