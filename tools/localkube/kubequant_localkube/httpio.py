"""HTTP details of the API: resource paths, request bodies, DeleteOptions, selectors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import aiohttp.web
import yaml

from kubequant_localkube import errors, protobuf, selectors
from kubequant_localkube.objects import Obj

JSON = "application/json"


@dataclasses.dataclass
class ResourcePath:
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_resource_path(path: str) -> ResourcePath | None:
    parts = [p for p in path.strip("/").split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        ns, plural, tail = rest[1], rest[2], rest[3:]
    else:
        ns, plural, tail = None, rest[0], rest[1:]
    name = tail[0] if tail else None
    sub = "/".join(tail[1:]) or None
    return ResourcePath(group, version, plural, ns, name, sub)


def json_response(
    body: Any, status: int = 200, warnings: list[str] | None = None
) -> aiohttp.web.Response:
    """A JSON answer with each of ``warnings`` as a ``Warning: 299`` header."""
    resp = aiohttp.web.json_response(body, status=status)
    for w in warnings or []:
        text = w.replace("\\", "\\\\").replace('"', '\\"')  # a quoted-string (RFC 7230)
        resp.headers.add("Warning", f'299 - "{text}"')
    return resp


def read_body(
    body: bytes,
    raw: aiohttp.web.BaseRequest,
    yaml_ok: bool = False,
    any_json: bool = False,
) -> Any:
    """The request body as JSON (or YAML, or protobuf for the built-in kinds kubectl sends)."""
    ctype = raw.headers.get("Content-Type", JSON)
    if "protobuf" in ctype:
        try:
            return protobuf.decode(body)
        except protobuf.ProtobufError as exc:
            raise errors.ApiError(415, str(exc), reason="UnsupportedMediaType") from exc
    if "cbor" in ctype:
        raise errors.ApiError(415, f"unsupported content type {ctype}; use JSON")
    text = body.decode("utf-8") if body else ""
    if not text.strip():
        raise errors.ApiError(400, "the request body is empty")
    try:
        data = yaml.safe_load(text) if yaml_ok or "yaml" in ctype else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise errors.ApiError(400, f"the request body does not parse: {exc}") from exc
    if not any_json and not isinstance(data, dict):
        raise errors.ApiError(400, "the request body must be a JSON object")
    return data


def delete_options(body: bytes, raw: aiohttp.web.BaseRequest) -> Obj:
    """DeleteOptions from the body and the query."""
    opts: Obj = {}
    if body and body.strip():
        try:
            loaded = json.loads(body)
        except ValueError as exc:
            raise errors.ApiError(400, f"DeleteOptions do not parse: {exc}") from exc
        if isinstance(loaded, dict):
            opts = loaded
    q = raw.query
    if q.get("propagationPolicy"):
        opts["propagationPolicy"] = q["propagationPolicy"]
    if opts.get("orphanDependents") is True and not opts.get("propagationPolicy"):
        opts["propagationPolicy"] = "Orphan"
    if opts.get("orphanDependents") is False and not opts.get("propagationPolicy"):
        opts["propagationPolicy"] = "Background"
    policy = opts.get("propagationPolicy")
    if policy not in (None, "Orphan", "Background", "Foreground"):
        raise errors.ApiError(422, f"propagationPolicy: Unsupported value: {policy!r}")
    return opts


def predicate(raw: aiohttp.web.BaseRequest, name: str | None) -> Callable[[Obj], bool]:
    """The label/field selectors of the query (and ``name``) as a test of an object."""
    try:
        labels = selectors.parse_label_selector(raw.query.get("labelSelector"))
        fields = selectors.parse_field_selector(raw.query.get("fieldSelector"))
    except selectors.SelectorError as exc:
        raise errors.ApiError(400, str(exc)) from exc

    def pred(obj: Obj) -> bool:
        if name is not None and obj.get("metadata", {}).get("name") != name:
            return False
        return selectors.labels_match(labels, obj) and fields(obj)

    return pred
