"""Engine benchmarks: figures side by side in one run (not pass/fail).

1. Engine overhead: wall time of ``torchao-int8-weight`` on MiniLM through the engine's real
   CLI code path (``optimizer_job.cli.main(["run", ...])`` -> ``optimizer_job.pipeline``)
   vs a bare script making the same library calls (load + evaluate the original, quantize
   with TorchAoConfig, save, reload, evaluate, time the same forward passes). Goal <= 1.10x.
2. Peak memory above the process's post-import baseline, divided by the fp32 weight bytes,
   for the engine's torchao-int8-weight path; the bare script and a naive path (load,
   deepcopy, quantize, save, reload) for contrast. Goal <= 1.5x.
3. Every method on MiniLM (feature extraction) and on the trained tiny causal LM: size
   ratio, latency ratio vs fp32, fidelity (cosine / top-1 / perplexity increase), peak
   memory; plus ``size_vs_quality.png``.

Every measured run is a fresh subprocess (``--worker``), so imports, allocator state and
RSS high-water marks never leak from one measurement into the next. Writes
``bench-results/engine.json`` and ``bench-results/size_vs_quality.png``.

    python -m tests.performance.bench_engine [--repeats 3] [--methods a,b] [--skip-methods]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.fixtures.childenv import engine_env

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT_DIR = REPO_ROOT / "bench-results"
OVERHEAD_METHOD = "torchao-int8-weight"
WORKER_TIMEOUT_S = 900
# Evaluation shape shared by the engine runs and the bare script.
EVAL_SAMPLES = 32
SEQ_LEN = 128
CALIBRATION_SAMPLES = 64
TIMING_REPEATS = 10
WARMUP_RUNS = 2  # as optimizer_job.evaluation.WARMUP_RUNS
EVAL_BATCH = 8  # as optimizer_job.evaluation.encode for encoders
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".data"}


# =========================================================================== worker side


class PeakSampler:
    """Peak RSS of this process from now on (bytes), robust to VmHWM resets.

    The engine itself resets the kernel's RSS high-water mark (``/proc/self/clear_refs``)
    around each evaluation, so ``ru_maxrss`` alone would miss the quantization peak. A
    thread reads ``VmHWM`` and ``VmRSS`` every 2 ms; the high-water mark covers the spikes
    between two samples, the samples cover what a reset would erase. ``peak_anon`` is the
    sampled peak of anonymous memory only (``RssAnon``: without file-backed pages such as
    memory-mapped safetensors, which the kernel can drop under pressure).
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read_all() -> dict[str, int]:
        text = Path("/proc/self/status").read_text()
        return {
            key: int(m.group(1)) * 1024
            for key in ("VmRSS", "VmHWM", "RssAnon")
            if (m := re.search(rf"^{key}:\s+(\d+) kB", text, re.M))
        }

    @classmethod
    def read(cls) -> tuple[int, int]:
        values = cls.read_all()
        return values.get("VmRSS", 0), values.get("VmHWM", 0)

    def _sample(self) -> None:
        values = self.read_all()
        self.peak = max(self.peak, values.get("VmRSS", 0), values.get("VmHWM", 0))
        self.peak_anon = max(self.peak_anon, values.get("RssAnon", 0))

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakSampler:
        with contextlib.suppress(OSError):  # start the high-water mark at the baseline
            Path("/proc/self/clear_refs").write_text("5")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        import resource

        self._sample()
        self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def rss_now() -> int:
    return PeakSampler.read()[0]


def anon_now() -> int:
    return PeakSampler.read_all().get("RssAnon", 0)


def weights_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)


