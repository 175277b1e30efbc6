"""Watches: the change history, the open watch streams and in-process listeners.

The store records every change here (under its lock); watchers are asyncio queues fed with
``call_soon_threadsafe`` in the order the changes happened, listeners are called directly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
from collections.abc import Callable, Mapping

from kubequant_localkube import errors
from kubequant_localkube.objects import Obj, ObjKey

HISTORY_SIZE = 50_000


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    rv: int
    key: tuple[str, str]
    namespace: str | None
    type: str  # ADDED | MODIFIED | DELETED
    obj: Obj
    old: Obj | None


@dataclasses.dataclass
class Watcher:
    key: tuple[str, str]
    namespace: str | None
    queue: asyncio.Queue[WatchEvent | None]
    loop: asyncio.AbstractEventLoop

    def push(self, event: WatchEvent | None) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the watcher is gone
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


class WatchHub:
    """The recent change history and who is told about changes.

    Not locked itself: the store calls it under its own lock.
    """

    def __init__(self, history_size: int = HISTORY_SIZE) -> None:
        self.history: collections.deque[WatchEvent] = collections.deque(maxlen=history_size)
        self._watchers: list[Watcher] = []
        self._listeners: list[Callable[[WatchEvent], None]] = []

    def emit(self, event: WatchEvent) -> None:
        self.history.append(event)
        for w in list(self._watchers):
            if w.key == event.key and (w.namespace is None or w.namespace == event.namespace):
                w.push(event)
        for listener in list(self._listeners):
            listener(event)

    def add_listener(self, fn: Callable[[WatchEvent], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[WatchEvent], None]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    def subscribe(
        self,
        key: tuple[str, str],
        namespace: str | None,
        since: int | None,
        loop: asyncio.AbstractEventLoop,
        *,
        current: Mapping[ObjKey, Obj],
        rv: int,
    ) -> tuple[Watcher, list[WatchEvent]]:
        """Register a watcher; return it and the events to send first.

        ``since`` None: synthetic ADDED events for every ``current`` object, then live
        changes. ``since`` N: every recorded change after N, then live changes (410 Gone if
        N is older than the history kept; ``rv`` is the store's resourceVersion now).
        """
        watcher = Watcher(key, namespace, asyncio.Queue(), loop)
        if since is None:
            first = [
                WatchEvent(
                    int(o["metadata"]["resourceVersion"]),
                    key,
                    k[0],
                    "ADDED",
                    copy.deepcopy(o),
                    None,
                )
                for k, o in sorted(
                    current.items(), key=lambda kv: int(kv[1]["metadata"]["resourceVersion"])
                )
                if namespace is None or k[0] == namespace
            ]
        else:
            oldest = self.history[0].rv if self.history else rv + 1
            if since < oldest - 1 and since < rv:
                raise errors.ApiError(
                    410, f"too old resource version: {since} ({oldest - 1})", reason="Expired"
                )
            first = [
                e
                for e in self.history
                if e.rv > since and e.key == key and (namespace is None or e.namespace == namespace)
            ]
        self._watchers.append(watcher)
        return watcher, first

    def unsubscribe(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def take_all(self) -> list[Watcher]:
        """Forget every watcher and return them (to be cut outside the lock)."""
        watchers = list(self._watchers)
        self._watchers.clear()
        return watchers

    @property
    def open_watches(self) -> int:
        return len(self._watchers)
