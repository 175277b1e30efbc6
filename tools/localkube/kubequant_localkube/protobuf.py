"""Decode the Kubernetes protobuf bodies kubectl sends for built-in kinds.

kubectl's typed commands (``create namespace``, ``create configmap``, ``create secret``,
``create serviceaccount``, ``create role``, ``create rolebinding``, ``create clusterrole``,
``create clusterrolebinding``, ``create priorityclass``, ``create quota``, ``auth can-i``)
always send protobuf. The emulator speaks JSON, so these bodies are decoded here, from the
wire format and the kinds' field numbers (from k8s.io/api's and k8s.io/apimachinery's
generated.proto). Other kinds (``create job``, ``create deployment``, ...) get a 415 that
says to use ``kubectl apply``; so does a field this module does not know that carries a
value (it is refused, not dropped).

Scalars are written as the Go types' JSON does: an optional field holding its zero value is
omitted (``omitempty``); a field the JSON always writes is typed ``("req", type)``.
"""

from __future__ import annotations

import base64
from typing import Any

MAGIC = b"k8s\x00"

# A schema maps field number -> (json name, type). Types: "str", "bytes", "int" (signed, as
# int32/int64 are sent), "bool", "quantity" (resource.Quantity, a message holding its string),
# ("req", scalar type) (written even when zero: a field without ``omitempty``, or a pointer,
# whose presence on the wire means it was set), ("msg", schema), ("map", value type),
# ("rep", type), and SKIP (a field the server sets itself, e.g. ``status`` on create).
Schema = dict[int, tuple[str, Any]]
SKIP = "skip"

