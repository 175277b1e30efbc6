"""Pure functions: a ModelOptimization (object + parsed spec) and settings -> child manifests.

Nothing here does I/O. The layout is the contract in ``docs/architecture.md``: one Job per
(object, generation) with a deterministic name, and a ServiceAccount, Role and RoleBinding
named like the Job that let the engine patch exactly its own object's status.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

from kubequant_api.constants import (
    API_VERSION,
    GENERATION_LABEL,
    GROUP,
    KIND,
    KUEUE_QUEUE_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    OWNER_NAME_LABEL,
    OWNER_UID_LABEL,
    PLURAL,
    ExitCode,
)
from kubequant_api.jobenv import (
    ENV_ENGINE_METRICS_PORT,
    ENV_HF_HOME,
    ENV_HOME,
    ENV_OBJECT_GENERATION,
    ENV_OBJECT_NAME,
    ENV_OBJECT_NAMESPACE,
    ENV_OBJECT_UID,
    ENV_PUSHGATEWAY_URL,
    ENV_PVC_MOUNT_ROOT,
    ENV_TERMINATION_LOG,
    ENV_TMPDIR,
    ENV_WORK_DIR,
)
from kubequant_api.models import ModelOptimizationSpec
from kubequant_operator.estimates import dry_run_estimate
from kubequant_operator.settings import Settings

CONTAINER_NAME = "engine"
OOM_EXIT_CODE = 137  # 128 + SIGKILL: how the kernel's OOM killer ends the engine
ENGINE_COMMAND = ["python", "-m", "optimizer_job", "run-in-cluster"]
ENGINE_UID = 65532
WORK_DIR = "/scratch"
TMP_DIR = "/tmp"
SHM_DIR = "/dev/shm"
CACHE_DIR = "/cache"
HF_HOME = "/cache/hf"
PVC_MOUNT_ROOT = "/mnt/kubequant/pvc"
TERMINATION_LOG = "/dev/termination-log"
NAME_MAX = 63
LABEL_VALUE_MAX = 63
# The full owner name (label values stop at 63 characters; object names may be longer).
OWNER_NAME_ANNOTATION = "kubequant.io/owner-name"
APP_NAME_LABEL = "app.kubernetes.io/name"
APP_NAME_VALUE = "kubequant-engine"
JOB_NAME_SUFFIX = re.compile(r"-g(\d+)(?:r\d+)?-[0-9a-f]{4}$")

Manifest = dict[str, Any]


# --------------------------------------------------------------------------- names


def job_name(namespace: str, name: str, uid: str, generation: int, run: int = 1) -> str:
    """``<name, truncated>-g<generation>-<4 hex>``, at most 63 characters, deterministic.

    A rerun (run 2, 3...) of the same generation is ``-g<generation>r<run>-<4 hex>``."""
    key = f"{namespace}/{name}/{uid}/{generation}" + (f"/{run}" if run > 1 else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:4]
    suffix = f"-g{generation}{f'r{run}' if run > 1 else ''}-{digest}"
    head = name[: NAME_MAX - len(suffix)].rstrip("-.")
    return f"{head}{suffix}"


def label_value(value: str) -> str:
    """``value`` when it is a valid label value, else a shortened one with a hash."""
    if len(value) <= LABEL_VALUE_MAX:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{value[: LABEL_VALUE_MAX - 9].rstrip('-._')}-{digest}"


def child_labels(namespace: str, name: str, uid: str, generation: int) -> dict[str, str]:
    """Labels of every child. Never the parent's own labels (GitOps tools would prune)."""
    del namespace
    return {
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
        APP_NAME_LABEL: APP_NAME_VALUE,
        OWNER_NAME_LABEL: label_value(name),
        OWNER_UID_LABEL: uid,
        GENERATION_LABEL: str(generation),
    }


def owner_reference(name: str, uid: str) -> Manifest:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _identity(obj: Mapping[str, Any]) -> tuple[str, str, str, int]:
    meta = obj.get("metadata") or {}
    return (
        str(meta["namespace"]),
        str(meta["name"]),
        str(meta["uid"]),
        int(meta.get("generation") or 1),
    )


