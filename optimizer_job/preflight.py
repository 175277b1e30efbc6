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
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from kubequant_api.constants import MODEL_FIELD, OUTPUT_FIELD, Task
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.jobenv import source_on_ephemeral_storage
from kubequant_api.methods import method_spec
from kubequant_api.models import ModelOptimizationSpec
from optimizer_job.calibration import select_texts
from optimizer_job.evaluation import LOGITS_BUDGET_BYTES, check_gate_fits_task
from optimizer_job.loading import add_header_dtypes, dtype_from, read_safetensors_header
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


# Token and position embeddings and the LM head: the methods keep them in the checkpoint's
# dtype (GPTQ/AWQ ignore the head, bitsandbytes skips it, torchao and quanto quantize the
# other Linear layers), except those whose table entry says ``quantizes_embeddings``
# (ONNX Runtime's dynamic quantization of the Gather and MatMul nodes). No method quantizes
# the 1-D tensors (norms, biases).
_EMBEDDING_TENSOR: Final = re.compile(r"(^|\.)(embed[^.]*|wte|wpe|lm_head|embed_out|shared)(\.|$)")


def count_parameters(probe: dict[str, Any]) -> tuple[int, str]:
    """Parameter count from safetensors headers, else estimated from config.json."""
    total = _header_counts(probe)[0]
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


def _header_counts(probe: dict[str, Any]) -> tuple[int, int, int]:
    """(all parameters, embeddings and LM head, 1-D tensors) in the safetensors headers."""
    total = embeddings = vectors = 0
    for header in probe.get("safetensors", {}).values():
        for name, entry in header.items():
            if name == "__metadata__" or not isinstance(entry, dict):
                continue
            shape = [int(d) for d in entry.get("shape", [])]
            count = math.prod(shape)
            total += count
            if len(shape) < 2:
                vectors += count
            elif _EMBEDDING_TENSOR.search(name):
                embeddings += count
    return total, embeddings, vectors


@dataclass(frozen=True)
class ModelWeights:
    """What the estimates need of a checkpoint."""

    params: int
    embeddings: int  # parameters of the embedding tables and the LM head
    vectors: int  # parameters of 1-D tensors (norms, biases), which no method quantizes
    stored: int  # bytes in the dtype loading uses
    shard: int  # the largest safetensors file (the whole checkpoint when there is none)
    offloadable: bool = True  # safetensors and no code of its own: GPTQ/AWQ leave it on disk

    @property
    def fp32_bytes(self) -> int:
        return self.params * 4

    @property
    def layer_bytes(self) -> int:
        """Bytes, as stored, of all but the embeddings and the LM head."""
        return self.stored * (self.params - self.embeddings) // self.params if self.params else 0

    def expected_size(self, method: str) -> int:
        """The artifact's bytes: the parameters the method quantizes at its ratio (artifact
        bytes per fp32 byte), the others as stored."""
        spec = method_spec(method)
        kept = self.vectors + (0 if spec.quantizes_embeddings else self.embeddings)
        kept_bytes = self.stored * kept // self.params if self.params else 0
        return int((self.params - kept) * 4 * spec.expected_size_ratio) + kept_bytes


