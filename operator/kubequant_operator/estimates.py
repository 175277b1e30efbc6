"""The dry run's memory estimate, read in one place.

A run with ``spec.dryRun`` reports the preflight's plan in ``status.result.plan``; the
operator keeps that plan in ``status.preflight`` across generations (a new generation clears
``status.result``), until another dry run replaces it. The estimate sizes a later run's Job
when the spec gives no memory (:mod:`.builders`) and is named when the engine is OOMKilled
(:mod:`.failures`). It applies only to the same model (the plan's source URI, credentials
removed) and, when the plan has a row for it, to the spec's method.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubequant_api.models import ModelOptimizationSpec

_USERINFO = re.compile(r"^([A-Za-z0-9+.-]+://)[^/\s@]+@")


@dataclass(frozen=True)
class Estimate:
    peak_bytes: int
    method: str
    source: str


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
    for row in plan.get("candidates") or []:
        if isinstance(row, Mapping) and row.get("method") == method:
            estimate = row.get("estimatedPeakMemoryBytes")
    if not isinstance(estimate, int | float) or isinstance(estimate, bool) or estimate <= 0:
        return None
    return Estimate(int(estimate), method, source)
