"""KubeStatusReporter: the engine's writes to its own ModelOptimization's status.

The engine writes only ``status.progress`` and ``status.result`` (each carrying the
generation it runs for). Every write:

1. GETs the object; a different ``metadata.uid`` (the object was deleted and re-created), a
   different ``metadata.generation`` (the spec moved on) or a missing object means this run
   is obsolete: :class:`StaleRunError`, and nothing is written.
2. PATCHes the status subresource with a JSON merge patch that carries ``metadata.uid`` and
   ``metadata.resourceVersion`` as preconditions, so the API server refuses it (409) if the
   object changed between the GET and the PATCH; a 409 re-GETs and retries a few times.

A merge patch merges nested objects, so each write sets the keys that the previous value
had and the new one lacks to null: ``status.result`` is replaced, never blended.

Progress writes are throttled (one per ``min_interval`` seconds unless the stage or the
candidate changes); the last throttled progress is written at the next chance and at
finish. Transport errors are logged and swallowed; only StaleRunError escapes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from kubequant_api.constants import GROUP, PLURAL, VERSION, ExitCode, Stage
from kubequant_api.errors import KubequantError
from kubequant_api.models import Progress, Result
from optimizer_job.report.base import RunContext, StaleRunError
from optimizer_job.settings import DEFAULT_PROGRESS_INTERVAL_S

log = logging.getLogger("optimizer_job.report.kube")

ENV_SERVICE_HOST = "KUBERNETES_SERVICE_HOST"
ENV_KUBECONFIG = "KUBECONFIG"
DEFAULT_REQUEST_TIMEOUT_S = 10.0
DEFAULT_CONFLICT_RETRIES = 5
MERGE_PATCH = "application/merge-patch+json"


class KubeApiError(KubequantError):
    """The Kubernetes API could not be reached or refused a request (retryable)."""


def in_cluster() -> bool:
    """Whether this process runs in a pod (the kubelet sets ``KUBERNETES_SERVICE_HOST``).

    Discovery, not configuration: like ``KUBECONFIG`` below it is the Kubernetes client's
    standard variable, read at call time, and not one of the engine's settings.
    """
    return bool(os.environ.get(ENV_SERVICE_HOST))


def api_client() -> Any:
    """A kubernetes ApiClient: in-cluster config inside a pod, else ``$KUBECONFIG``.

    Reads the environment at call time (the kubernetes package reads ``KUBECONFIG`` only
    once, at import). Raises KubeApiError when no configuration can be loaded.
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if in_cluster():
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        return config.new_client_from_config(
            config_file=os.environ.get(ENV_KUBECONFIG) or None, persist_config=False
        )
    except (ConfigException, OSError, ValueError, TypeError) as exc:
        where = "in-cluster" if in_cluster() else "KUBECONFIG"
        raise KubeApiError(
            f"cannot load the Kubernetes client configuration ({where}): {exc}"
        ) from exc


def _api_exception() -> type[Exception]:
    from kubernetes.client.exceptions import ApiException

    return ApiException  # type: ignore[no-any-return]


def _transport_errors() -> tuple[type[Exception], ...]:
    import urllib3

    return (_api_exception(), urllib3.exceptions.HTTPError, OSError)


def _describe(exc: Exception) -> str:
    """``HTTP 422 Invalid: <the API server's message>`` for API errors, else the error."""
    status = getattr(exc, "status", None)
    if status is None:
        return f"{type(exc).__name__}: {exc}"[:500]
    reason = getattr(exc, "reason", None) or type(exc).__name__
    message = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            message = str(json.loads(body).get("message") or "")
        except (ValueError, AttributeError):
            message = str(body)
    return f"HTTP {status} {reason}: {message}"[:500] if message else f"HTTP {status} {reason}"


