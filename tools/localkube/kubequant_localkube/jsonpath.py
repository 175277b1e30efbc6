"""The subset of kubectl JSONPath that CRD printer columns use."""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-$/]+)            # .field
      |\[(?P<index>-?\d+|\*)\]                     # [0] or [*]
      |\[\?\(@\.(?P<fkey>[A-Za-z0-9_.\-]+)\s*(?P<fop>==|!=)\s*(?P<fval>"[^"]*"|'[^']*'|[^)\s]+)\)\]
      |\[['"](?P<qfield>[^'"]+)['"]\]              # ['field.with.dots']
    """,
    re.VERBOSE,
)


class JsonPathError(ValueError):
    """An expression outside the supported subset."""


def _get(obj: Any, dotted: str) -> Any:
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def evaluate(expr: str, obj: Any) -> list[Any]:
    """All values ``expr`` selects in ``obj`` (an empty list when nothing matches)."""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    if expr.startswith("$"):
        expr = expr[1:]
    current: list[Any] = [obj]
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise JsonPathError(f"unsupported JSONPath {expr!r} at {expr[pos:]!r}")
        pos = m.end()
        nxt: list[Any] = []
        for cur in current:
            if m["field"] is not None or m["qfield"] is not None:
                key = m["field"] or m["qfield"]
                if isinstance(cur, dict) and key in cur:
                    nxt.append(cur[key])
            elif m["index"] is not None:
                if isinstance(cur, list):
                    if m["index"] == "*":
                        nxt.extend(cur)
                    else:
                        i = int(m["index"])
                        if -len(cur) <= i < len(cur):
                            nxt.append(cur[i])
                elif isinstance(cur, dict) and m["index"] == "*":
                    nxt.extend(cur.values())
            else:
                want = m["fval"].strip("\"'")
                items = cur if isinstance(cur, list) else []
                for item in items:
                    have = _get(item, m["fkey"])
                    have_s = str(have).lower() if isinstance(have, bool) else str(have)
                    if (have is not None and have_s == want) == (m["fop"] == "=="):
                        nxt.append(item)
        current = nxt
    return current
