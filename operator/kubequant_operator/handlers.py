"""Thin kopf handlers: each one only maps a trigger onto ``Reconciler.reconcile``.

Handlers are registered into a registry made per operator run (``build_registry``), so that
settings (namespaces, intervals) apply without import-time globals and tests can run several
operators one after another in one process.

- create / update of ``spec`` / resume of a ModelOptimization -> reconcile; on error (an API
  error, or a child the API server refused) kopf retries the handler with exponential backoff
  (:func:`retry_delay` of kopf's own ``retry`` count);
- watch events of Jobs and Pods labelled ``app.kubernetes.io/managed-by=kubequant`` ->
  reconcile of the owner (from the child's owner annotation / ownerReference / label);
- every watch event of a ModelOptimization -> the metrics index (DELETED removes the series),
  and a reconcile when its ``kubequant.io/rerun`` annotation holds a value not yet handled;
- ``periodic_resync``: the level-based safety net, one loop for all objects (a per-object
  kopf timer would need a finalizer on every object; kubequant uses none).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

from kubequant_api.constants import GROUP, MANAGED_BY_LABEL, MANAGED_BY_VALUE, PLURAL, VERSION
from kubequant_operator.access import ClusterAccess
from kubequant_operator.builders import owner_of_child
from kubequant_operator.kube import KubeError
from kubequant_operator.metrics import Metrics, view_of
from kubequant_operator.reconcile import ReconcileError, Reconciler
from kubequant_operator.settings import Settings
from kubequant_operator.status import rerun_wanted

log = logging.getLogger("kubequant.operator")
RESOURCE = (GROUP, VERSION, PLURAL)
JOBS = ("batch", "v1", "jobs")
PODS = ("v1", "pods")
CHILD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
CHILD_LABELS = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
KOPF_PREFIX = "kubequant.io"
RETRY_DELAY_SECONDS = 1.0  # the first retry's delay; doubled on each further one
RETRY_DELAY_MAX_SECONDS = 300.0
RESYNC_CONCURRENCY = 8


def retry_delay(retry: int) -> float:
    """Exponential backoff: the delay before kopf's next try after ``retry`` earlier ones."""
    return min(RETRY_DELAY_SECONDS * 2.0 ** min(max(retry, 0), 16), RETRY_DELAY_MAX_SECONDS)


def configure_kopf(kopf_settings: kopf.OperatorSettings, s: Settings) -> None:
    """kopf settings: watch timeouts, no status writes, no finalizers, few events."""
    kopf_settings.watching.server_timeout = s.watch_server_timeout
    kopf_settings.watching.client_timeout = s.watch_client_timeout
    kopf_settings.watching.connect_timeout = s.watch_connect_timeout
    kopf_settings.networking.request_timeout = s.request_timeout_seconds
    # kopf's own bookkeeping goes into annotations, never into our .status.
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-spec", ignored_fields=["status", "metadata"]
    )
    kopf_settings.persistence.finalizer = f"{KOPF_PREFIX}/finalizer"
    # The operator posts its own events; kopf only for its own failures.
    kopf_settings.posting.level = logging.WARNING
    kopf_settings.posting.reporting_component = "kubequant-operator"
    kopf_settings.peering.standalone = True
    kopf_settings.peering.clusterwide = s.clusterwide
    kopf_settings.watching.label_selectors[JOBS] = CHILD_SELECTOR
    kopf_settings.watching.label_selectors[PODS] = CHILD_SELECTOR


def connection_info(access: ClusterAccess) -> kopf.ConnectionInfo:
    """kopf's credentials from the same cluster access the reconciler uses (an exec or
    auth-provider token with its expiration: kopf logs in again when it passes, or on 401)."""
    token = access.current_token()
    cert, cert_data, key, key_data = access.client_certificate()
    return kopf.ConnectionInfo(
        server=access.server,
        ca_path=access.ca_path,
        ca_data=access.ca_data,
        insecure=access.insecure or None,
        username=access.username,
        password=access.password,
        scheme="Bearer" if token else None,
        token=token,
        certificate_path=cert,
        certificate_data=cert_data,
        private_key_path=key,
        private_key_data=key_data,
        default_namespace=access.namespace,
        expiration=access.expiration(),
    )


