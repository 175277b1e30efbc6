"""Builders: the pod layout contract of docs/architecture.md, pure."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from kubequant_api.constants import KUEUE_QUEUE_LABEL
from kubequant_api.models import parse_spec
from kubequant_operator import builders
from kubequant_operator.settings import Settings
from tests.fixtures.operator import make_object

S = Settings()


def _job(obj: dict[str, Any], s: Settings = S) -> dict[str, Any]:
    return builders.build_job(obj, parse_spec(obj["spec"]), s)


def _container(job: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return container


def _env(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(job)["env"]}


def test_job_name_is_deterministic_and_follows_the_contract() -> None:
    uid = "u-1"
    name = builders.job_name("ns", "minilm", uid, 3)
    digest = hashlib.sha256(b"ns/minilm/u-1/3").hexdigest()[:4]
    assert name == f"minilm-g3-{digest}"
    assert builders.job_name("ns", "minilm", uid, 3) == name
    assert builders.job_name("ns", "minilm", uid, 4) != name
    assert builders.job_name("ns", "minilm", "u-2", 3) != name
    assert builders.job_name("other", "minilm", uid, 3) != name


def test_job_name_is_truncated_to_63() -> None:
    long = "a" * 60 + "-b" * 40
    name = builders.job_name("ns", long, "u", 12345)
    assert len(name) <= 63
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name)
    assert name.endswith("-g12345-" + hashlib.sha256(f"ns/{long}/u/12345".encode()).hexdigest()[:4])


def test_children_labels_owner_refs_and_no_parent_labels() -> None:
    obj = make_object(labels={"app.kubernetes.io/instance": "argo", "team": "ml"})
    for child in builders.build_children(obj, parse_spec(obj["spec"]), S):
        meta = child["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubequant"
        assert meta["labels"]["kubequant.io/owner-name"] == "minilm"
        assert meta["labels"]["kubequant.io/owner-uid"] == obj["metadata"]["uid"]
        assert meta["labels"]["kubequant.io/generation"] == "1"
        assert "app.kubernetes.io/instance" not in meta["labels"]
        assert "team" not in meta["labels"]
        (ref,) = meta["ownerReferences"]
        assert ref == {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "ModelOptimization",
            "name": "minilm",
            "uid": obj["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert meta["name"] == builders.names_for(obj)
    job = _job(obj)
    assert "team" not in job["spec"]["template"]["metadata"]["labels"]


def test_role_grants_only_this_objects_status() -> None:
    obj = make_object()
    role = builders.build_role(obj)
    rules = role["rules"]
    # Exactly what the engine calls: GET its object, PATCH its status (no GET of status).
    assert rules == [
        {
            "apiGroups": ["kubequant.io"],
            "resources": ["modeloptimizations/status"],
            "resourceNames": ["minilm"],
            "verbs": ["patch"],
        },
        {
            "apiGroups": ["kubequant.io"],
            "resources": ["modeloptimizations"],
            "resourceNames": ["minilm"],
            "verbs": ["get"],
        },
    ]
    rb = builders.build_role_binding(obj)
    assert rb["roleRef"]["name"] == role["metadata"]["name"]
    assert rb["subjects"] == [
        {"kind": "ServiceAccount", "name": role["metadata"]["name"], "namespace": "team-a"}
    ]
    sa = builders.build_service_account(obj)
    assert sa["automountServiceAccountToken"] is True


def test_pod_is_hardened() -> None:
    job = _job(make_object())
    pod = job["spec"]["template"]["spec"]
    c = _container(job)
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == job["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] == 65532
    assert c["name"] == "engine"
    assert c["command"] == ["python", "-m", "optimizer_job", "run-in-cluster"]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/scratch"] == "scratch"
    assert mounts["/tmp"] == "tmp"
    assert mounts["/dev/shm"] == "dshm"
    assert mounts["/cache"] == "cache"
    assert "emptyDir" in vols["cache"]


def test_env_and_pvc_mounts() -> None:
    obj = make_object(
        calibration={"datasetUri": "pvc://data/calib.jsonl"},
    )
    s = Settings(engine_pushgateway_url="http://pgw:9091", engine_metrics_port=9400)
    job = _job(obj, s)
    env = _env(job)
    assert env["KUBEQUANT_OBJECT_NAMESPACE"] == "team-a"
    assert env["KUBEQUANT_OBJECT_NAME"] == "minilm"
    assert env["KUBEQUANT_OBJECT_UID"] == obj["metadata"]["uid"]
    assert env["KUBEQUANT_OBJECT_GENERATION"] == "1"
    assert env["KUBEQUANT_WORK_DIR"] == "/scratch"
    assert env["TMPDIR"] == "/tmp"
    assert env["HF_HOME"] == "/cache/hf"
    assert env["KUBEQUANT_PVC_MOUNT_ROOT"] == "/mnt/kubequant/pvc"
    assert env["KUBEQUANT_TERMINATION_LOG"] == "/dev/termination-log"
    assert env["KUBEQUANT_PUSHGATEWAY_URL"] == "http://pgw:9091"
    assert env["KUBEQUANT_ENGINE_METRICS_PORT"] == "9400"
    mounts = {m["mountPath"]: m for m in _container(job)["volumeMounts"]}
    # model and output share the claim "models": the output makes it read-write
    assert mounts["/mnt/kubequant/pvc/models"]["readOnly"] is False
    assert mounts["/mnt/kubequant/pvc/data"]["readOnly"] is True
    vols = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert vols["pvc-data"]["persistentVolumeClaim"] == {"claimName": "data", "readOnly": True}


def test_cache_pvc_and_env_from_secrets() -> None:
    obj = make_object(
        model={"uri": "hf://Qwen/Qwen2.5-0.5B", "credentialsSecret": "hf-token"},
        output={"uri": "s3://bucket/out", "credentialsSecret": "s3-creds"},
        cache={"pvcName": "hf-cache"},
    )
    job = _job(obj)
    vols = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert vols["cache"] == {"name": "cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}
    assert _container(job)["envFrom"] == [
        {"secretRef": {"name": "hf-token"}},
        {"secretRef": {"name": "s3-creds"}},
    ]
    # no pvc:// URIs: no claim mounts
    assert not [m for m in _container(job)["volumeMounts"] if m["mountPath"].startswith("/mnt")]


def test_job_policies() -> None:
    obj = make_object(timeoutSeconds=900, retries=4, ttlSecondsAfterFinished=60)
    spec = _job(obj)["spec"]
    assert spec["activeDeadlineSeconds"] == 900
    assert spec["backoffLimit"] == 4
    assert spec["ttlSecondsAfterFinished"] == 60
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "engine", "operator": "In", "values": [2, 3]},
    }
    assert rules[1] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert "suspend" not in spec


@pytest.mark.parametrize(
    ("overrides", "gpus"),
    [
        ({}, 0),  # torchao-int8-weight: CPU
        ({"method": "gptq", "model": {"uri": "hf://Qwen/Qwen2.5-0.5B"}}, 1),  # GPU-preferring
        ({"method": "gptq", "model": {"uri": "hf://a/b"}, "resources": {"gpu": 0}}, 0),
        ({"resources": {"gpu": 2}}, 2),
    ],
)
def test_gpu_requests(overrides: dict[str, Any], gpus: int) -> None:
    job = _job(make_object(**overrides))
    res = _container(job)["resources"]
    if gpus:
        assert res["limits"]["nvidia.com/gpu"] == str(gpus)
        assert res["requests"]["nvidia.com/gpu"] == str(gpus)
    else:
        assert "nvidia.com/gpu" not in res["limits"]


def test_gpu_resource_name_default_from_settings_and_spec_override() -> None:
    s = Settings(gpu_resource_name="amd.com/gpu")
    job = _job(make_object(resources={"gpu": 1}), s)
    assert _container(job)["resources"]["limits"]["amd.com/gpu"] == "1"
    job = _job(make_object(resources={"gpu": 1, "gpuResourceName": "gpu.intel.com/i915"}), s)
    assert _container(job)["resources"]["limits"]["gpu.intel.com/i915"] == "1"


AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["gpu"]}]}
            ]
        }
    }
}


def test_cpu_memory_defaults_and_scheduling() -> None:
    s = Settings(default_cpu="3", default_memory="5Gi", image_pull_secrets=("regcred",))
    job = _job(make_object(), s)
    assert _container(job)["resources"]["requests"] == {"cpu": "3", "memory": "5Gi"}
    obj = make_object(
        resources={
            "cpu": "500m",
            "memory": "2Gi",
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": AFFINITY,
            "priorityClassName": "batch-low",
        },
        image="registry.local/engine:custom",
    )
    job = _job(obj, s)
    pod = job["spec"]["template"]["spec"]
    assert _container(job)["resources"]["limits"] == {"cpu": "500m", "memory": "2Gi"}
    assert pod["nodeSelector"] == {"pool": "cpu"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["affinity"] == AFFINITY
    assert pod["priorityClassName"] == "batch-low"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert _container(job)["image"] == "registry.local/engine:custom"
    assert _container(_job(make_object()))["image"] == S.engine_image


def test_kueue_queue_creates_suspended_job_with_label() -> None:
    job = _job(make_object(queueName="team-queue"))
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-queue"


def test_child_reading_helpers() -> None:
    obj = make_object(generation=7)
    job = _job(obj)
    assert builders.generation_of_child(job) == 7
    assert builders.owner_of_child(job) == "minilm"
    bare = {"metadata": {"name": "x-g3-abcd"}}
    assert builders.generation_of_child(bare) == 3
    assert builders.owner_of_child(bare) is None


def test_long_owner_name_label_is_shortened_but_annotation_is_full() -> None:
    long = "m" * 100
    obj = make_object(name=long)
    job = _job(obj)
    label = job["metadata"]["labels"]["kubequant.io/owner-name"]
    assert len(label) <= 63
    assert builders.owner_of_child(job) == long


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_children_validate_against_the_official_schemas(version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    obj = make_object(
        queueName="q",
        cache={"pvcName": "hf-cache"},
        model={"uri": "pvc://models/m", "task": "feature-extraction", "credentialsSecret": "s"},
        resources={"gpu": 1, "tolerations": [{"key": "k", "operator": "Exists"}]},
    )
    for child in builders.build_children(obj, parse_spec(obj["spec"]), Settings()):
        kubernetes_validate.validate(child, version, strict=True)