def _preimport() -> None:
    """Imports both sides need, done before the baseline is taken."""
    import numpy  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401
    import torchao.quantization  # noqa: F401
    from transformers import (  # noqa: F401
        AutoModel,
        AutoModelForCausalLM,
        AutoTokenizer,
        TorchAoConfig,
    )


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[tuple[Any, Any]]:
    import numpy as np

    batches = []
    for start in range(0, len(texts), EVAL_BATCH):
        enc = tokenizer(
            list(texts[start : start + EVAL_BATCH]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        batches.append(
            (np.asarray(enc["input_ids"], np.int64), np.asarray(enc["attention_mask"], np.int64))
        )
    return batches


def _evaluate(model: Any, batches: list[tuple[Any, Any]], repeats: int) -> tuple[Any, float]:
    """Mean-pooled embeddings of every batch, and the median latency of the bench sample."""
    import numpy as np
    import torch

    pooled = []
    with torch.inference_mode():
        for ids, mask in batches:
            out = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))
            hidden = out.last_hidden_state.float().numpy()
            m = mask[..., None].astype(np.float32)
            pooled.append((hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0))
        ids, mask = batches[0]
        length = int(mask[0].sum())
        bench_ids = torch.as_tensor(ids[:1, :length])
        bench_mask = torch.as_tensor(mask[:1, :length])
        for _ in range(WARMUP_RUNS):
            model(input_ids=bench_ids, attention_mask=bench_mask)
        timings = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=bench_ids, attention_mask=bench_mask)
            timings.append(time.perf_counter() - t0)
    return np.concatenate(pooled), statistics.median(timings)


def _cosine(a: Any, b: Any) -> float:
    import numpy as np

    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float((num / np.maximum(den, 1e-12)).mean())


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for p in src.iterdir():
        if p.is_file() and p.suffix in (".json", ".txt") and not (dst / p.name).exists():
            shutil.copy2(p, dst / p.name)


def worker_engine(job: dict[str, Any]) -> dict[str, Any]:
    """One engine run through the CLI (``run -f manifest --results file``)."""
    _preimport()
    import optimizer_job.methods  # noqa: F401  (the registry, as the CLI would import it)
    from optimizer_job import cli, pipeline  # noqa: F401

    work = Path(job["work"])
    manifest = work / "manifest.json"
    spec: dict[str, Any] = {
        "model": {"uri": f"file://{job['model']}", "task": job["task"]},
        "method": job["method"],
        "calibration": {"samples": CALIBRATION_SAMPLES, "sequenceLength": SEQ_LEN},
        "evaluation": {"samples": EVAL_SAMPLES},
        "output": {"uri": f"file://{work / 'output'}", "overwrite": True},
    }
    if job.get("params"):
        spec["params"] = job["params"]
    manifest.write_text(
        json.dumps(
            {
                "apiVersion": "kubequant.io/v1alpha1",
                "kind": "ModelOptimization",
                "metadata": {"name": "bench"},
                "spec": spec,
            }
        )
    )
    results = work / "results.json"
    gc.collect()
    baseline, baseline_anon = rss_now(), anon_now()
    with PeakSampler() as peak, contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        code = cli.main(["run", "-f", str(manifest), "--results", str(results)])
        work_s = time.perf_counter() - t0
    doc = json.loads(results.read_text()) if results.is_file() else {}
    return {
        "exit_code": code,
        "work_s": work_s,
        "baseline_rss": baseline,
        "peak_above_baseline": peak.peak - baseline,
        "peak_anon_above_baseline": peak.peak_anon - baseline_anon,
        "results": doc,
    }


def worker_bare(job: dict[str, Any]) -> dict[str, Any]:
    """The same library calls as the engine's torchao-int8-weight run, nothing else."""
    _preimport()
    import torch
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModel, AutoTokenizer, TorchAoConfig

    src, out = Path(job["model"]), Path(job["work"]) / "output"
    texts: list[str] = json.loads(Path(job["texts"]).read_text())
    gc.collect()
    baseline, baseline_anon = rss_now(), anon_now()
    with PeakSampler() as peak:
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(src))
        batches = _encode(tokenizer, texts, min(SEQ_LEN, tokenizer.model_max_length))
        model = AutoModel.from_pretrained(str(src), dtype=torch.float32).eval()
        ref, base_latency = _evaluate(model, batches, TIMING_REPEATS)
        del model
        gc.collect()
        qmodel = AutoModel.from_pretrained(
            str(src),
            dtype=torch.float32,
            quantization_config=TorchAoConfig(Int8WeightOnlyConfig()),
            device_map="cpu",
        )
        qmodel.save_pretrained(str(out), safe_serialization=True)
        del qmodel
        gc.collect()
        _copy_tokenizer(src, out)
        reloaded = AutoModel.from_pretrained(str(out), device_map="cpu").eval()
        emb, latency = _evaluate(reloaded, batches, TIMING_REPEATS)
        del reloaded
        gc.collect()
        cosine = _cosine(ref, emb)
        work_s = time.perf_counter() - t0
    return {
        "work_s": work_s,
        "baseline_rss": baseline,
        "peak_above_baseline": peak.peak - baseline,
        "peak_anon_above_baseline": peak.peak_anon - baseline_anon,
        "cosine_similarity": cosine,
        "speedup": base_latency / latency,
        "optimized_size_bytes": weights_bytes(out),
    }