def check_identity(obj: dict[str, Any], ctx: RunContext) -> None:
    """StaleRunError when ``obj`` is not the object/generation ``ctx`` runs for."""
    meta = obj.get("metadata") or {}
    where = f"{ctx.namespace}/{ctx.name}"
    if ctx.uid is not None and meta.get("uid") != ctx.uid:
        raise StaleRunError(
            f"{where}: uid is {meta.get('uid')!r}, this run is for {ctx.uid!r} "
            "(the object was deleted and re-created)"
        )
    if ctx.generation is not None and meta.get("generation") != ctx.generation:
        raise StaleRunError(
            f"{where}: generation is {meta.get('generation')!r}, this run is for "
            f"{ctx.generation} (the spec changed)"
        )


def load_object(
    namespace: str,
    name: str,
    *,
    uid: str | None = None,
    generation: int | None = None,
    client: Any = None,
    timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> dict[str, Any]:
    """GET the ModelOptimization ``namespace/name`` as a dict.

    With ``uid``/``generation`` given, a mismatch raises StaleRunError. A missing object
    raises StaleRunError (nothing left to run for); other failures raise KubeApiError.
    """
    from kubernetes import client as k8s

    own = client is None
    api_cl = api_client() if own else client
    try:
        obj: dict[str, Any] = k8s.CustomObjectsApi(api_cl).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=timeout
        )
    except _api_exception() as exc:
        status = getattr(exc, "status", None)
        if status == 404:
            raise StaleRunError(f"{namespace}/{name}: the ModelOptimization is gone") from exc
        raise KubeApiError(f"GET {PLURAL}/{namespace}/{name}: {_describe(exc)}") from exc
    except _transport_errors() as exc:
        raise KubeApiError(f"GET {PLURAL}/{namespace}/{name}: {exc}") from exc
    finally:
        if own:
            api_cl.close()
    ctx = RunContext(name=name, namespace=namespace, uid=uid, generation=generation)
    check_identity(obj, ctx)
    return obj


