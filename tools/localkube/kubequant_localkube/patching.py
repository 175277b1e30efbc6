"""Patch formats the API server accepts: JSON merge, strategic merge, JSON patch."""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """A patch cannot be applied; ``status`` is the HTTP code a real API server answers."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# List fields of built-in kinds that Kubernetes merges by a key instead of replacing.
_MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "conditions": "type",
    "ownerReferences": "uid",
    "imagePullSecrets": "name",
    "tolerations": "key",
    "hostAliases": "ip",
}
_PRIMITIVE_MERGE_LISTS = {"finalizers"}


def strategic_merge_patch(target: Any, patch: Any, custom: bool) -> Any:
    """Strategic merge patch.

    For custom resources a real API server refuses this format; here it is applied as a JSON
    merge patch (lists replaced), which is what clients mean for our kinds. For built-in kinds
    the lists Kubernetes merges by key (containers by name, env by name, ...) are merged, and
    the ``$patch``/``$setElementOrder``/``$retainKeys``/``$deleteFromPrimitiveList`` directives
    are honoured.
    """
    if custom:
        return merge_patch(target, _strip_directives(patch))
    return _smp(target, patch)


def _strip_directives(patch: Any) -> Any:
    if isinstance(patch, dict):
        return {k: _strip_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_strip_directives(v) for v in patch]
    return patch


def _smp(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives({k: v for k, v in patch.items() if k != "$patch"})
    if patch.get("$patch") == "delete":
        return None
    result: dict[str, Any] = copy.deepcopy(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
            continue
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
            continue
        old = result.get(key)
        if isinstance(value, list) and isinstance(old, list):
            result[key] = _merge_list(key, old, value)
        elif isinstance(value, dict):
            merged = _smp(old, value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(field: str, old: list[Any], new: list[Any]) -> list[Any]:
    merge_key = _MERGE_KEYS.get(field)
    if field in _PRIMITIVE_MERGE_LISTS:
        out = list(old)
        for item in new:
            if item not in out:
                out.append(item)
        return out
    if merge_key is None or not all(isinstance(i, dict) and merge_key in i for i in new):
        return _strip_directives(new)  # type: ignore[no-any-return]
    out = [copy.deepcopy(i) for i in old]
    for item in new:
        idx = next(
            (
                n
                for n, o in enumerate(out)
                if isinstance(o, dict) and o.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_strip_directives(item))
        else:
            out[idx] = _smp(out[idx], item)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON patch path {path!r} must start with '/'", 422)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for part in parts:
        if isinstance(cur, dict):
            if part not in cur:
                raise PatchError(f"JSON patch: path element {part!r} does not exist", 422)
            cur = cur[part]
        elif isinstance(cur, list):
            try:
                cur = cur[int(part)]
            except (ValueError, IndexError) as exc:
                raise PatchError(f"JSON patch: bad list index {part!r}", 422) from exc
        else:
            raise PatchError(f"JSON patch: cannot descend into {part!r}", 422)
    return cur


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return copy.deepcopy(value)
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-":
            parent.append(copy.deepcopy(value))
        else:
            try:
                idx = int(last)
            except ValueError as exc:
                raise PatchError(f"JSON patch: bad list index {last!r}", 422) from exc
            if idx < 0 or idx > len(parent):
                raise PatchError(f"JSON patch: list index {idx} out of range", 422)
            parent.insert(idx, copy.deepcopy(value))
    else:
        raise PatchError("JSON patch: cannot add into a scalar", 422)
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("JSON patch: cannot remove the whole document", 422)
    parent = _resolve(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"JSON patch: cannot remove missing key {last!r}", 422)
        return parent.pop(last)
    if isinstance(parent, list):
        try:
            return parent.pop(int(last))
        except (ValueError, IndexError) as exc:
            raise PatchError(f"JSON patch: bad list index {last!r}", 422) from exc
    raise PatchError("JSON patch: cannot remove from a scalar", 422)


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch. A failed ``test`` is a 422, like the real API server's."""
    if not isinstance(ops, list):
        raise PatchError("JSON patch must be a list of operations", 400)
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"JSON patch: malformed operation {op!r}", 400)
        kind = op["op"]
        parts = _pointer(op["path"])
        if kind == "add":
            doc = _add(doc, parts, op.get("value"))
        elif kind == "remove":
            _remove(doc, parts)
        elif kind == "replace":
            _resolve(doc, parts)
            if parts:
                _remove(doc, parts)
            doc = _add(doc, parts, op.get("value"))
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = copy.deepcopy(_resolve(doc, src))
            if kind == "move":
                _remove(doc, src)
            doc = _add(doc, parts, value)
        elif kind == "test":
            try:
                actual = _resolve(doc, parts)
            except PatchError as exc:
                raise PatchError(f"testing value {op['path']} failed: {exc}", 422) from exc
            if actual != op.get("value"):
                raise PatchError(
                    f"the server rejected our request due to an error in our request: "
                    f"testing value {op['path']} failed: expected {op.get('value')!r}, "
                    f"found {actual!r}",
                    422,
                )
        else:
            raise PatchError(f"JSON patch: unknown operation {kind!r}", 400)
    return doc


def patched(current: Any, patch_type: str, patch: Any, *, custom: bool) -> Any:
    """``current`` with a ``json``, ``strategic`` or (anything else) JSON merge ``patch``."""
    if patch_type == "json":
        return json_patch(current, patch)
    if patch_type == "strategic":
        return strategic_merge_patch(current, patch, custom=custom)
    if not isinstance(patch, dict):
        raise PatchError("a merge patch must be a JSON object", 400)
    return merge_patch(current, patch)