def _child_meta(obj: Mapping[str, Any], kind_name: str) -> Manifest:
    namespace, name, uid, generation = _identity(obj)
    return {
        "name": kind_name,
        "namespace": namespace,
        "labels": child_labels(namespace, name, uid, generation),
        "annotations": {OWNER_NAME_ANNOTATION: name},
        "ownerReferences": [owner_reference(name, uid)],
    }


def names_for(obj: Mapping[str, Any], run: int = 1) -> str:
    namespace, name, uid, generation = _identity(obj)
    return job_name(namespace, name, uid, generation, run)


# --------------------------------------------------------------------------- RBAC


def build_service_account(obj: Mapping[str, Any], run: int = 1) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _child_meta(obj, names_for(obj, run)),
        "automountServiceAccountToken": True,
    }


def build_role(obj: Mapping[str, Any], run: int = 1) -> Manifest:
    _, name, _, _ = _identity(obj)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _child_meta(obj, names_for(obj, run)),
        # Exactly what the engine calls (optimizer_job/report/kube.py): GET of its object
        # (identity, resourceVersion and status are read from the main resource) and PATCH
        # of its status subresource. Nothing more: a real API server refuses to create a Role
        # granting what the operator itself does not hold (RBAC escalation prevention), and
        # the chart grants the operator exactly these (tests/unit/chart/test_role_coverage.py).
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [name],
                "verbs": ["patch"],
            },
            {
                "apiGroups": [GROUP],
                "resources": [PLURAL],
                "resourceNames": [name],
                "verbs": ["get"],
            },
        ],
    }


def build_role_binding(obj: Mapping[str, Any], run: int = 1) -> Manifest:
    namespace, *_ = _identity(obj)
    child = names_for(obj, run)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _child_meta(obj, child),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": child},
        "subjects": [{"kind": "ServiceAccount", "name": child, "namespace": namespace}],
    }


# --------------------------------------------------------------------------- volumes


def pvc_claim(uri: str | None) -> str | None:
    """The claim of a ``pvc://claim/path`` URI, else None."""
    if uri and uri.startswith("pvc://"):
        claim = uri[len("pvc://") :].split("/", 1)[0]
        return claim or None
    return None


def referenced_claims(spec: ModelOptimizationSpec) -> dict[str, bool]:
    """claim -> read-only, for every PVC named by a URI in the spec (output: read-write)."""
    claims: dict[str, bool] = {}
    for uri in (spec.model.uri, spec.calibration.dataset_uri, spec.evaluation.dataset_uri):
        claim = pvc_claim(uri)
        if claim is not None:
            claims.setdefault(claim, True)
    out = pvc_claim(spec.output.uri)
    if out is not None:
        claims[out] = False
    return claims


def referenced_claim_fields(spec: ModelOptimizationSpec) -> list[tuple[str, str]]:
    """(field path, claim) for every pvc:// URI, for messages that name the field."""
    found: list[tuple[str, str]] = []
    for field, uri in (
        ("spec.model.uri", spec.model.uri),
        ("spec.calibration.datasetUri", spec.calibration.dataset_uri),
        ("spec.evaluation.datasetUri", spec.evaluation.dataset_uri),
        ("spec.output.uri", spec.output.uri),
    ):
        claim = pvc_claim(uri)
        if claim is not None:
            found.append((field, claim))
    if spec.cache.pvc_name:
        found.append(("spec.cache.pvcName", spec.cache.pvc_name))
    seen: set[str] = set()
    unique = []
    for field, claim in found:  # one check per claim, reported at its first field
        if claim not in seen:
            seen.add(claim)
            unique.append((field, claim))
    return unique


def referenced_secret_fields(spec: ModelOptimizationSpec) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if spec.model.credentials_secret:
        found.append(("spec.model.credentialsSecret", spec.model.credentials_secret))
    if spec.output.credentials_secret:
        found.append(("spec.output.credentialsSecret", spec.output.credentials_secret))
    return found


