"""The cluster's state: objects and resource versions, and the writes that change them.

Every operation is synchronous and thread-safe (one re-entrant lock), so the HTTP server's
event loop, the Job controller and a test's own thread can all use it. Each change is
recorded in the :class:`~.watch.WatchHub` (watch streams, listeners) and followed by a
:class:`~.gc.GarbageCollector` pass; what a write does to the object itself is in
:mod:`.objects`, CRD handling in :mod:`.crds`, admission in :mod:`.admission`.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from kubequant_localkube import admission as admission_mod
from kubequant_localkube import defaults, errors, patching, podadmission
from kubequant_localkube import resources as res_mod
from kubequant_localkube import validation
from kubequant_localkube.crds import prepare_crd
from kubequant_localkube.gc import GarbageCollector
from kubequant_localkube.objects import (
    CRD_KEY,
    NAMESPACES_KEY,
    Obj,
    ObjKey,
    as_version,
    check_resource_version,
    check_uid,
    default_propagation,
)
from kubequant_localkube.objects import meta as _meta
from kubequant_localkube.objects import (
    name_required,
    now_rfc3339,
    placed,
    spec_part,
    updated,
    without_server_fields,
)
from kubequant_localkube.registry import ResourceRegistry
from kubequant_localkube.ssa import ServerSideApply
from kubequant_localkube.watch import HISTORY_SIZE, Watcher, WatchEvent, WatchHub

__all__ = [
    "DEFAULT_NAMESPACES",
    "HISTORY_SIZE",
    "Obj",
    "ObjKey",
    "Store",
    "WatchEvent",
    "Watcher",
    "now_rfc3339",
]

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_RANDOM = random.SystemRandom()
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)
_SMP_FOR_CR = (
    "the body of the request was in an unknown format - accepted media types include: "
    "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
)


class Store:
    """All objects of the emulated cluster, keyed by (group, plural) then (namespace, name)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._rv = 0
        self.resources = ResourceRegistry(self.lock)
        self._objects: dict[tuple[str, str], dict[ObjKey, Obj]] = collections.defaultdict(dict)
        self.watches = WatchHub()
        self._history = self.watches.history  # the same deque (tests compact it)
        self.gc = GarbageCollector(self)
        self.ssa = ServerSideApply(self)
        self.admission = admission_mod.Admission()
        # A real API server answers 415 to a strategic merge patch of a custom resource; by
        # default it is applied here as a JSON merge patch (lists replaced) instead.
        self.reject_strategic_for_custom = False
        # Validate built-in kinds (Jobs, Pods, RBAC, ...) as the API server does: the official
        # schemas of this Kubernetes version, then its cross-field rules (see .validation).
        # Always on; the flag is only an escape hatch.
        self.validate_builtins = True
        self.kubernetes_version = "1.32"
        for ns in DEFAULT_NAMESPACES:
            self.create(self.resource("", "v1", "namespaces"), None, {"metadata": {"name": ns}})

    # ------------------------------------------------------------------ resources
    def register(self, res: res_mod.Resource) -> None:
        self.resources.register(res)

    def all_resources(self) -> list[res_mod.Resource]:
        return self.resources.all()

    def resource(self, group: str, version: str, plural: str) -> res_mod.Resource:
        return self.resources.get(group, version, plural)

    def find_resource(self, name: str) -> res_mod.Resource | None:
        """By plural, singular, kind or short name (like kubectl resolves names)."""
        return self.resources.find(name)

    # ------------------------------------------------------------------ changes and watches
    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    @property
    def resource_version(self) -> int:
        with self.lock:
            return self._rv

    def _emit(self, res: res_mod.Resource, etype: str, obj: Obj, old: Obj | None) -> None:
        ns = obj["metadata"].get("namespace")
        self.watches.emit(WatchEvent(self._rv, res.key, ns, etype, copy.deepcopy(obj), old))

    def write_modified(self, res: res_mod.Resource, new: Obj, old: Obj | None) -> None:
        """Store ``new`` under a new resourceVersion and record MODIFIED (lock held)."""
        nmeta = new["metadata"]
        nmeta["resourceVersion"] = str(self._next_rv())
        self._objects[res.key][(nmeta.get("namespace"), nmeta["name"])] = new
        self._emit(res, "MODIFIED", new, old)

    def write_deleted(self, res: res_mod.Resource, new: Obj, old: Obj | None) -> None:
        """Remove the object under a new resourceVersion and record DELETED (lock held)."""
        nmeta = new["metadata"]
        nmeta["resourceVersion"] = str(self._next_rv())
        del self._objects[res.key][(nmeta.get("namespace"), nmeta["name"])]
        self._emit(res, "DELETED", new, old)

    def add_listener(self, fn: Callable[[WatchEvent], None]) -> None:
        """Call ``fn`` (under the store's lock, keep it quick) on every change."""
        with self.lock:
            self.watches.add_listener(fn)

    def remove_listener(self, fn: Callable[[WatchEvent], None]) -> None:
        with self.lock:
            self.watches.remove_listener(fn)

    def subscribe(
        self,
        res: res_mod.Resource,
        namespace: str | None,
        since: int | None,
        loop: asyncio.AbstractEventLoop,
    ) -> tuple[Watcher, list[WatchEvent]]:
        """Register a watcher; return it and the events to send first (see
        :meth:`.WatchHub.subscribe`; 410 Gone if ``since`` is older than the history)."""
        ns = namespace if res.namespaced else None
        with self.lock:
            return self.watches.subscribe(
                res.key, ns, since, loop, current=self._objects[res.key], rv=self._rv
            )

    def unsubscribe(self, watcher: Watcher) -> None:
        with self.lock:
            self.watches.unsubscribe(watcher)

    def cut_watches(self) -> int:
        """End every open watch stream (clients see the connection close and re-watch)."""
        with self.lock:
            watchers = self.watches.take_all()
        for w in watchers:
            w.push(None)
        return len(watchers)

    @property
    def open_watches(self) -> int:
        with self.lock:
            return self.watches.open_watches

    # ------------------------------------------------------------------ reads
    def _ns_exists(self, ns: str) -> bool:
        return (None, ns) in self._objects[NAMESPACES_KEY]

    def live_by_uid(self) -> dict[str, tuple[res_mod.Resource, Obj]]:
        """Every stored object of a served resource by uid (lock held; do not mutate)."""
        out: dict[str, tuple[res_mod.Resource, Obj]] = {}
        for key, objs in self._objects.items():
            res = self.resources.for_key(key)
            if res is None:
                continue
            for obj in objs.values():
                out[obj["metadata"]["uid"]] = (res, obj)
        return out

    def stored_objects(self) -> Iterator[Obj]:
        """Every stored object (lock held; do not mutate)."""
        for objs in self._objects.values():
            yield from objs.values()

    def get(self, res: res_mod.Resource, namespace: str | None, name: str) -> Obj:
        ns = namespace if res.namespaced else None
        with self.lock:
            obj = self._objects[res.key].get((ns, name))
            if obj is None:
                raise errors.not_found(res.plural, res.group, name)
            return as_version(res, obj)

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
                as_version(res, o)
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
            res = self.resources.for_key(key)
            if res is not None:
                for o in objs:
                    yield res, as_version(res, o)

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
        namespace = placed(res, namespace, obj)
        with self.lock:
            if not meta.get("name"):
                if meta.get("generateName"):
                    for _ in range(100):
                        cand = meta["generateName"] + "".join(_RANDOM.choices(_NAME_CHARS, k=5))
                        if (namespace, cand) not in self._objects[res.key]:
                            meta["name"] = cand
                            break
                else:
                    raise name_required(res)
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
            ns_obj = self._objects[NAMESPACES_KEY].get((None, namespace or ""))
            terminating = ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp")
            if terminating and res.plural != "namespaces":
                raise errors.ApiError(
                    403,
                    f'{res.plural} "{name}" is forbidden: unable to create new content in '
                    f"namespace {namespace} because it is being terminated",
                    reason="Forbidden",
                )
            without_server_fields(res, obj)
            warn = self.admission.admit(res, obj, None, field_validation, subresource=None)
            generated = not (body.get("metadata") or {}).get("name")
            warn += podadmission.admit_create(self, res, obj, generated=generated)
            if warnings is not None:
                warnings.extend(warn)
            defaults.early_defaults(res.key, obj)
            if self.validate_builtins and not res.is_custom:
                validation.validate_builtin(res, obj, self.kubernetes_version)
            if res.key == CRD_KEY:
                prepare_crd(obj, self.admission)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            defaults.apply_builtin_defaults(res.key, obj)
            if dry_run:
                meta["resourceVersion"] = str(self._rv)
                return as_version(res, obj)
            meta["resourceVersion"] = str(self._next_rv())
            self._objects[res.key][(namespace, name)] = obj
            self._emit(res, "ADDED", obj, None)
            if res.key == CRD_KEY:
                self.resources.sync_crd(obj, name, self.admission)
            self.gc.collect()
            return as_version(res, obj)

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
            check_resource_version(res, name, old, bmeta.get("resourceVersion"), _MODIFIED)
            return self.commit_update(
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
                return self.ssa.apply(
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
            if patch_type == "strategic" and res.is_custom and self.reject_strategic_for_custom:
                raise errors.ApiError(415, _SMP_FOR_CR, reason="UnsupportedMediaType")
            try:
                new = patching.patched(
                    as_version(res, old), patch_type, patch, custom=res.is_custom
                )
            except patching.PatchError as exc:
                raise errors.ApiError(exc.status, str(exc)) from exc
            if isinstance(patch, dict):
                pmeta = patch.get("metadata") or {}
                check_resource_version(res, name, old, pmeta.get("resourceVersion"), _MODIFIED)
                check_uid(res, name, old, pmeta.get("uid"))
            return self.commit_update(
                res,
                old,
                new,
                subresource=subresource,
                dry_run=dry_run,
                field_validation=field_validation,
                warnings=warnings,
            )

    def commit_update(
        self,
        res: res_mod.Resource,
        old: Obj,
        new: Obj,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str | None = None,
        warnings: list[str] | None = None,
    ) -> Obj:
        """Admit and store ``new`` as the next version of the stored ``old`` (lock held)."""
        new = updated(res, old, new, subresource)
        ometa, nmeta = old["metadata"], new["metadata"]
        name = ometa["name"]
        if subresource is None:
            defaults.check_immutable(res.key, res.kind, res.group, old, new)
        warn = self.admission.admit(res, new, old, field_validation, subresource=subresource)
        if warnings is not None:
            warnings.extend(warn)
        defaults.early_defaults(res.key, new)
        if self.validate_builtins and not res.is_custom and subresource is None:
            validation.validate_builtin(res, new, self.kubernetes_version)
        if spec_part(new, res.has_status) != spec_part(old, res.has_status):
            nmeta["generation"] = int(ometa.get("generation", 1)) + 1
        if not nmeta.get("finalizers"):
            nmeta.pop("finalizers", None)
        old_cmp = as_version(res, old)
        if new == old_cmp:
            return old_cmp  # a no-op write: no new resourceVersion, no event
        if res.key == CRD_KEY:
            prepare_crd(new, self.admission)
        if dry_run:
            return copy.deepcopy(new)
        if nmeta.get("deletionTimestamp") and not nmeta.get("finalizers"):
            self.write_deleted(res, new, old)
            self._after_removal(res, new)
        else:
            self.write_modified(res, new, old)
            if res.key == CRD_KEY:
                self.resources.sync_crd(new, name, self.admission)
        self.gc.collect()
        return as_version(res, new)

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
            check_uid(res, name, old, pre.get("uid"))
            check_resource_version(res, name, old, pre.get("resourceVersion"))
            if dry_run:
                return as_version(res, old), False
            policy = propagation or default_propagation(res)
            new = copy.deepcopy(old)
            nmeta = new["metadata"]
            finalizers = list(nmeta.get("finalizers") or [])
            if (
                policy == "Foreground"
                and "foregroundDeletion" not in finalizers
                and self.gc.has_dependents(meta["uid"])
            ):
                finalizers.append("foregroundDeletion")
            if policy == "Orphan":
                self.gc.orphan_dependents(meta["uid"])
            if res.key == NAMESPACES_KEY:
                # Namespaces terminate: their content is deleted first (see _gc).
                if not nmeta.get("deletionTimestamp"):
                    nmeta["deletionTimestamp"] = now_rfc3339()
                    nmeta["deletionGracePeriodSeconds"] = 0
                    new["status"] = {"phase": "Terminating"}
                    self.write_modified(res, new, old)
                self.gc.collect()
                gone = (ns, name) not in self._objects[res.key]
                return as_version(res, new), gone
            if finalizers:
                if nmeta.get("deletionTimestamp") and finalizers == list(
                    nmeta.get("finalizers") or []
                ):
                    return as_version(res, old), False
                nmeta["finalizers"] = finalizers
                nmeta.setdefault("deletionTimestamp", now_rfc3339())
                nmeta.setdefault("deletionGracePeriodSeconds", 0)
                self.write_modified(res, new, old)
                self.gc.collect()
                return as_version(res, new), False
            self.write_deleted(res, new, old)
            self._after_removal(res, new)
            self.gc.collect()
            return as_version(res, new), True

    def _after_removal(self, res: res_mod.Resource, obj: Obj) -> None:
        if res.key == CRD_KEY:
            removed = self.resources.of_crd(obj["metadata"]["name"])
            self.resources.sync_crd(None, obj["metadata"]["name"], self.admission)
            for r in removed[:1]:
                for o in list(self._objects[r.key].values()):
                    self.write_deleted(r, copy.deepcopy(o), o)
        self.ssa.forget(res, obj["metadata"].get("namespace"), obj["metadata"]["name"])
