"""What the API server does to one object on a write, as pure functions on its dict.

The store (:mod:`.store`) decides when; these say how: timestamps, the parts that count for
``metadata.generation``, the status subresource, metadata a client cannot change, and the
merge patch server-side apply uses to drop fields a manager stopped applying.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from kubequant_localkube import errors
from kubequant_localkube.resources import Resource

Obj = dict[str, Any]
ObjKey = tuple[str | None, str]  # (namespace, name)

CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACES_KEY = ("", "namespaces")
_NS_MISMATCH = (
    "the namespace of the provided object does not match the namespace sent on the request"
)

# metadata a write cannot change: it is carried over from the stored object.
_KEPT_ON_UPDATE = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "namespace",
    "name",
)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(obj: Obj) -> dict[str, Any]:
    """``obj["metadata"]``, created if missing or not an object."""
    found = obj.get("metadata")
    if not isinstance(found, dict):
        found = {}
        obj["metadata"] = found
    return found


def spec_part(obj: Obj, has_status: bool) -> Obj:
    """What counts for ``metadata.generation``: everything but metadata (and status)."""
    skip = {"metadata", "status"} if has_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skip}


def as_version(res: Resource, obj: Obj) -> Obj:
    """A copy of a stored object as served at ``res``'s group/version."""
    out = copy.deepcopy(obj)
    out["apiVersion"] = res.api_version
    out["kind"] = res.kind
    return out


def updated(res: Resource, old: Obj, new: Obj, subresource: str | None) -> Obj:
    """``new`` as a write of ``old`` stores it: the status subresource writes only status,
    the main resource everything but status; server-owned metadata stays ``old``'s."""
    ometa = old["metadata"]
    if subresource == "status":
        if not res.has_status:
            raise errors.ApiError(404, "the server could not find the requested resource")
        merged = copy.deepcopy(old)
        if "status" in new:
            merged["status"] = new["status"]
        else:
            merged.pop("status", None)
        new = merged
    elif subresource is not None:
        raise errors.ApiError(
            404, f"the server could not find the requested resource (subresource {subresource})"
        )
    elif res.has_status:
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
    nmeta = meta(new)
    for k in _KEPT_ON_UPDATE:
        if k in ometa:
            nmeta[k] = ometa[k]
        else:
            nmeta.pop(k, None)
    nmeta["resourceVersion"] = ometa["resourceVersion"]
    new["apiVersion"] = res.api_version
    new["kind"] = res.kind
    if ometa.get("deletionTimestamp"):
        added = set(nmeta.get("finalizers") or []) - set(ometa.get("finalizers") or [])
        if added:
            raise errors.invalid(
                res.kind,
                res.group,
                ometa["name"],
                [
                    {
                        "field": "metadata.finalizers",
                        "message": "Forbidden: no new finalizers can be added if the object "
                        f"is being deleted, found new finalizers {sorted(added)!r}",
                        "reason": "FieldValueForbidden",
                    }
                ],
            )
    return new


def removed_fields(previous: Any, current: Any) -> Any:
    """A merge patch removing the fields in ``previous`` that ``current`` no longer has."""
    if not isinstance(previous, dict):
        return {}
    out: dict[str, Any] = {}
    cur = current if isinstance(current, dict) else {}
    for key, value in previous.items():
        if key not in cur:
            out[key] = None
        elif isinstance(value, dict) and isinstance(cur[key], dict):
            sub = removed_fields(value, cur[key])
            if sub:
                out[key] = sub
    return out


def default_propagation(res: Resource) -> str:
    # The API's own default for these legacy kinds is to orphan the dependents.
    if res.key in {("batch", "jobs"), ("", "replicationcontrollers")}:
        return "Orphan"
    return "Background"


def owned_by(obj: Obj, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def check_uid(res: Resource, name: str, stored: Obj, uid: str | None) -> None:
    """A ``uid`` precondition that is not the stored object's is a 409 Conflict."""
    if uid and uid != stored["metadata"]["uid"]:
        raise errors.conflict(
            res.plural,
            res.group,
            name,
            f"Precondition failed: UID in precondition: {uid}, "
            f"UID in object meta: {stored['metadata']['uid']}",
        )


def check_resource_version(
    res: Resource, name: str, stored: Obj, rv: Any, message: str | None = None
) -> None:
    """A stale ``resourceVersion`` precondition is a 409 Conflict (``message`` or the
    DeleteOptions wording)."""
    current = stored["metadata"]["resourceVersion"]
    if rv and str(rv) != current:
        raise errors.conflict(
            res.plural,
            res.group,
            name,
            message
            or f"Precondition failed: ResourceVersion in precondition: {rv}, "
            f"ResourceVersion in object meta: {current}",
        )


def placed(res: Resource, namespace: str | None, obj: Obj) -> str | None:
    """The namespace a new object goes to (the URL's or its own; None if cluster-scoped),
    written into its metadata."""
    found = meta(obj)
    body_ns = found.get("namespace")
    if not res.namespaced:
        found.pop("namespace", None)
        return None
    if namespace and body_ns and body_ns != namespace:
        raise errors.ApiError(400, _NS_MISMATCH)
    namespace = namespace or body_ns
    if not namespace:
        raise errors.ApiError(400, "a namespace is required for namespaced resources")
    found["namespace"] = namespace
    return namespace


def name_required(res: Resource) -> errors.ApiError:
    return errors.invalid(
        res.kind,
        res.group,
        "",
        [
            {
                "field": "metadata.name",
                "message": "Required value: name or generateName is required",
                "reason": "FieldValueRequired",
            }
        ],
    )


def without_server_fields(res: Resource, obj: Obj) -> None:
    """A new object as the server takes it: its kind, no status for a custom resource with a
    status subresource, none of the metadata the server assigns."""
    obj["apiVersion"] = res.api_version
    obj["kind"] = res.kind
    if res.has_status and res.is_custom:
        obj.pop("status", None)
    for k in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "selfLink"):
        meta(obj).pop(k, None)
