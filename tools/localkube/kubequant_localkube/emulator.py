"""The Kubernetes API server of the local control plane, over real HTTP (plain aiohttp).

It behaves like a real API server where kopf, the kubernetes client and kubectl look: CRD
registration and discovery (:mod:`.discovery`), uid/resourceVersion/generation, watch
resume and timeouts (:mod:`.watchstream`), namespaces, generateName, PUT with conflicts,
merge/strategic/JSON/apply patches, a separate status subresource, selectors, garbage
collection and finalizers (all in :class:`~.store.Store`), CRD admission (schema and CEL),
Table output (:mod:`.tables`), OpenAPI documents for kubectl, RBAC for pods' service
accounts, plus a request log and fault injection for tests (:mod:`.calls`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import dataclasses
import json
import logging
import threading

import aiohttp.web

from kubequant_localkube import authz, discovery, errors, podadmission, rbac, tables
from kubequant_localkube.calls import ApiCall, Fault
from kubequant_localkube.httpio import (
    JSON,
    ResourcePath,
    delete_options,
    json_response,
    parse_resource_path,
    predicate,
    read_body,
)
from kubequant_localkube.objects import Obj
from kubequant_localkube.resources import Resource
from kubequant_localkube.store import Store
from kubequant_localkube.watchstream import serve_watch

__all__ = ["ApiCall", "Fault", "LocalKubeEmulator"]

log = logging.getLogger(__name__)
# Who a request is authorized as (after impersonation).
_IDENTITY: contextvars.ContextVar[authz.UserInfo] = contextvars.ContextVar(
    "localkube_identity", default=authz.ADMIN
)
_RBAC_KINDS = ("roles", "clusterroles", "rolebindings", "clusterrolebindings")

# Patch content types the server applies (apply-patch+cbor and anything else: 415).
PATCH_KINDS = {
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/json-patch+json": "json",
    "application/apply-patch+yaml": "apply",
}


def patch_kind(raw: aiohttp.web.BaseRequest) -> str | None:
    """merge, strategic, json or apply for a PATCH's Content-Type; None when unsupported."""
    return PATCH_KINDS.get(raw.headers.get("Content-Type", JSON).split(";")[0].strip())


