"""Watch streams: the initial events or the history since a resourceVersion, then changes."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
from collections.abc import Callable

import aiohttp.web

from kubequant_localkube import errors, tables
from kubequant_localkube.httpio import JSON, predicate
from kubequant_localkube.objects import Obj
from kubequant_localkube.resources import Resource
from kubequant_localkube.store import Store
from kubequant_localkube.watch import WatchEvent


async def serve_watch(
    store: Store,
    raw: aiohttp.web.BaseRequest,
    res: Resource,
    ns: str | None,
    *,
    name: str | None,
    table: bool,
    bookmark_interval: float,
    max_watch_seconds: float,
) -> aiohttp.web.StreamResponse:
    """Stream watch events (JSON lines) until the timeout, a cut or the client goes."""
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
    pred = predicate(raw, name)
    timeout = float(q.get("timeoutSeconds") or max_watch_seconds)
    bookmarks = (q.get("allowWatchBookmarks") or "").lower() in ("true", "1")
    loop = asyncio.get_running_loop()
    resp = aiohttp.web.StreamResponse(status=200)
    resp.content_type = JSON
    resp.enable_chunked_encoding()
    try:
        watcher, first = store.subscribe(res, ns, since, loop)
    except errors.ApiError as exc:
        if exc.status != 410:
            raise
        await resp.prepare(raw)
        await resp.write(json.dumps({"type": "ERROR", "object": exc.to_status()}).encode() + b"\n")
        await resp.write_eof()
        return resp
    await resp.prepare(raw)
    deadline = loop.time() + timeout
    columns_sent = False
    try:
        for event in first:
            line = watch_line(res, event, pred, table, columns_sent)
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
                                "resourceVersion": str(store.resource_version),
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
                    watcher.queue.get(), min(remaining, bookmark_interval)
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
                                    "metadata": {"resourceVersion": str(store.resource_version)},
                                },
                            }
                        ).encode()
                        + b"\n"
                    )
                continue
            if item is None:  # cut by a test, or the server stops
                break
            line = watch_line(res, item, pred, table, columns_sent)
            if line:
                columns_sent = True
                await resp.write(line)
    except ConnectionResetError:
        # The watcher went away mid-stream (a client's timeout, a stopped process): a real
        # server just ends the stream; nothing failed on the server's side.
        store.unsubscribe(watcher)
        return resp
    except (asyncio.CancelledError, RuntimeError):
        store.unsubscribe(watcher)
        raise
    finally:
        store.unsubscribe(watcher)
    with contextlib.suppress(ConnectionResetError, RuntimeError):
        await resp.write_eof()
    return resp


def watch_line(
    res: Resource,
    event: WatchEvent,
    pred: Callable[[Obj], bool],
    table: bool,
    columns_sent: bool,
) -> bytes | None:
    """One event as the watcher sees it: selectors turn MODIFIED into ADDED/DELETED."""
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
        payload = tables.table(res, [obj], obj["metadata"].get("resourceVersion", ""))
        if columns_sent:
            payload["columnDefinitions"] = []
    return json.dumps({"type": etype, "object": payload}).encode() + b"\n"
