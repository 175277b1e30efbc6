"""Growth benchmark: how the engine's memory and time grow with the model (figures, not pass/fail).

Synthetic Llama checkpoints of about 0.1B, 0.5B and 1.5B parameters (random weights, sharded
bf16 safetensors, :mod:`tests.performance.synthetic`, built once and cached) go through the
engine's real CLI (``python -m optimizer_job run -f manifest --results file``), one fresh
process per cell, for torchao-int8-weight, bnb-int8 and gptq. Per cell:

- **peak RSS above the post-import baseline / bf16 checkpoint bytes** (goal <= 1.3). The
  parent samples the child's ``/proc/<pid>/status`` (VmHWM and VmRSS, every 5 ms): the
  engine resets its own high-water mark (``/proc/self/clear_refs``) around each measurement,
  so the final VmHWM alone would miss earlier peaks. ``wait4``'s ``ru_maxrss`` is used only
  if nothing was sampled: Linux carries the parent's high-water mark into it. The baseline
  is the VmHWM of a process that only imports what the engine imports for that method (the
  CLI, the pipeline, ``preload_runtime(method)``) and exits.
- **wall time per billion parameters** (goal: the largest size within 1.5x of the smallest),
  of the whole run less the import-only process' wall time ("work"), and of the quantize
  step alone (from the engine's ``stage Quantizing`` to ``stage Evaluating`` log lines: the
  method's load, quantize, save and artifact bookkeeping). CPU seconds (user + system, from
  ``wait4``) are recorded too: the development machine's two cores are shared, and CPU time
  is less disturbed by other load than wall time.
- **engine vs a bare script** at the largest size measured (goal <= 1.10x): the bare script
  (``--bare``) makes the same library calls without kubequant: the shards opened with
  safetensors' ``pread`` backend and handed to ``from_pretrained`` as its state dict (as the
  engine loads them, :mod:`optimizer_job.streamed`), with ``TorchAoConfig`` /
  ``BitsAndBytesConfig``, and ``save_pretrained``; for gptq
  llm-compressor's own ``oneshot`` with its ``W4A16`` GPTQ preset on the engine's calibration
  texts and ``save_pretrained(save_compressed=True)``. The engine's run also measures the
  original and the reloaded artifact, which the bare script does not, so the comparison is
  step against step: the engine's quantize step (timed as above) against the bare script's
  load-to-saved time. Peak memory is shown for both, each above its own import baseline.

A cell whose estimate (from the smaller sizes already measured for that method, scaled
linearly in parameters) exceeds ``--cell-budget`` seconds is recorded as ``skipped
(estimated N min)``; a cell past twice the budget is killed and recorded as timed out, and
the method's bigger sizes are skipped. The table always prints. Writes
``bench-results/growth.json`` and ``bench-results/growth.png``.

``--device cuda`` (``make bench-gpu``) runs the same table on a GPU and compares the engine's
GPTQ with llm-compressor's ``oneshot`` at every size; without a CUDA device it exits 2 at
once, before building anything.

    python -m tests.performance.bench_growth [--sizes 0.1b,0.5b,1.5b] [--methods ...]
        [--device cpu|cuda] [--cell-budget 900] [--engine-source DIR] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.fixtures.childenv import engine_env

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT_DIR = REPO_ROOT / "bench-results"
DEFAULT_SIZES = ("0.1b", "0.5b", "1.5b")
DEFAULT_METHODS = ("torchao-int8-weight", "bnb-int8", "gptq")
# The run's shape: small, so evaluation (which the engine does and the bare script does not)
# stays a minor part of the memory and time; the same at every size.
CALIBRATION_SAMPLES = 16
SEQUENCE_LENGTH = 64
EVALUATION_SAMPLES = 4
BENCH_REPEATS = 2
DEFAULT_CELL_BUDGET_S = 900.0
SAMPLE_INTERVAL_S = 0.005
MEMORY_GOAL = 1.3
TIME_GROWTH_GOAL = 1.5
OVERHEAD_GOAL = 1.10
# Engine vs bare is a ratio of two single-process timings on shared cores: at the largest
# size each side runs OVERHEAD_PAIRS times, interleaved, and the fastest of each is compared,
# unless the engine's run took longer than OVERHEAD_REPEAT_LIMIT_S (then once).
OVERHEAD_PAIRS = 3
OVERHEAD_REPEAT_LIMIT_S = 120.0
NO_CUDA_MESSAGE = (
    "bench-gpu needs a CUDA device: torch.cuda.is_available() is False on this machine "
    "(run `make bench` for the CPU table)"
)


class NoCudaError(RuntimeError):
    """``--device cuda`` on a machine without a CUDA device."""


# =========================================================================== measuring a process


@dataclass
class Measured:
    """One child process: exit status, wall and CPU seconds, peak resident memory."""

    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss: int  # bytes: max of sampled VmHWM and VmRSS (ru_maxrss only if never sampled)
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""
    peak_anon: int = 0  # bytes: sampled RssAnon (without file-backed pages such as mmaps)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (epoch s, VmRSS bytes)

    def tail(self, lines: int = 3) -> str:
        text = (self.stderr or self.stdout).strip().splitlines()
        kept = [ln for ln in text if "Failed to load" not in ln and not ln.startswith("W1")]
        return " | ".join(kept[-lines:])[:400]


_STATUS_RE = re.compile(r"^(VmHWM|VmRSS|RssAnon):\s+(\d+) kB", re.M)


def _read_status(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v) * 1024 for k, v in _STATUS_RE.findall(text)}


def _kept_stderr(text: str) -> str:
    """Every JSON log line (the stage marks the tables are cut by) and the last 200 other
    lines: progress bars alone can push a 1.5B run's first log lines out of a plain tail."""
    lines = text.splitlines()
    records = [ln for ln in lines if ln.startswith("{")]
    other = [ln for ln in lines if not ln.startswith("{")]
    return "\n".join(records + other[-200:])


