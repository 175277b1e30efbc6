"""The candidates' size-vs-quality plot (kubequant_kubectl.plot)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kubequant_api.status import CandidateResult
from kubequant_kubectl.plot import PlotError, plot_candidates, quality_axis
from tests.unit.kubectl_plugin.sample import auto_result, causal_result

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parents[3]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"
    return width, height


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = plot_candidates(auto_result().to_api(), tmp_path / "sub" / "c.png")
    assert path == tmp_path / "sub" / "c.png"
    assert png_size(path) == (880, 550)  # 8x5 inches at 110 dpi
    assert path.stat().st_size > 10_000


def test_quality_axis_follows_the_task() -> None:
    assert quality_axis(auto_result().candidates).attribute == "cosine_similarity"
    lm = causal_result()
    lm.candidates = [
        CandidateResult(method="gptq", optimized_size_bytes=457_179_136, top1_agreement=0.96),
        CandidateResult(method="awq", error="out of memory"),
    ]
    assert quality_axis(lm.candidates).attribute == "top1_agreement"
    with pytest.raises(PlotError, match="no candidate has a quality"):
        quality_axis([CandidateResult(method="awq", error="out of memory")])


def test_nothing_to_plot(tmp_path: Path) -> None:
    result = causal_result()  # a single-method run: no candidates
    with pytest.raises(PlotError, match="no candidate"):
        plot_candidates(result, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_missing_matplotlib_is_a_clear_error(tmp_path: Path) -> None:
    """Without matplotlib (the [kubectl] extra) plot says what to install; a fresh
    interpreter where importing matplotlib fails, as it does when it is not installed."""
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from pathlib import Path\n"
        "from kubequant_kubectl.plot import PlotError, plot_candidates\n"
        "from tests.unit.kubectl_plugin.sample import auto_result\n"
        "try:\n"
        f"    plot_candidates(auto_result(), Path({str(tmp_path / 'c.png')!r}))\n"
        "except PlotError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert "plot needs matplotlib, which is not installed" in proc.stdout
    assert "pip install 'kubequant[kubectl]'" in proc.stdout
    assert not (tmp_path / "c.png").exists()
