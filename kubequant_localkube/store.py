"""The cluster's state: objects, resource versions, watch history, garbage collection.

Every operation is synchronous and thread-safe (one re-entrant lock), so the HTTP server's
event loop, the Job controller and a test's own thread can all use it. Watchers are asyncio
queues fed with ``call_soon_threadsafe`` in the order the changes happened.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from kubequant_localkube import admission as admission_mod
from kubequant_localkube import defaults, errors, patching
from kubequant_localkube import resources as res_mod

Obj = dict[str, Any]
ObjKey = tuple[str | None, str]  # (namespace, name)

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
HISTORY_SIZE = 50_000
_RANDOM = random.SystemRandom()
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
_NS_MISMATCH = (
    "the namespace of the provided object does not match the namespace sent on the request"
)
_SMP_FOR_CR = (
    "the body of the request was in an unknown format - accepted media types include: "
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    rv: int
    key: tuple[str, str]
    namespace: str | None
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None


@dataclasses.dataclass
class Watcher:
    key: tuple[str, str]
    namespace: str | None
    queue: asyncio.Queue[WatchEvent | None]
    loop: asyncio.AbstractEventLoop

    def push(self, event: WatchEvent | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the watcher is gone
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def _meta(obj: Obj) -> dict[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
        obj["metadata"] = meta
    return meta


def _spec_part(obj: Obj, has_status: bool) -> Obj:
    """What counts for ``metadata.generation``: everything but metadata (and status)."""
    skip = {"metadata", "status"} if has_status else {"metadata"}
    return {k: v for k, v in obj.items() if k not in skip}


class Store:
    """All objects of the emulated cluster, keyed by (group, plural) then (namespace, name)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._rv = 0
        self._resources: dict[tuple[str, str, str], res_mod.Resource] = {}
        self._objects: dict[tuple[str, str], dict[ObjKey, Obj]] = collections.defaultdict(dict)
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=HISTORY_SIZE)
        self._watchers: list[Watcher] = []
        self._applied: dict[tuple[str, str, str | None, str, str], Obj] = {}
        self.admission = admission_mod.Admission()
        # A real API server answers 415 to a strategic merge patch of a custom resource; by
        # default it is applied here as a JSON merge patch (lists replaced) instead.
        self.reject_strategic_for_custom = False
        # Validate built-in kinds (Jobs, Pods, RBAC, ...) against the official schemas of this
        # Kubernetes version (kubernetes-validate); ~15 ms per write. Off by default: those
        # schemas mark some fields required that the API server defaults instead.
        self.validate_builtins = False
        self.kubernetes_version = "1.32"
        self._listeners: list[Callable[[WatchEvent], None]] = []
        for res in res_mod.builtin_resources():
            self.register(res)
        for ns in DEFAULT_NAMESPACES:
            self.create(self.resource("", "v1", "namespaces"), None, {"metadata": {"name": ns}})

    # ------------------------------------------------------------------ resources
    def register(self, res: res_mod.Resource) -> None:
        with self.lock:
            self._resources[(res.group, res.version, res.plural)] = res

    def all_resources(self) -> list[res_mod.Resource]:
        with self.lock:
            return list(self._resources.values())

    def resource(self, group: str, version: str, plural: str) -> res_mod.Resource:
        with self.lock:
            res = self._resources.get((group, version, plural))
        if res is None:
            gv = f"{group}/{version}" if group else version
            raise errors.ApiError(
                404, f"the server could not find the requested resource ({gv} {plural})"
            )
        return res

    def find_resource(self, name: str) -> res_mod.Resource | None:
        """By plural, singular, kind or short name (like kubectl resolves names)."""
        name = name.lower()
        with self.lock:
            for res in self._resources.values():
                names = {res.plural, res.singular, res.kind.lower(), *res.short_names}
                if name in names:
                    return res
        return None

    def _sync_crd(self, crd: Obj | None, name: str) -> None:
        """(Re)register the resources a CRD defines; drop them (and their objects) if gone."""
        with self.lock:
            for k in [k for k, r in self._resources.items() if r.crd_name == name]:
                del self._resources[k]
            if crd is None:
                return
            for res in res_mod.resources_from_crd(crd):
                self.admission.compile(res)
                self.register(res)

    # ------------------------------------------------------------------ helpers
    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    def _emit(self, res: res_mod.Resource, etype: str, obj: Obj, old: Obj | None) -> None:
        ns = obj["metadata"].get("namespace")
        event = WatchEvent(self._rv, res.key, ns, etype, copy.deepcopy(obj), old)
        self._history.append(event)
        for w in list(self._watchers):
            if w.key == res.key and (w.namespace is None or w.namespace == ns):
                w.push(event)
        for listener in list(self._listeners):
            listener(event)

    def add_listener(self, fn: Callable[[WatchEvent], None]) -> None:
        """Call ``fn`` (under the store's lock, keep it quick) on every change."""
        with self.lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[WatchEvent], None]) -> None:
        with self.lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def _as_version(self, res: res_mod.Resource, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"] = res.api_version
        out["kind"] = res.kind
        return out

    def _ns_exists(self, ns: str) -> bool:
        return (None, ns) in self._objects[("", "namespaces")]

    def _by_uid(self) -> dict[str, tuple[res_mod.Resource, Obj]]:
        out: dict[str, tuple[res_mod.Resource, Obj]] = {}
        for key, objs in self._objects.items():
            res = self._resource_for_key(key)
            if res is None:
                continue
            for obj in objs.values():
                out[obj["metadata"]["uid"]] = (res, obj)
        return out

    def _resource_for_key(self, key: tuple[str, str]) -> res_mod.Resource | None:
        for res in self._resources.values():
            if res.key == key:
                return res
        return None

    # ------------------------------------------------------------------ reads
    def get(self, res: res_mod.Resource, namespace: str | None, name: str) -> Obj:
        ns = namespace if res.namespaced else None
        with self.lock:
            obj = self._objects[res.key].get((ns, name))
            if obj is None:
                raise errors.not_found(res.plural, res.group, name)
            return self._as_version(res, obj)

    def try_get(self, res: res_mod.Resource, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.get(res, namespace, name)
        except errors.ApiError:
            return None

    def list_objects(
        self,
        res: res_mod.Resource,
        namespace: str | None = None,
        predicate: Callable[[Obj], bool] | None = None,
    ) -> tuple[list[Obj], int]:
        with self.lock:
            items = [
                self._as_version(res, o)
                for (ns, _), o in sorted(
                    self._objects[res.key].items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
                )
                if (namespace is None or ns == namespace)
            ]
            rv = self._rv
        if predicate is not None:
            items = [o for o in items if predicate(o)]
        return items, rv

    def iter_all(self) -> Iterator[tuple[res_mod.Resource, Obj]]:
        with self.lock:
            snapshot = [(k, copy.deepcopy(list(v.values()))) for k, v in self._objects.items()]
        for key, objs in snapshot:
            res = self._resource_for_key(key)
            if res is not None:
                for o in objs:
                    yield res, self._as_version(res, o)

    # ------------------------------------------------------------------ writes
    def create(
        self,
        res: res_mod.Resource,
        namespace: str | None,
        body: Obj,
        *,
        dry_run: bool = False,
        field_validation: str | None = None,
        warnings: list[str] | None = None,
    ) -> Obj:
        if not isinstance(body, dict):
            raise errors.ApiError(400, "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = _meta(obj)
        body_ns = meta.get("namespace")
        if res.namespaced:
            if namespace and body_ns and body_ns != namespace:
                raise errors.ApiError(
                    400,
                    _NS_MISMATCH,
                )
            namespace = namespace or body_ns
            if not namespace:
                raise errors.ApiError(400, "a namespace is required for namespaced resources")
            meta["namespace"] = namespace
        else:
            namespace = None
            meta.pop("namespace", None)
        with self.lock:
            if not meta.get("name"):
                if meta.get("generateName"):
                    for _ in range(100):
                        cand = meta["generateName"] + "".join(_RANDOM.choices(_NAME_CHARS, k=5))
                        if (namespace, cand) not in self._objects[res.key]:
                            meta["name"] = cand
                            break
                else:
                    raise errors.invalid(
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
            name = meta["name"]
            admission_mod.validate_name(res, name)
            if (
                res.namespaced
                and res.plural != "namespaces"
                and not self._ns_exists(namespace or "")
            ):
                raise errors.ApiError(
                    404,
                    f'namespaces "{namespace}" not found',
                    details={"name": namespace, "kind": "namespaces"},
                )
            if (namespace, name) in self._objects[res.key]:
                raise errors.already_exists(res.plural, res.group, name)
            ns_obj = self._objects[("", "namespaces")].get((None, namespace or ""))
            terminating = ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp")
            if terminating and res.plural != "namespaces":
                raise errors.ApiError(
                    403,
                    f'{res.plural} "{name}" is forbidden: unable to create new content in '
                    f"namespace {namespace} because it is being terminated",
                    reason="Forbidden",
                )
            obj["apiVersion"] = res.api_version
            obj["kind"] = res.kind
            if res.has_status and res.is_custom:
                obj.pop("status", None)
            for k in (
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "selfLink",
            ):
                meta.pop(k, None)
            warn = self.admission.admit(res, obj, None, field_validation, subresource=None)
            if warnings is not None:
                warnings.extend(warn)
            defaults.early_defaults(res.key, obj)
            if self.validate_builtins and not res.is_custom:
                admission_mod.validate_builtin(res, obj, self.kubernetes_version)
            if res.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self._prepare_crd(obj)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            defaults.apply_builtin_defaults(res.key, obj)
            if dry_run:
                meta["resourceVersion"] = str(self._rv)
                return self._as_version(res, obj)
            meta["resourceVersion"] = str(self._next_rv())
            self._objects[res.key][(namespace, name)] = obj
            self._emit(res, "ADDED", obj, None)
            if res.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self._sync_crd(obj, name)
            self._gc()
            return self._as_version(res, obj)

    def _prepare_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        try:
            expected = f"{names['plural']}.{spec['group']}"
        except KeyError as exc:
            raise errors.invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                crd["metadata"].get("name", ""),
                [
                    {
                        "field": f"spec.{exc.args[0]}",
                        "message": "Required value",
                        "reason": "FieldValueRequired",
                    }
                ],
            ) from exc
        if crd["metadata"]["name"] != expected:
            raise errors.invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                crd["metadata"]["name"],
                [
                    {
                        "field": "metadata.name",
                        "message": f'Invalid value: "{crd["metadata"]["name"]}": '
                        'must be spec.names.plural+"."+spec.group',
                        "reason": "FieldValueInvalid",
                    }
                ],
            )
        # Compile every CEL rule now: a CRD with a broken rule is rejected, as by a real server.
        for res in res_mod.resources_from_crd(crd):
            self.admission.compile(res)
        names = dict(names)
        names.setdefault("singular", names.get("kind", "").lower())
        names.setdefault("listKind", f"{names.get('kind', '')}List")
        now = now_rfc3339()
        crd["status"] = {
            "acceptedNames": names,
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now,
                },
            ],
            "storedVersions": [v["name"] for v in spec.get("versions", []) if v.get("storage")],
        }

    def replace(
        self,
        res: res_mod.Resource,
        namespace: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str | None = None,
        warnings: list[str] | None = None,
        create_missing: bool = False,
    ) -> Obj:
        """PUT: a full update; a stale ``metadata.resourceVersion`` is a 409 Conflict."""
        if not isinstance(body, dict):
            raise errors.ApiError(400, "the request body must be a JSON object")
        ns = namespace if res.namespaced else None
        with self.lock:
            old = self._objects[res.key].get((ns, name))
            if old is None:
                if create_missing and subresource is None:
                    body = copy.deepcopy(body)
                    _meta(body)["name"] = name
                    return self.create(
                        res,
                        ns,
                        body,
                        dry_run=dry_run,
                        field_validation=field_validation,
                        warnings=warnings,
                    )
                raise errors.not_found(res.plural, res.group, name)
            bmeta = body.get("metadata") or {}
            if bmeta.get("name") and bmeta["name"] != name:
                raise errors.ApiError(
                    400,
                    f"the name of the object ({bmeta['name']}) does not match the name on "
                    f"the URL ({name})",
                )
            rv = bmeta.get("resourceVersion")
            if rv and str(rv) != old["metadata"]["resourceVersion"]:
                raise errors.conflict(
                    res.plural,
                    res.group,
                    name,
                    _MODIFIED,
                )
            return self._commit_update(
                res,
                old,
                copy.deepcopy(body),
                subresource=subresource,
                dry_run=dry_run,
                field_validation=field_validation,
                warnings=warnings,
            )

    def patch(
        self,
        res: res_mod.Resource,
        namespace: str | None,
        name: str,
        patch_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str | None = None,
        warnings: list[str] | None = None,
        field_manager: str | None = None,
    ) -> Obj:
        ns = namespace if res.namespaced else None
        with self.lock:
            old = self._objects[res.key].get((ns, name))
            if patch_type == "apply":
                return self._apply(
                    res,
                    ns,
                    name,
                    old,
                    config=patch,
                    manager=field_manager or "",
                    subresource=subresource,
                    dry_run=dry_run,
                    field_validation=field_validation,
                    warnings=warnings,
                )
            if old is None:
                raise errors.not_found(res.plural, res.group, name)
            current = self._as_version(res, old)
            try:
                if patch_type == "json":
                    new = patching.json_patch(current, patch)
                elif patch_type == "strategic":
                    if res.is_custom and self.reject_strategic_for_custom:
                        raise errors.ApiError(415, _SMP_FOR_CR, reason="UnsupportedMediaType")
                    new = patching.strategic_merge_patch(current, patch, custom=res.is_custom)
                else:
                    if not isinstance(patch, dict):
                        raise patching.PatchError("a merge patch must be a JSON object", 400)
                    new = patching.merge_patch(current, patch)
            except patching.PatchError as exc:
                raise errors.ApiError(exc.status, str(exc)) from exc
            if isinstance(patch, dict):
                pmeta = patch.get("metadata") or {}
                if (
                    pmeta.get("resourceVersion")
                    and str(pmeta["resourceVersion"]) != old["metadata"]["resourceVersion"]
                ):
                    raise errors.conflict(
                        res.plural,
                        res.group,
                        name,
                        _MODIFIED,
                    )
                if pmeta.get("uid") and pmeta["uid"] != old["metadata"]["uid"]:
                    raise errors.conflict(
                        res.plural,
                        res.group,
                        name,
                        f"Precondition failed: UID in precondition: {pmeta['uid']}, "
                        f"UID in object meta: {old['metadata']['uid']}",
                    )
            return self._commit_update(
                res,
                old,
                new,
                subresource=subresource,
                dry_run=dry_run,
                field_validation=field_validation,
                warnings=warnings,
            )

    def _apply(
        self,
        res: res_mod.Resource,
        ns: str | None,
        name: str,
        old: Obj | None,
        *,
        config: Any,
        subresource: str | None,
        dry_run: bool,
        field_validation: str | None,
        warnings: list[str] | None,
        manager: str,
    ) -> Obj:
        """Server-side apply, simplified: the applied config is merged into the live object,
        and fields this manager applied before but no longer applies are removed."""
        if not isinstance(config, dict):
            raise errors.ApiError(400, "an apply patch must be an object")
        if not manager:
            raise errors.ApiError(
                400, "PATCH, application/apply-patch+yaml requires fieldManager to be set"
            )
        akey = (res.group, res.plural, ns, name, manager)
        if old is None:
            if subresource:
                raise errors.not_found(res.plural, res.group, name)
            body = copy.deepcopy(config)
            _meta(body)["name"] = name
            created = self.create(
                res, ns, body, dry_run=dry_run, field_validation=field_validation, warnings=warnings
            )
            if not dry_run:
                self._applied[akey] = copy.deepcopy(config)
            return created
        previous = self._applied.get(akey, {})
        current = self._as_version(res, old)
        removal = _removed_fields(previous, config)
        new = patching.merge_patch(current, removal)
        new = patching.strategic_merge_patch(new, config, custom=True)
        result = self._commit_update(
            res,
            old,
            new,
            subresource=subresource,
            dry_run=dry_run,
            field_validation=field_validation,
            warnings=warnings,
        )
        if not dry_run:
            self._applied[akey] = copy.deepcopy(config)
        return result

    def _commit_update(
        self,
        res: res_mod.Resource,
        old: Obj,
        new: Obj,
        *,
        subresource: str | None,
        dry_run: bool,
        field_validation: str | None,
        warnings: list[str] | None,
    ) -> Obj:
        ometa = old["metadata"]
        name = ometa["name"]
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
        nmeta = _meta(new)
        for k in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "name",
        ):
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
                    name,
                    [
                        {
                            "field": "metadata.finalizers",
                            "message": "Forbidden: no new finalizers can be added if the object "
                            f"is being deleted, found new finalizers {sorted(added)!r}",
                            "reason": "FieldValueForbidden",
                        }
                    ],
                )
        if subresource is None:
            defaults.check_immutable(res.key, res.kind, res.group, old, new)
        warn = self.admission.admit(res, new, old, field_validation, subresource=subresource)
        if warnings is not None:
            warnings.extend(warn)
        defaults.early_defaults(res.key, new)
        if self.validate_builtins and not res.is_custom and subresource is None:
            admission_mod.validate_builtin(res, new, self.kubernetes_version)
        if _spec_part(new, res.has_status) != _spec_part(old, res.has_status):
            nmeta["generation"] = int(ometa.get("generation", 1)) + 1
        if not nmeta.get("finalizers"):
            nmeta.pop("finalizers", None)
        old_cmp = self._as_version(res, old)
        if new == old_cmp:
            return old_cmp  # a no-op write: no new resourceVersion, no event
        if res.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._prepare_crd(new)
        if dry_run:
            return copy.deepcopy(new)
        key = (nmeta.get("namespace"), name)
        nmeta["resourceVersion"] = str(self._next_rv())
        if nmeta.get("deletionTimestamp") and not nmeta.get("finalizers"):
            del self._objects[res.key][key]
            self._emit(res, "DELETED", new, old)
            self._after_removal(res, new)
        else:
            self._objects[res.key][key] = new
            self._emit(res, "MODIFIED", new, old)
            if res.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self._sync_crd(new, name)
        self._gc()
        return self._as_version(res, new)

    def delete(
        self,
        res: res_mod.Resource,
        namespace: str | None,
        name: str,
        *,
        propagation: str | None = None,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Delete one object; returns (the object, whether it is gone now)."""
        ns = namespace if res.namespaced else None
        with self.lock:
            old = self._objects[res.key].get((ns, name))
            if old is None:
                raise errors.not_found(res.plural, res.group, name)
            meta = old["metadata"]
            pre = preconditions or {}
            if pre.get("uid") and pre["uid"] != meta["uid"]:
                raise errors.conflict(
                    res.plural,
                    res.group,
                    name,
                    f"Precondition failed: UID in precondition: {pre['uid']}, "
                    f"UID in object meta: {meta['uid']}",
                )
            if (
                pre.get("resourceVersion")
                and str(pre["resourceVersion"]) != meta["resourceVersion"]
            ):
                raise errors.conflict(
                    res.plural,
                    res.group,
                    name,
                    "Precondition failed: ResourceVersion in precondition: "
                    f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                    f"{meta['resourceVersion']}",
                )
            if dry_run:
                return self._as_version(res, old), False
            policy = propagation or _default_propagation(res)
            new = copy.deepcopy(old)
            nmeta = new["metadata"]
            finalizers = list(nmeta.get("finalizers") or [])
            if (
                policy == "Foreground"
                and "foregroundDeletion" not in finalizers
                and self._has_dependents(meta["uid"])
            ):
                finalizers.append("foregroundDeletion")
            if policy == "Orphan":
                self._orphan_dependents(meta["uid"])
            if res.key == ("", "namespaces"):
                # Namespaces terminate: their content is deleted first (see _gc).
                if not nmeta.get("deletionTimestamp"):
                    nmeta["deletionTimestamp"] = now_rfc3339()
                    nmeta["deletionGracePeriodSeconds"] = 0
                    new["status"] = {"phase": "Terminating"}
                    nmeta["resourceVersion"] = str(self._next_rv())
                    self._objects[res.key][(ns, name)] = new
                    self._emit(res, "MODIFIED", new, old)
                self._gc()
                gone = (ns, name) not in self._objects[res.key]
                return self._as_version(res, new), gone
            if finalizers:
                if nmeta.get("deletionTimestamp") and finalizers == list(
                    nmeta.get("finalizers") or []
                ):
                    return self._as_version(res, old), False
                nmeta["finalizers"] = finalizers
                nmeta.setdefault("deletionTimestamp", now_rfc3339())
                nmeta.setdefault("deletionGracePeriodSeconds", 0)
                nmeta["resourceVersion"] = str(self._next_rv())
                self._objects[res.key][(ns, name)] = new
                self._emit(res, "MODIFIED", new, old)
                self._gc()
                return self._as_version(res, new), False
            nmeta["resourceVersion"] = str(self._next_rv())
            del self._objects[res.key][(ns, name)]
            self._emit(res, "DELETED", new, old)
            self._after_removal(res, new)
            self._gc()
            return self._as_version(res, new), True

    def _after_removal(self, res: res_mod.Resource, obj: Obj) -> None:
        if res.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            removed = [r for r in self._resources.values() if r.crd_name == obj["metadata"]["name"]]
            self._sync_crd(None, obj["metadata"]["name"])
            for r in removed[:1]:
                for (ns, nm), o in list(self._objects[r.key].items()):
                    o2 = copy.deepcopy(o)
                    o2["metadata"]["resourceVersion"] = str(self._next_rv())
                    del self._objects[r.key][(ns, nm)]
                    self._emit(r, "DELETED", o2, o)
        for k in [
            k
            for k in self._applied
            if k[:4]
            == (res.group, res.plural, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        ]:
            del self._applied[k]

    # ------------------------------------------------------------------ garbage collection
    def _has_dependents(self, uid: str) -> bool:
        return any(
            any(ref.get("uid") == uid for ref in (o["metadata"].get("ownerReferences") or []))
            for objs in self._objects.values()
            for o in objs.values()
        )

    def _orphan_dependents(self, uid: str) -> None:
        for key, objs in list(self._objects.items()):
            res = self._resource_for_key(key)
            if res is None:
                continue
            for okey, o in list(objs.items()):
                refs = o["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    new = copy.deepcopy(o)
                    kept = [r for r in refs if r.get("uid") != uid]
                    if kept:
                        new["metadata"]["ownerReferences"] = kept
                    else:
                        new["metadata"].pop("ownerReferences", None)
                    new["metadata"]["resourceVersion"] = str(self._next_rv())
                    objs[okey] = new
                    self._emit(res, "MODIFIED", new, o)

    def _gc(self) -> None:
        """Delete dependents whose owners are gone, finish foreground deletions and
        terminating namespaces. Runs until nothing changes (under the lock)."""
        for _ in range(1000):
            if not self._gc_pass():
                return

    def _gc_pass(self) -> bool:
        live = self._by_uid()
        for uid, (res, obj) in live.items():
            meta = obj["metadata"]
            ns, name = meta.get("namespace"), meta["name"]
            refs = meta.get("ownerReferences") or []
            if refs:
                present = [r for r in refs if r.get("uid") in live]
                if not present and not meta.get("deletionTimestamp"):
                    self.delete(res, ns, name, propagation="Background")
                    return True
                if present and len(present) != len(refs):
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = present
                    new["metadata"]["resourceVersion"] = str(self._next_rv())
                    self._objects[res.key][(ns, name)] = new
                    self._emit(res, "MODIFIED", new, obj)
                    return True
            fins = meta.get("finalizers") or []
            if meta.get("deletionTimestamp") and "foregroundDeletion" in fins:
                deps = [
                    (r2, o2)
                    for u2, (r2, o2) in live.items()
                    if any(
                        ref.get("uid") == uid
                        for ref in (o2["metadata"].get("ownerReferences") or [])
                    )
                ]
                pending = [d for d in deps if not d[1]["metadata"].get("deletionTimestamp")]
                if pending:
                    r2, o2 = pending[0]
                    self.delete(
                        r2,
                        o2["metadata"].get("namespace"),
                        o2["metadata"]["name"],
                        propagation="Foreground",
                    )
                    return True
                if not deps:
                    new = copy.deepcopy(obj)
                    new["metadata"]["finalizers"] = [f for f in fins if f != "foregroundDeletion"]
                    self._commit_update(
                        res,
                        obj,
                        new,
                        subresource=None,
                        dry_run=False,
                        field_validation="Ignore",
                        warnings=None,
                    )
                    return True
            if res.key == ("", "namespaces") and meta.get("deletionTimestamp"):
                content = [
                    (r2, o2)
                    for r2, o2 in live.values()
                    if r2.namespaced and o2["metadata"].get("namespace") == name
                ]
                pending = [c for c in content if not c[1]["metadata"].get("deletionTimestamp")]
                if pending:
                    r2, o2 = pending[0]
                    self.delete(r2, name, o2["metadata"]["name"], propagation="Background")
                    return True
                if not content:
                    new = copy.deepcopy(obj)
                    new["metadata"]["resourceVersion"] = str(self._next_rv())
                    del self._objects[res.key][(None, name)]
                    self._emit(res, "DELETED", new, obj)
                    return True
        return False

    # ------------------------------------------------------------------ watching
    def subscribe(
        self,
        res: res_mod.Resource,
        namespace: str | None,
        since: int | None,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[Watcher, list[WatchEvent]]:
        """Register a watcher; return it and the events to send first.

        ``since`` None: synthetic ADDED events for every current object, then live changes.
        ``since`` N: every recorded change after N, then live changes (410 Gone if N is
        older than the history kept).
        """
        ns = namespace if res.namespaced else None
        with self.lock:
            watcher = Watcher(res.key, ns, asyncio.Queue(), loop)
            if since is None:
                first = [
                    WatchEvent(
                        int(o["metadata"]["resourceVersion"]),
                        res.key,
                        k[0],
                        "ADDED",
                        copy.deepcopy(o),
                        None,
                    )
                    for k, o in sorted(
                        self._objects[res.key].items(),
                        key=lambda kv: int(kv[1]["metadata"]["resourceVersion"]),
                    )
                    if ns is None or k[0] == ns
                ]
            else:
                oldest = self._history[0].rv if self._history else self._rv + 1
                if since < oldest - 1 and since < self._rv:
                    raise errors.ApiError(
                        410, f"too old resource version: {since} ({oldest - 1})", reason="Expired"
                    )
                first = [
                    e
                    for e in self._history
                    if e.rv > since and e.key == res.key and (ns is None or e.namespace == ns)
                ]
            self._watchers.append(watcher)
            return watcher, first

    def unsubscribe(self, watcher: Watcher) -> None:
        with self.lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def cut_watches(self) -> int:
        """End every open watch stream (clients see the connection close and re-watch)."""
        with self.lock:
            watchers = list(self._watchers)
            self._watchers.clear()
        for w in watchers:
            w.push(None)
        return len(watchers)

    @property
    def open_watches(self) -> int:
        with self.lock:
            return len(self._watchers)


def _default_propagation(res: res_mod.Resource) -> str:
    # The API's own default for these legacy kinds is to orphan the dependents.
    if res.key in {("batch", "jobs"), ("", "replicationcontrollers")}:
        return "Orphan"
    return "Background"


def _removed_fields(previous: Any, current: Any) -> Any:
    """A merge patch removing the fields in ``previous`` that ``current`` no longer has."""
    if not isinstance(previous, dict):
        return {}
    out: dict[str, Any] = {}
    cur = current if isinstance(current, dict) else {}
    for key, value in previous.items():
        if key not in cur:
            out[key] = None
        elif isinstance(value, dict) and isinstance(cur[key], dict):
            sub = _removed_fields(value, cur[key])
            if sub:
                out[key] = sub
    return out
