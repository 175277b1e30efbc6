"""The growth benchmark's own logic: the no-GPU refusal, the synthetic shapes, the log parsing."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.performance import bench_growth
from tests.performance.synthetic import SIZES, _shapes

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_bench_gpu_without_cuda_fails_fast_with_the_reason(tmp_path: Path) -> None:
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this runs the same on a GPU machine.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "KUBEQUANT_TEST_CACHE_DIR": str(tmp_path)}
    out_dir = tmp_path / "results"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.performance.bench_growth", "--device", "cuda",
         "--out-dir", str(out_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {bench_growth.NO_CUDA_MESSAGE}" in proc.stderr
    assert "torch.cuda.is_available() is False" in proc.stderr
    # refused before building or measuring anything
    assert not out_dir.exists()
    assert not any(tmp_path.glob("synthetic-llama-*"))
    assert elapsed < 120


def test_make_bench_gpu_runs_the_growth_benchmark_on_cuda() -> None:
    proc = subprocess.run(
        ["make", "-n", "bench-gpu"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "-m tests.performance.bench_growth --device cuda" in proc.stdout


@pytest.mark.parametrize("label", sorted(SIZES))
def test_synthetic_sizes_count_the_real_model_parameters(label: str) -> None:
    size = SIZES[label]
    counted = sum(math.prod(shape) for _, shape in _shapes(size))
    assert counted == size.parameters()
    target = {"0.1b": 0.1e9, "0.5b": 0.5e9, "1.5b": 1.5e9}[label]
    assert abs(counted - target) / target < 0.07
    # every Linear input (hidden, intermediate) is a multiple of GPTQ's default group size
    assert size.hidden_size % 128 == 0 and size.intermediate_size % 128 == 0


def _record(ts: str, stage: str, logger: str = "optimizer_job.report") -> dict[str, object]:
    return {"ts": f"2026-12-01T03:00:{ts}+00:00", "logger": logger, "stage": stage}


def test_quantize_step_and_stage_peaks_come_from_the_engine_log() -> None:
    records = [
        _record("00.000", "Loading"),
        _record("10.000", "Loading"),
        _record("20.000", "Quantizing"),
        {**_record("25.000", "quantize", "optimizer_job.methods"), "seconds": 4.5},
        _record("26.500", "Quantizing"),
        _record("30.250", "Evaluating"),
        _record("40.000", "Saving"),
    ]
    assert bench_growth.quantize_step_seconds(records) == pytest.approx(10.25)
    assert bench_growth.method_steps(records) == {"quantize": 4.5}
    base = bench_growth._ts(records[0])
    samples = [(base - 1, 100), (base + 5, 300), (base + 22, 500), (base + 27, 700),
               (base + 31, 400), (base + 41, 200)]  # fmt: skip
    assert bench_growth.stage_peaks(records, samples) == {
        "imports": 100,
        "Loading": 300,
        "Quantizing": 700,  # the method's own step lines do not split the stage
        "Evaluating": 400,
        "Saving": 200,
    }


def _cell(size: str, params: float, wall: float, step: float, peak: int) -> bench_growth.Cell:
    return bench_growth.Cell(
        size, "m", int(params), 1000,
        engine={"wall_s": wall, "quantize_step_s": step, "cpu_s": wall, "peak_rss": peak,
                "peak_anon": peak},
        engine_baseline_rss=500, engine_baseline_anon=500, engine_import_s=10.0,
        bare_baseline_rss=500,
    )  # fmt: skip


def test_summary_ratios() -> None:
    small = _cell("s", 1e8, 20.0, 5.0, 1700)
    large = _cell("l", 1e9, 160.0, 80.0, 1600)
    large.bare = {"step_s": 64.0, "peak_rss": 1400}
    skipped = bench_growth.Cell("xl", "m", int(3e9), 1000, skipped="skipped (estimated 20 min)")
    [row] = bench_growth.summarize([small, large, skipped], ["m"])
    assert row["sizes"] == ["s", "l"]
    assert row["max_peak_ratio"] == pytest.approx(1.2)  # (1700 - 500) / 1000
    assert row["work_per_b_growth"] == pytest.approx((150 / 1.0) / (10 / 0.1))
    assert row["step_per_b_growth"] == pytest.approx(80 / 50)
    assert row["overhead"] == pytest.approx(80 / 64) and row["overhead_at"] == "l"
    assert large.bare_peak_ratio() == pytest.approx(0.9)
    # the estimate for a bigger cell scales the largest measured run (less imports) linearly
    assert bench_growth._estimate([small, large], int(3e9)) == pytest.approx(10 + 150 * 3)
    assert bench_growth.table_rows([skipped])[0][-1] == "skipped (estimated 20 min)"


def test_engine_vs_bare_compares_the_fastest_run_of_each() -> None:
    cell = _cell("l", 1e9, 160.0, 80.0, 1600)
    cell.bare = {"step_s": 64.0, "peak_rss": 1400}
    cell.engine_steps = [80.0, 70.0, 75.0]
    cell.bare_steps = [66.0, 64.0, 70.0]
    assert cell.overhead() == pytest.approx(70 / 64)
    cell.bare = {"error": "exit 1"}
    assert cell.overhead() is None
