"""Jobs and their pods as the Job controller reads and writes them: the pod it creates from
the template, the pod failure policy, the deadline, status conditions and the status patch."""

from __future__ import annotations

import contextlib
import copy
from datetime import UTC, datetime

from kubequant_localkube import errors
from kubequant_localkube.objects import Obj, now_rfc3339
from kubequant_localkube.outcomes import PodResult
from kubequant_localkube.store import Store


def ts() -> str:
    return now_rfc3339()


def parse_ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def cond(ctype: str, reason: str, message: str, status: str = "True") -> Obj:
    now = ts()
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": now,
        "lastTransitionTime": now,
    }


def set_conditions(status: Obj, *conds: Obj) -> list[Obj]:
    """``status``'s conditions with ``conds`` replacing those of the same types."""
    out = [c for c in status.get("conditions") or [] if c["type"] not in {x["type"] for x in conds}]
    return out + list(conds)


def finished(job: Obj) -> bool:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") in ("Complete", "Failed") and c.get("status") == "True":
            return True
    return False


def patch_job_status(store: Store, job: Obj, status: Obj) -> Obj | None:
    """Merge ``status`` into this Job's (by uid); None if the Job is gone or replaced."""
    res = store.resource("batch", "v1", "jobs")
    try:
        return store.patch(
            res,
            job["metadata"]["namespace"],
            job["metadata"]["name"],
            "merge",
            {"metadata": {"uid": job["metadata"]["uid"]}, "status": status},
            subresource="status",
        )
    except errors.ApiError:
        return None


def patch_pod_status(store: Store, ns: str, name: str, status: Obj) -> None:
    res = store.resource("", "v1", "pods")
    with contextlib.suppress(errors.ApiError):
        store.patch(res, ns, name, "merge", {"status": status}, subresource="status")


def pod_for(job: Obj) -> Obj:
    """The Pod the Job controller creates for ``job`` (from its template)."""
    meta = job["metadata"]
    template = copy.deepcopy((job.get("spec") or {}).get("template") or {})
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels.update(
        {
            "batch.kubernetes.io/controller-uid": meta["uid"],
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": meta["uid"],
            "job-name": meta["name"],
        }
    )
    pod_spec: Obj = dict(template.get("spec") or {})
    pod_spec.setdefault("restartPolicy", "Never")
    pod_spec.setdefault("serviceAccountName", "default")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": f"{meta['name'][:57]}-",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
            "finalizers": [],
        },
        "spec": pod_spec,
    }


def container_name(job: Obj) -> str:
    containers = ((job.get("spec") or {}).get("template", {}).get("spec") or {}).get(
        "containers"
    ) or []
    return str(containers[0].get("name", "")) if containers else ""


def failure_action(job: Obj, result: PodResult) -> tuple[str, int]:
    """What ``podFailurePolicy`` says to do with a failed pod: (action, rule index).

    As ``matchPodFailurePolicy`` (pkg/controller/job/pod_failure_policy.go): rules in order,
    the first match wins; an ``onExitCodes`` rule looks at the (one) container's non-zero
    exit code, named by ``containerName`` when set, disrupted pods included; an
    ``onPodConditions`` rule matches the pod's DisruptionTarget condition.
    """
    policy = (job.get("spec") or {}).get("podFailurePolicy") or {}
    container = container_name(job)
    for index, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action", "Count")
        codes = rule.get("onExitCodes")
        named = (codes or {}).get("containerName")
        if codes and result.exit_code and (not named or named == container):
            op = codes.get("operator", "In")
            values = {int(v) for v in codes.get("values") or []}
            hit = (result.exit_code in values) if op == "In" else (result.exit_code not in values)
            if hit:
                return action, index
        for pc in rule.get("onPodConditions") or []:
            if (
                pc.get("type") == "DisruptionTarget"
                and result.disruption
                and pc.get("status", "True") == "True"
            ):
                return action, index
    return "Count", -1


def deadline_left(job: Obj) -> float | None:
    """Seconds left before ``activeDeadlineSeconds`` (None: no deadline or not started)."""
    limit = (job.get("spec") or {}).get("activeDeadlineSeconds")
    start = (job.get("status") or {}).get("startTime")
    if limit is None or not start:
        return None
    elapsed = (datetime.now(UTC) - parse_ts(start)).total_seconds()
    return max(float(limit) - elapsed, 0.0)
