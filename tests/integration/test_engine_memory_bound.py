"""A model big enough for its weights to dominate stays within a memory bound through the CLI.

The 0.1B synthetic Llama checkpoint (212 MB of bf16 safetensors, built once and cached:
:mod:`tests.performance.synthetic`) goes through ``python -m optimizer_job run -f manifest``
in a subprocess, with torchao-int8-weight (quantized while loading) and with gptq
(calibrated offloaded to disk, then evaluated decompressed on the host). The parent samples
the child's VmHWM/VmRSS as the growth benchmark does, and subtracts the VmHWM of a process
that only makes the engine's imports for the method. What is left is what the run itself
needed: the model, evaluation's buffers and the quantization. Its anonymous memory must stay
under ``ANON_BOUND`` and its whole RSS under ``RSS_BOUND`` times the checkpoint's bytes (why
each: below).
"""

from __future__ import annotations

import pytest

from tests.performance.bench_growth import engine_import_baseline, run_engine
from tests.performance.synthetic import build_synthetic, checkpoint_bytes

pytestmark = pytest.mark.slow

# The fastest method (about 25 s), and the one whose peak is the artifact's evaluation (about
# 35 s at 0.1B: the weights decompressed to bf16, 1.0x, beside what calibration left behind).
METHODS = ("torchao-int8-weight", "gptq")
# Issue #10's goal: the run's peak memory above its imports <= 1.3x the checkpoint's bytes.
GOAL = 1.3
# The import baseline and the run are two processes whose import footprints differ by up to
# ~20 MB from run to run (allocator state, lazily imported modules), and the sampler can miss
# a few ms of a spike in what it samples; 0.15 x 212 MB = 32 MB covers both, and is far
# below the +1.0x that one more bf16 copy of the weights would add (+2.0x for an fp32 one).
NOISE = 0.15
# Anonymous memory (RssAnon: what the run allocated itself) is held to the goal. The engine
# streams the shards it quantizes instead of mapping them (optimizer_job.streamed): the RSS
# was 1.73-2.11x with the checkpoint mapped, 1.16-1.17x since (docs/findings.md, "Growth").
ANON_BOUND = GOAL + NOISE
# The whole RSS also counts file-backed pages: the checkpoint's if it were mapped again, and
# the shared libraries' pages the run touches beyond what the import-only process touched.
# In a freshly installed virtualenv the kernel maps those in larger folios: the same run
# measured 1.30x there against 1.17x in an older one. The bound leaves that and the noise
# room and still fails a mapped checkpoint's 1.73x and more.
RSS_BOUND = 1.6


@pytest.mark.parametrize("method", METHODS)
def test_cli_peak_memory_of_a_0_1b_model_is_bounded_by_its_bytes(method: str) -> None:
    model = build_synthetic("0.1b")
    size = checkpoint_bytes(model)
    assert size > 200e6  # the weights, not the libraries, dominate the run

    baseline = engine_import_baseline(model, method, "cpu", None)
    assert baseline.returncode == 0, baseline.tail()
    run = run_engine(model, method, "cpu", timeout=600, engine_source=None)
    assert "error" not in run, run["error"]
    assert run["exit_code"] == 0
    assert run["optimized_size_bytes"] and run["optimized_size_bytes"] < size

    rss = (run["peak_rss"] - baseline.peak_rss) / size
    anon = (run["peak_anon"] - baseline.peak_anon) / size
    print(  # shown with -rA: the figures to compare with docs/findings.md
        f"peak above the import baseline / {size / 1e6:.0f} MB checkpoint: RSS {rss:.2f}x "
        f"(bound {RSS_BOUND:.2f}), anonymous {anon:.2f}x (bound {ANON_BOUND:.2f}); per stage "
        f"(VmRSS, MB): { {k: round(v / 1e6) for k, v in run['stage_peaks'].items()} }; "
        f"baseline {baseline.peak_rss / 1e6:.0f} MB; run {run['wall_s']:.0f}s"
    )
    assert rss > 0.5, "the run never held the weights: the sampler saw nothing"
    assert anon <= ANON_BOUND, (
        f"the engine allocated {anon:.2f}x the checkpoint's bytes above its imports "
        f"(anonymous memory), over {ANON_BOUND:.2f}"
    )
    assert rss <= RSS_BOUND, (
        f"the engine's peak RSS above its imports is {rss:.2f}x the checkpoint's bytes, "
        f"over {RSS_BOUND:.2f}"
    )