_OWNER_REF: Schema = {
    1: ("kind", ("req", "str")),
    3: ("name", ("req", "str")),
    4: ("uid", ("req", "str")),
    5: ("apiVersion", ("req", "str")),
    6: ("controller", ("req", "bool")),
    7: ("blockOwnerDeletion", ("req", "bool")),
}
_OBJECT_META: Schema = {
    1: ("name", "str"),
    2: ("generateName", "str"),
    3: ("namespace", "str"),
    5: ("uid", "str"),
    6: ("resourceVersion", "str"),
    7: ("generation", "int"),
    8: ("creationTimestamp", SKIP),
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
# k8s.io/apimachinery meta/v1 LabelSelector
_LABEL_SELECTOR: Schema = {
    1: ("matchLabels", ("map", "str")),
    2: (
        "matchExpressions",
        (
            "rep",
            (
                "msg",
                {
                    1: ("key", ("req", "str")),
                    2: ("operator", ("req", "str")),
                    3: ("values", ("rep", "str")),
                },
            ),
        ),
    ),
}
# k8s.io/api rbac/v1
_POLICY_RULE: Schema = {
    1: ("verbs", ("rep", "str")),
    2: ("apiGroups", ("rep", "str")),
    3: ("resources", ("rep", "str")),
    4: ("resourceNames", ("rep", "str")),
    5: ("nonResourceURLs", ("rep", "str")),
}
_SUBJECT: Schema = {
    1: ("kind", ("req", "str")),
    2: ("apiGroup", "str"),
    3: ("name", ("req", "str")),
    4: ("namespace", "str"),
}
_ROLE_REF: Schema = {
    1: ("apiGroup", ("req", "str")),
    2: ("kind", ("req", "str")),
    3: ("name", ("req", "str")),
}
_BINDING: Schema = {
    _META[0]: _META[1],
    2: ("subjects", ("rep", ("msg", _SUBJECT))),
    3: ("roleRef", ("msg", _ROLE_REF)),
}
# k8s.io/api core/v1 ResourceQuotaSpec
_SCOPE_SELECTOR: Schema = {
    1: (
        "matchExpressions",
        (
            "rep",
            (
                "msg",
                {
                    1: ("scopeName", ("req", "str")),
                    2: ("operator", ("req", "str")),
                    3: ("values", ("rep", "str")),
                },
            ),
        ),
    ),
}
KINDS: dict[str, Schema] = {
    "Namespace": {
        _META[0]: _META[1],
        2: ("spec", ("msg", {1: ("finalizers", ("rep", "str"))})),
        3: ("status", SKIP),
    },
    "ConfigMap": {
        _META[0]: _META[1],
        2: ("data", ("map", "str")),
        3: ("binaryData", ("map", "bytes")),
        4: ("immutable", ("req", "bool")),
    },
    "Secret": {
        _META[0]: _META[1],
        2: ("data", ("map", "bytes")),
        3: ("type", "str"),
        4: ("stringData", ("map", "str")),
        5: ("immutable", ("req", "bool")),
    },
    "ServiceAccount": {
        _META[0]: _META[1],
        2: ("secrets", ("rep", ("msg", _OBJECT_REF))),
        3: ("imagePullSecrets", ("rep", ("msg", {1: ("name", "str")}))),
        4: ("automountServiceAccountToken", ("req", "bool")),
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
        3: ("status", SKIP),
    },
    "Role": {_META[0]: _META[1], 2: ("rules", ("rep", ("msg", _POLICY_RULE)))},
    "ClusterRole": {
        _META[0]: _META[1],
        2: ("rules", ("rep", ("msg", _POLICY_RULE))),
        3: (
            "aggregationRule",
            ("msg", {1: ("clusterRoleSelectors", ("rep", ("msg", _LABEL_SELECTOR)))}),
        ),
    },
    "RoleBinding": _BINDING,
    "ClusterRoleBinding": _BINDING,
    "PriorityClass": {
        _META[0]: _META[1],
        2: ("value", ("req", "int")),
        3: ("globalDefault", "bool"),
        4: ("description", "str"),
        5: ("preemptionPolicy", ("req", "str")),
    },
    "ResourceQuota": {
        _META[0]: _META[1],
        2: (
            "spec",
            (
                "msg",
                {
                    1: ("hard", ("map", "quantity")),
                    2: ("scopes", ("rep", "str")),
                    3: ("scopeSelector", ("msg", _SCOPE_SELECTOR)),
                },
            ),
        ),
        3: ("status", SKIP),
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


def _signed(value: int) -> int:
    """A varint as the signed int32/int64 it encodes (negatives are sent as 10-byte varints)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _is_zero(wt: int, raw: Any) -> bool:
    """Whether a field of unknown type carries only its zero value (Go's protobuf writes
    non-pointer fields even when empty: ``""``, ``0``, ``false``, an empty struct)."""
    if wt == 0:
        return int(raw) == 0
    if wt in (1, 5):
        return not any(bytes(raw))
    if not raw:
        return True
    try:
        return all(_is_zero(w, v) for _n, w, v in fields(bytes(raw)))
    except ProtobufError:
        return False


def _scalar(kind: Any, raw: Any) -> Any:
    if kind == "str":
        return bytes(raw).decode("utf-8")
    if kind == "bytes":
        return base64.b64encode(bytes(raw)).decode()
    if kind == "int":
        return _signed(int(raw))
    if kind == "bool":
        return bool(raw)
    if kind == "quantity":
        return next((bytes(v).decode("utf-8") for n, _w, v in fields(bytes(raw)) if n == 1), "0")
    raise ProtobufError(f"unsupported field type {kind!r}")


def _omitted(kind: Any, value: Any) -> bool:
    """``omitempty``: an optional scalar holding its zero value is left out of the JSON."""
    return kind in ("str", "bytes", "int", "bool") and value in ("", 0, False)


def decode_message(buf: bytes, schema: Schema, path: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for num, wt, raw in fields(buf):
        if num not in schema:
            if _is_zero(wt, raw):
                continue
            raise ProtobufError(
                f"protobuf field number {num} of {path or 'the object'} (with a value) is not "
                "known to the local emulator; "
                "send JSON (e.g. `kubectl apply -f`)"
            )
        name, kind = schema[num]
        sub = f"{path}.{name}" if path else name
        if kind == SKIP:
            continue
        if isinstance(kind, tuple) and kind[0] == "map":
            entry = {n: v for n, _w, v in fields(bytes(raw))}
            key = bytes(entry.get(1, b"")).decode("utf-8")
            out.setdefault(name, {})[key] = _value(kind[1], entry.get(2, b""), sub)
        elif isinstance(kind, tuple) and kind[0] == "rep":
            out.setdefault(name, []).append(_value(kind[1], raw, sub))
        elif isinstance(kind, tuple) and kind[0] == "req":
            out[name] = _value(kind[1], raw, sub)
        else:
            value = _value(kind, raw, sub)
            if not _omitted(kind, value):
                out[name] = value
    return out


def _value(kind: Any, raw: Any, path: str) -> Any:
    if isinstance(kind, tuple) and kind[0] == "msg":
        return decode_message(bytes(raw), kind[1], path)
    return _scalar(kind, raw)


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
    obj = decode_message(bytes(envelope.get(2, b"")), schema, kind)
    obj["apiVersion"] = api_version
    obj["kind"] = kind
    return obj
