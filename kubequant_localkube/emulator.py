"""A Kubernetes API server emulator over real HTTP, built on kmock's KubernetesEmulator.

kmock 0.8 gives the HTTP plumbing (request parsing, the request log, the DSL for ad-hoc
reactions); this subclass replaces its object handling with :class:`~.store.Store`, which
behaves like a real API server where kopf, the kubernetes client and kubectl look: CRD
registration and discovery, uid/resourceVersion/generation, watch resume and timeouts,
namespaces, generateName, PUT with conflicts, merge/strategic/JSON/apply patches, a separate
status subresource, selectors, garbage collection and finalizers, CRD admission (schema and
CEL), Table output, OpenAPI documents for kubectl, plus fault injection for tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import copy
import dataclasses
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

from kubequant_localkube import errors, jsonpath, openapi, protobuf, rbac, selectors
from kubequant_localkube.resources import Resource
from kubequant_localkube.store import Obj, Store, WatchEvent

log = logging.getLogger(__name__)
# The ServiceAccount (namespace, name) a request comes from; None: the admin.
_IDENTITY: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "localkube_identity", default=None
)

JSON = "application/json"


@dataclasses.dataclass
class ApiCall:
    """One API request as RBAC sees it (``code``: the HTTP status answered)."""

    verb: str  # get list watch create update patch delete deletecollection
    group: str
    version: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    user_agent: str = ""
    code: int = 0
    user: str = "admin"  # or system:serviceaccount:<namespace>:<name> (a pod's token)

    @property
    def rbac_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def allowed_by(self, rules: list[dict[str, Any]]) -> bool:
        """Whether RBAC ``rules`` (a Role's or ClusterRole's) permit this call."""
        for rule in rules:
            groups = rule.get("apiGroups") or []
            resources = rule.get("resources") or []
            verbs = rule.get("verbs") or []
            names = rule.get("resourceNames") or []
            if "*" not in groups and self.group not in groups:
                continue
            wildcard_sub = self.subresource is not None and f"{self.resource}/*" in resources
            if "*" not in resources and self.rbac_resource not in resources and not wildcard_sub:
                continue
            if "*" not in verbs and self.verb not in verbs:
                continue
            if names and self.name not in names:
                continue
            return True
        return False


@dataclasses.dataclass
class Fault:
    """Fail the next ``count`` requests matching verb/resource (and optionally more)."""

    verb: str
    resource: str
    count: int
    status: int = 500
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None
    message: str = "injected failure"

    def matches(self, call: ApiCall) -> bool:
        return (
            self.count > 0
            and self.verb in (call.verb, "*")
            and self.resource in (call.resource, "*")
            and (self.subresource is None or self.subresource == call.subresource)
            and (self.namespace is None or self.namespace == call.namespace)
            and (self.name is None or self.name == call.name)
        )


@dataclasses.dataclass
class _Path:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def _parse_resource_path(path: str) -> _Path | None:
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        ns, plural, tail = rest[1], rest[2], rest[3:]
    else:
        ns, plural, tail = None, rest[0], rest[1:]
    name = tail[0] if tail else None
    sub = "/".join(tail[1:]) or None
    return _Path(group, version, plural, ns, name, sub)


def _age(ts: str | None) -> str | None:
    if not ts:
        return None
    try:
        then = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return ts
    secs = int((datetime.now(UTC) - then).total_seconds())
    if secs < 120:
        return f"{max(secs, 0)}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


@attrs.define(kw_only=True)
class LocalKubeEmulator(kmock.KubernetesEmulator):
    """The API server. Serve it with :class:`~kubequant_localkube.cluster.LocalCluster`."""

    store: Store = attrs.field(factory=Store)
    calls: list[ApiCall] = attrs.field(factory=list)
    faults: list[Fault] = attrs.field(factory=list)
    pod_logs: dict[tuple[str, str], str] = attrs.field(factory=dict)
    bookmark_interval: float = 5.0
    max_watch_seconds: float = 1800.0
    max_logged_requests: int = 2000
    # Requests with a pod's service-account token are authorized by RBAC (Roles, bindings).
    enforce_rbac: bool = True
    # Pods reach the API at a per-ServiceAccount URL and also get a token. True: a pod's
    # request without its token is a 401, as on a real cluster (a client that drops its
    # bearer token fails here too); False: the URL alone identifies the pod.
    require_pod_token: bool = False
    _calls_lock: threading.Lock = attrs.field(factory=threading.Lock)

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
    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """The aiohttp entry point. kmock's own path parser fails on some core paths
        (``/api/v1/namespaces``), so the request is built here when it cannot."""
        body = await raw_request.read()
        try:
            request = await kmock.Request._parse(raw_request, id=len(self._requests))
        except ValueError:
            request = kmock.Request(
                id=len(self._requests),
                raw_request=raw_request,
                url=raw_request.url,
                method=raw_request.method,
                params=dict(raw_request.query),
                headers=dict(raw_request.headers),
                body=body,
                text=body.decode("utf-8", errors="replace"),
            )
        self._requests.append(request)
        try:
            return await self._handle(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must reach the client as a 500 Status
            log.exception("emulator failed on a request", extra={"component": "localkube"})
            return aiohttp.web.json_response(
                errors.ApiError(500, f"internal error: {exc!r}").to_status(), status=500
            )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # kmock keeps every parsed request; keep only the latest ones (long demo runs).
        if len(self._requests) > self.max_logged_requests:
            del self._requests[: -self.max_logged_requests // 2]
        raw = request._raw_request
        assert raw is not None
        try:
            path, pod_sa = rbac.split_identity_path(raw.path)
            token_sa = rbac.service_account_of(raw.headers.get("Authorization"))
            if pod_sa is not None and token_sa != pod_sa and self.require_pod_token:
                raise errors.ApiError(401, "Unauthorized", reason="Unauthorized")
            _IDENTITY.set(pod_sa or token_sa)
            return await self._route(raw, request, path.rstrip("/") or "/")
        except errors.ApiError as exc:
            return aiohttp.web.json_response(exc.to_status(), status=exc.status)

    async def _route(
        self, raw: aiohttp.web.BaseRequest, request: kmock.Request, path: str
    ) -> aiohttp.web.StreamResponse:
        if path in ("/healthz", "/livez", "/readyz") or path.startswith(
            ("/healthz/", "/livez/", "/readyz/")
        ):
            return aiohttp.web.Response(text="ok")
        if path == "/version":
            return aiohttp.web.json_response(openapi.VERSION_INFO)
        if path == "/api":
            return aiohttp.web.json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": raw.host}
                    ],
                }
            )
        if path == "/apis":
            return aiohttp.web.json_response(self._api_groups())
        if path.startswith("/openapi/"):
            return self._openapi(raw, path)
        if path == "/":
            return aiohttp.web.json_response({"paths": self._root_paths()})
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) == 2:
            return aiohttp.web.json_response(self._resource_list("", parts[1]))
        if parts[0] == "apis" and len(parts) == 2:
            group = self._api_group(parts[1])
            if group is None:
                raise errors.ApiError(404, "the server could not find the requested resource")
            return aiohttp.web.json_response(group)
        if parts[0] == "apis" and len(parts) == 3:
            return aiohttp.web.json_response(self._resource_list(parts[1], parts[2]))
        rp = _parse_resource_path(path)
        if rp is None:
            raise errors.ApiError(404, "the server could not find the requested resource")
        return await self._serve_resource(raw, request, rp)

    # ------------------------------------------------------------------ discovery
    def _groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for res in self.store.all_resources():
            versions = out.setdefault(res.group, [])
            if res.version not in versions:
                versions.append(res.version)
        return out

    def _api_group(self, group: str) -> dict[str, Any] | None:
        versions = self._groups().get(group)
        if not versions or not group:
            return None
        versions = sorted(versions, key=_version_priority)
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
            "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
        }

    def _api_groups(self) -> dict[str, Any]:
        groups = [self._api_group(g) for g in sorted(self._groups()) if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [g for g in groups if g]}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        res_list = [
            r for r in self.store.all_resources() if r.group == group and r.version == version
        ]
        if not res_list:
            raise errors.ApiError(404, "the server could not find the requested resource")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": [entry for r in res_list for entry in r.discovery()],
        }

    def _root_paths(self) -> list[str]:
        paths = {"/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"}
        paths |= {"/openapi/v2", "/openapi/v3"}
        for g, versions in self._groups().items():
            if g:
                paths.add(f"/apis/{g}")
                paths |= {f"/apis/{g}/{v}" for v in versions}
        return sorted(paths)

    def _openapi(self, raw: aiohttp.web.BaseRequest, path: str) -> aiohttp.web.StreamResponse:
        resources = self.store.all_resources()
        if path == "/openapi/v2":
            if "protobuf" in raw.headers.get("Accept", "") and JSON not in raw.headers.get(
                "Accept", ""
            ):
                raise errors.ApiError(
                    406, "only application/json is served", reason="NotAcceptable"
                )
            return aiohttp.web.json_response(openapi.v2_document(resources))
        if path == "/openapi/v3":
            return aiohttp.web.json_response(openapi.v3_root(resources))
        gv = path[len("/openapi/v3/") :]
        doc = openapi.v3_group_version(resources, gv)
        if doc is None:
            raise errors.ApiError(404, "the server could not find the requested resource")
        return aiohttp.web.json_response(doc)

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
        self, raw: aiohttp.web.BaseRequest, request: kmock.Request, rp: _Path
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
            response = await self._serve_verb(raw, request, rp, call)
        except errors.ApiError as exc:
            call.code = exc.status
            raise
        call.code = response.status
        return response

    async def _serve_verb(
        self, raw: aiohttp.web.BaseRequest, request: kmock.Request, rp: _Path, call: ApiCall
    ) -> aiohttp.web.StreamResponse:
        q = raw.query
        verb = call.verb
        sa = _IDENTITY.get()
        if sa is not None:
            call.user = f"system:serviceaccount:{sa[0]}:{sa[1]}"
        self._record(call)
        if sa is not None and self.enforce_rbac:
            rules = rbac.rules_for(self.store, sa[0], sa[1], rp.namespace)
            if not call.allowed_by(rules):
                raise errors.ApiError(
                    403,
                    rbac.forbidden_message(
                        sa[0],
                        sa[1],
                        verb,
                        call.rbac_resource,
                        group=rp.group,
                        name=rp.name,
                        ns=rp.namespace,
                    ),
                    reason="Forbidden",
                    details={"name": rp.name, "group": rp.group, "kind": rp.plural},
                )
        res = self.store.resource(rp.group, rp.version, rp.plural)
        if rp.namespace and not res.namespaced:
            raise errors.ApiError(404, "the server could not find the requested resource")
        ns = rp.namespace if res.namespaced else None
        dry_run = "All" in q.getall("dryRun", [])
        field_validation = q.get("fieldValidation")
        table = "as=Table" in raw.headers.get("Accept", "")
        warnings: list[str] = []

        if verb == "watch":
            return await self._watch(raw, res, ns, rp.name, table)
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
                return self._json(self._table(res, [obj], str(self.store.resource_version), raw))
            return self._json(obj)
        if verb == "create":
            body = self._body(request, raw)
            if res.plural == "selfsubjectaccessreviews":
                body["status"] = {"allowed": True, "reason": "the local emulator allows all"}
                return self._json(body, status=201)
            if rp.name and rp.subresource:
                raise errors.ApiError(
                    404, f"the server could not find the requested resource ({rp.subresource})"
                )
            obj = self.store.create(
                res,
                ns,
                body,
                dry_run=dry_run,
                field_validation=field_validation,
                warnings=warnings,
            )
            return self._json(obj, status=201, warnings=warnings)
        if verb == "update":
            body = self._body(request, raw)
            obj = self.store.replace(
                res,
                ns,
                rp.name or "",
                body,
                subresource=rp.subresource,
                dry_run=dry_run,
                field_validation=field_validation,
                warnings=warnings,
            )
            return self._json(obj, warnings=warnings)
        if verb == "patch":
            ctype = raw.headers.get("Content-Type", JSON).split(";")[0].strip()
            patch_type = {
                "application/merge-patch+json": "merge",
                "application/strategic-merge-patch+json": "strategic",
                "application/json-patch+json": "json",
                "application/apply-patch+yaml": "apply",
                "application/apply-patch+cbor": "unsupported",
            }.get(ctype, "unsupported")
            if patch_type == "unsupported":
                raise errors.ApiError(
                    415,
                    f"the body of the request was in an unknown format ({ctype}) - accepted media "
                    "types include: application/json-patch+json, application/merge-patch+json, "
                    "application/apply-patch+yaml, application/strategic-merge-patch+json",
                )
            patch = self._body(request, raw, yaml_ok=patch_type == "apply", any_json=True)
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
            return self._json(obj, warnings=warnings)
        if verb == "delete":
            opts = self._delete_options(request, raw)
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
                return self._json(
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
            return self._json(obj, status=200, warnings=warnings)
        # deletecollection
        opts = self._delete_options(request, raw)
        items, _ = self.store.list_objects(res, ns, self._predicate(raw, None))
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
        return self._json(
            {
                "kind": res.list_kind,
                "apiVersion": res.api_version,
                "metadata": {"resourceVersion": str(self.store.resource_version)},
                "items": deleted,
            }
        )

    # ------------------------------------------------------------------ helpers
    def _json(
        self, body: Any, status: int = 200, warnings: list[str] | None = None
    ) -> aiohttp.web.Response:
        resp = aiohttp.web.json_response(body, status=status)
        for w in warnings or []:
            resp.headers.add("Warning", f'299 - "{w}"')
        return resp

    def _body(
        self,
        request: kmock.Request,
        raw: aiohttp.web.BaseRequest,
        yaml_ok: bool = False,
        any_json: bool = False,
    ) -> Any:
        ctype = raw.headers.get("Content-Type", JSON)
        if "protobuf" in ctype:
            try:
                return protobuf.decode(request.body)
            except protobuf.ProtobufError as exc:
                raise errors.ApiError(415, str(exc), reason="UnsupportedMediaType") from exc
        if "cbor" in ctype:
            raise errors.ApiError(415, f"unsupported content type {ctype}; use JSON")
        text = request.body.decode("utf-8") if request.body else ""
        if not text.strip():
            raise errors.ApiError(400, "the request body is empty")
        try:
            data = yaml.safe_load(text) if yaml_ok or "yaml" in ctype else json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.ApiError(400, f"the request body does not parse: {exc}") from exc
        if not any_json and not isinstance(data, dict):
            raise errors.ApiError(400, "the request body must be a JSON object")
        return data

    def _delete_options(self, request: kmock.Request, raw: aiohttp.web.BaseRequest) -> Obj:
        opts: Obj = {}
        if request.body and request.body.strip():
            try:
                loaded = json.loads(request.body)
            except ValueError as exc:
                raise errors.ApiError(400, f"DeleteOptions do not parse: {exc}") from exc
            if isinstance(loaded, dict):
                opts = loaded
        q = raw.query
        if q.get("propagationPolicy"):
            opts["propagationPolicy"] = q["propagationPolicy"]
        if opts.get("orphanDependents") is True and not opts.get("propagationPolicy"):
            opts["propagationPolicy"] = "Orphan"
        if opts.get("orphanDependents") is False and not opts.get("propagationPolicy"):
            opts["propagationPolicy"] = "Background"
        policy = opts.get("propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise errors.ApiError(422, f"propagationPolicy: Unsupported value: {policy!r}")
        return opts

    def _predicate(self, raw: aiohttp.web.BaseRequest, name: str | None) -> Any:
        try:
            labels = selectors.parse_label_selector(raw.query.get("labelSelector"))
            fields = selectors.parse_field_selector(raw.query.get("fieldSelector"))
        except selectors.SelectorError as exc:
            raise errors.ApiError(400, str(exc)) from exc

        def pred(obj: Obj) -> bool:
            if name is not None and obj.get("metadata", {}).get("name") != name:
                return False
            return selectors.labels_match(labels, obj) and fields(obj)

        return pred

    def _list(
        self, raw: aiohttp.web.BaseRequest, res: Resource, ns: str | None, table: bool
    ) -> aiohttp.web.Response:
        items, rv = self.store.list_objects(res, ns, self._predicate(raw, None))
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
            table_obj = self._table(res, items, str(rv), raw)
            table_obj["metadata"].update(meta)
            return self._json(table_obj)
        return self._json(
            {"kind": res.list_kind, "apiVersion": res.api_version, "metadata": meta, "items": items}
        )

    # ------------------------------------------------------------------ tables
    def _columns(self, res: Resource) -> list[Obj]:
        name_col = {
            "name": "Name",
            "type": "string",
            "format": "name",
            "description": "Name must be unique within a namespace.",
            "priority": 0,
        }
        if res.is_custom:
            cols = [name_col]
            pcs = res.printer_columns or [
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
            ]
            for pc in pcs:
                cols.append(
                    {
                        "name": pc["name"],
                        "type": "string" if pc.get("type") == "date" else pc.get("type", "string"),
                        "format": pc.get("format", ""),
                        "description": pc.get("description", ""),
                        "priority": int(pc.get("priority", 0)),
                    }
                )
            return cols
        extra: list[tuple[str, str]] = []
        if res.key == ("", "pods"):
            extra = [("Ready", "string"), ("Status", "string"), ("Restarts", "string")]
        elif res.key == ("batch", "jobs"):
            extra = [("Status", "string"), ("Completions", "string")]
        elif res.key == ("", "namespaces"):
            extra = [("Status", "string")]
        cols = [name_col]
        cols += [
            {"name": n, "type": t, "format": "", "description": "", "priority": 0} for n, t in extra
        ]
        cols.append(
            {"name": "Age", "type": "string", "format": "", "description": "", "priority": 0}
        )
        return cols

    def _cells(self, res: Resource, obj: Obj) -> list[Any]:
        meta = obj.get("metadata", {})
        cells: list[Any] = [meta.get("name")]
        status = obj.get("status") or {}
        if res.is_custom:
            pcs = res.printer_columns or [
                {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
            ]
            for pc in pcs:
                try:
                    found = jsonpath.evaluate(pc.get("jsonPath", ""), obj)
                except jsonpath.JsonPathError:
                    found = []
                value = found[0] if found else None
                if pc.get("type") == "date":
                    value = _age(value) if isinstance(value, str) else value
                cells.append(value)
            return cells
        if res.key == ("", "pods"):
            cstat = status.get("containerStatuses") or []
            ready = sum(1 for c in cstat if c.get("ready"))
            total = len((obj.get("spec") or {}).get("containers") or [])
            restarts = sum(int(c.get("restartCount", 0)) for c in cstat)
            cells += [f"{ready}/{total}", _pod_status(obj), str(restarts)]
        elif res.key == ("batch", "jobs"):
            conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
            state = (
                "Complete"
                if conds.get("Complete") == "True"
                else (
                    "Failed"
                    if conds.get("Failed") == "True"
                    else "Suspended" if conds.get("Suspended") == "True" else "Running"
                )
            )
            want = (obj.get("spec") or {}).get("completions", 1)
            cells += [state, f"{status.get('succeeded', 0)}/{want}"]
        elif res.key == ("", "namespaces"):
            cells += [status.get("phase", "Active")]
        cells.append(_age(meta.get("creationTimestamp")))
        return cells

    def _table(self, res: Resource, items: list[Obj], rv: str, raw: Any) -> Obj:
        include = raw.query.get("includeObject", "Metadata") if raw is not None else "Metadata"
        rows = []
        for obj in items:
            row: Obj = {"cells": self._cells(res, obj)}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj.get("metadata", {}),
                }
            rows.append(row)
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": rv},
            "columnDefinitions": self._columns(res),
            "rows": rows,
        }

    # ------------------------------------------------------------------ watch
    async def _watch(
        self,
        raw: aiohttp.web.BaseRequest,
        res: Resource,
        ns: str | None,
        name: str | None,
        table: bool,
    ) -> aiohttp.web.StreamResponse:
        q = raw.query
        since_s = q.get("resourceVersion")
        since: int | None = None
        if since_s not in (None, "", "0"):
            try:
                since = int(since_s or "0")
            except ValueError as exc:
                raise errors.ApiError(400, f"invalid resourceVersion {since_s!r}") from exc
        send_initial = (q.get("sendInitialEvents") or "").lower() == "true"
        if send_initial:
            since = None
        pred = self._predicate(raw, name)
        timeout = float(q.get("timeoutSeconds") or self.max_watch_seconds)
        bookmarks = (q.get("allowWatchBookmarks") or "").lower() in ("true", "1")
        loop = asyncio.get_running_loop()
        resp = aiohttp.web.StreamResponse(status=200)
        resp.content_type = JSON
        resp.enable_chunked_encoding()
        try:
            watcher, first = self.store.subscribe(res, ns, since, loop)
        except errors.ApiError as exc:
            if exc.status != 410:
                raise
            await resp.prepare(raw)
            await resp.write(
                json.dumps({"type": "ERROR", "object": exc.to_status()}).encode() + b"\n"
            )
            await resp.write_eof()
            return resp
        await resp.prepare(raw)
        deadline = loop.time() + timeout
        columns_sent = False
        try:
            for event in first:
                line = self._watch_line(res, event, pred, table, columns_sent)
                if line:
                    columns_sent = True
                    await resp.write(line)
            if send_initial:
                await resp.write(
                    json.dumps(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": res.kind,
                                "apiVersion": res.api_version,
                                "metadata": {
                                    "resourceVersion": str(self.store.resource_version),
                                    "annotations": {"k8s.io/initial-events-end": "true"},
                                },
                            },
                        }
                    ).encode()
                    + b"\n"
                )
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(
                        watcher.queue.get(), min(remaining, self.bookmark_interval)
                    )
                except TimeoutError:
                    if bookmarks and deadline - loop.time() > 0:
                        await resp.write(
                            json.dumps(
                                {
                                    "type": "BOOKMARK",
                                    "object": {
                                        "kind": res.kind,
                                        "apiVersion": res.api_version,
                                        "metadata": {
                                            "resourceVersion": str(self.store.resource_version)
                                        },
                                    },
                                }
                            ).encode()
                            + b"\n"
                        )
                    continue
                if item is None:  # cut by a test, or the server stops
                    break
                line = self._watch_line(res, item, pred, table, columns_sent)
                if line:
                    columns_sent = True
                    await resp.write(line)
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            self.store.unsubscribe(watcher)
            raise
        finally:
            self.store.unsubscribe(watcher)
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await resp.write_eof()
        return resp

    def _watch_line(
        self, res: Resource, event: WatchEvent, pred: Any, table: bool, columns_sent: bool
    ) -> bytes | None:
        obj = copy.deepcopy(event.obj)
        obj["apiVersion"] = res.api_version
        obj["kind"] = res.kind
        new_ok = pred(obj)
        old_ok = event.old is not None and pred(event.old)
        etype = event.type
        if etype == "ADDED" and not new_ok:
            return None
        if etype == "MODIFIED":
            if new_ok and not old_ok and event.old is not None:
                etype = "ADDED"
            elif old_ok and not new_ok:
                etype = "DELETED"
            elif not new_ok:
                return None
        if etype == "DELETED" and not (new_ok or old_ok):
            return None
        payload: Obj = obj
        if table:
            payload = self._table(res, [obj], obj["metadata"].get("resourceVersion", ""), None)
            if columns_sent:
                payload["columnDefinitions"] = []
        return json.dumps({"type": etype, "object": payload}).encode() + b"\n"


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' version order: GA > beta > alpha, higher numbers first."""
    import re

    m = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    if not m:
        return (3, 0, 0)
    major = int(m.group(1))
    stage = {"alpha": 2, "beta": 1, None: 0}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (stage, -major, -minor)


def _pod_status(pod: Obj) -> str:
    status = pod.get("status") or {}
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    for c in status.get("containerStatuses") or []:
        state = c.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            return str(state["waiting"]["reason"])
        if "terminated" in state and state["terminated"].get("reason"):
            return str(state["terminated"]["reason"])
    return str(status.get("phase", "Pending"))