def replacement_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``."""
    if not isinstance(new, dict):
        return new
    if not isinstance(old, dict):
        old = {}
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for key, value in new.items():
        patch[key] = replacement_patch(old.get(key), value) if isinstance(value, dict) else value
    return patch


class KubeStatusReporter:
    """Writes status.progress and status.result of the run's own object."""

    def __init__(
        self,
        ctx: RunContext,
        *,
        client: Any = None,
        min_interval: float = DEFAULT_PROGRESS_INTERVAL_S,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        conflict_retries: int = DEFAULT_CONFLICT_RETRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ctx.namespace:
            raise KubequantError("KubeStatusReporter needs a namespaced RunContext")
        self.ctx = ctx
        self.min_interval = min_interval
        self.request_timeout = request_timeout
        self.conflict_retries = max(1, conflict_retries)
        self.clock = clock
        self.stale: StaleRunError | None = None
        self.writes = 0  # successful PATCHes (tests and benchmarks read it)
        self._lock = threading.Lock()
        self._last_key: tuple[str, str | None] | None = None
        self._last_write = float("-inf")
        self._pending: dict[str, Any] | None = None
        self._own_client = client is None
        self._client: Any = client
        if client is None:
            try:
                self._client = api_client()
            except KubeApiError as exc:
                log.error("status reporting disabled: %s", exc, extra=ctx.log_extra())
        self._api: Any = None
        if self._client is not None:
            from kubernetes import client as k8s

            self._api = k8s.CustomObjectsApi(self._client)

    def close(self) -> None:
        if self._own_client and self._client is not None:
            self._client.close()
        self._client = self._api = None

    # ----------------------------------------------------------------- plumbing

    def _get(self) -> dict[str, Any]:
        return load_object(
            self.ctx.namespace or "",
            self.ctx.name,
            uid=self.ctx.uid,
            generation=self.ctx.generation,
            client=self._client,
            timeout=self.request_timeout,
        )

    def _write(self, field: str, value: dict[str, Any]) -> bool:
        """Replace ``status.<field>`` by ``value``; True when written.

        Raises StaleRunError; logs and swallows every other failure.
        """
        if self.stale is not None:
            raise StaleRunError(str(self.stale))
        if self._api is None:
            return False
        api_exception = _api_exception()
        try:
            for attempt in range(1, self.conflict_retries + 1):
                obj = self._get()  # StaleRunError when uid/generation moved on
                meta = obj.get("metadata") or {}
                preconditions: dict[str, Any] = {}
                if self.ctx.uid is not None:
                    preconditions["uid"] = self.ctx.uid
                if meta.get("resourceVersion"):
                    preconditions["resourceVersion"] = meta["resourceVersion"]
                old = (obj.get("status") or {}).get(field)
                body = {
                    "metadata": preconditions,
                    "status": {field: replacement_patch(old, value)},
                }
                try:
                    self._api.patch_namespaced_custom_object_status(
                        GROUP,
                        VERSION,
                        self.ctx.namespace,
                        PLURAL,
                        self.ctx.name,
                        body,
                        _content_type=MERGE_PATCH,
                        _request_timeout=self.request_timeout,
                    )
                except api_exception as exc:
                    status = getattr(exc, "status", None)
                    if status == 409 and attempt < self.conflict_retries:
                        log.debug(
                            "status.%s: conflict (attempt %d), re-reading",
                            field,
                            attempt,
                            extra=self.ctx.log_extra(),
                        )
                        continue
                    if status == 404:
                        raise StaleRunError(
                            f"{self.ctx.namespace}/{self.ctx.name}: the object is gone"
                        ) from exc
                    if status == 409:
                        # A conflict that persists may be a uid precondition: re-check.
                        self._get()
                    raise
                self.writes += 1
                return True
        except StaleRunError as exc:
            self.stale = exc
            log.warning("stopping status reporting: %s", exc, extra=self.ctx.log_extra())
            raise
        except KubeApiError as exc:
            log.warning("status.%s not written: %s", field, exc, extra=self.ctx.log_extra())
        except _transport_errors() as exc:
            log.warning(
                "status.%s not written: %s",
                field,
                _describe(exc),
                extra=self.ctx.log_extra(),
            )
        return False

    def _write_progress(self, progress: dict[str, Any], key: tuple[str, str | None]) -> None:
        # Throttle attempts, not successes: an unreachable API server costs at most one
        # attempt per interval (per stage), never one per progress callback.
        self._pending = None
        self._last_key = key
        self._last_write = self.clock()
        self._write("progress", progress)

    def _flush(self) -> None:
        pending = self._pending
        if pending is not None:
            self._write_progress(pending, (pending["stage"], pending.get("candidate")))

    # ----------------------------------------------------------------- Reporter

    def stage(self, stage: Stage, percent: int, candidate: str | None = None) -> None:
        if self.stale is not None:
            raise StaleRunError(str(self.stale))
        # Progress fills in its summary ("Quantizing 40%"): kubectl get's Progress column.
        progress = Progress(
            stage=Stage(stage),
            percent=max(0, min(100, percent)),
            generation=self.ctx.generation,
            candidate=candidate,
        ).to_api()
        key = (Stage(stage).value, candidate)
        with self._lock:
            throttled = (
                key == self._last_key and self.clock() - self._last_write < self.min_interval
            )
            if throttled:
                self._pending = progress
                return
            self._write_progress(progress, key)

    def result(self, result: Result) -> None:
        value = result.model_copy(update={"generation": self.ctx.generation}).to_api()
        with self._lock:
            self._flush()
            self._write("result", value)

    def finish(self, exit_code: ExitCode, summary: dict[str, Any]) -> None:
        """Write the last throttled progress. Never raises: on a stale run it does nothing
        (the pipeline may call finish while handling the StaleRunError itself)."""
        with self._lock:
            if self.stale is not None:
                self._pending = None
                return
            try:
                self._flush()
            except StaleRunError:
                return
