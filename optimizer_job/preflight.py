"""``dryRun: true``: check everything a run needs and estimate it; quantize nothing.

The plan (``status.result.plan``) holds the source and output checks, the model's task and
parameter count, and per candidate: compatibility, expected artifact size, peak memory and
time estimates. Every problem found is listed under ``errors`` with the field it concerns.
Estimates are rough by design: memory from the parameters in the checkpoint's dtype (the
baseline), what each method holds while it quantizes (:func:`quantize_peak`) and the artifact,
with ``fit`` comparing the peak with spec.resources.memory; time from parameters x a
per-method rate; the per-method figures (size ratio, rate) are the method table's
(:mod:`kubequant_api.methods`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final

from kubequant_api.constants import MODEL_FIELD, OUTPUT_FIELD, Task
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.methods import method_spec
from kubequant_api.models import ModelOptimizationSpec
from optimizer_job.calibration import select_texts
from optimizer_job.evaluation import LOGITS_BUDGET_BYTES, check_gate_fits_task
from optimizer_job.loading import add_header_dtypes, dtype_from
from optimizer_job.redact import redact
from optimizer_job.search import PlannedRun, check_compatible
from optimizer_job.settings import EngineSettings
from optimizer_job.storage import OutputSink, probe_source

_DTYPE_BYTES: Final = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
_SAFETENSORS_NAMES: Final = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_FLOPS: Final = {"cpu": 2e10, "cuda": 1e13}
_RUNTIME_OVERHEAD_BYTES: Final = 512 * 1024 * 1024
_LOAD_BYTES_PER_S: Final = 200e6


def task_from_config(config: dict[str, Any]) -> Task:
    """The task ``modeling.detect_task`` would find, from config.json alone."""
    names = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForCausalLM") for a in names):
        return Task.CAUSAL_LM
    if any(a.endswith("ForSequenceClassification") for a in names):
        return Task.SEQUENCE_CLASSIFICATION
    return Task.FEATURE_EXTRACTION


def count_parameters(probe: dict[str, Any]) -> tuple[int, str]:
    """Parameter count from safetensors headers, else estimated from config.json."""
    total = 0
    for header in probe.get("safetensors", {}).values():
        for name, entry in header.items():
            if name != "__metadata__" and isinstance(entry, dict):
                total += math.prod(int(d) for d in entry.get("shape", []))
    if total:
        return total, "safetensors headers"
    cfg = probe.get("config", {})
    hidden = int(cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("n_embd") or 0)
    layers = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers") or 0)
    inter = int(cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden)
    vocab = int(cfg.get("vocab_size") or 0)
    gated = 3 if cfg.get("hidden_act") in ("silu", "swiglu") else 2
    estimate = vocab * hidden + layers * (4 * hidden * hidden + gated * hidden * inter)
    if estimate:
        return estimate, "config.json"
    weights = sum(s for f, s in probe.get("files", {}).items() if f.endswith((".bin", ".pt")))
    return weights // 4, "weight file sizes (fp32 assumed)"


def _error(field: str, exc: BaseException) -> dict[str, str]:
    return {"field": getattr(exc, "field", field), "message": getattr(exc, "message", str(exc))}


def build_plan(
    spec: ModelOptimizationSpec,
    settings: EngineSettings,
    candidates: list[PlannedRun],
    sink: OutputSink,
    device: str,
) -> dict[str, Any]:
    errors: list[dict[str, str]] = []
    plan: dict[str, Any] = {"device": device, "errors": errors}

    probe: dict[str, Any] | None = None
    try:
        probe = probe_source(spec.model.uri, settings)
        plan["source"] = {
            "uri": redact(spec.model.uri),
            "reachable": True,
            "files": len(probe["files"]),
            "sizeBytes": sum(probe["files"].values()),
        }
    except KubequantError as exc:
        plan["source"] = {"uri": redact(spec.model.uri), "reachable": False}
        errors.append(_error(MODEL_FIELD, exc))

    try:
        checked = sink.check()
        plan["output"] = {
            "uri": redact(spec.output.uri),
            "reachable": True,
            "writable": True,
            "existingArtifact": checked["existingComplete"],
            "overwrite": spec.output.overwrite,
        }
    except KubequantError as exc:
        plan["output"] = {"uri": redact(spec.output.uri), "reachable": False, "writable": False}
        errors.append(_error(OUTPUT_FIELD, exc))

    needs_cal = any(method_spec(c.name).needs_calibration for c in candidates)
    try:
        texts = select_texts(spec, settings, needs_calibration=needs_cal)
        plan["data"] = {
            "calibrationSamples": len(texts.calibration),
            "evaluationSamples": len(texts.evaluation),
            "source": texts.source,
        }
    except KubequantError as exc:
        errors.append(_error("spec.calibration.datasetUri", exc))

    if probe is None:
        return plan
    task = (
        task_from_config(probe["config"]) if spec.model.task == Task.AUTO else Task(spec.model.task)
    )
    params, counted_from = count_parameters(probe)
    fp32_bytes = params * 4
    plan["model"] = {"task": str(task), "parameters": params, "parametersFrom": counted_from}
    try:
        check_gate_fits_task(spec.evaluation.quality_gate, task)
    except InvalidSpecError as exc:
        errors.append(_error("spec.evaluation.qualityGate", exc))

    dtype = model_dtype(probe)
    stored = params * _DTYPE_BYTES[_SAFETENSORS_NAMES[dtype]]
    shard = max(
        (size for rel, size in probe["files"].items() if rel.endswith(".safetensors")),
        default=stored,
    )
    plan["model"].update(dtype=dtype, weightsBytes=stored)
    eval_tokens = min(
        spec.evaluation.max_tokens,
        spec.evaluation.samples * min(spec.calibration.sequence_length, 256),
    )
    eval_seconds = 2 * (2 * params * eval_tokens) / _FLOPS.get(device, _FLOPS["cpu"])
    load_seconds = 2 * stored / _LOAD_BYTES_PER_S
    rows = []
    check_compatible(candidates, task, device)
    for cand in candidates:
        method = method_spec(cand.name)
        row: dict[str, Any] = {"method": cand.name, "params": cand.params_dict}
        row["compatible"] = cand.incompatible is None
        if cand.incompatible is not None:
            row["reason"] = cand.incompatible.message
            if spec.method != "auto" or len(candidates) == 1:
                errors.append(_error(cand.field, cand.incompatible))
        expected = int(fp32_bytes * method.expected_size_ratio)
        rate = method.quantize_s_per_mparam
        if device == "cuda":
            rate /= 10
        seconds = load_seconds + rate * params / 1e6 + eval_seconds
        row.update(
            expectedSizeBytes=expected,
            expectedCompressionRatio=round(1 / method.expected_size_ratio, 2),
            estimatedPeakMemoryBytes=candidate_peak(cand.name, params, stored, shard),
            estimatedSeconds=round(seconds, 1),
            needsCalibration=method.needs_calibration,
        )
        rows.append(row)
    if spec.method == "auto" and rows and not any(r["compatible"] for r in rows):
        errors.append(
            {"field": "spec.candidates", "message": "no candidate fits this model and device"}
        )
    plan["candidates"] = rows
    peak = max((r["estimatedPeakMemoryBytes"] for r in rows), default=0)
    plan["estimatedPeakMemoryBytes"] = peak
    plan["estimatedSeconds"] = round(sum(r["estimatedSeconds"] for r in rows), 1)
    plan["fit"] = fit(peak, spec.resources.memory, spec.gpu_count())
    return plan


# Peak of quantize() per method family, beyond the baseline (which is freed before it):
# quantize-while-loading (bitsandbytes, torchao) holds the quantized model plus the shard
# being read, at least 1.2x the stored weights (docs/findings.md); onnx upcasts to fp32 and
# exports (the graph holds a second copy); the others hold the model as stored while they
# quantize it (quanto in place, llm-compressor on the host with one layer on the device).
_WHILE_LOADING: Final = ("bnb-", "torchao-")
_UPCASTS: Final = ("onnx-",)
_WHILE_LOADING_FACTOR: Final = 1.2


def candidate_peak(name: str, params: int, stored: int, shard: int) -> int:
    """Peak memory of one candidate's run: the baseline (the model as stored plus one batch's
    logits), its quantize step, or its artifact reloaded and evaluated, plus the runtime."""
    fp32_bytes = params * 4
    expected = int(fp32_bytes * method_spec(name).expected_size_ratio)
    phases = (
        stored + LOGITS_BUDGET_BYTES,
        quantize_peak(name, stored, fp32_bytes, expected, shard),
        expected + LOGITS_BUDGET_BYTES,
    )
    return int(max(phases) + _RUNTIME_OVERHEAD_BYTES)


def quantize_peak(method: str, stored: int, fp32_bytes: int, expected: int, shard: int) -> int:
    if method.startswith(_WHILE_LOADING):
        # measured on CPU (torchao int8, bf16 source): ~1.2x the stored weights
        return max(expected + shard, int(_WHILE_LOADING_FACTOR * stored))
    if method.startswith(_UPCASTS):
        return 2 * fp32_bytes
    return stored + expected


def model_dtype(probe: dict[str, Any]) -> str:
    """The checkpoint's dtype as loading will see it, from the headers and config.json."""
    counts: dict[str, int] = {}
    for header in probe.get("safetensors", {}).values():
        add_header_dtypes(header, counts)
    return dtype_from(probe.get("config", {}), counts)


