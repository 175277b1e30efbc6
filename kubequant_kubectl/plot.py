"""The candidates of an ``auto`` search: artifact size against quality, winner highlighted.

matplotlib is an optional dependency (the ``kubectl`` extra, which ``make install``
installs); it is imported only when a plot is drawn, with the Agg backend (no display).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubequant_api.constants import GateVerdict
from kubequant_api.errors import KubequantError
from kubequant_api.status import CandidateResult, Result
from kubequant_kubectl.format import as_result, params_text, winner_index


class PlotError(KubequantError):
    """Nothing to plot, or matplotlib is not installed."""


@dataclass(frozen=True)
class QualityAxis:
    """The quality measure a plot uses: the first one the candidates have."""

    attribute: str
    label: str
    original: float | None  # the original model's value on this axis, when defined


QUALITY_AXES: tuple[QualityAxis, ...] = (
    QualityAxis("cosine_similarity", "cosine similarity vs the original", 1.0),
    QualityAxis("top1_agreement", "top-1 agreement vs the original", 1.0),
    QualityAxis("perplexity_increase_percent", "perplexity increase over the original (%)", 0.0),
)


def quality_axis(candidates: list[CandidateResult]) -> QualityAxis:
    """The quality measure shared by the candidates (encoders: cosine; causal LMs: top-1)."""
    for axis in QUALITY_AXES:
        if any(getattr(c, axis.attribute) is not None for c in candidates):
            return axis
    raise PlotError("no candidate has a quality measurement to plot")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotError(
            "plot needs matplotlib, which is not installed: "
            "pip install 'kubequant[kubectl]' (or pip install matplotlib)"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_candidates(result: Result | dict[str, Any], path: Path, title: str = "") -> Path:
    """Draw each measured candidate at (artifact size in MB, quality) into ``path`` (the
    format follows its suffix, e.g. ``.png``); the winner is a large star, candidates that
    failed the gate are crosses, and the original model is a reference point. Returns
    ``path``. Raises :class:`PlotError` when no candidate has both figures."""
    res = as_result(result)
    candidates = list(res.candidates)
    points = [c for c in candidates if c.optimized_size_bytes is not None]
    axis = quality_axis(points)
    points = [c for c in points if getattr(c, axis.attribute) is not None]
    if not points:
        raise PlotError("no candidate has both a size and a quality measurement to plot")
    won = winner_index(res)
    winner = candidates[won] if won is not None else None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    legend: set[str] = set()
    try:
        for cand in points:
            x = (cand.optimized_size_bytes or 0) / 1e6
            y = getattr(cand, axis.attribute)
            failed = cand.quality_gate == GateVerdict.FAILED
            if cand is winner:
                ax.scatter(x, y, s=260, marker="*", color="tab:red", zorder=3, label="winner")
            else:
                kind = "failed the gate" if failed else "passed the gate"
                ax.scatter(
                    x,
                    y,
                    s=60,
                    marker="x" if failed else "o",
                    color="tab:gray" if failed else "tab:blue",
                    zorder=2,
                    label=None if kind in legend else kind,
                )
                legend.add(kind)
            label = cand.method
            if cand.params:
                label += f" ({params_text(cand.params)})"
            ax.annotate(label, (x, y), fontsize=8, xytext=(5, 3), textcoords="offset points")
        if res.original_size_bytes is not None and axis.original is not None:
            ax.scatter(
                res.original_size_bytes / 1e6,
                axis.original,
                s=60,
                marker="s",
                color="black",
                label="original",
                zorder=2,
            )
        ax.set_xlabel("artifact size (MB, weights as written)")
        ax.set_ylabel(axis.label)
        ax.set_title(title or "kubequant: candidates, size vs quality (reloaded from disk)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path