async def login_context(access: ClusterAccess) -> kopf.ConnectionInfo | kopf.AiohttpSession:
    """What kopf's login returns: a :class:`kopf.ConnectionInfo`; with impersonation, which
    ConnectionInfo cannot carry (it makes only the Authorization header), an aiohttp session
    of ours that sends the Impersonate-* headers too (kopf's AiohttpSession; kopf closes it
    when it logs in again)."""
    await access.refresh(renew=True)  # a plugin runs again (off the event loop), as on a 401
    if not access.impersonation_headers():
        return connection_info(access)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=access.ssl_context()),
        headers=access.headers(),
    )
    return kopf.AiohttpSession(
        server=access.server,
        aiohttp_session=session,
        default_namespace=access.namespace,
        expiration=access.expiration(),
    )


def build_registry(s: Settings, reconciler: Reconciler, metrics: Metrics) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(id="configure", registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, s)

    @kopf.on.login(id="login", registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo | kopf.AiohttpSession:
        return await login_context(reconciler.kube.access)

    async def run(namespace: str, name: str, retry: int | None) -> None:
        """Reconcile; with ``retry`` (kopf's count of earlier tries), errors are retried by
        kopf after a delay that doubles each time (without it, the resync retries)."""
        try:
            await reconciler.reconcile(namespace, name)
        except ReconcileError as exc:
            metrics.reconcile_errors.inc()
            log.warning("reconcile failed: %s", exc, extra={"namespace": namespace, "object": name})
            if retry is not None:
                raise kopf.TemporaryError(str(exc), delay=retry_delay(retry)) from exc

    @kopf.on.resume(*RESOURCE, id="resume", registry=registry)
    @kopf.on.create(*RESOURCE, id="create", registry=registry)
    @kopf.on.update(*RESOURCE, field="spec", id="spec-update", registry=registry)
    async def object_changed(namespace: str | None, name: str, retry: int, **_: Any) -> None:
        await run(str(namespace), name, retry=retry)

    @kopf.on.event(*RESOURCE, id="index", registry=registry)
    def object_seen(event: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> None:
        if event.get("type") == "DELETED":
            meta = body.get("metadata") or {}
            metrics.index.forget(str(meta.get("namespace")), str(meta.get("name")))
        else:
            metrics.index.update(body)

    @kopf.on.event(*RESOURCE, id="rerun", registry=registry)
    async def rerun_requested(body: Mapping[str, Any], namespace: str | None, **_: Any) -> None:
        # kubequant.io/rerun is an annotation (no spec change): any watch event showing a
        # value not yet handled reconciles the object (level-based, see decide_rerun).
        if namespace and rerun_wanted(body):
            await run(namespace, str((body.get("metadata") or {}).get("name")), retry=None)

    @kopf.on.event(*JOBS, labels=CHILD_LABELS, id="job-event", registry=registry)
    @kopf.on.event(*PODS, labels=CHILD_LABELS, id="pod-event", registry=registry)
    async def child_changed(body: Mapping[str, Any], namespace: str | None, **_: Any) -> None:
        owner = owner_of_child(body)
        if owner and namespace:
            await run(namespace, owner, retry=None)

    return registry


async def periodic_resync(
    s: Settings, reconciler: Reconciler, metrics: Metrics, stop: asyncio.Event
) -> None:
    """Reconcile every known object that is not done, every reconcile interval."""
    sem = asyncio.Semaphore(RESYNC_CONCURRENCY)

    async def one(namespace: str, name: str) -> None:
        async with sem:
            try:
                await reconciler.reconcile(namespace, name)
            except ReconcileError as exc:
                metrics.reconcile_errors.inc()
                log.warning(
                    "resync failed: %s", exc, extra={"namespace": namespace, "object": name}
                )

    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=s.reconcile_interval_seconds)
            return
        except TimeoutError:
            pass
        try:
            objects = await reconciler.kube.list_objects(s.namespaces)
        except KubeError as exc:
            metrics.reconcile_errors.inc()
            log.warning("resync: cannot list objects: %s", exc)
            continue
        todo = []
        for obj in objects:
            metrics.index.update(obj)
            view = view_of(obj)
            if not view.done:
                todo.append(one(view.namespace, view.name))
        await asyncio.gather(*todo)
