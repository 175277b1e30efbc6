"""The dry run's memory and disk estimates, read in one place.

A run with ``spec.dryRun`` reports the preflight's plan in ``status.result.plan``; the
operator keeps that plan in ``status.preflight`` across generations (a new generation clears
``status.result``), until another dry run replaces it. The estimate sizes a later run's Job
when the spec gives no memory (:mod:`.builders`) and is named when the engine is OOMKilled
(:mod:`.failures`). It applies only to the same model (the plan's source URI, credentials
removed) and, when the plan has a row for it, to the spec's method. The disk estimate
(ephemeral storage) adds the source's download when the spec puts it on an emptyDir
(``kubequant_api.jobenv.source_on_ephemeral_storage``: the spec's cache claim may have changed
since the dry run).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubequant_api.jobenv import source_on_ephemeral_storage
from kubequant_api.models import ModelOptimizationSpec

_USERINFO = re.compile(r"^([A-Za-z0-9+.-]+://)[^/\s@]+@")


@dataclass(frozen=True)
class Estimate:
    peak_bytes: int
    method: str
    source: str
    disk_bytes: int | None = None  # ephemeral storage (None: a plan from before disk estimates)


def dry_run_plan(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The last dry run's plan: ``status.preflight``, else a dry run's ``status.result.plan``."""
    st = status or {}
    kept = st.get("preflight")
    if isinstance(kept, Mapping) and kept.get("candidates"):
        return kept
    result = st.get("result")
    plan = result.get("plan") if isinstance(result, Mapping) else None
    if isinstance(plan, Mapping) and plan.get("candidates"):
        return plan
    return None


def same_source(planned: str, uri: str) -> bool:
    """Whether a plan's (redacted) source URI is ``uri`` (query and credentials ignored)."""
    bare = uri.split("?", 1)[0]
    return bool(planned) and planned in (bare, _USERINFO.sub(r"\1***@", bare))


def dry_run_estimate(
    status: Mapping[str, Any] | None, spec: ModelOptimizationSpec | None
) -> Estimate | None:
    """The dry run's peak-memory estimate for this spec's model and method (None: no dry run
    of this model)."""
    plan = dry_run_plan(status)
    if plan is None or spec is None:
        return None
    source = str((plan.get("source") or {}).get("uri") or "")
    if not same_source(source, spec.model.uri):
        return None
    method = str(spec.method)
    estimate = plan.get("estimatedPeakMemoryBytes")
    found = plan.get("disk")
    disk: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    working = _bytes(disk.get("needsBytes"))
    if working is not None:
        working -= _bytes(disk.get("sourceBytes")) or 0
    for row in plan.get("candidates") or []:
        if isinstance(row, Mapping) and row.get("method") == method:
            estimate = row.get("estimatedPeakMemoryBytes")
            working = _bytes(row.get("estimatedDiskBytes"))
    peak = _bytes(estimate)
    if not peak:
        return None
    disk_bytes = None
    if working is not None:
        size = _bytes((plan.get("source") or {}).get("sizeBytes")) or 0
        downloaded = source_on_ephemeral_storage(spec.model.uri, spec.cache.pvc_name)
        disk_bytes = working + (size if downloaded else 0)
    return Estimate(peak, method, source, disk_bytes)


def _bytes(value: Any) -> int | None:
    """A byte count from a plan (a non-negative number), else None."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return None
    return int(value)