@dataclasses.dataclass(kw_only=True, eq=False)
class LocalKubeEmulator:
    """The API server: an aiohttp low-level handler. Serve it with
    :class:`~kubequant_localkube.cluster.LocalCluster` (or ``aiohttp.web.Server(emulator)``)."""

    store: Store = dataclasses.field(default_factory=Store)
    calls: list[ApiCall] = dataclasses.field(default_factory=list)
    faults: list[Fault] = dataclasses.field(default_factory=list)
    pod_logs: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    bookmark_interval: float = 5.0
    max_watch_seconds: float = 1800.0
    # Requests of any identity outside system:masters (a pod's service-account token, an
    # impersonated user) are authorized by RBAC, with escalation prevention and impersonation
    # checks as a real server applies them (:mod:`.authz`). The admin token is system:masters.
    enforce_rbac: bool = True
    # Pods reach the API at a per-ServiceAccount URL and also get a token. True: a pod's
    # request without its token is a 401, as on a real cluster (a client that drops its
    # bearer token fails here too); False: the URL alone identifies the pod.
    require_pod_token: bool = False
    # OwnerReferencesPermissionEnforcement (OpenShift enables it): an RBAC-authorized request
    # that sets ownerReferences needs delete on the object, and a new blockOwnerDeletion
    # reference needs update on the owner's finalizers subresource (:mod:`.podadmission`).
    owner_references_permission_enforcement: bool = False
    _calls_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ test hooks
    def inject_failures(
        self,
        verb: str,
        resource: str,
        count: int = 1,
        status: int = 500,
        *,
        subresource: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        message: str = "injected failure",
    ) -> Fault:
        """Fail the next ``count`` matching requests with ``status`` (500, 409, 429, ...)."""
        fault = Fault(verb, resource, count, status, subresource, namespace, name, message)
        with self._calls_lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._calls_lock:
            self.faults.clear()

    def cut_watches(self) -> int:
        """Close every open watch stream; returns how many were open."""
        return self.store.cut_watches()

    def api_calls(self) -> list[ApiCall]:
        with self._calls_lock:
            return list(self.calls)

    def used_permissions(
        self, user_agent: str | None = None, user: str | None = None
    ) -> set[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], verb) of every request made (optionally only by
        clients whose User-Agent contains ``user_agent``, or by ``user``)."""
        return {
            (c.group, c.rbac_resource, c.verb)
            for c in self.api_calls()
            if (user_agent is None or user_agent in c.user_agent)
            and (user is None or c.user == user)
        }

    def clear_calls(self) -> None:
        with self._calls_lock:
            self.calls.clear()

    # ------------------------------------------------------------------ HTTP entry
    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """The aiohttp entry point: every request, answered or turned into a Status."""
        body = await raw.read()
        try:
            path, pod_sa = rbac.split_identity_path(raw.path)
            token_sa = rbac.service_account_of(raw.headers.get("Authorization"))
            if pod_sa is not None and token_sa != pod_sa and self.require_pod_token:
                raise errors.ApiError(401, "Unauthorized", reason="Unauthorized")
            sa = pod_sa or token_sa
            user = authz.service_account_user(*sa) if sa else authz.ADMIN
            _IDENTITY.set(
                authz.impersonate(self.store, user, raw.headers, enforce=self.enforce_rbac)
            )
            return await self._route(raw, body, path.rstrip("/") or "/")
        except errors.ApiError as exc:
            return aiohttp.web.json_response(exc.to_status(), status=exc.status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must reach the client as a 500 Status
            log.exception("emulator failed on a request", extra={"component": "localkube"})
            return aiohttp.web.json_response(
                errors.ApiError(500, f"internal error: {exc!r}").to_status(), status=500
            )

    async def _route(
        self, raw: aiohttp.web.BaseRequest, body: bytes, path: str
    ) -> aiohttp.web.StreamResponse:
        answer = discovery.serve(self.store, raw, path)
        if answer is not None:
            return answer
        rp = parse_resource_path(path)
        if rp is None:
            raise errors.ApiError(404, "the server could not find the requested resource")
        return await self._serve_resource(raw, body, rp)

    # ------------------------------------------------------------------ resources
    def _record(self, call: ApiCall) -> None:
        with self._calls_lock:
            self.calls.append(call)
            for fault in self.faults:
                if fault.matches(call):
                    fault.count -= 1
                    status = fault.status
                    reason = {409: "Conflict", 429: "TooManyRequests", 503: "ServiceUnavailable"}
                    raise errors.ApiError(
                        status,
                        f"{fault.message} ({call.verb} {call.rbac_resource})",
                        reason=reason.get(status),
                    )

    async def _serve_resource(
        self, raw: aiohttp.web.BaseRequest, body: bytes, rp: ResourcePath
    ) -> aiohttp.web.StreamResponse:
        q = raw.query
        method = raw.method.upper()
        watch = (q.get("watch") or "").lower() in ("true", "1")
        if method == "GET":
            verb = "watch" if watch else ("get" if rp.name else "list")
        elif method == "POST":
            verb = "create"
        elif method == "PUT":
            verb = "update"
        elif method == "PATCH":
            verb = "patch"
        elif method == "DELETE":
            verb = "delete" if rp.name else "deletecollection"
        else:
            raise errors.ApiError(405, f"method {method} is not allowed")
        call = ApiCall(
            verb,
            rp.group,
            rp.version,
            rp.plural,
            rp.subresource,
            rp.namespace,
            rp.name,
            user_agent=raw.headers.get("User-Agent", ""),
        )
        try:
            response = await self._serve_verb(raw, body, rp, call)
        except errors.ApiError as exc:
            call.code = exc.status
            raise
        call.code = response.status
        return response

    async def _serve_verb(
        self, raw: aiohttp.web.BaseRequest, body: bytes, rp: ResourcePath, call: ApiCall
    ) -> aiohttp.web.StreamResponse:
        q = raw.query
        verb = call.verb
        user = _IDENTITY.get()
        call.user = user.name
        self._record(call)
        enforce = self.enforce_rbac and not user.privileged
        if enforce:
            # a list/watch narrowed to one name by fieldSelector is authorized with that name
            name = rp.name or _selected_name(q.get("fieldSelector"))
            if not authz.authorized(
                self.store,
                user,
                verb,
                rp.group,
                call.rbac_resource,
                namespace=rp.namespace,
                name=name,
            ):
                raise authz.forbid(
                    user, verb, rp.group, call.rbac_resource, namespace=rp.namespace, name=name
                )
        res = self.store.resource(rp.group, rp.version, rp.plural)
        if rp.namespace and not res.namespaced:
            raise errors.ApiError(404, "the server could not find the requested resource")
        ns = rp.namespace if res.namespaced else None
        dry_run = "All" in q.getall("dryRun", [])
        field_validation = q.get("fieldValidation")
        table = "as=Table" in raw.headers.get("Accept", "")
        warnings: list[str] = []
        rbac_write = rp.group == authz.RBAC_GROUP and rp.plural in _RBAC_KINDS
        if enforce and rbac_write and verb in ("create", "update", "patch") and not rp.subresource:
            self._check_escalation(raw, body, rp, ns, user)
        writes = verb in ("create", "update", "patch") and not rp.subresource
        if enforce and writes and self.owner_references_permission_enforcement:
            old, new = self._would_store(raw, body, rp, ns)
            if new is not None:
                podadmission.check_owner_references(
                    self.store,
                    res,
                    new,
                    old,
                    lambda v, g, r, n: authz.authorized(
                        self.store, user, v, g, r, namespace=ns, name=n
                    ),
                )

        if verb == "watch":
            return await serve_watch(
                self.store,
                raw,
                res,
                ns,
                name=rp.name,
                table=table,
                bookmark_interval=self.bookmark_interval,
                max_watch_seconds=self.max_watch_seconds,
            )
        if verb == "list":
            return self._list(raw, res, ns, table)
        if verb == "get":
            if rp.subresource == "log" and res.key == ("", "pods"):
                self.store.get(res, ns, rp.name or "")
                text = self.pod_logs.get((ns or "", rp.name or ""), "")
                tail = q.get("tailLines")
                if tail:
                    text = "\n".join(text.splitlines()[-int(tail) :]) + ("\n" if text else "")
                return aiohttp.web.Response(text=text, content_type="text/plain")
            if rp.subresource not in (None, "status", "scale"):
                raise errors.ApiError(404, "the server could not find the requested resource")
            obj = self.store.get(res, ns, rp.name or "")
            if table:
                return json_response(
                    tables.table(res, [obj], str(self.store.resource_version), _include(raw))
                )
            return json_response(obj)
        if verb == "create":
            data = read_body(body, raw)
            if res.plural == "selfsubjectaccessreviews":
                data["status"] = authz.access_review(self.store, user, data.get("spec") or {})
                return json_response(data, status=201)
            if rp.name and rp.subresource:
                raise errors.ApiError(
                    404, f"the server could not find the requested resource ({rp.subresource})"
                )
            obj = self.store.create(
                res,
                ns,
                data,
                dry_run=dry_run,
                field_validation=field_validation,
                warnings=warnings,
            )
            return json_response(obj, status=201, warnings=warnings)
        if verb == "update":
            data = read_body(body, raw)
            obj = self.store.replace(
                res,
                ns,
                rp.name or "",
                data,
                subresource=rp.subresource,
                dry_run=dry_run,
                field_validation=field_validation,
                warnings=warnings,
            )
            return json_response(obj, warnings=warnings)
        if verb == "patch":
            patch_type = patch_kind(raw)
            if patch_type is None:
                ctype = raw.headers.get("Content-Type", JSON).split(";")[0].strip()
                raise errors.ApiError(
                    415,
                    f"the body of the request was in an unknown format ({ctype}) - accepted media "
                    "types include: application/json-patch+json, application/merge-patch+json, "
                    "application/apply-patch+yaml, application/strategic-merge-patch+json",
                )
            patch = read_body(body, raw, yaml_ok=patch_type == "apply", any_json=True)
            obj = self.store.patch(
                res,
                ns,
                rp.name or "",
                patch_type,
                patch,
                subresource=rp.subresource,
                dry_run=dry_run,
                field_validation=field_validation,
                warnings=warnings,
                field_manager=q.get("fieldManager"),
            )
            return json_response(obj, warnings=warnings)
        if verb == "delete":
            opts = delete_options(body, raw)
            obj, gone = self.store.delete(
                res,
                ns,
                rp.name or "",
                propagation=opts.get("propagationPolicy"),
                preconditions=opts.get("preconditions"),
                dry_run=dry_run or "All" in (opts.get("dryRun") or []),
            )
            if res.key == ("batch", "jobs") and not opts.get("propagationPolicy"):
                warnings.append(
                    "child pods are preserved by default when jobs are deleted; set "
                    "propagationPolicy=Background to remove them or set propagationPolicy=Orphan "
                    "to suppress this warning"
                )
            if gone:
                return json_response(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {
                            "name": rp.name,
                            "group": res.group,
                            "kind": res.plural,
                            "uid": obj["metadata"]["uid"],
                        },
                    },
                    warnings=warnings,
                )
            return json_response(obj, status=200, warnings=warnings)
        # deletecollection
        opts = delete_options(body, raw)
        items, _ = self.store.list_objects(res, ns, predicate(raw, None))
        deleted = []
        for item in items:
            with contextlib.suppress(errors.ApiError):
                obj, _gone = self.store.delete(
                    res,
                    item["metadata"].get("namespace"),
                    item["metadata"]["name"],
                    propagation=opts.get("propagationPolicy"),
                    dry_run=dry_run,
                )
                deleted.append(obj)
        return json_response(
            {
                "kind": res.list_kind,
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": deleted,
            }
        )

    def _check_escalation(
        self,
        raw: aiohttp.web.BaseRequest,
        body: bytes,
        rp: ResourcePath,
        ns: str | None,
        user: authz.UserInfo,
    ) -> None:
        """The object a write would store, checked for RBAC escalation before anything is
        stored."""
        old, new = self._would_store(raw, body, rp, ns)
        if new is not None:  # None: refused as an unsupported patch below
            authz.check_escalation(self.store, user, rp.plural, ns, new, old=old)

    def _would_store(
        self, raw: aiohttp.web.BaseRequest, body: bytes, rp: ResourcePath, ns: str | None
    ) -> tuple[Obj | None, Obj | None]:
        """(the stored object, what a write would store: a patch applied as a dry run)."""
        res = self.store.resource(rp.group, rp.version, rp.plural)
        old = self.store.try_get(res, ns, rp.name) if rp.name else None
        if raw.method.upper() == "PATCH":
            kind = patch_kind(raw)
            if kind is None:
                return old, None
            patch = read_body(body, raw, yaml_ok=kind == "apply", any_json=True)
            new = self.store.patch(
                res,
                ns,
                rp.name or "",
                kind,
                patch,
                dry_run=True,
                field_manager=raw.query.get("fieldManager"),
            )
        else:
            new = read_body(body, raw)
        return old, new

    def _list(
        self, raw: aiohttp.web.BaseRequest, res: Resource, ns: str | None, table: bool
    ) -> aiohttp.web.Response:
        items, rv = self.store.list_objects(res, ns, predicate(raw, None))
        meta: Obj = {"resourceVersion": str(rv)}
        limit = int(raw.query.get("limit") or 0)
        start = 0
        if raw.query.get("continue"):
            try:
                token = json.loads(base64.b64decode(raw.query["continue"]))
                start = int(token["start"])
            except (ValueError, KeyError, TypeError) as exc:
                raise errors.ApiError(400, "the continue token does not parse") from exc
        items = items[start:]
        if limit and len(items) > limit:
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
            token_obj = {"start": start + limit, "rv": rv}
            meta["continue"] = base64.b64encode(json.dumps(token_obj).encode()).decode()
        if table:
            table_obj = tables.table(res, items, str(rv), _include(raw))
            table_obj["metadata"].update(meta)
            return json_response(table_obj)
        return json_response(
            {"kind": res.list_kind, "apiVersion": res.api_version, "metadata": meta, "items": items}
        )


def _selected_name(selector: str | None) -> str | None:
    """``metadata.name=X`` in a fieldSelector (the real RequestInfo's name for list/watch)."""
    for term in (selector or "").split(","):
        key, sep, value = term.strip().partition("=")
        value = value[1:] if value.startswith("=") else value
        if sep and key == "metadata.name" and value:
            return value
    return None


def _include(raw: aiohttp.web.BaseRequest) -> str:
    return raw.query.get("includeObject", "Metadata")
