"""The operator's Kubernetes API calls: plain JSON over one aiohttp session.

kopf is asyncio and already runs on aiohttp; the operator's own calls use the same stack,
with bodies as plain dicts (no generated client models: less CPU and memory at scale).
Address and credentials come from :mod:`kubequant_operator.access`, which also feeds kopf's
login, so both talk to the same server as the same identity.

The operator makes no request on Secrets at all (the chart grants it none): a credentials
Secret reaches the engine pod through ``envFrom``, and a missing one shows in the pod's status.
Existence checks (PVCs) ask for ``PartialObjectMetadata`` and discard the body unread.
"""

from __future__ import annotations

import asyncio
import json
import secrets as _random
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from kubequant_api.constants import API_VERSION, GROUP, KIND, PLURAL, VERSION
from kubequant_api.errors import KubequantError
from kubequant_operator.access import AccessError, ClusterAccess, load_access
from kubequant_operator.settings import Settings

PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
MERGE_PATCH = "application/merge-patch+json"
REPORTING_COMPONENT = "kubequant-operator"


class KubeError(KubequantError):
    """An API call failed; ``status`` is the HTTP status (0: no response)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


# (api_version, kind) -> (path prefix, resource): every path is built by :func:`api_path`.
_RESOURCES: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts"),
    ("v1", "Pod"): ("/api/v1", "pods"),
    ("v1", "Secret"): ("/api/v1", "secrets"),
    ("v1", "PersistentVolumeClaim"): ("/api/v1", "persistentvolumeclaims"),
    ("v1", "Event"): ("/api/v1", "events"),
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1",
        "rolebindings",
    ),
    (API_VERSION, KIND): (f"/apis/{GROUP}/{VERSION}", PLURAL),
}


class PathSegmentError(KubeError):
    """A namespace or name that cannot be one segment of an API path: refused before any
    request is sent (status 0), so a caller that handles a failed call handles it too."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


def path_segment(value: str, what: str = "name") -> str:
    """``value`` escaped as one URL path segment (``quote(value, safe="")``).

    Refused, as the API server's own ``IsValidPathSegmentName`` refuses them as object names:
    an empty value, ``.`` and ``..`` (a client or proxy would normalize them away, moving the
    request up the path), and any value containing ``/`` or ``%`` (the API server decodes the
    path before it splits it, so an escaped ``%2F`` still becomes a separator there)."""
    if value in ("", ".", ".."):
        raise PathSegmentError(f"{what} {value!r} may not be empty, '.' or '..'")
    for bad in ("/", "%"):
        if bad in value:
            raise PathSegmentError(f"{what} {value!r} may not contain {bad!r}")
    return quote(value, safe="")


