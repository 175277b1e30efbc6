"""Patch formats the API server accepts: JSON merge, strategic merge, JSON patch."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from kubequant_localkube import strategic

# patch.go answers a JSON patch that fails to apply with NewGenericServerResponse(422): this
# is its whole message there; the emulator adds the library's reason after it.
_INVALID = "the server rejected our request due to an error in our request"


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


def strategic_merge_patch(target: Any, patch: Any, custom: bool) -> Any:
    """Strategic merge patch.

    For custom resources a real API server refuses this format; here it is applied as a JSON
    merge patch (lists replaced), which is what clients mean for our kinds. For built-in kinds
    the lists the Go API types tag ``patchStrategy:"merge"`` are merged by their
    ``patchMergeKey`` and the directives honoured (:mod:`.strategic`).
    """
    if custom:
        return merge_patch(target, _strip_directives(patch))
    kind = target.get("kind") if isinstance(target, dict) else None
    try:
        return strategic.apply(target, patch, kind if isinstance(kind, str) else None)
    except strategic.SmpError as exc:
        raise PatchError(str(exc), exc.status) from exc


def _strip_directives(patch: Any) -> Any:
    if isinstance(patch, dict):
        return {k: _strip_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_strip_directives(v) for v in patch]
    return patch


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch through the ``jsonpatch`` library.

    As evanphx/json-patch on a real server: indices are ``0`` or digits without a leading
    zero (``/a/-1``, ``/a/01`` refused), ``test`` compares by JSON equality (``true`` is not
    ``1``). A body that is not a list of operations is a 400; an operation that fails is a
    422 (``Invalid``), as ``patch.go`` answers.
    """
    if not isinstance(ops, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch", 400)
    try:
        patch = jsonpatch.JsonPatch(ops)
    except (jsonpatch.JsonPatchException, TypeError) as exc:  # DecodePatch's refusal
        raise PatchError(str(exc), 400) from exc
    try:
        return patch.apply(copy.deepcopy(target), in_place=True)
    except jsonpatch.JsonPatchTestFailed as exc:
        path = exc.op.location if getattr(exc, "op", None) is not None else ""
        # evanphx/json-patch's wording
        raise PatchError(f"{_INVALID}: testing value {path} failed: test failed", 422) from exc
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
        raise PatchError(f"{_INVALID}: {exc}", 422) from exc
    except (TypeError, KeyError, AttributeError) as exc:  # an operation that is not an object
        raise PatchError(f"{_INVALID}: malformed operation: {exc}", 422) from exc


def patched(current: Any, patch_type: str, patch: Any, *, custom: bool) -> Any:
    """``current`` with a ``json``, ``strategic`` or (anything else) JSON merge ``patch``."""
    if patch_type == "json":
        return json_patch(current, patch)
    if patch_type == "strategic":
        return strategic_merge_patch(current, patch, custom=custom)
    if not isinstance(patch, dict):
        raise PatchError("a merge patch must be a JSON object", 400)
    return merge_patch(current, patch)
