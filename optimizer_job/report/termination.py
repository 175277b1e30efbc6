"""TerminationMessageReporter: the run's compact JSON summary in the termination message.

The kubelet keeps at most 4 KiB of ``terminationMessagePath``; the operator harvests the
result from it when ``status.result`` is missing. ``compact_summary`` shrinks a summary
deterministically until it fits: long strings are cut and floats rounded to 6 digits,
candidate entries lose their details, candidates are dropped from the end (their count is
kept in ``candidatesOmitted``), then ``plan`` is dropped; identifiers (``outputDigest``,
``outputUri``, ``method``...) are never cut. A shrunk summary carries ``"truncated": true``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from kubequant_api.constants import TERMINATION_MESSAGE_MAX_BYTES, ExitCode, Stage
from kubequant_api.models import Result
from optimizer_job.redact import scrub_obj
from optimizer_job.report.base import RunContext

log = logging.getLogger("optimizer_job.report.termination")

# What a candidate entry keeps once details must go.
_CANDIDATE_ESSENTIALS = (
    "method",
    "compressionRatio",
    "speedup",
    "perplexityIncreasePercent",
    "cosineSimilarity",
    "top1Agreement",
    "qualityGate",
    "error",
)
# What the summary keeps when nothing else fits (at any depth).
_LAST_RESORT_KEYS = (
    "exitCode",
    "generation",
    "reason",
    "method",
    "compressionRatio",
    "qualityGate",
    "outputUri",
    "outputDigest",
    "result",
)
# Identifiers that are useless when cut: kept whole unless absurdly long.
_KEEP_WHOLE = ("outputDigest", "outputUri", "method", "qualityGate", "reason")
_KEEP_WHOLE_MAX = 512
_ELLIPSIS = "..."

Json = Any


def _encode(data: Json) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def _cut_strings(data: Json, limit: int, key: str | None = None) -> Json:
    if isinstance(data, str):
        if len(data) <= limit or (key in _KEEP_WHOLE and len(data) <= _KEEP_WHOLE_MAX):
            return data
        return data[: max(0, limit - len(_ELLIPSIS))] + _ELLIPSIS
    if isinstance(data, Mapping):
        return {k: _cut_strings(v, limit, k) for k, v in data.items()}
    if isinstance(data, list):
        return [_cut_strings(v, limit, key) for v in data]
    return data


def _round_floats(data: Json) -> Json:
    if isinstance(data, float):
        return float(f"{data:.6g}")
    if isinstance(data, Mapping):
        return {k: _round_floats(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_round_floats(v) for v in data]
    return data


def _map_candidates(data: Json, fn: Callable[[list[Any], dict[str, Any]], None]) -> Json:
    """Copy of ``data`` where ``fn(candidates, parent)`` edited every ``candidates`` list."""
    if isinstance(data, Mapping):
        out = {k: _map_candidates(v, fn) for k, v in data.items()}
        if isinstance(out.get("candidates"), list):
            out["candidates"] = list(out["candidates"])
            fn(out["candidates"], out)
        return out
    if isinstance(data, list):
        return [_map_candidates(v, fn) for v in data]
    return data


def _essential_candidates(data: Json) -> Json:
    def keep(cands: list[Any], _parent: dict[str, Any]) -> None:
        for i, c in enumerate(cands):
            if isinstance(c, Mapping):
                cands[i] = {k: c[k] for k in _CANDIDATE_ESSENTIALS if k in c}

    return _map_candidates(data, keep)


def _drop_key(data: Json, key: str) -> Json:
    if isinstance(data, Mapping):
        return {k: _drop_key(v, key) for k, v in data.items() if k != key}
    if isinstance(data, list):
        return [_drop_key(v, key) for v in data]
    return data


def _drop_last_candidate(data: Json) -> tuple[Json, bool]:
    dropped = False

    def pop(cands: list[Any], parent: dict[str, Any]) -> None:
        nonlocal dropped
        if cands and not dropped:
            cands.pop()
            parent["candidatesOmitted"] = int(parent.get("candidatesOmitted", 0)) + 1
            dropped = True

    return _map_candidates(data, pop), dropped


def _last_resort(data: Json) -> Json:
    if isinstance(data, Mapping):
        return {k: _last_resort(v) for k, v in data.items() if k in _LAST_RESORT_KEYS}
    return data


def compact_summary(
    summary: Mapping[str, Any], limit: int = TERMINATION_MESSAGE_MAX_BYTES
) -> bytes:
    """``summary`` as compact JSON strictly shorter than ``limit`` bytes, secrets scrubbed.

    Deterministic: the same summary always gives the same bytes.
    """
    data: Json = scrub_obj(dict(summary))
    encoded = _encode(data)
    if len(encoded) < limit:
        return encoded

    def marked(d: Json) -> Json:
        return {**d, "truncated": True} if isinstance(d, Mapping) else d

    steps: list[Callable[[Json], Json]] = [
        lambda d: _round_floats(_cut_strings(d, 512)),
        _essential_candidates,
        lambda d: _cut_strings(d, 256),
        lambda d: _cut_strings(d, 128),
    ]
    data = marked(data)
    for step in steps:
        data = step(data)
        encoded = _encode(data)
        if len(encoded) < limit:
            return encoded
    while True:
        data, dropped = _drop_last_candidate(data)
        encoded = _encode(data)
        if len(encoded) < limit:
            return encoded
        if not dropped:
            break
    for step in (lambda d: _cut_strings(d, 48), lambda d: _drop_key(d, "plan")):
        data = step(data)
        encoded = _encode(data)
        if len(encoded) < limit:
            return encoded
    data = marked(_last_resort(_cut_strings(data, 32)))
    encoded = _encode(data)
    if len(encoded) < limit:
        return encoded
    fallback: dict[str, Any] = {"truncated": True}
    if isinstance(summary.get("exitCode"), int):
        fallback["exitCode"] = summary["exitCode"]
    encoded = _encode(fallback)
    return encoded if len(encoded) < limit else b"{}"


KUBERNETES_TERMINATION_LOG: Final = Path("/dev/termination-log")


def in_pod() -> bool:
    """Inside a Kubernetes pod: the kubelet sets KUBERNETES_SERVICE_HOST in every container."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


class TerminationMessageReporter:
    """Writes ``compact_summary(summary)`` to the termination-message file at finish."""

    def __init__(
        self,
        path: Path,
        ctx: RunContext | None = None,
        limit: int = TERMINATION_MESSAGE_MAX_BYTES,
    ) -> None:
        self.path = Path(path)
        self.ctx = ctx
        self.limit = limit

    def stage(self, stage: Stage, percent: int, candidate: str | None = None) -> None:
        """Nothing to do until the end."""

    def result(self, result: Result) -> None:
        """Nothing to do until the end: the summary is written once, at finish."""

    def finish(self, exit_code: ExitCode, summary: dict[str, Any]) -> None:
        data = compact_summary(summary, self.limit)
        extra = self.ctx.log_extra() if self.ctx is not None else {}
        if self.path == KUBERNETES_TERMINATION_LOG and not in_pod():
            # The kubelet's file exists only in a container; on a host (run as root) that
            # path is a device node kubequant has no business writing to.
            log.debug("not in a pod: no termination message at %s", self.path, extra=extra)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(data)
        except OSError as exc:
            log.error("cannot write the termination message to %s: %s", self.path, exc, extra=extra)
        else:
            log.debug("termination message: %d bytes", len(data), extra=extra)
