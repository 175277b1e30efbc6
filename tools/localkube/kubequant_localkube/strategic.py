"""Strategic merge patch with the merge keys of the Kubernetes API types.

A real API server merges a list only where the Go type's field carries
``patchStrategy:"merge"`` (``k8s.io/api``): containers, env, volumes by ``name``, ports by
``containerPort`` (a Service's by ``port``), ownerReferences by ``uid``, finalizers as a set.
Every other list (tolerations, envFrom, command, rules, subjects) is replaced whole. The
directives follow ``k8s.io/apimachinery/pkg/util/strategicpatch``: ``$patch`` (``replace``,
``delete``), ``$retainKeys``, ``$deleteFromPrimitiveList/F`` and ``$setElementOrder/F``.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple


class SmpError(ValueError):
    """A strategic merge patch the real server refuses; ``status`` is its HTTP code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Field(NamedTuple):
    """One field of a Go API type: how a list in it is patched and the type of its value."""

    merge: bool = False  # patchStrategy:"merge"
    key: str | None = None  # patchMergeKey (None for a list of scalars)
    type: str | None = None  # the type of the value (of each item, for a list)


_MERGE_NAME = Field(True, "name")
_CONDITIONS = {"conditions": Field(True, "type")}

# Go API types by name: the fields that merge lists or lead to a type that does.
# Source: k8s.io/api core/v1, batch/v1, apps/v1 and apimachinery's ObjectMeta tags.
TYPES: dict[str, dict[str, Field]] = {
    "ObjectMeta": {"ownerReferences": Field(True, "uid"), "finalizers": Field(True)},
    "PodTemplateSpec": {"metadata": Field(type="ObjectMeta"), "spec": Field(type="PodSpec")},
    "PodSpec": {
        "volumes": _MERGE_NAME,  # merge,retainKeys
        "initContainers": Field(True, "name", "Container"),
        "containers": Field(True, "name", "Container"),
        "ephemeralContainers": Field(True, "name", "Container"),
        "imagePullSecrets": _MERGE_NAME,
        "hostAliases": Field(True, "ip"),
        "topologySpreadConstraints": Field(True, "topologyKey"),
        "schedulingGates": _MERGE_NAME,
        "resourceClaims": _MERGE_NAME,  # merge,retainKeys
    },
    "Container": {
        "ports": Field(True, "containerPort"),
        "env": _MERGE_NAME,
        "volumeMounts": Field(True, "mountPath"),
        "volumeDevices": Field(True, "devicePath"),
    },
    "PodStatus": {**_CONDITIONS, "podIPs": Field(True, "ip"), "hostIPs": Field(True, "ip")},
    "JobSpec": {"template": Field(type="PodTemplateSpec")},
    "JobTemplateSpec": {"metadata": Field(type="ObjectMeta"), "spec": Field(type="JobSpec")},
    "CronJobSpec": {"jobTemplate": Field(type="JobTemplateSpec")},
    "DeploymentSpec": {"template": Field(type="PodTemplateSpec")},
    "ServiceSpec": {"ports": Field(True, "port")},
    "NodeSpec": {"podCIDRs": Field(True)},
    "NodeStatus": {**_CONDITIONS, "addresses": Field(True, "type")},
    "Conditions": _CONDITIONS,
    "None": {},
}

# Built-in kinds: the type of each top-level field besides metadata (ObjectMeta for all).
KINDS: dict[str, dict[str, Field]] = {
    "Pod": {"spec": Field(type="PodSpec"), "status": Field(type="PodStatus")},
    "PodTemplate": {"template": Field(type="PodTemplateSpec")},
    "Job": {"spec": Field(type="JobSpec"), "status": Field(type="Conditions")},
    "CronJob": {"spec": Field(type="CronJobSpec")},
    "Deployment": {"spec": Field(type="DeploymentSpec"), "status": Field(type="Conditions")},
    "ReplicaSet": {"spec": Field(type="DeploymentSpec"), "status": Field(type="Conditions")},
    "StatefulSet": {"spec": Field(type="DeploymentSpec"), "status": Field(type="Conditions")},
    "DaemonSet": {"spec": Field(type="DeploymentSpec"), "status": Field(type="Conditions")},
    "Service": {"spec": Field(type="ServiceSpec"), "status": Field(type="Conditions")},
    "ServiceAccount": {"secrets": _MERGE_NAME},
    "Node": {"spec": Field(type="NodeSpec"), "status": Field(type="NodeStatus")},
    "Namespace": {"status": Field(type="Conditions")},
    "PersistentVolumeClaim": {"status": Field(type="Conditions")},
}


def _no_merge_key(item: Any, key: str) -> SmpError:
    # Not one of the errors patch.go maps to a 4xx: the handler answers it as a 500.
    return SmpError(f"map: {item} does not contain declared merge key: {key}", 500)