def _volume_name(claim: str) -> str:
    name = f"pvc-{claim}"
    if len(name) <= NAME_MAX:
        return name
    digest = hashlib.sha256(claim.encode()).hexdigest()[:6]
    return f"{name[: NAME_MAX - 7].rstrip('-')}-{digest}"


# --------------------------------------------------------------------------- the Job


def gpu_resource_name(obj: Mapping[str, Any], spec: ModelOptimizationSpec, s: Settings) -> str:
    """The spec's gpuResourceName when the user set it, else the operator's default."""
    raw_resources = ((obj.get("spec") or {}).get("resources")) or {}
    if raw_resources.get("gpuResourceName"):
        return spec.resources.gpu_resource_name
    return s.gpu_resource_name


def _env(obj: Mapping[str, Any], spec: ModelOptimizationSpec, s: Settings) -> list[Manifest]:
    namespace, name, uid, generation = _identity(obj)
    env: list[Manifest] = [
        {"name": ENV_OBJECT_NAMESPACE, "value": namespace},
        {"name": ENV_OBJECT_NAME, "value": name},
        {"name": ENV_OBJECT_UID, "value": uid},
        {"name": ENV_OBJECT_GENERATION, "value": str(generation)},
        {"name": ENV_WORK_DIR, "value": WORK_DIR},
        {"name": ENV_TMPDIR, "value": TMP_DIR},
        {"name": ENV_HOME, "value": TMP_DIR},
        {"name": ENV_HF_HOME, "value": HF_HOME},
        {"name": ENV_PVC_MOUNT_ROOT, "value": PVC_MOUNT_ROOT},
        {"name": ENV_TERMINATION_LOG, "value": TERMINATION_LOG},
        {"name": ENV_ENGINE_METRICS_PORT, "value": str(s.engine_metrics_port)},
    ]
    if s.engine_pushgateway_url:
        env.append({"name": ENV_PUSHGATEWAY_URL, "value": s.engine_pushgateway_url})
    del spec
    return env


def _env_from(spec: ModelOptimizationSpec) -> list[Manifest]:
    secrets: list[str] = []
    for _, secret in referenced_secret_fields(spec):
        if secret not in secrets:
            secrets.append(secret)
    return [{"secretRef": {"name": secret}} for secret in secrets]