def run_measured(
    cmd: Sequence[str], env: dict[str, str], timeout: float, cwd: Path = REPO_ROOT
) -> Measured:
    """Run ``cmd`` and watch its memory from outside until it exits (killed at ``timeout``)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )
        peak, anon, timed_out = 0, 0, False
        samples: list[tuple[float, int]] = []
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            values = _read_status(proc.pid)
            if values:
                peak = max(peak, values.get("VmHWM", 0), values.get("VmRSS", 0))
                anon = max(anon, values.get("RssAnon", 0))
                samples.append((time.time(), values.get("VmRSS", 0)))
            if time.perf_counter() - started > timeout and not timed_out:
                timed_out = True
                proc.kill()
            time.sleep(SAMPLE_INTERVAL_S)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            returncode=proc.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            # not wait4's ru_maxrss: Linux carries the parent's high-water mark across fork
            # and exec, so a large parent (a pytest process that built the checkpoint) would
            # set every child's peak
            peak_rss=peak or usage.ru_maxrss * 1024,
            timed_out=timed_out,
            stdout=out.read()[-20000:],
            stderr=_kept_stderr(err.read()),
            peak_anon=anon,
            samples=samples,
        )


def child_env(work: Path, device: str, engine_source: Path | None = None) -> dict[str, str]:
    return engine_env(work, repeats=BENCH_REPEATS, device=device, engine_source=engine_source)


# =========================================================================== engine side

_ENGINE_IMPORTS = """
import sys
from pathlib import Path
import optimizer_job.cli, optimizer_job.pipeline, optimizer_job.methods
from optimizer_job.modeling import preload_runtime
preload_runtime(sys.argv[1], Path(sys.argv[2]), "causal-lm")
"""


def engine_manifest(model_dir: Path, method: str, output: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": "growth"},
        "spec": {
            "model": {"uri": f"file://{model_dir}", "task": "causal-lm"},
            "method": method,
            "calibration": {"samples": CALIBRATION_SAMPLES, "sequenceLength": SEQUENCE_LENGTH},
            "evaluation": {"samples": EVALUATION_SAMPLES},
            "output": {"uri": f"file://{output}", "overwrite": True},
        },
    }


def _log_records(stderr: str) -> list[dict[str, Any]]:
    records = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _ts(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(record["ts"])).timestamp()


def quantize_step_seconds(records: Sequence[dict[str, Any]]) -> float | None:
    """Seconds from the engine's first ``Quantizing`` stage to its first ``Evaluating`` one."""
    start = next((r for r in records if r.get("stage") == "Quantizing" and "ts" in r), None)
    end = next((r for r in records if r.get("stage") == "Evaluating" and "ts" in r), None)
    return _ts(end) - _ts(start) if start and end else None


