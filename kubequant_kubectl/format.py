"""Human-readable figures and the tables ``kubectl kubequant`` prints (also used by the demo).

Every function takes a :class:`~kubequant_api.status.Result` or the ``status.result`` dict as
the API serves it (camelCase keys) and returns plain text: columns separated as kubectl
separates them, upper-case headers, ``-`` where a figure was not measured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from kubequant_api.constants import GateVerdict
from kubequant_api.status import (
    CandidateResult,
    HistoryEntry,
    Measurements,
    Result,
    RunSummary,
)

MISSING = "-"
WINNER_MARK = "*"
_COLUMN_GAP = "   "


def sig3(x: float | None) -> str:
    """``x`` to 3 significant figures in plain notation (``0.998``, ``3.95``, ``1230``)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    rounded = float(f"{x:.3g}")
    if rounded == 0:
        return "0"
    exponent = math.floor(math.log10(abs(rounded)))
    return f"{rounded:.{max(0, 2 - exponent)}f}"


def human_bytes(n: float | None) -> str:
    """A size in decimal units (as model hubs count): ``512 B``, ``90.9 MB``, ``1.23 GB``."""
    if n is None:
        return MISSING
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{sig3(n / scale)} {unit}"
    return f"{int(n)} B"


def human_ms(ms: float | None) -> str:
    """A duration given in milliseconds: ``0.412 ms``, ``12.3 ms``, ``2.05 s``."""
    if ms is None:
        return MISSING
    if abs(ms) >= 1000:
        return f"{sig3(ms / 1000)} s"
    return f"{sig3(ms)} ms"


def human_duration(seconds: float | None) -> str:
    """A duration as kubectl prints ages (apimachinery's ``HumanDuration``): ``45s``,
    ``4m12s``, ``25m``, ``3h5m``, ``2d3h``; ``-`` when unknown."""
    if seconds is None:
        return MISSING
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one RFC 3339 time to another (``None`` when either is missing)."""
    begin, finish = _parse_time(start), _parse_time(end)
    if begin is None or finish is None:
        return None
    return (finish - begin).total_seconds()


def as_result(result: Result | dict[str, Any]) -> Result:
    """The model of a ``status.result`` given as the API serves it, or the model itself."""
    return result if isinstance(result, Result) else Result.model_validate(result)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, as ``kubectl get`` prints them (no trailing spaces)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        _COLUMN_GAP.join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in [list(headers), *rows]
    ]
    return "\n".join(lines)


def params_text(params: dict[str, Any]) -> str:
    """Params as ``key=value`` pairs, in the order given (``-`` when none)."""
    if not params:
        return MISSING
    return ",".join(
        f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in params.items()
    )


def _percent(x: float | None) -> str:
    return MISSING if x is None else f"{'+' if x > 0 else ''}{sig3(x)}%"


def _ratio(x: float | None) -> str:
    return MISSING if x is None else f"{sig3(x)}x"


def winner_index(result: Result | dict[str, Any]) -> int | None:
    """Which candidate won an ``auto`` search: the one the result describes, provided the
    gate did not fail (a failed search's result shows the candidate closest to passing)."""
    res = as_result(result)
    if res.quality_gate == GateVerdict.FAILED:
        return None
    for index, cand in enumerate(res.candidates):
        if (
            cand.method == res.method
            and cand.params == res.params
            and cand.optimized_size_bytes == res.optimized_size_bytes
            and cand.quality_gate != GateVerdict.FAILED
            and cand.error is None
        ):
            return index
    return None


# (header, getter, format) of each quality column; a column shows when any row has a value.
_QUALITY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("COSINE", "cosine_similarity", "plain"),
    ("TOP-1", "top1_agreement", "plain"),
    ("PPL INCREASE", "perplexity_increase_percent", "percent"),
)


def _quality_columns(rows: Sequence[CandidateResult | Result]) -> list[tuple[str, str, str]]:
    shown = [c for c in _QUALITY_COLUMNS if any(getattr(r, c[1]) is not None for r in rows)]
    return shown or [("COSINE", "cosine_similarity", "plain")]


def _quality_cell(row: CandidateResult | Result, attribute: str, kind: str) -> str:
    value: float | None = getattr(row, attribute)
    return _percent(value) if kind == "percent" else sig3(value)


def candidates_table(result: Result | dict[str, Any]) -> str:
    """The ``auto`` search, one row per candidate in the order tried; the winner is marked
    ``*`` in the WINNER column and a candidate that produced no artifact shows its error."""
    res = as_result(result)
    quality = _quality_columns(res.candidates)
    headers = [
        "METHOD",
        "PARAMS",
        "SIZE",
        "RATIO",
        "SPEEDUP",
        *(h for h, _, _ in quality),
        "GATE",
        "WINNER",
        "ERROR",
    ]
    won = winner_index(res)
    rows: list[list[str]] = []
    for index, cand in enumerate(res.candidates):
        rows.append(
            [
                cand.method,
                params_text(cand.params),
                human_bytes(cand.optimized_size_bytes),
                _ratio(cand.compression_ratio),
                _ratio(cand.speedup),
                *(_quality_cell(cand, attr, kind) for _, attr, kind in quality),
                str(cand.quality_gate) if cand.quality_gate is not None else MISSING,
                WINNER_MARK if index == won else "",
                _one_line(cand.error) if cand.error else "",
            ]
        )
    if not any(row[-1] for row in rows):
        headers.pop()
        rows = [row[:-1] for row in rows]
    return render_table(headers, rows)