def worker_naive(job: dict[str, Any]) -> dict[str, Any]:
    """The naive path: load, deepcopy, quantize in memory, save, reload, evaluate."""
    _preimport()
    import torch
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.initialization import no_init_weights

    src, out = Path(job["model"]), Path(job["work"]) / "output"
    texts: list[str] = json.loads(Path(job["texts"]).read_text())
    gc.collect()
    baseline, baseline_anon = rss_now(), anon_now()
    with PeakSampler() as peak:
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(str(src))
        batches = _encode(tokenizer, texts, min(SEQ_LEN, tokenizer.model_max_length))
        model = AutoModel.from_pretrained(str(src), dtype=torch.float32).eval()
        quantized = copy.deepcopy(model)
        quantize_(quantized, Int8WeightOnlyConfig())
        out.mkdir(parents=True, exist_ok=True)
        torch.save(quantized.state_dict(), out / "model.pt")
        quantized.config.save_pretrained(str(out))
        _copy_tokenizer(src, out)
        with no_init_weights():
            config = AutoConfig.from_pretrained(str(out))
            reloaded = AutoModel.from_config(config)  # type: ignore[no-untyped-call]
        reloaded.load_state_dict(torch.load(out / "model.pt", weights_only=True), assign=True)
        reloaded.eval()
        ref, _ = _evaluate(model, batches, 1)
        emb, _ = _evaluate(reloaded, batches, 1)
        cosine = _cosine(ref, emb)
        work_s = time.perf_counter() - t0
    del model, quantized, reloaded
    return {
        "work_s": work_s,
        "baseline_rss": baseline,
        "peak_above_baseline": peak.peak - baseline,
        "peak_anon_above_baseline": peak.peak_anon - baseline_anon,
        "cosine_similarity": cosine,
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "engine": worker_engine,
    "bare": worker_bare,
    "naive": worker_naive,
}


# =========================================================================== parent side


def _worker_env(work: Path) -> dict[str, str]:
    env = engine_env(work, repeats=TIMING_REPEATS, log_level="ERROR")
    env["GPTQMODEL_CPU_WORKERS"] = env.get("GPTQMODEL_CPU_WORKERS", "2")
    return env


