"""Decode the few Kubernetes protobuf bodies kubectl sends for built-in kinds.

kubectl's typed commands (``create namespace``, ``create configmap``, ``create secret``,
``create serviceaccount``, ``auth can-i``) always send protobuf. The emulator speaks JSON, so
these bodies are decoded here, from the wire format and the kinds' field numbers (from
k8s.io/api's generated.proto). Other kinds get a 415 that says to use ``kubectl apply``.
"""

from __future__ import annotations

import base64
from typing import Any

MAGIC = b"k8s\x00"

# A schema maps field number -> (json name, type). Types: "str", "bytes", "int", "bool",
# ("msg", schema), ("map", value type), ("rep", type).
Schema = dict[int, tuple[str, Any]]

_OWNER_REF: Schema = {
    1: ("kind", "str"),
    3: ("name", "str"),
    4: ("uid", "str"),
    5: ("apiVersion", "str"),
    6: ("controller", "bool"),
    7: ("blockOwnerDeletion", "bool"),
}
_OBJECT_META: Schema = {
    1: ("name", "str"),
    2: ("generateName", "str"),
    3: ("namespace", "str"),
    5: ("uid", "str"),
    6: ("resourceVersion", "str"),
    7: ("generation", "int"),
    11: ("labels", ("map", "str")),
    12: ("annotations", ("map", "str")),
    13: ("ownerReferences", ("rep", ("msg", _OWNER_REF))),
    14: ("finalizers", ("rep", "str")),
}
_META = (1, ("metadata", ("msg", _OBJECT_META)))
_OBJECT_REF: Schema = {
    1: ("kind", "str"),
    2: ("namespace", "str"),
    3: ("name", "str"),
    4: ("uid", "str"),
    5: ("apiVersion", "str"),
}
_RESOURCE_ATTRS: Schema = {
    1: ("namespace", "str"),
    2: ("verb", "str"),
    3: ("group", "str"),
    4: ("version", "str"),
    5: ("resource", "str"),
    6: ("subresource", "str"),
    7: ("name", "str"),
}
KINDS: dict[str, Schema] = {
    "Namespace": {_META[0]: _META[1], 2: ("spec", ("msg", {1: ("finalizers", ("rep", "str"))}))},
    "ConfigMap": {
        _META[0]: _META[1],
        2: ("data", ("map", "str")),
        3: ("binaryData", ("map", "bytes")),
        4: ("immutable", "bool"),
    },
    "Secret": {
        _META[0]: _META[1],
        2: ("data", ("map", "bytes")),
        3: ("type", "str"),
        4: ("stringData", ("map", "str")),
        5: ("immutable", "bool"),
    },
    "ServiceAccount": {
        _META[0]: _META[1],
        2: ("secrets", ("rep", ("msg", _OBJECT_REF))),
        3: ("imagePullSecrets", ("rep", ("msg", {1: ("name", "str")}))),
        4: ("automountServiceAccountToken", "bool"),
    },
    "SelfSubjectAccessReview": {
        _META[0]: _META[1],
        2: (
            "spec",
            (
                "msg",
                {
                    1: ("resourceAttributes", ("msg", _RESOURCE_ATTRS)),
                    2: ("nonResourceAttributes", ("msg", {1: ("path", "str"), 2: ("verb", "str")})),
                },
            ),
        ),
    },
}


class ProtobufError(ValueError):
    """A body that is not a Kubernetes protobuf message this module knows."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtobufError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, raw value) for every field of a message."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        value: Any
        if wt == 0:
            value, pos = _varint(buf, pos)
        elif wt == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wt == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wt == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ProtobufError(f"unsupported wire type {wt}")
        out.append((num, wt, value))
    return out


def _scalar(kind: Any, raw: Any) -> Any:
    if kind == "str":
        return bytes(raw).decode("utf-8")
    if kind == "bytes":
        return base64.b64encode(bytes(raw)).decode()
    if kind == "int":
        return int(raw)
    if kind == "bool":
        return bool(raw)
    if isinstance(kind, tuple) and kind[0] == "msg":
        return decode_message(bytes(raw), kind[1])
    raise ProtobufError(f"unsupported field type {kind!r}")


def decode_message(buf: bytes, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for num, _wt, raw in fields(buf):
        if num not in schema:
            continue
        name, kind = schema[num]
        if isinstance(kind, tuple) and kind[0] == "map":
            entry = {n: v for n, _w, v in fields(bytes(raw))}
            key = bytes(entry.get(1, b"")).decode("utf-8")
            out.setdefault(name, {})[key] = _scalar(kind[1], entry.get(2, b""))
        elif isinstance(kind, tuple) and kind[0] == "rep":
            out.setdefault(name, []).append(_scalar(kind[1], raw))
        else:
            out[name] = _scalar(kind, raw)
    return out


def decode(body: bytes) -> dict[str, Any]:
    """A Kubernetes protobuf body (``k8s\\0`` + runtime.Unknown) as a JSON-shaped object."""
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf body (no k8s\\0 prefix)")
    envelope = {num: raw for num, _wt, raw in fields(body[len(MAGIC) :])}
    type_meta = {n: bytes(v).decode() for n, _w, v in fields(bytes(envelope.get(1, b"")))}
    api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
    schema = KINDS.get(kind)
    if schema is None:
        raise ProtobufError(
            f"protobuf bodies of kind {kind!r} are not supported by the local emulator; "
            "send JSON (e.g. `kubectl apply -f`)"
        )
    obj = decode_message(bytes(envelope.get(2, b"")), schema)
    obj["apiVersion"] = api_version
    obj["kind"] = kind
    return obj
