"""Defaults and immutability rules the API server applies to the built-in kinds we use."""

from __future__ import annotations

from typing import Any

from kubequant_localkube import errors

Obj = dict[str, Any]


def _container_defaults(spec: Obj) -> None:
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("imagePullPolicy", "IfNotPresent")
            c.setdefault("resources", {})


def _pod_spec_defaults(spec: Obj, restart: str) -> None:
    spec.setdefault("restartPolicy", restart)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    _container_defaults(spec)


def early_defaults(key: tuple[str, str], obj: Obj) -> None:
    """Defaults the API server applies before validation (create and update)."""
    if key == ("batch", "jobs"):
        policy = (obj.get("spec") or {}).get("podFailurePolicy") or {}
        for rule in policy.get("rules") or []:
            for pattern in rule.get("onPodConditions") or []:
                pattern.setdefault("status", "True")


def apply_builtin_defaults(key: tuple[str, str], obj: Obj) -> None:
    """Defaulting on create (after uid assignment), as the API server's strategies do."""
    meta = obj["metadata"]
    if key == ("", "namespaces"):
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj["status"] = {"phase": "Active"}
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
    elif key == ("", "pods"):
        spec = obj.setdefault("spec", {})
        _pod_spec_defaults(spec, "Always")
        spec.setdefault("serviceAccountName", "default")
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif key == ("batch", "jobs"):
        spec = obj.setdefault("spec", {})
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        # Failed with a podFailurePolicy (the only value allowed with one), as SetDefaults_Job.
        replacement = "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed"
        spec.setdefault("podReplacementPolicy", replacement)
        uid = meta["uid"]
        template = spec.setdefault("template", {})
        if not spec.get("manualSelector"):
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            labels = template.setdefault("metadata", {}).setdefault("labels", {})
            labels.update(
                {
                    "batch.kubernetes.io/controller-uid": uid,
                    "batch.kubernetes.io/job-name": meta["name"],
                    "controller-uid": uid,
                    "job-name": meta["name"],
                }
            )
        _pod_spec_defaults(template.setdefault("spec", {}), "Never")
        obj.setdefault("status", {})


def check_immutable(key: tuple[str, str], kind: str, group: str, old: Obj, new: Obj) -> None:
    """A Job's pod template and selector cannot change (except while it is suspended)."""
    if key != ("batch", "jobs"):
        return
    ospec, nspec = old.get("spec") or {}, new.get("spec") or {}
    causes = []
    if ospec.get("selector") != nspec.get("selector"):
        causes.append({"field": "spec.selector", "reason": "FieldValueInvalid"})
    if ospec.get("template") != nspec.get("template") and not ospec.get("suspend"):
        causes.append({"field": "spec.template", "reason": "FieldValueInvalid"})
    if ospec.get("completions") != nspec.get("completions"):
        causes.append({"field": "spec.completions", "reason": "FieldValueInvalid"})
    if causes:
        for c in causes:
            c["message"] = "Invalid value: field is immutable"
        raise errors.invalid(kind, group, old["metadata"]["name"], causes)
