"""The operator's Kubernetes API calls, async.

The ``kubernetes`` client is synchronous: every call runs in a dedicated thread pool
(``loop.run_in_executor``) so that kopf's event loop never blocks. The client is used for
what it is good at (kubeconfig / in-cluster auth, TLS, connection pooling); bodies are plain
JSON dicts, never the client's generated models (that saves CPU and memory at scale).

Secrets are only ever checked for existence: a GET that asks for ``PartialObjectMetadata``
(metadata only) and whose body is discarded unread. The operator needs only ``get`` on
secrets, never ``list`` or ``watch``.
"""

from __future__ import annotations

import asyncio
import json
import secrets as _random
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from kubequant_api.constants import API_VERSION, GROUP, KIND, PLURAL, VERSION
from kubequant_api.errors import KubequantError
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


_PATHS: dict[tuple[str, str], str] = {
    ("v1", "ServiceAccount"): "/api/v1/namespaces/{ns}/serviceaccounts",
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
    ("v1", "Secret"): "/api/v1/namespaces/{ns}/secrets",
    ("v1", "PersistentVolumeClaim"): "/api/v1/namespaces/{ns}/persistentvolumeclaims",
    ("v1", "Event"): "/api/v1/namespaces/{ns}/events",
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{ns}/jobs",
    ("rbac.authorization.k8s.io/v1", "Role"): (
        "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"
    ),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): (
        "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"
    ),
    (API_VERSION, KIND): f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/{PLURAL}",
}


def collection_path(api_version: str, kind: str, namespace: str) -> str:
    try:
        return _PATHS[(api_version, kind)].format(ns=namespace)
    except KeyError as exc:
        raise KubequantError(f"no API path known for {api_version} {kind}") from exc


def load_client_configuration(s: Settings) -> kubernetes.client.Configuration:
    """Client configuration from the kubeconfig in settings, else the in-cluster account."""
    cfg = kubernetes.client.Configuration()
    if s.kubeconfig:
        kubernetes.config.load_kube_config(config_file=s.kubeconfig, client_configuration=cfg)
    else:
        try:
            kubernetes.config.load_incluster_config(client_configuration=cfg)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = max(s.api_workers, 4)
    return cfg


class Kube:
    """Async access to the few API endpoints the operator uses."""

    def __init__(self, s: Settings, cfg: kubernetes.client.Configuration | None = None) -> None:
        self.settings = s
        self.client = kubernetes.client.ApiClient(cfg or load_client_configuration(s))
        self.pool = ThreadPoolExecutor(max_workers=s.api_workers, thread_name_prefix="kube")
        self.timeout = s.request_timeout_seconds

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.get_running_loop().run_in_executor(None, self.client.close)

    # ------------------------------------------------------------------ transport

    def _call(
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
        try:
            resp = self.client.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Content-Type": content_type, "Accept": accept},
                body=body,
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=False,
                _request_timeout=self.timeout,
            )
        except ApiException as exc:
            raise KubeError(int(exc.status or 0), _api_message(exc)) from exc
        except OSError as exc:  # connection refused/reset, timeouts (urllib3 errors are OSError)
            raise KubeError(0, f"{method} {path}: {exc}") from exc
        except Exception as exc:  # urllib3 raises its own hierarchy (HTTPError, not OSError)
            if type(exc).__module__.startswith("urllib3"):
                raise KubeError(0, f"{method} {path}: {exc}") from exc
            raise
        try:
            if not want_body:
                resp.drain_conn()
                return {}
            raw = resp.data
        finally:
            resp.release_conn()
        if not raw:
            return {}
        data = json.loads(raw)
        return data if isinstance(data, dict) else {}

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
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool,
            lambda: self._call(
                method,
                path,
                body,
                query=query,
                content_type=content_type,
                accept=accept,
                want_body=want_body,
            ),
        )

    # ------------------------------------------------------------------ objects

    def _object_path(self, namespace: str, name: str) -> str:
        return f"{collection_path(API_VERSION, KIND, namespace)}/{name}"

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
            f"{self._object_path(namespace, name)}/status",
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
            return await self.request(
                "GET", f"{collection_path(api_version, kind, namespace)}/{name}"
            )
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
                f"{collection_path(api_version, kind, namespace)}/{name}",
                body,
                query=[("propagationPolicy", "Background")],
            )
        except KubeError as exc:
            if exc.not_found:
                return False
            raise
        return True

    async def exists(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Existence only: asks for metadata alone and never reads the body (Secrets!)."""
        try:
            await self.request(
                "GET",
                f"{collection_path(api_version, kind, namespace)}/{name}",
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


def _api_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = {}
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    return str(exc.reason or body or "error")
