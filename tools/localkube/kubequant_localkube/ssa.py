"""Server-side apply, simplified: the applied config is merged into the live object, and the
fields a manager applied before but no longer applies are removed."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from kubequant_localkube import errors, patching
from kubequant_localkube.objects import Obj, as_version, meta, removed_fields
from kubequant_localkube.resources import Resource

if TYPE_CHECKING:
    from kubequant_localkube.store import Store

# (group, plural, namespace, name, field manager)
_AppliedKey = tuple[str, str, str | None, str, str]


class ServerSideApply:
    """The last config each field manager applied to each object (the store's lock held)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._applied: dict[_AppliedKey, Obj] = {}

    def apply(
        self,
        res: Resource,
        ns: str | None,
        name: str,
        old: Obj | None,
        *,
        config: Any,
        subresource: str | None,
        dry_run: bool,
        field_validation: str | None,
        warnings: list[str] | None,
        manager: str,
    ) -> Obj:
        if not isinstance(config, dict):
            raise errors.ApiError(400, "an apply patch must be an object")
        if not manager:
            raise errors.ApiError(
                400, "PATCH, application/apply-patch+yaml requires fieldManager to be set"
            )
        akey = (res.group, res.plural, ns, name, manager)
        if old is None:
            if subresource:
                raise errors.not_found(res.plural, res.group, name)
            body = copy.deepcopy(config)
            meta(body)["name"] = name
            created = self.store.create(
                res, ns, body, dry_run=dry_run, field_validation=field_validation, warnings=warnings
            )
            if not dry_run:
                self._applied[akey] = copy.deepcopy(config)
            return created
        previous = self._applied.get(akey, {})
        current = as_version(res, old)
        new = patching.merge_patch(current, removed_fields(previous, config))
        new = patching.strategic_merge_patch(new, config, custom=True)
        result = self.store.commit_update(
            res,
            old,
            new,
            subresource=subresource,
            dry_run=dry_run,
            field_validation=field_validation,
            warnings=warnings,
        )
        if not dry_run:
            self._applied[akey] = copy.deepcopy(config)
        return result

    def forget(self, res: Resource, namespace: str | None, name: str) -> None:
        """The object is gone: so are its managers' applied configs."""
        for k in [k for k in self._applied if k[:4] == (res.group, res.plural, namespace, name)]:
            del self._applied[k]