def _volumes(spec: ModelOptimizationSpec) -> tuple[list[Manifest], list[Manifest]]:
    volumes: list[Manifest] = [
        {"name": "scratch", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[Manifest] = [
        {"name": "scratch", "mountPath": WORK_DIR},
        {"name": "tmp", "mountPath": TMP_DIR},
        {"name": "dshm", "mountPath": SHM_DIR},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    if spec.cache.pvc_name:
        volumes.append(
            {"name": "cache", "persistentVolumeClaim": {"claimName": spec.cache.pvc_name}}
        )
    else:
        volumes.append({"name": "cache", "emptyDir": {}})
    for claim, read_only in referenced_claims(spec).items():
        vol = _volume_name(claim)
        volumes.append(
            {"name": vol, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}
        )
        mounts.append(
            {"name": vol, "mountPath": f"{PVC_MOUNT_ROOT}/{claim}", "readOnly": read_only}
        )
    return volumes, mounts


# Sizing from a dry run's plan (status.preflight, of the same source), where the spec gives
# no memory or GPU count: the estimate plus headroom, the GPUs it needs at ASSUMED_GPU_BYTES
# each, and /dev/shm (a memory-backed emptyDir, counted in the limit) at SHM_PER_GPU per GPU;
# ephemeral storage (the download, artifacts and GPTQ/AWQ's offload folder on the emptyDirs)
# requested at the disk estimate plus the same headroom.
# A dry run reads headers only: DRY_RUN_MEMORY and no GPU.
DRY_RUN_MEMORY = "1Gi"
ESTIMATE_HEADROOM = 1.25
ASSUMED_GPU_BYTES = 80 * 2**30
SHM_PER_GPU = 2**30
GPU_MAX = 16


def plan_estimate(obj: Mapping[str, Any], spec: ModelOptimizationSpec) -> int | None:
    """The dry run's peak-memory estimate (bytes) for this spec's model and method
    (:mod:`.estimates`; None when there is none for this model)."""
    found = dry_run_estimate(obj.get("status"), spec)
    return found.peak_bytes if found is not None else None


def plan_disk(obj: Mapping[str, Any], spec: ModelOptimizationSpec) -> int | None:
    """The dry run's ephemeral-storage estimate (bytes) for this spec (None: none)."""
    found = dry_run_estimate(obj.get("status"), spec)
    return found.disk_bytes if found is not None else None


def gpus_for(estimate: int) -> int:
    """GPUs of ASSUMED_GPU_BYTES (90% usable) that hold ``estimate`` bytes."""
    return max(1, min(GPU_MAX, math.ceil(estimate / (0.9 * ASSUMED_GPU_BYTES))))


def _gi(n: float) -> str:
    return f"{max(1, math.ceil(n / 2**30))}Gi"


def sizing(obj: Mapping[str, Any], spec: ModelOptimizationSpec, s: Settings) -> dict[str, Any]:
    """The Job's memory, GPU count and /dev/shm size: the spec's, else from the estimate
    (dry runs: DRY_RUN_MEMORY, no GPU), else the operator's defaults; its ephemeral storage
    (``disk``, a request only) from the estimate, else none asked for."""
    if spec.dry_run:
        return {
            "memory": spec.resources.memory or DRY_RUN_MEMORY,
            "gpus": 0,
            "shm": None,
            "disk": None,
        }
    estimate = plan_estimate(obj, spec)
    gpus = spec.gpu_count()
    if estimate is not None and spec.resources.gpu is None and gpus > 0:
        gpus = gpus_for(estimate)
    shm = SHM_PER_GPU * max(1, gpus) if estimate is not None else None
    memory = spec.resources.memory or s.default_memory
    if estimate is not None and spec.resources.memory is None:
        memory = _gi(estimate * ESTIMATE_HEADROOM + (shm or 0))
    # Not under Kueue: a ClusterQueue admits only Jobs whose every requested resource it
    # covers ("resource ephemeral-storage unavailable in ClusterQueue"), and most cover cpu,
    # memory and GPUs alone.
    disk = None if spec.queue_name else plan_disk(obj, spec)
    return {
        "memory": memory,
        "gpus": gpus,
        "shm": _gi(shm) if shm else None,
        "disk": _gi(disk * ESTIMATE_HEADROOM) if disk else None,
    }


def _resources(obj: Mapping[str, Any], spec: ModelOptimizationSpec, s: Settings) -> Manifest:
    cpu = spec.resources.cpu or s.default_cpu
    sized = sizing(obj, spec, s)
    memory = sized["memory"]
    limits: dict[str, str] = {"cpu": cpu, "memory": memory}
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    if sized["disk"]:
        # A request, not a limit: the scheduler places the pod where the node has the room,
        # and under disk pressure the kubelet evicts pods beyond their requests first; a
        # limit would evict the run whenever the rough estimate is low.
        requests["ephemeral-storage"] = sized["disk"]
    gpus = sized["gpus"]
    if gpus > 0:
        gpu_name = gpu_resource_name(obj, spec, s)
        limits[gpu_name] = str(gpus)
        requests[gpu_name] = str(gpus)
    return {"requests": requests, "limits": limits}


def build_job(
    obj: Mapping[str, Any], spec: ModelOptimizationSpec, s: Settings, run: int = 1
) -> Manifest:
    """The engine's Job for the object's current generation and run (docs/architecture.md)."""
    namespace, name, uid, generation = _identity(obj)
    child = job_name(namespace, name, uid, generation, run)
    meta = _child_meta(obj, child)
    if spec.queue_name:
        meta["labels"][KUEUE_QUEUE_LABEL] = spec.queue_name
    volumes, mounts = _volumes(spec)
    shm = sizing(obj, spec, s)["shm"]
    for volume in volumes:
        if volume["name"] == "dshm" and shm:
            volume["emptyDir"]["sizeLimit"] = shm
    container: Manifest = {
        "name": CONTAINER_NAME,
        "image": spec.image or s.engine_image,
        "imagePullPolicy": s.engine_image_pull_policy,
        "command": list(ENGINE_COMMAND),
        "env": _env(obj, spec, s),
        "resources": _resources(obj, spec, s),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": ENGINE_UID,
            "runAsGroup": ENGINE_UID,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    env_from = _env_from(spec)
    if env_from:
        container["envFrom"] = env_from
    if s.engine_metrics_port:
        container["ports"] = [
            {"name": "metrics", "containerPort": s.engine_metrics_port, "protocol": "TCP"}
        ]
    pod_spec: Manifest = {
        "restartPolicy": "Never",
        "serviceAccountName": child,
        "automountServiceAccountToken": True,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": ENGINE_UID,
            "runAsGroup": ENGINE_UID,
            "fsGroup": ENGINE_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    res = spec.resources
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.to_api() for t in res.tolerations]
    if res.affinity:
        pod_spec["affinity"] = res.affinity.to_api()
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    if s.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in s.image_pull_secrets]
    template_labels = child_labels(namespace, name, uid, generation)
    job_spec: Manifest = {
        "backoffLimit": spec.retries,
        "activeDeadlineSeconds": spec.timeout_seconds,
        "ttlSecondsAfterFinished": spec.ttl_seconds_after_finished,
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER_NAME,
                        "operator": "In",
                        "values": [
                            int(ExitCode.INVALID_SPEC),
                            int(ExitCode.QUALITY_GATE_FAILED),
                        ],
                    },
                },
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
                # OOMKilled (128 + SIGKILL): a retry at the same memory limit fails the same
                # way. After the Ignore rule (first match wins), so an eviction or preemption
                # that kills the engine is still retried.
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER_NAME,
                        "operator": "In",
                        "values": [OOM_EXIT_CODE],
                    },
                },
            ]
        },
        "template": {
            "metadata": {
                "labels": template_labels,
                "annotations": {OWNER_NAME_ANNOTATION: name},
            },
            "spec": pod_spec,
        },
    }
    if spec.queue_name:
        # Kueue admits the Job by un-suspending it; the operator never sets it back.
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": job_spec,
    }