def stage_peaks(
    records: Sequence[dict[str, Any]], samples: Sequence[tuple[float, int]]
) -> dict[str, int]:
    """The highest sampled VmRSS while the engine was in each stage (``imports`` before its
    first stage line; ``Loading`` at 10% on is the baseline model's load and measurement)."""
    marks = [
        (_ts(r), str(r["stage"]))
        for r in records
        if r.get("logger") == "optimizer_job.report" and r.get("stage") and "ts" in r
    ]
    marks = [(t, s) for n, (t, s) in enumerate(marks) if n == 0 or marks[n - 1][1] != s]
    peaks: dict[str, int] = {}
    for t, rss in samples:
        current = "imports"
        for mark_t, stage in marks:
            if mark_t > t:
                break
            current = stage
        peaks[current] = max(peaks.get(current, 0), rss)
    return peaks


def method_steps(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The methods' own ``<method> <step> took Ns`` lines (e.g. quantize, save, oneshot)."""
    return {
        str(r["stage"]): float(r["seconds"])
        for r in records
        if r.get("logger") == "optimizer_job.methods" and "seconds" in r and "stage" in r
    }


def run_engine(
    model_dir: Path, method: str, device: str, timeout: float, engine_source: Path | None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kq-growth-") as tmp:
        work = Path(tmp)
        manifest = work / "manifest.json"
        manifest.write_text(json.dumps(engine_manifest(model_dir, method, work / "output")))
        results = work / "results.json"
        cmd = [sys.executable, "-m", "optimizer_job", "run", "-f", str(manifest)]
        m = run_measured(
            [*cmd, "--results", str(results)],
            child_env(work, device, engine_source),
            timeout,
            cwd=engine_source or REPO_ROOT,
        )
        doc = json.loads(results.read_text()) if results.is_file() else {}
    records = _log_records(m.stderr)
    res = doc.get("result") if isinstance(doc.get("result"), dict) else {}
    assert isinstance(res, dict)
    out: dict[str, Any] = {
        "exit_code": m.returncode,
        "timed_out": m.timed_out,
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "peak_rss": m.peak_rss,
        "peak_anon": m.peak_anon,
        "stage_peaks": stage_peaks(records, m.samples),
        "quantize_step_s": quantize_step_seconds(records),
        "method_steps": method_steps(records),
        "loaded_dtype": next(
            (r.get("dtype") for r in records if r.get("msg") == "loaded the original model"), None
        ),
        "baseline_peak_memory": (res.get("baseline") or {}).get("peakMemoryBytes"),
        "optimized_peak_memory": (res.get("optimized") or {}).get("peakMemoryBytes"),
        "optimized_size_bytes": res.get("optimizedSizeBytes"),
    }
    if m.timed_out:
        out["error"] = f"timed out after {timeout:.0f}s"
    elif m.returncode != 0:
        out["error"] = f"exit {m.returncode}: {doc.get('message') or m.tail()}"[:400]
    return out


def engine_import_baseline(
    model_dir: Path, method: str, device: str, engine_source: Path | None
) -> Measured:
    with tempfile.TemporaryDirectory(prefix="kq-growth-base-") as tmp:
        cmd = [sys.executable, "-c", _ENGINE_IMPORTS, method, str(model_dir)]
        env = child_env(Path(tmp), device, engine_source)
        return run_measured(cmd, env, 600, cwd=engine_source or REPO_ROOT)


# =========================================================================== bare script side


def _bare_imports(method: str) -> None:
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    if method.startswith("torchao"):
        import torchao.quantization  # noqa: F401
        from transformers import TorchAoConfig  # noqa: F401
    elif method.startswith("bnb"):
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig  # noqa: F401
    else:
        import datasets  # noqa: F401
        from llmcompressor.entrypoints.oneshot import oneshot  # noqa: F401
        from llmcompressor.modifiers.quantization import GPTQModifier  # noqa: F401


def _load_streamed(model_dir: Path, **kwargs: Any) -> Any:
    """``from_pretrained`` on the shards opened with safetensors' ``pread`` backend, the
    library calls the engine makes (optimizer_job.streamed) without its heap trimming."""
    from safetensors import safe_open
    from transformers import AutoConfig, LlamaForCausalLM

    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    state: dict[str, Any] = {}
    handles = []
    for name in dict.fromkeys(index["weight_map"].values()):
        handle: Any = safe_open(str(model_dir / name), framework="pt", backend="pread")
        handles.append(handle)
        for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
            state[key] = handle.get_slice(key)
    config = AutoConfig.from_pretrained(str(model_dir))
    model = LlamaForCausalLM.from_pretrained(None, config=config, state_dict=state, **kwargs)
    for handle in handles:
        handle.__exit__(None, None, None)
    model.config.name_or_path = model.name_or_path = str(model_dir)  # as a path load records
    return model


def bare(
    method: str, model_dir: Path, out_dir: Path, device: str, texts_file: Path
) -> dict[str, Any]:
    """The library calls alone, load to saved artifact; the checkpoint's own dtype (bf16)."""
    _bare_imports(method)
    import torch
    from transformers import AutoTokenizer

    dmap = "cuda:0" if device == "cuda" else "cpu"
    t0 = time.perf_counter()
    if method == "gptq":
        from datasets import Dataset
        from llmcompressor.entrypoints.oneshot import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        texts: list[str] = json.loads(texts_file.read_text())
        enc = tokenizer(texts, truncation=True, max_length=SEQUENCE_LENGTH)
        dataset = Dataset.from_dict(
            {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        )
        model = _load_streamed(model_dir, dtype=torch.bfloat16, device_map=dmap)
        oneshot(
            model=model,
            tokenizer=tokenizer,
            dataset=dataset,
            recipe=GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]),
            max_seq_length=SEQUENCE_LENGTH,
            num_calibration_samples=len(dataset),
            shuffle_calibration_samples=False,
        )
        quantized = time.perf_counter()
        model.save_pretrained(str(out_dir), save_compressed=True)
    else:
        if method == "bnb-int8":
            from transformers import BitsAndBytesConfig

            config: Any = BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
        else:
            from torchao.quantization import Int8WeightOnlyConfig
            from transformers import TorchAoConfig

            config = TorchAoConfig(Int8WeightOnlyConfig())
        model = _load_streamed(
            model_dir, dtype=torch.bfloat16, quantization_config=config, device_map=dmap
        )
        quantized = time.perf_counter()
        model.save_pretrained(str(out_dir), safe_serialization=True)
    done = time.perf_counter()
    result: dict[str, Any] = {
        "quantize_s": quantized - t0,
        "save_s": done - quantized,
        "step_s": done - t0,
    }
    if device == "cuda":
        result["cuda_max_allocated"] = int(torch.cuda.max_memory_allocated())
    return result


def run_bare(
    model_dir: Path, method: str, device: str, timeout: float, texts_file: Path
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kq-growth-bare-") as tmp:
        work = Path(tmp)
        result_file = work / "bare.json"
        cmd = [
            sys.executable,
            "-m",
            "tests.performance.bench_growth",
            "--bare",
            method,
            "--model",
            str(model_dir),
            "--bare-out",
            str(work / "output"),
            "--bare-result",
            str(result_file),
            "--texts",
            str(texts_file),
            "--device",
            device,
        ]
        m = run_measured(cmd, child_env(work, device), timeout)
        data = json.loads(result_file.read_text()) if result_file.is_file() else {}
    out: dict[str, Any] = {
        "wall_s": m.wall_s,
        "cpu_s": m.cpu_s,
        "peak_rss": m.peak_rss,
        "peak_anon": m.peak_anon,
        **data,
    }
    if m.timed_out:
        out["error"] = f"timed out after {timeout:.0f}s"
    elif m.returncode != 0 or not data:
        out["error"] = f"exit {m.returncode}: {m.tail()}"
    return out


def bare_import_baseline(method: str, device: str) -> Measured:
    with tempfile.TemporaryDirectory(prefix="kq-growth-base-") as tmp:
        cmd = [sys.executable, "-m", "tests.performance.bench_growth", "--imports-only", method]
        return run_measured(cmd, child_env(Path(tmp), device), 600)


def calibration_texts() -> list[str]:
    """The calibration texts the engine selects for the benchmark's spec (built-in corpus)."""
    from kubequant_api.models import parse_spec
    from optimizer_job.calibration import select_texts
    from optimizer_job.settings import load_settings

    spec = parse_spec(engine_manifest(Path("/m"), "gptq", Path("/o"))["spec"])
    settings = load_settings({"KUBEQUANT_TERMINATION_LOG": "/nonexistent/t"})
    return select_texts(spec, settings, needs_calibration=True).calibration


# =========================================================================== the table


@dataclass
class Cell:
    size: str
    method: str
    params: int
    checkpoint_bytes: int
    engine: dict[str, Any] = field(default_factory=dict)
    engine_baseline_rss: int | None = None
    engine_baseline_anon: int | None = None
    bare: dict[str, Any] | None = None
    bare_baseline_rss: int | None = None
    engine_import_s: float | None = None
    skipped: str | None = None
    engine_steps: list[float] = field(default_factory=list)  # quantize steps, every engine run
    bare_steps: list[float] = field(default_factory=list)  # load-to-saved, every bare run

    @property
    def ok(self) -> bool:
        return not self.skipped and bool(self.engine) and "error" not in self.engine

    def peak_above(self) -> int | None:
        if not self.ok or self.engine_baseline_rss is None:
            return None
        return int(self.engine["peak_rss"]) - self.engine_baseline_rss

    def peak_ratio(self) -> float | None:
        above = self.peak_above()
        return above / self.checkpoint_bytes if above is not None else None

    def anon_ratio(self) -> float | None:
        if not self.ok or self.engine_baseline_anon is None:
            return None
        return (int(self.engine["peak_anon"]) - self.engine_baseline_anon) / self.checkpoint_bytes

    def work_s(self) -> float | None:
        if not self.ok:
            return None
        return float(self.engine["wall_s"]) - (self.engine_import_s or 0.0)

    def per_b(self, seconds: float | None) -> float | None:
        return seconds / (self.params / 1e9) if seconds is not None else None

    def bare_peak_ratio(self) -> float | None:
        if not self.bare or "error" in self.bare or self.bare_baseline_rss is None:
            return None
        return (int(self.bare["peak_rss"]) - self.bare_baseline_rss) / self.checkpoint_bytes

    def overhead(self) -> float | None:
        """The engine's fastest quantize step over the bare script's fastest run."""
        if not self.ok or not self.bare or "error" in self.bare:
            return None
        steps = self.engine_steps or [s for s in [self.engine.get("quantize_step_s")] if s]
        bare = self.bare_steps or [s for s in [self.bare.get("step_s")] if s]
        return min(steps) / min(bare) if steps and bare else None


def compare_with_bare(
    cell: Cell,
    model_dir: Path,
    *,
    device: str,
    budget: float,
    args: argparse.Namespace,
    texts_file: Path,
) -> None:
    """Run the bare script beside the engine's cell: OVERHEAD_PAIRS interleaved pairs (the
    cell's engine run is the first engine run) when the engine run was short enough."""
    first = cell.engine.get("quantize_step_s")
    cell.engine_steps = [float(first)] if first else []
    work = cell.work_s() or 0.0
    pairs = OVERHEAD_PAIRS if work <= OVERHEAD_REPEAT_LIMIT_S else 1
    bare_timeout = args.bare_timeout or 2 * budget
    runs: list[dict[str, Any]] = []
    for index in range(pairs):
        if index:
            again = run_engine(model_dir, cell.method, device, 2 * budget, args.engine_source)
            if "error" not in again and again.get("quantize_step_s"):
                cell.engine_steps.append(float(again["quantize_step_s"]))
        print(f"  {cell.size} {cell.method}: bare script ({index + 1}/{pairs}) ...", flush=True)
        runs.append(run_bare(model_dir, cell.method, device, bare_timeout, texts_file))
        print(f"    {runs[-1].get('error') or 'ok'}", flush=True)
    timed = [r for r in runs if "error" not in r and r.get("step_s")]
    cell.bare_steps = [float(r["step_s"]) for r in timed]
    cell.bare = min(timed, key=lambda r: float(r["step_s"])) if timed else runs[-1]


def _estimate(done: Sequence[Cell], params: int) -> float | None:
    """Seconds a cell should take, from the largest measured size of the method: its imports
    as they were, the rest scaled linearly in parameters."""
    measured = [c for c in done if c.ok]
    if not measured:
        return None
    ref = max(measured, key=lambda c: c.params)
    imports = min(ref.engine_import_s or 0.0, float(ref.engine["wall_s"]))
    return imports + (float(ref.engine["wall_s"]) - imports) * params / ref.params


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(cells: Sequence[Cell], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Per method: the goals over the sizes measured."""
    out = []
    for method in methods:
        ok = sorted((c for c in cells if c.method == method and c.ok), key=lambda c: c.params)
        row: dict[str, Any] = {"method": method, "sizes": [c.size for c in ok]}
        ratios = [r for c in ok if (r := c.peak_ratio()) is not None]
        row["max_peak_ratio"] = max(ratios) if ratios else None
        if len(ok) >= 2:
            small, large = ok[0], ok[-1]
            row["work_per_b_growth"] = _ratio(
                large.per_b(large.work_s()), small.per_b(small.work_s())
            )
            row["step_per_b_growth"] = _ratio(
                large.per_b(large.engine.get("quantize_step_s")),
                small.per_b(small.engine.get("quantize_step_s")),
            )
            row["cpu_per_b_growth"] = _ratio(
                large.per_b(large.engine.get("cpu_s")), small.per_b(small.engine.get("cpu_s"))
            )
            row["growth_between"] = f"{small.size}->{large.size}"
        compared = [c for c in ok if c.overhead() is not None]
        if compared:
            biggest = max(compared, key=lambda c: c.params)
            row["overhead"] = biggest.overhead()
            row["overhead_at"] = biggest.size
        out.append(row)
    return out


def table_rows(cells: Sequence[Cell]) -> list[list[Any]]:
    rows = []
    for c in cells:
        e = c.engine
        status = c.skipped or e.get("error") or "ok"
        rows.append(
            [
                c.size,
                round(c.params / 1e9, 3),
                round(c.checkpoint_bytes / 1e6),
                c.method,
                round(a / 1e6) if (a := c.peak_above()) is not None else None,
                c.peak_ratio(),
                c.anon_ratio(),
                c.work_s(),
                c.per_b(c.work_s()),
                e.get("quantize_step_s") if c.ok else None,
                c.per_b(e.get("quantize_step_s")) if c.ok else None,
                c.per_b(e.get("cpu_s")) if c.ok else None,
                c.bare.get("step_s") if c.bare else None,
                c.overhead(),
                c.bare_peak_ratio(),
                str(status)[:70],
            ]
        )
    return rows


TABLE_HEADER = [
    "size",
    "params B",
    "ckpt MB",
    "method",
    "peak MB",
    "peak/ckpt",
    "anon/ckpt",
    "work s",
    "work s/B",
    "step s",
    "step s/B",
    "cpu s/B",
    "bare step s",
    "eng/bare",
    "bare peak/ckpt",
    "status",
]


def plot(cells: Sequence[Cell], methods: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem_ax, time_ax) = plt.subplots(1, 2, figsize=(12, 5))
    for n, method in enumerate(methods):
        ok = sorted((c for c in cells if c.method == method and c.ok), key=lambda c: c.params)
        xs = [c.params / 1e9 for c in ok]
        color = f"C{n}"
        mem_ax.plot(xs, [c.peak_ratio() for c in ok], marker="o", color=color, label=method)
        mem_ax.plot(
            xs, [c.anon_ratio() for c in ok], marker="x", linestyle="--", color=color,
            label=f"{method} (anonymous only)",
        )  # fmt: skip
        time_ax.plot(
            xs, [c.per_b(c.work_s()) for c in ok], marker="o", color=color, label=f"{method} run"
        )
        time_ax.plot(
            xs,
            [c.per_b(c.engine.get("quantize_step_s")) for c in ok],
            marker="x",
            linestyle="--",
            color=color,
            label=f"{method} quantize step",
        )
    mem_ax.axhline(MEMORY_GOAL, color="grey", linestyle=":", label=f"goal {MEMORY_GOAL}")
    mem_ax.set_title("peak RSS above post-import baseline / bf16 checkpoint bytes")
    mem_ax.set_xlabel("parameters (billions)")
    mem_ax.set_ylabel("x checkpoint bytes")
    time_ax.set_title("wall seconds per billion parameters")
    time_ax.set_xlabel("parameters (billions)")
    time_ax.set_ylabel("s / B params")
    for ax in (mem_ax, time_ax):
        ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("kubequant engine: growth with model size (synthetic Llama, bf16 checkpoints)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_device(device: str) -> None:
    """Fail fast (NoCudaError) when ``device`` is cuda and torch sees no CUDA device."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise NoCudaError(NO_CUDA_MESSAGE)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from tests.performance.bench_engine import print_table
    from tests.performance.synthetic import SIZES, build_synthetic, checkpoint_bytes

    sizes: list[str] = args.sizes.split(",")
    methods: list[str] = args.methods.split(",")
    device: str = args.device
    budget: float = args.cell_budget
    engine_source: Path | None = args.engine_source
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    models = {}
    for size in sizes:
        print(f"checkpoint {size}: building or reusing the cached one ...", flush=True)
        models[size] = build_synthetic(size)
    texts_file = out_dir / "growth-calibration-texts.json"
    texts_file.write_text(json.dumps(calibration_texts()))

    cells: list[Cell] = []
    baselines: dict[str, dict[str, Any]] = {}
    for method in methods:
        eng_base = engine_import_baseline(models[sizes[0]], method, device, engine_source)
        bare_base = bare_import_baseline(method, device)
        baselines[method] = {
            "engine_rss": eng_base.peak_rss,
            "engine_anon": eng_base.peak_anon,
            "engine_wall_s": eng_base.wall_s,
            "engine_error": eng_base.tail() if eng_base.returncode else None,
            "bare_rss": bare_base.peak_rss,
            "bare_wall_s": bare_base.wall_s,
            "bare_error": bare_base.tail() if bare_base.returncode else None,
        }
        print(
            f"{method}: import-only baselines engine {eng_base.peak_rss / 1e6:.0f} MB "
            f"({eng_base.wall_s:.0f}s), bare {bare_base.peak_rss / 1e6:.0f} MB",
            flush=True,
        )
        done: list[Cell] = []
        for size in sizes:
            spec = SIZES[size]
            cell = Cell(
                size, method, spec.parameters(), checkpoint_bytes(models[size]),
                engine_baseline_rss=eng_base.peak_rss, bare_baseline_rss=bare_base.peak_rss,
                engine_baseline_anon=eng_base.peak_anon,
                engine_import_s=eng_base.wall_s,
            )  # fmt: skip
            estimate = _estimate(done, cell.params)
            if any(c.engine.get("timed_out") for c in done):
                cell.skipped = "skipped (a smaller size timed out)"
                print(f"  {size} {method}: {cell.skipped}", flush=True)
            elif estimate is not None and estimate > budget:
                cell.skipped = f"skipped (estimated {estimate / 60:.0f} min)"
                print(f"  {size} {method}: {cell.skipped}", flush=True)
            else:
                print(f"  {size} {method}: engine ...", flush=True)
                cell.engine = run_engine(models[size], method, device, 2 * budget, engine_source)
                print(
                    f"    {cell.engine.get('error') or 'ok'}; {cell.engine['wall_s']:.0f}s, "
                    f"peak {cell.engine['peak_rss'] / 1e6:.0f} MB",
                    flush=True,
                )
            done.append(cell)
            cells.append(cell)
        # engine vs bare at the largest size measured (every size for gptq on CUDA)
        measured = [c for c in done if c.ok]
        compare = measured if device == "cuda" and method == "gptq" else measured[-1:]
        for cell in compare:
            compare_with_bare(
                cell, models[cell.size], device=device, budget=budget, args=args,
                texts_file=texts_file,
            )  # fmt: skip

    summary = summarize(cells, methods)
    tables = [
        print_table(
            f"growth on {device} (synthetic Llama, bf16 sharded safetensors; peak = RSS above "
            "the import-only baseline; work = run wall time less imports; step = the quantize "
            "step; eng/bare = engine quantize step / bare script's same calls)",
            TABLE_HEADER,
            table_rows(cells),
        ),
        print_table(
            "goals per method (smallest -> largest size measured)",
            ["method", "sizes", "max peak/ckpt", "work s/B growth", "step s/B growth",
             "cpu s/B growth", "eng/bare", "at"],
            [
                [s["method"], ",".join(s["sizes"]) or "-", s.get("max_peak_ratio"),
                 s.get("work_per_b_growth"), s.get("step_per_b_growth"),
                 s.get("cpu_per_b_growth"), s.get("overhead"), s.get("overhead_at")]
                for s in summary
            ],
        ) + f"\ngoals: peak/ckpt <= {MEMORY_GOAL}; s/B growth <= {TIME_GROWTH_GOAL}; "
        f"eng/bare <= {OVERHEAD_GOAL}",
    ]  # fmt: skip
    print(tables[-1].splitlines()[-1], flush=True)
    suffix = "" if device == "cpu" else f"-{device}"
    plot_path = out_dir / f"growth{suffix}.png"
    plot(cells, methods, plot_path)
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },
        "settings": {
            "device": device,
            "calibration_samples": CALIBRATION_SAMPLES,
            "sequence_length": SEQUENCE_LENGTH,
            "evaluation_samples": EVALUATION_SAMPLES,
            "bench_repeats": BENCH_REPEATS,
            "cell_budget_s": budget,
            "engine_source": str(engine_source or REPO_ROOT),
        },
        "baselines": baselines,
        "cells": [
            {
                **asdict(c),
                "peak_ratio": c.peak_ratio(),
                "anon_ratio": c.anon_ratio(),
                "work_s": c.work_s(),
            }
            for c in cells
        ],
        "summary": summary,
        "tables": tables,
        "plot": str(plot_path),
        "duration_s": time.time() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--sizes", default=",".join(DEFAULT_SIZES))
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--cell-budget", type=float, default=DEFAULT_CELL_BUDGET_S)
    parser.add_argument(
        "--bare-timeout", type=float, help="seconds a bare script may run (default 2x budget)"
    )
    parser.add_argument(
        "--engine-source", type=Path, help="run the engine from this source tree instead"
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    parser.add_argument("--imports-only", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bare-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bare-result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.imports_only:
        _bare_imports(args.imports_only)
        return 0
    if args.bare:
        result = bare(args.bare, args.model, args.bare_out, args.device, args.texts)
        args.bare_result.write_text(json.dumps(result))
        return 0
    try:
        check_device(args.device)
    except NoCudaError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = run_bench(args)
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    path = args.out_dir / f"growth{suffix}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {path} and {report['plot']} in {report['duration_s']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