def parse_quantity(text: str | None) -> int | None:
    """Bytes of a Kubernetes quantity (``8Gi``, ``500M``, ``1e9``); None when unset/odd."""
    if not text:
        return None
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
             "m": 1e-3}  # fmt: skip
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            try:
                return int(float(text[: -len(suffix)]) * units[suffix])
            except ValueError:
                return None
    try:
        return int(float(text))
    except ValueError:
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def fit(peak: int, memory: str | None, gpus: int, limit_bytes: int | None = None) -> dict[str, Any]:
    """Whether the estimate fits the memory limit: ``limit_bytes`` (the container's, in a
    run) or the spec's ``resources.memory`` (else the operator sizes the Job from it)."""
    limit = limit_bytes if limit_bytes is not None else parse_quantity(memory)
    source = "the container's" if limit_bytes is not None else "spec.resources.memory"
    where = f" on {gpus} GPU(s) and the host" if gpus else " on the host"
    if limit is None:
        summary = f"needs ~{_gib(peak)}{where}; no spec.resources.memory: the Job is sized from it"
        return {"needsBytes": peak, "limitBytes": None, "fits": True, "summary": summary}
    fits = peak <= limit
    summary = f"needs ~{_gib(peak)}{where}, limit {_gib(limit)} ({source})"
    if not fits:
        summary += ": raise spec.resources.memory or unset it"
    return {"needsBytes": peak, "limitBytes": limit, "fits": fits, "summary": summary}


