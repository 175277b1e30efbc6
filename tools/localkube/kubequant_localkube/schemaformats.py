"""String formats and list types of CRD schemas, checked as the API server checks them.

Formats: the server validates a string against its schema's ``format`` when kube-openapi's
``strfmt`` registry knows the name (``apiextensions-apiserver/.../validation/formats.go``
keeps the supported ones; ``-`` is dropped from names, so ``date-time`` is ``datetime``), and
says ``<path> in body must be of type <format>: "<value>"`` (reason FieldValueTypeInvalid).
Integer and number formats (``int32``, ``int64``, ``float``, ``double``) are not range-checked
there (the format validator applies to strings only), and neither are they here.
Implemented: ``date-time``, ``date``, ``uuid``/``uuid3``/``uuid4``/``uuid5``, ``byte``,
``ipv4``, ``ipv6``, ``cidr``, ``password``; any other format is accepted unchecked.

List types (``apiextensions-apiserver/.../schema/listtype/validation.go``): an
``x-kubernetes-list-type: set`` may not hold an item twice, a ``map`` may not hold two items
with the same ``x-kubernetes-list-map-keys``; the second occurrence of each is a
``Duplicate value`` naming the item (or its keys) as Go's ``%#v`` prints it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any

_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_TIME_RE = re.compile(r"^([0-9]{2}):([0-9]{2}):([0-9]{2})(.[0-9]+)?(z|([+-][0-9]{2}:[0-9]{2}))$")
_UUID = r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?%s[0-9a-f]{3}-?%s[0-9a-f]{3}-?[0-9a-f]{12}$"
_UUID_RES = {
    "uuid": re.compile(_UUID % ("[0-9a-f]", "[0-9a-f]")),
    "uuid3": re.compile(_UUID % ("3", "[0-9a-f]")),
    "uuid4": re.compile(_UUID % ("4", "[89ab]")),
    "uuid5": re.compile(_UUID % ("5", "[89ab]")),
}
_BASE64_RE = re.compile(
    r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
)


def is_date(value: str) -> bool:
    """Go ``time.Parse("2006-01-02")``: exactly four, two and two digits, a real day."""
    if not _DATE_RE.match(value):
        return False
    try:
        datetime.date(int(value[:4]), int(value[5:7]), int(value[8:]))
    except ValueError:
        return False
    return True


def is_date_time(value: str) -> bool:
    """strfmt ``IsDateTime``: a date, ``t``/``T``, then ``hh:mm:ss[.frac](z|±hh:mm)``."""
    if len(value) < 4:
        return False
    parts = value.lower().split("t")
    if len(parts) < 2 or not is_date(parts[0]):
        return False
    m = _TIME_RE.match(parts[1])
    if m is None:
        return False
    return m.group(1) <= "23" and m.group(2) <= "59" and m.group(3) <= "59"


def _is_base64(value: str) -> bool:
    if not _BASE64_RE.match(value):
        return False
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        return False
    return True


def _is_ip(version: int) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            return ipaddress.ip_address(value).version == version
        except ValueError:
            return False

    return check


def _matches(rx: re.Pattern[str]) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return rx.match(value) is not None

    return check


def _is_cidr(value: str) -> bool:
    if "/" not in value:
        return False
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


CHECKS: dict[str, Callable[[str], bool]] = {
    "datetime": is_date_time,
    "date": is_date,
    **{name: _matches(rx) for name, rx in _UUID_RES.items()},
    "byte": _is_base64,
    "ipv4": _is_ip(4),
    "ipv6": _is_ip(6),
    "cidr": _is_cidr,
    "password": lambda _v: True,
}


def format_problem(schema: dict[str, Any], value: str, path: str) -> str | None:
    """The API server's message when ``value`` breaks ``schema``'s string format, else None."""
    fmt = schema.get("format")
    if not isinstance(fmt, str) or not fmt:
        return None
    check = CHECKS.get(fmt.replace("-", ""))
    if check is None or check(value):
        return None
    quoted = json.dumps(value)
    return f"Invalid value: {quoted}: {path} in body must be of type {fmt}: {quoted}"


# --------------------------------------------------------------------------- list types
def go_repr(value: Any) -> str:
    """``fmt.Sprintf("%#v", v)`` of a decoded JSON value (as a field error shows it)."""
    if value is None:
        return "interface {}(nil)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        inner = ", ".join(f"{json.dumps(k)}:{go_repr(value[k])}" for k in sorted(value))
        return "map[string]interface {}{" + inner + "}"
    if isinstance(value, list):
        return "[]interface {}{" + ", ".join(go_repr(v) for v in value) + "}"
    return repr(value)


def duplicate_shown(value: Any) -> str:
    """How ``field.Duplicate`` words a value: strings quoted, numbers and bools plain,
    anything else ``%#v``."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    return go_repr(value)


def _identity(value: Any) -> tuple[str, str]:
    """Equality as the server's: compound values by their JSON, scalars by Go type and value
    (``1`` and ``1.0`` differ: int64 and float64)."""
    if isinstance(value, (dict, list)):
        return ("compound", json.dumps(value, sort_keys=True, separators=(",", ":")))
    return (type(value).__name__, json.dumps(value))


def _second_occurrences(values: list[Any]) -> list[int]:
    seen: dict[tuple[str, str], int] = {}
    out: list[int] = []
    for i, v in enumerate(values):
        key = _identity(v)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            out.append(i)
    return out


def list_type_problems(schema: dict[str, Any], value: list[Any]) -> list[tuple[int, str]]:
    """(index, message) for each duplicate of an ``x-kubernetes-list-type`` set or map."""
    kind = schema.get("x-kubernetes-list-type")
    if kind == "set":
        return [
            (i, f"Duplicate value: {duplicate_shown(value[i])}") for i in _second_occurrences(value)
        ]
    if kind != "map" or len(value) <= 1:
        return []
    if any(item is not None and not isinstance(item, dict) for item in value):
        return []  # the type check already refuses such an item
    names: list[str] = list(schema.get("x-kubernetes-list-map-keys") or [])
    keys: list[Any] = []
    for item in value:
        present = item or {}
        keys.append({k: present[k] for k in names if k in present})
    if len(names) == 1:
        # one key: compared as the key's value; a missing key is a value of its own
        single = [k.get(names[0], _MISSING) for k in keys]
        return [
            (i, f"Duplicate value: {go_repr(keys[i])}")
            for i in _second_occurrences([_MISSING_ID if s is _MISSING else s for s in single])
        ]
    return [(i, f"Duplicate value: {go_repr(keys[i])}") for i in _second_occurrences(keys)]


_MISSING = object()
_MISSING_ID = {"\x00unspecified key": True}  # equal only to itself among decoded JSON values
