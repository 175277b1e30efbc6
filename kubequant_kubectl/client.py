"""The plugin's API calls: kubectl's view of the cluster (kubeconfig, context, namespace).

The address and credentials come from :mod:`kubequant_operator.access`, the kubeconfig
reader the operator uses (merged ``KUBECONFIG`` lists, exec plugins, auth-providers,
impersonation); requests are plain synchronous HTTP (:mod:`http.client`): a command makes a
few calls and exits.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kubequant_api.constants import GROUP, PLURAL, VERSION
from kubequant_api.errors import KubequantError
from kubequant_operator.access import (
    DEFAULT_KUBECONFIG,
    AccessError,
    ClusterAccess,
    from_kubeconfig,
    in_cluster,
)

MERGE_PATCH: Final = "application/merge-patch+json"
DEFAULT_NAMESPACE: Final = "default"
TIMEOUT_SECONDS: Final = 30.0


class ApiError(KubequantError):
    """The server refused a call (``status`` is the HTTP status) or could not be reached (0).

    ``str()`` is what kubectl prints: ``Error from server (NotFound): ...``.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        self.message = message
        if status == 0:
            text = f"Unable to connect to the server: {message}"
        else:
            text = f"Error from server ({reason or http.client.responses.get(status, status)}): "
            text += message
        super().__init__(text)

    @property
    def not_found(self) -> bool:
        return self.status == 404


def _error(status: int, raw: bytes, fallback: str) -> ApiError:
    """The Status object's reason and message, as kubectl reads them."""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    if isinstance(data, dict) and data.get("kind") == "Status":
        return ApiError(status, str(data.get("reason") or ""), str(data.get("message") or ""))
    text = raw[:300].decode("utf-8", "replace").strip() or fallback
    return ApiError(status, http.client.responses.get(status, ""), text)


def resolve_access(kubeconfig: str | None, context: str | None) -> ClusterAccess:
    """As kubectl: ``--kubeconfig``, else ``$KUBECONFIG`` (a list, merged), else the pod's
    service account (without ``--context``), else ``~/.kube/config``."""
    path = kubeconfig or os.environ.get("KUBECONFIG", "")
    if path:
        return from_kubeconfig(path, context)
    if context is None:
        found = in_cluster()
        if found is not None:
            return found
    default = Path(DEFAULT_KUBECONFIG).expanduser()
    if default.exists():
        return from_kubeconfig(default, context)
    raise AccessError(
        "no configuration has been provided: set --kubeconfig or KUBECONFIG, "
        f"or create {DEFAULT_KUBECONFIG}"
    )


@dataclass
class Client:
    """A few calls on ModelOptimizations, Pods and their logs, as one identity."""

    access: ClusterAccess
    timeout: float = TIMEOUT_SECONDS

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self.access.server)
        host = url.hostname or "localhost"
        if url.scheme == "https":
            ctx = self.access.ssl_context()
            return http.client.HTTPSConnection(
                host,
                url.port,
                timeout=timeout,
                context=ctx if isinstance(ctx, ssl.SSLContext) else None,
            )
        return http.client.HTTPConnection(host, url.port, timeout=timeout)

    @contextmanager
    def _call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        *,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = TIMEOUT_SECONDS,
    ) -> Iterator[http.client.HTTPResponse]:
        base = urllib.parse.urlsplit(self.access.server).path.rstrip("/")
        target = base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        try:
            conn = self._connection(timeout)
        except (OSError, ssl.SSLError, AccessError) as exc:
            raise ApiError(0, "", f"{self.access.server}: {exc}") from exc
        try:
            conn.putrequest(method, target)
            try:
                headers = self.access.headers()
            except AccessError as exc:
                raise ApiError(0, "", str(exc)) from exc
            for name, value in headers:
                conn.putheader(name, value)
            conn.putheader("Accept", "application/json, */*")
            conn.putheader("User-Agent", "kubectl-kubequant")
            data = json.dumps(body).encode() if body is not None else None
            if data is not None:
                conn.putheader("Content-Type", content_type)
                conn.putheader("Content-Length", str(len(data)))
            conn.endheaders(data)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise _error(resp.status, resp.read(), resp.reason)
            yield resp
        except (OSError, http.client.HTTPException) as exc:
            raise ApiError(0, "", f"{self.access.server}: {exc}") from exc
        finally:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        *,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        with self._call(
            method, path, query, body=body, content_type=content_type, timeout=self.timeout
        ) as resp:
            raw = resp.read()
        out = json.loads(raw) if raw else {}
        return out if isinstance(out, dict) else {}

    # ------------------------------------------------------------------ ModelOptimizations

    @staticmethod
    def object_path(namespace: str, name: str) -> str:
        ns, nm = urllib.parse.quote(namespace, safe=""), urllib.parse.quote(name, safe="")
        return f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/{nm}"

    def get_object(self, namespace: str, name: str) -> dict[str, Any]:
        """The object (raises :class:`ApiError`, NotFound as the server words it)."""
        return self.request("GET", self.object_path(namespace, name))

    def patch_object(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of the object (metadata and spec; not its status)."""
        return self.request(
            "PATCH", self.object_path(namespace, name), body=patch, content_type=MERGE_PATCH
        )

    # ------------------------------------------------------------------ pods

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        ns = urllib.parse.quote(namespace, safe="")
        found = self.request(
            "GET", f"/api/v1/namespaces/{ns}/pods", query=[("labelSelector", selector)]
        )
        return list(found.get("items") or [])

    def pod_log(
        self,
        namespace: str,
        pod: str,
        container: str | None = None,
        *,
        follow: bool = False,
        tail: int | None = None,
    ) -> Iterator[bytes]:
        """The pod's log in chunks as they arrive (``follow``: until the container ends)."""
        ns, nm = urllib.parse.quote(namespace, safe=""), urllib.parse.quote(pod, safe="")
        query: list[tuple[str, str]] = []
        if container:
            query.append(("container", container))
        if follow:
            query.append(("follow", "true"))
        if tail is not None and tail >= 0:
            query.append(("tailLines", str(tail)))
        timeout = None if follow else self.timeout
        with self._call(
            "GET", f"/api/v1/namespaces/{ns}/pods/{nm}/log", query, timeout=timeout
        ) as resp:
            while chunk := resp.read1(65536):
                yield chunk
