"""Label selectors (equality and set-based) and field selectors, as the API server parses them."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any


class SelectorError(ValueError):
    """A selector that does not parse (the API server answers 400)."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!":
            return self.key not in labels
        if self.op in ("=", "=="):
            return labels.get(self.key) == self.values[0]
        if self.op == "!=":
            return labels.get(self.key) != self.values[0]
        if self.op == "in":
            return labels.get(self.key) in self.values
        if self.op == "notin":
            return labels.get(self.key) not in self.values
        if self.op in ("gt", "lt"):
            try:
                have = int(labels[self.key])
            except (KeyError, ValueError):
                return False
            return have > int(self.values[0]) if self.op == "gt" else have < int(self.values[0])
        return False


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth, cur = 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


_SET_RE = re.compile(r"^(?P<key>[^\s!=<>(),]+)\s+(?P<op>in|notin)\s*\((?P<vals>[^)]*)\)$")
_CMP_RE = re.compile(r"^(?P<key>[^\s!=<>(),]+)\s*(?P<op>==|!=|=|>|<)\s*(?P<val>[^\s,()]*)$")
_KEY_RE = re.compile(r"^(?P<neg>!?)\s*(?P<key>[^\s!=<>(),]+)$")


def parse_label_selector(text: str | None) -> list[Requirement]:
    if not text:
        return []
    out: list[Requirement] = []
    for part in _split_top(text):
        if m := _SET_RE.match(part):
            vals = tuple(v.strip() for v in m["vals"].split(",") if v.strip())
            out.append(Requirement(m["key"], m["op"], vals))
        elif m := _CMP_RE.match(part):
            op = {"==": "=", ">": "gt", "<": "lt"}.get(m["op"], m["op"])
            out.append(Requirement(m["key"], op, (m["val"],)))
        elif m := _KEY_RE.match(part):
            out.append(Requirement(m["key"], "!" if m["neg"] else "exists"))
        else:
            raise SelectorError(f"unable to parse requirement: {part!r}")
    return out


def selector_from_match(selector: Mapping[str, Any] | None) -> list[Requirement]:
    """A LabelSelector object (matchLabels/matchExpressions) as requirements."""
    if not selector:
        return []
    out = [Requirement(k, "=", (str(v),)) for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}[
            expr["operator"]
        ]
        out.append(Requirement(expr["key"], op, tuple(expr.get("values") or ())))
    return out


def labels_match(reqs: list[Requirement], obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


def _get_path(obj: Mapping[str, Any], path: str) -> str | None:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    if cur is None:
        return None
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """A field selector (``metadata.name=x,status.phase!=Running``) as a predicate."""
    if not text:
        return lambda obj: True
    reqs: list[tuple[str, str, str]] = []
    for part in _split_top(text):
        m = _CMP_RE.match(part)
        if not m:
            raise SelectorError(f"invalid field selector: {part!r}")
        reqs.append((m["key"], "!=" if m["op"] == "!=" else "=", m["val"]))

    def pred(obj: Mapping[str, Any]) -> bool:
        for key, op, val in reqs:
            have = _get_path(obj, key)
            if have is None:
                have = ""
            if (have == val) != (op == "="):
                return False
        return True

    return pred