def _one_line(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _measure(m: Measurements | None, attribute: str) -> float | None:
    return None if m is None else getattr(m, attribute)


def _change(before: float | None, after: float | None) -> str:
    """after / before, as ``0.254x``."""
    if before is None or after is None or before == 0:
        return MISSING
    return _ratio(after / before)


def results_table(result: Result | dict[str, Any]) -> str:
    """What was measured: a header (method, params, gate, output) and one row per figure,
    the original model against the artifact as written and reloaded."""
    res = as_result(result)
    header = [
        ("METHOD", res.method or MISSING),
        ("PARAMS", params_text(res.params)),
        ("GENERATION", str(res.generation) if res.generation is not None else MISSING),
        ("QUALITY GATE", str(res.quality_gate) if res.quality_gate is not None else MISSING),
        ("OUTPUT", res.output_uri or MISSING),
        ("DIGEST", res.output_digest or MISSING),
    ]
    width = max(len(k) for k, _ in header)
    lines = [f"{k + ':':<{width + 1}}  {v}" for k, v in header]
    base, opt = res.baseline, res.optimized
    rows = [
        [
            "size",
            human_bytes(res.original_size_bytes),
            human_bytes(res.optimized_size_bytes),
            f"ratio {_ratio(res.compression_ratio)}" if res.compression_ratio else MISSING,
        ],
        [
            "latency",
            human_ms(_measure(base, "latency_ms")),
            human_ms(_measure(opt, "latency_ms")),
            f"speedup {_ratio(res.speedup)}" if res.speedup else MISSING,
        ],
        [
            "tokens/s",
            sig3(_measure(base, "tokens_per_second")),
            sig3(_measure(opt, "tokens_per_second")),
            _change(_measure(base, "tokens_per_second"), _measure(opt, "tokens_per_second")),
        ],
        [
            "peak memory",
            human_bytes(_measure(base, "peak_memory_bytes")),
            human_bytes(_measure(opt, "peak_memory_bytes")),
            _change(_measure(base, "peak_memory_bytes"), _measure(opt, "peak_memory_bytes")),
        ],
        [
            "perplexity",
            sig3(_measure(base, "perplexity")),
            sig3(_measure(opt, "perplexity")),
            _percent(res.perplexity_increase_percent),
        ],
        ["cosine similarity", MISSING, sig3(res.cosine_similarity), MISSING],
        ["top-1 agreement", MISSING, sig3(res.top1_agreement), MISSING],
    ]
    # Figures the task does not measure (perplexity for an encoder...) are left out.
    rows = [r for r in rows if any(cell != MISSING for cell in r[1:])]
    table = render_table(["MEASURE", "ORIGINAL", "OPTIMIZED", "CHANGE"], rows)
    return "\n".join(lines) + "\n\n" + table


# status.history's qualityMetric -> (short name, format) in the QUALITY column.
_QUALITY_NAMES: dict[str, tuple[str, str]] = {
    "cosineSimilarity": ("cosine", "plain"),
    "top1Agreement": ("top-1", "plain"),
    "perplexityIncreasePercent": ("ppl", "percent"),
}


def quality_text(metric: str | None, value: float | None) -> str:
    """A run's primary quality figure: ``cosine=0.998``, ``top-1=0.961``, ``ppl=+4.25%``."""
    if metric is None or value is None:
        return MISSING
    short, kind = _QUALITY_NAMES.get(metric, (metric, "plain"))
    return f"{short}={_percent(value) if kind == 'percent' else sig3(value)}"


def _known(model: type[HistoryEntry | RunSummary], data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``data`` this version's model knows (a newer operator may add some)."""
    names = {n for n, _ in model.model_fields.items()}
    names |= {f.alias for f in model.model_fields.values() if f.alias}
    return {k: v for k, v in data.items() if k in names}


def _entry(entry: HistoryEntry | Mapping[str, Any]) -> HistoryEntry:
    if isinstance(entry, HistoryEntry):
        return entry
    return HistoryEntry.model_validate(_known(HistoryEntry, entry))


def history_table(history: Sequence[HistoryEntry | Mapping[str, Any]]) -> str:
    """``status.history``, one row per finished run in the order given (newest first): the
    run, its outcome and reason, method, compression ratio, primary quality figure, gate,
    start time, duration and Job."""
    headers = [
        "GEN", "RUN", "OUTCOME", "REASON", "METHOD", "RATIO", "QUALITY", "GATE", "STARTED",
        "DURATION", "JOB",
    ]  # fmt: skip
    rows: list[list[str]] = []
    for item in history:
        e = _entry(item)
        rows.append(
            [
                str(e.generation),
                str(e.run),
                e.outcome,
                e.reason or MISSING,
                e.method or MISSING,
                _ratio(e.compression_ratio),
                quality_text(e.quality_metric, e.quality_value),
                str(e.quality_gate) if e.quality_gate is not None else MISSING,
                e.start_time or MISSING,
                human_duration(seconds_between(e.start_time, e.completion_time)),
                e.job_name or MISSING,
            ]
        )
    return render_table(headers, rows)


def last_successful_text(summary: RunSummary | Mapping[str, Any]) -> str:
    """``status.lastSuccessful`` as ``KEY:  value`` lines, like the head of the results."""
    s = (
        summary
        if isinstance(summary, RunSummary)
        else RunSummary.model_validate(_known(RunSummary, summary))
    )
    header = [
        ("GENERATION", str(s.generation)),
        ("RUN", str(s.run)),
        ("JOB", s.job_name or MISSING),
        ("METHOD", s.method or MISSING),
        ("RATIO", _ratio(s.compression_ratio)),
        ("QUALITY GATE", str(s.quality_gate) if s.quality_gate is not None else MISSING),
        ("COMPLETED", s.completion_time or MISSING),
        ("OUTPUT", s.output_uri or MISSING),
        ("DIGEST", s.output_digest or MISSING),
    ]
    width = max(len(k) for k, _ in header)
    return "\n".join(f"{k + ':':<{width + 1}}  {v}" for k, v in header)