def model_weights(probe: dict[str, Any]) -> ModelWeights:
    """The checkpoint's parameters and bytes, from a probe of its files (without headers:
    the embedding table config.json implies)."""
    total, embeddings, vectors = _header_counts(probe)
    params = total or count_parameters(probe)[0]
    if not total:
        cfg = probe.get("config", {})
        hidden = int(cfg.get("hidden_size") or cfg.get("d_model") or cfg.get("n_embd") or 0)
        embeddings, vectors = min(params, int(cfg.get("vocab_size") or 0) * hidden), 0
    stored = params * _DTYPE_BYTES[_SAFETENSORS_NAMES[model_dtype(probe)]]
    shards = [size for rel, size in probe["files"].items() if rel.endswith(".safetensors")]
    cfg = probe.get("config", {})
    offloadable = bool(shards) and not (isinstance(cfg, dict) and cfg.get("auto_map"))
    return ModelWeights(
        params, embeddings, vectors, stored, max(shards, default=stored), offloadable
    )


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
    weights = model_weights(probe)
    stored = weights.stored
    plan["model"].update(dtype=dtype, weightsBytes=stored)
    plan["model"].update(embeddingParameters=weights.embeddings, vectorParameters=weights.vectors)
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
        expected = weights.expected_size(cand.name)
        rate = method.quantize_s_per_mparam
        if device == "cuda":
            rate /= 10
        seconds = load_seconds + rate * params / 1e6 + eval_seconds
        row.update(
            expectedSizeBytes=expected,
            expectedCompressionRatio=round(fp32_bytes / expected, 2) if expected else None,
            estimatedPeakMemoryBytes=candidate_peak(cand.name, weights, device),
            estimatedSeconds=round(seconds, 1),
            estimatedDiskBytes=candidate_disk(cand.name, weights),
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
    downloaded = source_on_ephemeral_storage(spec.model.uri, spec.cache.pvc_name)
    plan["disk"] = disk_needs(
        rows, plan["source"]["sizeBytes"] if downloaded else 0, auto=spec.method == "auto"
    )
    return plan


# Peak of quantize() per method family, beyond the baseline (which is freed before it):
# quantize-while-loading (bitsandbytes, torchao) holds the quantized model plus the shard
# being read, at least 1.2x the stored weights (docs/findings.md); onnx upcasts to fp32 and
# exports (the graph holds a second copy); GPTQ/AWQ leave an offloadable model on disk and
# hold a layer's calibration (measured on CPU: 0.40x the checkpoint at 0.5B, 0.30x at 1.5B;
# 1.10x at 0.1B, where the process's fixed state weighs more), else hold it as stored while
# they calibrate it, like quanto.
_WHILE_LOADING: Final = ("bnb-", "torchao-")
_UPCASTS: Final = ("onnx-",)
_OFFLOADED: Final = ("gptq", "awq")
_WHILE_LOADING_FACTOR: Final = 1.2
_OFFLOADED_FACTOR: Final = 0.5


def candidate_peak(name: str, weights: ModelWeights, device: str = "cpu") -> int:
    """Peak memory of one candidate's run: the baseline (the model as stored plus one batch's
    logits), its quantize step, or its artifact reloaded and evaluated, plus the runtime.
    On the host a GPTQ/AWQ artifact is evaluated decompressed to the source dtype."""
    expected = weights.expected_size(name)
    stored = weights.stored
    reloaded = stored if name in _OFFLOADED and not device.startswith("cuda") else expected
    phases = (
        stored + LOGITS_BUDGET_BYTES,
        quantize_peak(name, weights, expected),
        reloaded + LOGITS_BUDGET_BYTES,
    )
    return int(max(phases) + _RUNTIME_OVERHEAD_BYTES)


def quantize_peak(method: str, weights: ModelWeights, expected: int) -> int:
    stored = weights.stored
    if method.startswith(_WHILE_LOADING):
        # measured on CPU (torchao int8, bf16 source): ~1.2x the stored weights
        return max(expected + weights.shard, int(_WHILE_LOADING_FACTOR * stored))
    if method.startswith(_UPCASTS):
        return 2 * weights.fp32_bytes
    if method in _OFFLOADED and weights.offloadable:
        return int(_OFFLOADED_FACTOR * stored)
    return stored + expected


# Scratch disk (the work directory, an emptyDir in the Job) per candidate: its artifact; for
# GPTQ/AWQ also the offload folder beside it, where the calibrated decoder layers are written
# back layer by layer in the source dtype (the embeddings and head stay in the source shards;
# measured on the 0.1B synthetic checkpoint: at most 115 MB of its 212 MB, the layers' 113 MB,
# and 157.5 MB in all at the peak, artifact and offload folder together); for onnx-int8 the
# fp32 export beside the int8 model.
def candidate_disk(name: str, weights: ModelWeights) -> int:
    """Bytes one candidate's quantize step writes to the work directory at its peak."""
    expected = weights.expected_size(name)
    if name in _OFFLOADED and weights.offloadable:
        return expected + weights.layer_bytes
    if name.startswith(_UPCASTS):
        return expected + weights.fp32_bytes
    return expected


def disk_needs(rows: list[dict[str, Any]], source_bytes: int, *, auto: bool) -> dict[str, Any]:
    """The run's ephemeral storage: the source's download when it lands on an emptyDir
    (``source_bytes``), plus the largest candidate's working files and artifact, plus (a
    search over several) the best artifact so far, the one other that stays staged."""
    usable = [r for r in rows if r.get("compatible")] or rows
    search = max((int(r["estimatedDiskBytes"]) for r in usable), default=0)
    if auto and len(usable) > 1:
        search += max(int(r["expectedSizeBytes"]) for r in usable)
    needs = source_bytes + search
    download = f"{_gib(source_bytes)} for the download" if source_bytes else "read in place"
    summary = (
        f"needs ~{_gib(needs)} of ephemeral storage (model {download}, "
        f"{_gib(search)} for the artifacts and working files)"
    )
    return {"needsBytes": needs, "sourceBytes": source_bytes, "summary": summary}


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
            found = read_safetensors_header(source_dir / name)
            headers[name] = found[1] if found is not None else {}
    return {
        "files": files,
        "config": config if isinstance(config, dict) else {},
        "safetensors": headers,
    }


def run_fit(
    source_dir: Path, spec: ModelOptimizationSpec, work_dir: Path, device: str = "cpu"
) -> dict[str, Any]:
    """A run's fit, stated before anything loads: the peak of its candidates on the fetched
    model against the container's memory limit (else spec.resources.memory), and under
    ``disk`` what they will write against the space free in ``work_dir``."""
    weights = model_weights(local_probe(source_dir))
    peak = max(candidate_peak(p.name, weights, device) for p in spec.planned)
    found = fit(peak, spec.resources.memory, spec.gpu_count(), container_memory_limit())
    rows = [
        {
            "compatible": True,
            "estimatedDiskBytes": candidate_disk(p.name, weights),
            "expectedSizeBytes": weights.expected_size(p.name),
        }
        for p in spec.planned
    ]
    found["disk"] = disk_fit(
        disk_needs(rows, 0, auto=spec.method == "auto")["needsBytes"], work_dir
    )
    return found


def disk_fit(needs: int, work_dir: Path) -> dict[str, Any]:
    """Whether ``needs`` bytes fit in the space free under ``work_dir`` (the source is
    already there)."""
    free = shutil.disk_usage(work_dir).free
    fits = needs <= free
    summary = f"needs ~{_gib(needs)} in {work_dir}, {_gib(free)} free"
    if not fits:
        summary += ": the run may fail writing its artifact"
    return {"needsBytes": needs, "freeBytes": free, "fits": fits, "summary": summary}