def api_path(
    api_version: str,
    kind: str,
    namespace: str,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The one place an API path is built: every namespace, name and subresource is an
    escaped path segment (:func:`path_segment`)."""
    try:
        prefix, resource = _RESOURCES[(api_version, kind)]
    except KeyError as exc:
        raise KubequantError(f"no API path known for {api_version} {kind}") from exc
    parts = [prefix, "namespaces", path_segment(namespace, "namespace"), resource]
    if name is not None:
        parts.append(path_segment(name, f"{kind} name"))
        if subresource is not None:
            parts.append(path_segment(subresource, "subresource"))
    return "/".join(parts)


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    return api_path(api_version, kind, namespace)


class Kube:
    """Async access to the few API endpoints the operator uses."""

    def __init__(self, s: Settings, access: ClusterAccess | None = None) -> None:
        self.settings = s
        self.access = access or load_access(s.kubeconfig)
        self.timeout = aiohttp.ClientTimeout(total=s.request_timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client_cert: object = None  # the client certificate the session was built with
        self._retired: list[aiohttp.ClientSession] = []  # built with a rotated certificate

    def _session_for_loop(self) -> aiohttp.ClientSession:
        """The session of this loop; a new one when an exec plugin rotated the client
        certificate (call after ``access.refresh()``, so that nothing blocks here)."""
        loop = asyncio.get_running_loop()
        cert = self.access.client_certificate()
        if self._session is not None and self._loop is loop and cert != self._client_cert:
            self._retired.append(self._session)
            self._session = None
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(
                limit=self.settings.api_connections, ssl=self.access.ssl_context()
            )
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
            self._loop = loop
            self._client_cert = cert
        return self._session

    async def _headers(self, accept: str | None = None) -> list[tuple[str, str]]:
        """Credentials (a plugin's renewed off the loop before it expires) and impersonation
        (pairs: Impersonate-Group repeats). A plugin that fails fails the call (status 0)."""
        try:
            await self.access.refresh()
            own = self.access.headers()
        except AccessError as exc:
            raise KubeError(0, str(exc)) from exc
        return [*([("Accept", accept)] if accept else []), *own]

    async def close(self) -> None:
        sessions, self._retired = [self._session, *self._retired], []
        for session in sessions:
            if (
                session is not None
                and not session.closed
                and self._loop is asyncio.get_running_loop()
            ):
                await session.close()
        self._session = None

    # ------------------------------------------------------------------ transport

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
        want_body: bool = True,
    ) -> dict[str, Any]:
        """One API call; the JSON response (``{}`` when ``want_body`` is False)."""
        url = self.access.server + path
        if query:
            url += "?" + urlencode(query)
        headers = await self._headers(accept)
        data = None
        if body is not None:
            headers.append(("Content-Type", content_type))
            data = json.dumps(body)
        session = self._session_for_loop()
        try:
            async with session.request(method, url, data=data, headers=headers) as resp:
                if resp.status < 400 and not want_body:
                    resp.release()  # existence checks: the body is never read
                    return {}
                raw = await resp.read()
                if resp.status >= 400:
                    raise KubeError(resp.status, _error_message(raw, resp.reason))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(0, f"{method} {path}: {exc!r}") from exc
        if not raw:
            return {}
        out = json.loads(raw)
        return out if isinstance(out, dict) else {}

    async def stream(
        self, path: str, query: list[tuple[str, str]] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """A watch stream: one JSON event per line until the server ends it."""
        url = self.access.server + path + ("?" + urlencode(query) if query else "")
        headers = await self._headers()
        session = self._session_for_loop()
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with session.get(url, headers=headers, timeout=timeout) as resp:
            if resp.status >= 400:
                raise KubeError(resp.status, _error_message(await resp.read(), resp.reason))
            async for line in resp.content:
                if line.strip():
                    yield json.loads(line)

    # ------------------------------------------------------------------ objects

    def _object_path(self, namespace: str, name: str) -> str:
        return api_path(API_VERSION, KIND, namespace, name)

    async def get_object(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", self._object_path(namespace, name))
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def list_objects(self, namespaces: tuple[str, ...]) -> list[dict[str, Any]]:
        """Every ModelOptimization in ``namespaces`` (empty: all namespaces)."""
        if not namespaces:
            data = await self.request("GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}")
            return list(data.get("items") or [])
        found: list[dict[str, Any]] = []
        for namespace in namespaces:
            data = await self.request("GET", collection_path(API_VERSION, KIND, namespace))
            found.extend(data.get("items") or [])
        return found

    async def patch_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Merge patch of the status subresource (lists are replaced wholesale)."""
        body: dict[str, Any] = {"status": dict(status)}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.request(
            "PATCH",
            api_path(API_VERSION, KIND, namespace, name, "status"),
            body,
            content_type=MERGE_PATCH,
        )

    # ------------------------------------------------------------------ children

    async def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        path = collection_path(manifest["apiVersion"], manifest["kind"], meta["namespace"])
        return await self.request("POST", path, dict(manifest))

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self.request("GET", api_path(api_version, kind, namespace, name))
        except KubeError as exc:
            if exc.not_found:
                return None
            raise

    async def list(
        self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """Items with all ``labels`` (selector sent, and checked here again)."""
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        data = await self.request(
            "GET",
            collection_path(api_version, kind, namespace),
            query=[("labelSelector", selector)] if selector else None,
        )
        items = data.get("items") or []
        return [
            item
            for item in items
            if all(
                ((item.get("metadata") or {}).get("labels") or {}).get(k) == v
                for k, v in labels.items()
            )
        ]

    async def delete(
        self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None
    ) -> bool:
        """Delete with propagation Background; False when it was already gone."""
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request(
                "DELETE",
                api_path(api_version, kind, namespace, name),
                body,
                query=[("propagationPolicy", "Background")],
            )
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    async def exists(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Existence only: asks for metadata alone and never reads the body."""
        try:
            await self.request(
                "GET",
                api_path(api_version, kind, namespace, name),
                accept=PARTIAL_METADATA,
                want_body=False,
            )
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    # ------------------------------------------------------------------ events

    async def post_event(
        self, obj: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{name[:200]}.{now.strftime('%s')}{_random.token_hex(4)}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": REPORTING_COMPONENT},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self.request("POST", collection_path("v1", "Event", namespace), event)


def _error_message(raw: bytes, reason: str | None) -> str:
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return str(reason or raw[:200].decode("utf-8", "replace") or "error")