def build_children(
    obj: Mapping[str, Any], spec: ModelOptimizationSpec, s: Settings, run: int = 1
) -> list[Manifest]:
    """ServiceAccount, Role, RoleBinding, Job, in the order they must be created."""
    return [
        build_service_account(obj, run),
        build_role(obj, run),
        build_role_binding(obj, run),
        build_job(obj, spec, s, run),
    ]


# --------------------------------------------------------------------------- reading children


def generation_of_child(child: Mapping[str, Any]) -> int | None:
    """The object generation a child was made for (label, else the Job name's suffix)."""
    meta = child.get("metadata") or {}
    value = (meta.get("labels") or {}).get(GENERATION_LABEL)
    if value is not None and str(value).isdigit():
        return int(value)
    m = JOB_NAME_SUFFIX.search(str(meta.get("name", "")))
    return int(m.group(1)) if m else None


def controlled_by(child: Mapping[str, Any], uid: str) -> bool:
    """True when ``child``'s controller ownerReference is the object with ``uid``: labels can
    be set by anyone, the controller reference is what kubequant wrote."""
    refs = (child.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("controller") and r.get("uid") == uid for r in refs)


def owner_of_child(child: Mapping[str, Any]) -> str | None:
    """The owning object's name: annotation, else controller ownerReference, else label."""
    meta = child.get("metadata") or {}
    annotated = (meta.get("annotations") or {}).get(OWNER_NAME_ANNOTATION)
    if annotated:
        return str(annotated)
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(GROUP + "/"):
            return str(ref.get("name"))
    label = (meta.get("labels") or {}).get(OWNER_NAME_LABEL)
    return str(label) if label else None
