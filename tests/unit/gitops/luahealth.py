"""Run an Argo CD Lua health check the way Argo CD does, with a real Lua 5.1 interpreter.

Argo CD runs health scripts in gopher-lua (Lua 5.1) with the object decoded from JSON:
numbers are float64, arrays are 1-based tables, and ``os``/``io`` are not available. lupa's
``lua51`` runtime matches that; the object goes through JSON first so that numbers are floats
exactly as Argo CD sees them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lupa import lua51

from tests.fixtures.tools import REPO_ROOT

HEALTH_LUA = REPO_ROOT / "deploy" / "argocd" / "health.lua"
ARGO_HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)  # JSON numbers reach gopher-lua as float64
    raise TypeError(f"not JSON: {value!r}")


def run_health(obj: dict[str, Any], script: Path = HEALTH_LUA) -> dict[str, str]:
    """Argo CD's ``hs`` for ``obj``: {"status": ..., "message": ...}."""
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    sandbox = lua.globals()
    for name in ("os", "io", "debug", "dofile", "loadfile", "require", "package"):
        sandbox[name] = None
    sandbox.obj = _to_lua(lua, json.loads(json.dumps(obj)))
    fn = lua.eval("function(src) return assert(loadstring(src, 'health.lua'))() end")
    hs = fn(script.read_text())
    out = {"status": str(hs["status"])}
    if hs["message"] is not None:
        out["message"] = str(hs["message"])
    return out
