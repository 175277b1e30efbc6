"""Deleting the engine's Pushgateway groups once nobody needs them.

The engine pushes its run's metrics once, at its end, to the group
``job=kubequant-engine, namespace=<ns>, name=<object>`` (one group per object: a new run
replaces the previous one). A Pushgateway never forgets a group by itself, so without a
delete every object ever run would leave one forever. As the Pushgateway's documentation
recommends for finished batch jobs, the operator deletes them:

- the group of a run the operator has harvested (the object's current generation is done:
  Succeeded or Failed) once ``engine_pushgateway_retention_seconds`` have passed since the
  push, so that Prometheus scraped the final values at least once;
- the group of an object that no longer exists (or is being deleted), at once.

A sweep lists the groups (``GET /api/v1/metrics``), reads each kubequant group's object
from the API server and deletes (``DELETE /metrics/job/kubequant-engine/namespace/<ns>/name/
<name>``) what is no longer needed. Groups in namespaces the operator does not watch are
left alone. It runs every reconcile interval while ``engine_pushgateway_url`` is set.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from kubequant_api.errors import KubequantError
from kubequant_operator.kube import Kube, KubeError
from kubequant_operator.metrics import Metrics, view_of
from kubequant_operator.settings import Settings

log = logging.getLogger("kubequant.operator.pushgateway")

ENGINE_PUSH_JOB = "kubequant-engine"  # optimizer_job.report.metrics.PUSH_JOB


class PushgatewayError(KubequantError):
    """The Pushgateway could not be read or a group could not be deleted."""


@dataclass(frozen=True)
class Group:
    """One engine group on the Pushgateway."""

    namespace: str
    name: str
    push_time: float  # Unix time of its last successful push (0 when unknown)


def split_credentials(url: str) -> tuple[str, aiohttp.BasicAuth | None]:
    """``url`` without its ``user:password@`` part, and that part as basic auth."""
    parts = urlsplit(url)
    if parts.username is None:
        return url.rstrip("/"), None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return bare.rstrip("/"), aiohttp.BasicAuth(parts.username, parts.password or "")


def redacted(url: str) -> str:
    """``url`` fit for a log line (no credentials)."""
    return split_credentials(url)[0]


def _segment(key: str, value: str) -> str:
    """A grouping-key path segment; values with ``/`` (or empty) in base64, as the
    Pushgateway's API asks."""
    if not value or "/" in value:
        encoded = base64.urlsafe_b64encode(value.encode()).decode() or "="
        return f"{key}@base64/{encoded}"
    return f"{key}/{quote(value, safe='')}"


def group_path(namespace: str, name: str) -> str:
    """The API path of one engine group."""
    return (
        f"/metrics/job/{ENGINE_PUSH_JOB}/{_segment('namespace', namespace)}/"
        f"{_segment('name', name)}"
    )


def engine_groups(data: Mapping[str, Any]) -> list[Group]:
    """The engine's groups in a ``GET /api/v1/metrics`` answer."""
    groups: list[Group] = []
    for entry in data.get("data") or []:
        labels = entry.get("labels") or {}
        if labels.get("job") != ENGINE_PUSH_JOB or set(labels) != {"job", "namespace", "name"}:
            continue
        push_time = 0.0
        for sample in (entry.get("push_time_seconds") or {}).get("metrics") or []:
            try:
                push_time = max(push_time, float(sample.get("value")))
            except (TypeError, ValueError):
                continue
        groups.append(Group(str(labels["namespace"]), str(labels["name"]), push_time))
    return groups


class PushgatewayJanitor:
    """Deletes the engine's groups of harvested runs and of deleted objects."""

    def __init__(
        self,
        s: Settings,
        kube: Kube,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = s
        self.kube = kube
        self.metrics = metrics
        self.clock = clock
        self.url, self.auth = split_credentials(s.engine_pushgateway_url)
        self.timeout = aiohttp.ClientTimeout(total=s.request_timeout_seconds)

    async def _call(self, session: aiohttp.ClientSession, method: str, path: str) -> Any:
        try:
            async with session.request(method, self.url + path, auth=self.auth) as resp:
                if resp.status >= 300:
                    body = (await resp.text())[:200]
                    raise PushgatewayError(
                        f"{method} {redacted(self.url)}{path}: HTTP {resp.status} {body}"
                    )
                if method == "GET":
                    return await resp.json(content_type=None)
                return None
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PushgatewayError(f"{method} {redacted(self.url)}{path}: {exc}") from exc

    async def _cause(self, group: Group, now: float) -> str | None:
        """Why the group should go ("deleted", "harvested"), or None to keep it."""
        obj = await self.kube.get_object(group.namespace, group.name)
        if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
            return "deleted"
        if not view_of(obj).done:
            return None  # a run is under way or waits: its push will replace the group
        if now - group.push_time >= self.settings.engine_pushgateway_retention_seconds:
            return "harvested"
        return None

    async def sweep(self) -> list[tuple[str, str, str]]:
        """One pass; the groups deleted, as (namespace, name, cause)."""
        watched = set(self.settings.namespaces)
        deleted: list[tuple[str, str, str]] = []
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            groups = engine_groups(await self._call(session, "GET", "/api/v1/metrics"))
            now = self.clock()
            for group in groups:
                if watched and group.namespace not in watched:
                    continue  # another operator's (or nobody's) business
                try:
                    cause = await self._cause(group, now)
                except KubeError as exc:
                    log.warning(
                        "cannot read the object of a Pushgateway group: %s",
                        exc,
                        extra={"namespace": group.namespace, "object": group.name},
                    )
                    continue
                if cause is None:
                    continue
                await self._call(session, "DELETE", group_path(group.namespace, group.name))
                self.metrics.pushgateway_deletes.labels(cause=cause).inc()
                log.info(
                    "deleted the engine's Pushgateway group (%s)",
                    cause,
                    extra={"namespace": group.namespace, "object": group.name},
                )
                deleted.append((group.namespace, group.name, cause))
        return deleted

    async def run(self, stop: asyncio.Event) -> None:
        """Sweep every reconcile interval until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(
                    stop.wait(), timeout=self.settings.reconcile_interval_seconds
                )
                return
            except TimeoutError:
                pass
            try:
                await self.sweep()
            except PushgatewayError as exc:
                self.metrics.pushgateway_errors.inc()
                log.warning("Pushgateway sweep failed: %s", exc)
