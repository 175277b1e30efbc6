"""Table output (``kubectl get``): columns and cells per kind, printer columns for CRDs."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kubequant_localkube import jsonpath
from kubequant_localkube.objects import Obj
from kubequant_localkube.resources import Resource


def age(ts: str | None) -> str | None:
    if not ts:
        return None
    try:
        then = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return ts
    secs = int((datetime.now(UTC) - then).total_seconds())
    if secs < 120:
        return f"{max(secs, 0)}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def pod_status(pod: Obj) -> str:
    status = pod.get("status") or {}
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return "Terminating"
    for c in status.get("containerStatuses") or []:
        state = c.get("state") or {}
        if "waiting" in state and state["waiting"].get("reason"):
            return str(state["waiting"]["reason"])
        if "terminated" in state and state["terminated"].get("reason"):
            return str(state["terminated"]["reason"])
    return str(status.get("phase", "Pending"))


def columns(res: Resource) -> list[Obj]:
    name_col = {
        "name": "Name",
        "type": "string",
        "format": "name",
        "description": "Name must be unique within a namespace.",
        "priority": 0,
    }
    if res.is_custom:
        cols = [name_col]
        pcs = res.printer_columns or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        ]
        for pc in pcs:
            cols.append(
                {
                    "name": pc["name"],
                    "type": "string" if pc.get("type") == "date" else pc.get("type", "string"),
                    "format": pc.get("format", ""),
                    "description": pc.get("description", ""),
                    "priority": int(pc.get("priority", 0)),
                }
            )
        return cols
    extra: list[tuple[str, str]] = []
    if res.key == ("", "pods"):
        extra = [("Ready", "string"), ("Status", "string"), ("Restarts", "string")]
    elif res.key == ("batch", "jobs"):
        extra = [("Status", "string"), ("Completions", "string")]
    elif res.key == ("", "namespaces"):
        extra = [("Status", "string")]
    cols = [name_col]
    cols += [
        {"name": n, "type": t, "format": "", "description": "", "priority": 0} for n, t in extra
    ]
    cols.append({"name": "Age", "type": "string", "format": "", "description": "", "priority": 0})
    return cols


def cells(res: Resource, obj: Obj) -> list[Any]:
    meta = obj.get("metadata", {})
    cells: list[Any] = [meta.get("name")]
    status = obj.get("status") or {}
    if res.is_custom:
        pcs = res.printer_columns or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        ]
        for pc in pcs:
            try:
                found = jsonpath.evaluate(pc.get("jsonPath", ""), obj)
            except jsonpath.JsonPathError:
                found = []
            value = found[0] if found else None
            if pc.get("type") == "date":
                value = age(value) if isinstance(value, str) else value
            cells.append(value)
        return cells
    if res.key == ("", "pods"):
        cstat = status.get("containerStatuses") or []
        ready = sum(1 for c in cstat if c.get("ready"))
        total = len((obj.get("spec") or {}).get("containers") or [])
        restarts = sum(int(c.get("restartCount", 0)) for c in cstat)
        cells += [f"{ready}/{total}", pod_status(obj), str(restarts)]
    elif res.key == ("batch", "jobs"):
        conds = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        state = (
            "Complete"
            if conds.get("Complete") == "True"
            else (
                "Failed"
                if conds.get("Failed") == "True"
                else "Suspended" if conds.get("Suspended") == "True" else "Running"
            )
        )
        want = (obj.get("spec") or {}).get("completions", 1)
        cells += [state, f"{status.get('succeeded', 0)}/{want}"]
    elif res.key == ("", "namespaces"):
        cells += [status.get("phase", "Active")]
    cells.append(age(meta.get("creationTimestamp")))
    return cells


def table(res: Resource, items: list[Obj], rv: str, include: str = "Metadata") -> Obj:
    """A meta.k8s.io/v1 Table of ``items`` (``include``: the includeObject parameter)."""
    rows = []
    for obj in items:
        row: Obj = {"cells": cells(res, obj)}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata", {}),
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": columns(res),
        "rows": rows,
    }