def apply(target: Any, patch: Any, kind: str | None) -> Any:
    """``target`` with the strategic merge ``patch`` applied as the real server does."""
    if not isinstance(patch, dict):
        raise SmpError("a strategic merge patch must be a JSON object", 400)
    fields = {"metadata": Field(type="ObjectMeta"), **KINDS.get(kind or "", {})}
    return _merge_map(target if isinstance(target, dict) else {}, patch, fields)


def _fields(f: Field | None) -> dict[str, Field]:
    return TYPES.get(f.type or "None", {}) if f is not None else {}


def _merge_map(original: dict[str, Any], patch: dict[str, Any], fields: dict[str, Field]) -> Any:
    directive = patch.get("$patch")
    if directive is not None:
        if directive == "replace":
            return _clean({k: v for k, v in patch.items() if k != "$patch"})
        if directive == "delete":
            return {}
        raise SmpError(f"unknown patch type: {directive} in map: {patch}", 500)
    result = copy.deepcopy(original)
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list) or not all(isinstance(k, str) for k in retain):
            raise SmpError("invalid patch format of retainKeys", 400)
        extra = [k for k in patch if not k.startswith("$") and k not in retain]
        if extra:
            raise SmpError(f"patch content doesn't match retainKeys list: {extra}", 422)
        result = {k: v for k, v in result.items() if k in retain}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise SmpError("invalid patch format of primitive list", 400)
            if isinstance(result.get(name), list):
                result[name] = [v for v in result[name] if v not in value]
            continue
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
            continue
        field = fields.get(key)
        old = result.get(key)
        if isinstance(value, dict):
            result[key] = _merge_map(old if isinstance(old, dict) else {}, value, _fields(field))
        elif isinstance(value, list) and field is not None and field.merge:
            order = patch.get(f"$setElementOrder/{key}")
            base = old if isinstance(old, list) else []
            result[key] = _merge_list(base, value, field, order)
        else:
            result[key] = _clean(value)
    return result


def _clean(value: Any) -> Any:
    """A replacing value as stored: directives and nulls in objects dropped."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return copy.deepcopy(value)


def _merge_list(original: list[Any], patch: list[Any], field: Field, order: Any) -> list[Any]:
    key = field.key
    if key is None or not any(isinstance(i, dict) for i in patch + original):
        merged: list[Any] = []
        for item in original + patch:  # deduplicateScalars
            if item not in merged:
                merged.append(copy.deepcopy(item))
        return _normalize(merged, patch if order is None else order, original, None)
    plain: list[dict[str, Any]] = []
    out = [copy.deepcopy(i) for i in original]
    replace = False
    for item in patch:
        if not isinstance(item, dict):
            raise SmpError(f"map: {item} does not contain declared merge key: {key}", 500)
        directive = item.get("$patch")
        if directive is None:
            plain.append(item)
        elif directive == "delete":
            if key not in item:
                raise _no_merge_key(item, key)
            out = [o for o in out if not (isinstance(o, dict) and o.get(key) == item[key])]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise SmpError("merging lists cannot yet be specified in the patch", 500)
        else:
            raise SmpError(f"unknown patch type: {directive} in map: {item}", 500)
    if replace:
        out = []
    sub = _fields(field)
    for item in plain:
        if key not in item:
            raise _no_merge_key(item, key)
        idx = next(
            (n for n, o in enumerate(out) if isinstance(o, dict) and o.get(key) == item[key]),
            None,
        )
        if idx is None:
            out.append(_merge_map({}, item, sub))
        else:
            out[idx] = _merge_map(out[idx], item, sub)
    if replace:
        return out
    return _normalize(out, plain if order is None else order, original, key)


def _identity(item: Any, key: str | None) -> Any:
    return item.get(key) if key is not None and isinstance(item, dict) else item


def _index(items: list[Any], item: Any, key: str | None) -> int:
    ident = _identity(item, key)
    return next((n for n, i in enumerate(items) if _identity(i, key) == ident), -1)


def _normalize(
    merged: list[Any], patch_order: list[Any], server_order: list[Any], key: str | None
) -> list[Any]:
    """The order ``normalizeElementOrder`` gives: the patch's items in the patch's order
    (or ``$setElementOrder``'s), the server-only ones in the server's, interleaved by the
    server's order (``mergeSortedSlice``)."""
    in_patch = [i for i in merged if _index(patch_order, i, key) >= 0]
    server_only = [i for i in merged if _index(patch_order, i, key) < 0]
    in_patch.sort(key=lambda i: _index(patch_order, i, key))
    server_only.sort(key=lambda i: _index(server_order, i, key))
    out: list[Any] = []
    left, right = server_only, in_patch
    while left and right:
        li, ri = _index(server_order, left[0], key), _index(server_order, right[0], key)
        if (li >= 0 and ri >= 0 and li < ri) or ((li < 0 or ri < 0) and li > ri):
            out.append(left.pop(0))
        else:
            out.append(right.pop(0))
    return out + left + right
