"""The garbage collector: owner references, foreground deletion, terminating namespaces.

It runs synchronously after every write, under the store's lock, until nothing changes:
dependents whose owners are all gone are deleted (Background), owner references to deleted
owners are dropped, an object deleted in the Foreground waits for its dependents, and a
terminating namespace is emptied before it goes.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from kubequant_localkube.objects import NAMESPACES_KEY, owned_by

if TYPE_CHECKING:
    from kubequant_localkube.store import Store

MAX_PASSES = 1000


class GarbageCollector:
    """Works on a :class:`~.store.Store`; every method expects the store's lock held."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def has_dependents(self, uid: str) -> bool:
        return any(owned_by(o, uid) for o in self.store.stored_objects())

    def orphan_dependents(self, uid: str) -> None:
        """Drop the owner reference to ``uid`` from every dependent (propagation Orphan)."""
        for res, o in list(self.store.live_by_uid().values()):
            if owned_by(o, uid):
                new = copy.deepcopy(o)
                kept = [r for r in o["metadata"]["ownerReferences"] if r.get("uid") != uid]
                if kept:
                    new["metadata"]["ownerReferences"] = kept
                else:
                    new["metadata"].pop("ownerReferences", None)
                self.store.write_modified(res, new, o)

    def collect(self) -> None:
        """Delete dependents whose owners are gone, finish foreground deletions and
        terminating namespaces. Runs until nothing changes."""
        for _ in range(MAX_PASSES):
            if not self._pass():
                return

    def _pass(self) -> bool:
        store = self.store
        live = store.live_by_uid()
        for uid, (res, obj) in live.items():
            meta = obj["metadata"]
            ns, name = meta.get("namespace"), meta["name"]
            refs = meta.get("ownerReferences") or []
            if refs:
                present = [r for r in refs if r.get("uid") in live]
                if not present and not meta.get("deletionTimestamp"):
                    store.delete(res, ns, name, propagation="Background")
                    return True
                if present and len(present) != len(refs):
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = present
                    store.write_modified(res, new, obj)
                    return True
            fins = meta.get("finalizers") or []
            if meta.get("deletionTimestamp") and "foregroundDeletion" in fins:
                deps = [(r2, o2) for r2, o2 in live.values() if owned_by(o2, uid)]
                pending = [d for d in deps if not d[1]["metadata"].get("deletionTimestamp")]
                if pending:
                    r2, o2 = pending[0]
                    store.delete(
                        r2,
                        o2["metadata"].get("namespace"),
                        o2["metadata"]["name"],
                        propagation="Foreground",
                    )
                    return True
                if not deps:
                    new = copy.deepcopy(obj)
                    new["metadata"]["finalizers"] = [f for f in fins if f != "foregroundDeletion"]
                    store.commit_update(res, obj, new, field_validation="Ignore")
                    return True
            if res.key == NAMESPACES_KEY and meta.get("deletionTimestamp"):
                content = [
                    (r2, o2)
                    for r2, o2 in live.values()
                    if r2.namespaced and o2["metadata"].get("namespace") == name
                ]
                pending = [c for c in content if not c[1]["metadata"].get("deletionTimestamp")]
                if pending:
                    r2, o2 = pending[0]
                    store.delete(r2, name, o2["metadata"]["name"], propagation="Background")
                    return True
                if not content:
                    store.write_deleted(res, copy.deepcopy(obj), obj)
                    return True
        return False