def container_memory_limit() -> int | None:
    """This container's memory limit (cgroup v2, then v1); None when unlimited or unknown."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
        return None
    return None


def local_probe(source_dir: Path) -> dict[str, Any]:
    """What :func:`build_plan` reads of a source, from a fetched model directory."""
    files = {p.name: p.stat().st_size for p in source_dir.iterdir() if p.is_file()}
    try:
        config = json.loads((source_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    headers: dict[str, Any] = {}
    for name in files:
        if name.endswith(".safetensors"):
            with (source_dir / name).open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                headers[name] = json.loads(fh.read(size)) if 0 < size < 100_000_000 else {}
    return {
        "files": files,
        "config": config if isinstance(config, dict) else {},
        "safetensors": headers,
    }


def run_fit(source_dir: Path, spec: ModelOptimizationSpec) -> dict[str, Any]:
    """A run's fit, stated before anything loads: the peak of its candidates on the fetched
    model against the container's memory limit (else spec.resources.memory)."""
    probe = local_probe(source_dir)
    params, _ = count_parameters(probe)
    stored = params * _DTYPE_BYTES[_SAFETENSORS_NAMES[model_dtype(probe)]]
    shard = max(
        (size for rel, size in probe["files"].items() if rel.endswith(".safetensors")),
        default=stored,
    )
    peak = max(candidate_peak(p.name, params, stored, shard) for p in spec.planned)
    return fit(peak, spec.resources.memory, spec.gpu_count(), container_memory_limit())