def run_worker(kind: str, job: dict[str, Any], timeout: float = WORKER_TIMEOUT_S) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; adds ``process_s`` (its whole wall time)."""
    with tempfile.TemporaryDirectory(prefix=f"kq-bench-{kind}-") as tmp:
        work = Path(tmp)
        job = {**job, "work": str(work)}
        (work / "job.json").write_text(json.dumps(job))
        cmd = [
            sys.executable,
            "-m",
            "tests.performance.bench_engine",
            "--worker",
            kind,
            "--job",
            str(work / "job.json"),
        ]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO_ROOT,
                env=_worker_env(work),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f}s"}
        process_s = time.perf_counter() - t0
        out = work / "out.json"
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"error": f"worker exited {proc.returncode}: {' | '.join(tail)[:400]}"}
        data: dict[str, Any] = json.loads(out.read_text())
        data["process_s"] = process_s
        return data


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    text = "\n".join(lines)
    print(text + "\n", flush=True)
    return text


def eval_texts() -> list[str]:
    """The evaluation texts the engine picks for a spec without datasets (built-in corpus)."""
    from kubequant_api.models import parse_spec
    from optimizer_job.calibration import select_texts
    from optimizer_job.settings import load_settings

    spec = parse_spec(
        {
            "model": {"uri": "file:///m"},
            "method": OVERHEAD_METHOD,
            "evaluation": {"samples": EVAL_SAMPLES},
            "output": {"uri": "file:///o"},
        }
    )
    settings = load_settings({"KUBEQUANT_TERMINATION_LOG": "/nonexistent/t"})
    return select_texts(spec, settings, needs_calibration=False).evaluation


def tiny_lm(timeout: float = 3600) -> tuple[Path | None, str]:
    """The trained tiny LM of ``tests.fixtures.models`` (trained once, then cached).

    Resolved in a fresh interpreter that imports nothing else first: the fixture's cache
    key hashes the built-in corpus, and that corpus currently changes with what the process
    imported before it was built (see the report), so a clean process keeps the key stable.
    """
    code = "from tests.fixtures.models import build_tiny_lm; print(build_tiny_lm())"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO_ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"training timed out after {timeout:.0f}s"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines or not Path(lines[-1]).is_dir():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        return None, f"exit {proc.returncode}: {tail[:300]}"
    return Path(lines[-1]), ""


def bench_overhead(minilm: Path, texts_file: Path, repeats: int) -> dict[str, Any]:
    job = {"model": str(minilm), "task": "feature-extraction", "method": OVERHEAD_METHOD}
    engine: list[dict[str, Any]] = []
    bare: list[dict[str, Any]] = []
    for i in range(repeats):  # interleaved, order alternating: drift hits both sides alike
        order = [("engine", engine), ("bare", bare)]
        for kind, sink in order if i % 2 == 0 else order[::-1]:
            print(f"  overhead run {i + 1}/{repeats}: {kind}", flush=True)
            sink.append(run_worker(kind, {**job, "texts": str(texts_file)}))
    errors = [r["error"] for r in engine + bare if "error" in r]
    ok_e = [r for r in engine if "error" not in r and r.get("exit_code") == 0]
    ok_b = [r for r in bare if "error" not in r]
    fp32 = weights_bytes(minilm)
    naive = run_worker("naive", {**job, "texts": str(texts_file)})
    summary: dict[str, Any] = {
        "fp32_weight_bytes": fp32,
        "runs": repeats,
        "errors": errors,
        "engine_work_s": _median([r["work_s"] for r in ok_e]),
        "bare_work_s": _median([r["work_s"] for r in ok_b]),
        "engine_process_s": _median([r["process_s"] for r in ok_e]),
        "bare_process_s": _median([r["process_s"] for r in ok_b]),
        "engine_peak_above_baseline": _median([r["peak_above_baseline"] for r in ok_e]),
        "bare_peak_above_baseline": _median([r["peak_above_baseline"] for r in ok_b]),
        "naive_peak_above_baseline": naive.get("peak_above_baseline"),
        "engine_peak_anon_above_baseline": _median(
            [r.get("peak_anon_above_baseline", 0) for r in ok_e]
        ),
        "bare_peak_anon_above_baseline": _median(
            [r.get("peak_anon_above_baseline", 0) for r in ok_b]
        ),
        "naive_peak_anon_above_baseline": naive.get("peak_anon_above_baseline"),
        "naive_work_s": naive.get("work_s"),
        "naive_error": naive.get("error"),
        "engine_cosine": (
            ok_e[0]["results"].get("result", {}).get("cosineSimilarity") if ok_e else None
        ),
        "bare_cosine": ok_b[0]["cosine_similarity"] if ok_b else None,
        "naive_cosine": naive.get("cosine_similarity"),
        "engine_work_s_all": [r["work_s"] for r in ok_e],
        "bare_work_s_all": [r["work_s"] for r in ok_b],
    }
    summary["work_ratio"] = _ratio(summary["engine_work_s"], summary["bare_work_s"])
    summary["process_ratio"] = _ratio(summary["engine_process_s"], summary["bare_process_s"])
    for side in ("engine", "bare", "naive"):
        summary[f"{side}_peak_over_fp32"] = _ratio(summary[f"{side}_peak_above_baseline"], fp32)
        summary[f"{side}_peak_anon_over_fp32"] = _ratio(
            summary[f"{side}_peak_anon_above_baseline"], fp32
        )
    return summary


def _result_of(doc: dict[str, Any]) -> dict[str, Any]:
    res = doc.get("result")
    return res if isinstance(res, dict) else doc


def bench_methods(
    models: dict[str, tuple[Path, str]], methods: Sequence[str]
) -> list[dict[str, Any]]:
    rows = []
    for label, (path, task) in models.items():
        for method in methods:
            print(f"  {label}: {method}", flush=True)
            run = run_worker("engine", {"model": str(path), "task": task, "method": method})
            row: dict[str, Any] = {"model": label, "task": task, "method": method}
            if "error" in run:
                row["error"] = run["error"]
            else:
                doc = run.get("results", {})
                res = _result_of(doc)
                base = res.get("baseline") or {}
                opt = res.get("optimized") or {}
                row.update(
                    exit_code=run.get("exit_code"),
                    work_s=run.get("work_s"),
                    peak_above_baseline=run.get("peak_above_baseline"),
                    original_size_bytes=res.get("originalSizeBytes"),
                    optimized_size_bytes=res.get("optimizedSizeBytes"),
                    size_ratio=_ratio(res.get("optimizedSizeBytes"), res.get("originalSizeBytes")),
                    compression_ratio=res.get("compressionRatio"),
                    latency_ratio=_ratio(opt.get("latencyMs"), base.get("latencyMs")),
                    baseline_latency_ms=base.get("latencyMs"),
                    optimized_latency_ms=opt.get("latencyMs"),
                    cosine_similarity=res.get("cosineSimilarity"),
                    top1_agreement=res.get("top1Agreement"),
                    perplexity_increase_percent=res.get("perplexityIncreasePercent"),
                    baseline_perplexity=base.get("perplexity"),
                )
                if run.get("exit_code") != 0 or res.get("optimizedSizeBytes") is None:
                    row["error"] = str(doc.get("message") or f"exit code {run.get('exit_code')}")[
                        :300
                    ]
            if "error" in row:
                print(f"    skipped: {row['error']}", flush=True)
            rows.append(row)
    return rows


def plot(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    panels = [
        ("MiniLM (feature extraction)", "cosine_similarity", "cosine similarity vs fp32"),
        ("tiny LM (causal LM)", "top1_agreement", "top-1 agreement vs fp32"),
    ]
    for ax, (label, key, ylabel) in zip(axes, panels, strict=True):
        pts = [r for r in rows if r["model"] == label and r.get(key) is not None]
        for r in pts:
            ax.scatter(r["size_ratio"], r[key], s=40)
            ax.annotate(
                r["method"],
                (r["size_ratio"], r[key]),
                fontsize=8,
                xytext=(4, 2),
                textcoords="offset points",
            )
        ax.set_title(label)
        ax.set_xlabel("artifact size / fp32 size (lower is smaller)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, "no successful runs", ha="center", transform=ax.transAxes)
    fig.suptitle("kubequant: size vs quality per method (artifacts reloaded from disk)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mb(value: float | None) -> float | None:
    return value / 1e6 if value is not None else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="overhead runs per side")
    parser.add_argument("--methods", help="comma-separated methods (default: all)")
    parser.add_argument("--skip-methods", action="store_true", help="only overhead and memory")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)

    if args.worker:
        job = json.loads(Path(args.job).read_text())
        result = WORKERS[args.worker](job)
        (Path(job["work"]) / "out.json").write_text(json.dumps(result, default=str))
        return 0

    from kubequant_api.models import QUANTIZATION_METHODS
    from tests.fixtures.models import minilm_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    minilm = minilm_dir()
    print(f"MiniLM: {minilm} ({weights_bytes(minilm) / 1e6:.1f} MB fp32)", flush=True)

    tables: list[str] = []
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },
        "settings": {
            "eval_samples": EVAL_SAMPLES,
            "sequence_length": SEQ_LEN,
            "timing_repeats": TIMING_REPEATS,
            "overhead_runs": args.repeats,
        },
    }
    with tempfile.TemporaryDirectory(prefix="kq-bench-") as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(eval_texts()))
        print("1+2. engine overhead and peak memory (torchao-int8-weight, MiniLM)", flush=True)
        ov = bench_overhead(minilm, texts_file, max(1, args.repeats))
    report["overhead"] = ov
    for err in ov["errors"] + ([ov["naive_error"]] if ov["naive_error"] else []):
        print(f"  error: {err}", flush=True)
    tables.append(
        print_table(
            "engine overhead (median of interleaved fresh-process runs)",
            ["measure", "engine", "bare script", "ratio", "goal"],
            [
                [
                    "work wall time (s)",
                    ov["engine_work_s"],
                    ov["bare_work_s"],
                    ov["work_ratio"],
                    "<= 1.10",
                ],
                [
                    "process wall time (s)",
                    ov["engine_process_s"],
                    ov["bare_process_s"],
                    ov["process_ratio"],
                    "-",
                ],
                ["cosine vs fp32", ov["engine_cosine"], ov["bare_cosine"], None, "-"],
            ],
        )
    )
    mem_rows = [
        [
            label,
            _mb(ov[f"{side}_peak_above_baseline"]),
            ov[f"{side}_peak_over_fp32"],
            _mb(ov[f"{side}_peak_anon_above_baseline"]),
            ov[f"{side}_peak_anon_over_fp32"],
            goal,
        ]
        for side, label, goal in (
            ("engine", "engine (torchao-int8-weight)", "<= 1.5"),
            ("bare", "bare script", "-"),
            ("naive", "naive (deepcopy + quantize_)", "-"),
        )
    ]
    tables.append(
        print_table(
            "peak memory above the post-import baseline, / fp32 weights "
            f"({ov['fp32_weight_bytes'] / 1e6:.1f} MB); anon = without file-backed pages",
            ["path", "peak RSS (MB)", "x fp32", "peak anon (MB)", "anon x fp32", "goal"],
            mem_rows,
        )
    )

    if not args.skip_methods:
        methods = args.methods.split(",") if args.methods else list(QUANTIZATION_METHODS)
        print("3. per method (engine CLI path, artifacts reloaded from disk)", flush=True)
        print("  tiny LM: building or reusing the cached trained model ...", flush=True)
        tiny, why = tiny_lm()
        if tiny is None:
            print(f"  tiny LM unavailable ({why}); skipping it", flush=True)
        models: dict[str, tuple[Path, str]] = {
            "MiniLM (feature extraction)": (minilm, "feature-extraction")
        }
        if tiny is not None:
            models["tiny LM (causal LM)"] = (tiny, "causal-lm")
        rows = bench_methods(models, methods)
        report["methods"] = rows
        table_rows = [
            [
                "MiniLM" if r["model"].startswith("MiniLM") else "tiny LM",
                r["method"],
                r.get("size_ratio"),
                r.get("latency_ratio"),
                r.get("cosine_similarity"),
                r.get("top1_agreement"),
                r.get("perplexity_increase_percent"),
                None if r.get("error") else _mb(r.get("peak_above_baseline")),
                None if r.get("error") else r.get("work_s"),
                (r.get("error") or "")[:60] or None,
            ]
            for r in rows
        ]
        tables.append(
            print_table(
                "per method (ratios vs fp32; size = weight files; latency = 1 sample, median)",
                [
                    "model",
                    "method",
                    "size",
                    "latency",
                    "cosine",
                    "top1",
                    "ppl +%",
                    "peak MB",
                    "run s",
                    "error",
                ],
                table_rows,
            )
        )
        plot(rows, out_dir / "size_vs_quality.png")
        report["plot"] = str(out_dir / "size_vs_quality.png")

    report["duration_s"] = time.time() - started
    report["tables"] = tables
    (out_dir / "engine.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out_dir / 'engine.json'} in {report['duration_s']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
