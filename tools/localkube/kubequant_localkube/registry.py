"""The resources the API server serves: the built-in kinds and those CRDs define."""

from __future__ import annotations

import threading

from kubequant_localkube import errors
from kubequant_localkube import resources as res_mod
from kubequant_localkube.admission import Admission
from kubequant_localkube.objects import Obj


class ResourceRegistry:
    """Served resources by (group, version, plural); shares the store's lock."""

    def __init__(self, lock: threading.RLock) -> None:
        self.lock = lock
        self._resources: dict[tuple[str, str, str], res_mod.Resource] = {}
        for res in res_mod.builtin_resources():
            self.register(res)

    def register(self, res: res_mod.Resource) -> None:
        with self.lock:
            self._resources[(res.group, res.version, res.plural)] = res

    def all(self) -> list[res_mod.Resource]:
        with self.lock:
            return list(self._resources.values())

    def get(self, group: str, version: str, plural: str) -> res_mod.Resource:
        with self.lock:
            res = self._resources.get((group, version, plural))
        if res is None:
            gv = f"{group}/{version}" if group else version
            raise errors.ApiError(
                404, f"the server could not find the requested resource ({gv} {plural})"
            )
        return res

    def find(self, name: str) -> res_mod.Resource | None:
        """By plural, singular, kind or short name (like kubectl resolves names)."""
        name = name.lower()
        with self.lock:
            for res in self._resources.values():
                names = {res.plural, res.singular, res.kind.lower(), *res.short_names}
                if name in names:
                    return res
        return None

    def for_key(self, key: tuple[str, str]) -> res_mod.Resource | None:
        """A served version of a storage key (group, plural)."""
        for res in self._resources.values():
            if res.key == key:
                return res
        return None

    def of_crd(self, name: str) -> list[res_mod.Resource]:
        return [r for r in self._resources.values() if r.crd_name == name]

    def sync_crd(self, crd: Obj | None, name: str, admission: Admission) -> None:
        """(Re)register the resources a CRD defines; drop them if it is gone."""
        with self.lock:
            for k in [k for k, r in self._resources.items() if r.crd_name == name]:
                del self._resources[k]
            if crd is None:
                return
            for res in res_mod.resources_from_crd(crd):
                admission.compile(res)
                self.register(res)
