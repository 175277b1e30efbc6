"""Measuring a model: the original once (the reference), then each artifact reloaded from disk.

Every figure of an artifact comes from :func:`evaluate_artifact`, which loads the artifact
directory as written (``modeling.load_artifact``) — never the in-memory model a method built.
Outputs that are not finite, or an artifact that does not load, fail the quality gate.
"""

from __future__ import annotations

import gc
import logging
import math
import re
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kubequant_api.constants import GateVerdict, Task
from kubequant_api.errors import InvalidSpecError
from kubequant_api.models import Measurements, QualityGate
from optimizer_job.heap import trim_heap
from optimizer_job.methods.base import InferenceModel

log = logging.getLogger(__name__)

GATE_FIELD = "spec.evaluation.qualityGate"
WARMUP_RUNS = 2
# Bound on the logits buffer of one evaluation batch (causal LMs with large vocabularies).
LOGITS_BUDGET_BYTES = 256 * 1024 * 1024
# On the host the bound shrinks with the model: at most a 16th of its weights (at least
# MIN_LOGITS_BUDGET_BYTES), so a small model's evaluation buffers stay small next to it. The
# 0.1B synthetic Llama (32k vocabulary, 64-token rows), its gptq artifact's evaluation, peak
# above the imports: 1.28x the checkpoint with an eighth (3 rows a batch), 1.25x with a 16th
# and a 16 MiB floor (2 rows), 1.14x with this 8 MiB floor (1 row).
MODEL_BUDGET_DIVISOR = 16
MIN_LOGITS_BUDGET_BYTES = 8 * 1024 * 1024
MAX_BATCH = 32

_GATE_TASKS: dict[str, tuple[Task, ...]] = {
    "maxPerplexityIncreasePercent": (Task.CAUSAL_LM,),
    "minCosineSimilarity": (Task.FEATURE_EXTRACTION,),
    "minTop1Agreement": (Task.CAUSAL_LM, Task.SEQUENCE_CLASSIFICATION),
}


def check_gate_fits_task(gate: QualityGate | None, task: Task) -> None:
    """Every bound in the gate must be measurable for ``task`` (else InvalidSpecError)."""
    if gate is None:
        return
    for key, value in gate.to_api().items():
        if value is not None and task not in _GATE_TASKS[key]:
            fits = ", ".join(_GATE_TASKS[key])
            raise InvalidSpecError(
                f"{GATE_FIELD}.{key}",
                f"is not measured for {task} models (only for {fits})",
            )


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """Tokenized evaluation texts, shared by the original and every artifact."""

    batches: list[tuple[np.ndarray, np.ndarray]]  # (input_ids, attention_mask), int64
    bench: tuple[np.ndarray, np.ndarray]  # one sample, for latency
    tokens: int  # real (unpadded) tokens over all batches
    budget_bytes: int = LOGITS_BUDGET_BYTES  # what one batch's log-softmax buffers may take


def logits_budget(device: str, model_bytes: int | None = None) -> int:
    """Bytes one evaluation batch's outputs may take: on the host LOGITS_BUDGET_BYTES, or a
    16th of ``model_bytes`` when that is less (not under MIN_LOGITS_BUDGET_BYTES); on CUDA a
    tenth of the free memory of the first GPU (at least LOGITS_BUDGET_BYTES, at most 4 GiB)."""
    if device.startswith("cuda"):
        try:
            import torch

            free, _total = torch.cuda.mem_get_info(0)
            return int(min(4 * 1024**3, max(LOGITS_BUDGET_BYTES, free // 10)))
        except (ImportError, RuntimeError):
            return LOGITS_BUDGET_BYTES
    if model_bytes:
        scaled = max(MIN_LOGITS_BUDGET_BYTES, model_bytes // MODEL_BUDGET_DIVISOR)
        return min(LOGITS_BUDGET_BYTES, scaled)
    return LOGITS_BUDGET_BYTES


def encode(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    vocab_size: int | None,
    task: Task,
    *,
    max_tokens: int | None = None,
    budget_bytes: int = LOGITS_BUDGET_BYTES,
) -> Inputs:
    """Tokenize the evaluation texts into batches: as many rows per batch as keep a causal
    LM's logits (fp32 over the vocabulary) within ``budget_bytes`` (at most MAX_BATCH), and
    no more than ``max_tokens`` real tokens over all batches (later texts are cut)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000:
        max_length = min(max_length, limit)
    # Up to 8 rows within the host's default budget, up to MAX_BATCH with a GPU's larger one.
    cap = 8 if budget_bytes <= LOGITS_BUDGET_BYTES else MAX_BATCH
    batch_size = cap
    if task == Task.CAUSAL_LM and vocab_size:
        batch_size = max(1, min(cap, budget_bytes // (max_length * vocab_size * 4)))
    batches = []
    left = max_tokens if max_tokens is not None else None
    for start in range(0, len(texts), batch_size):
        if left is not None and left <= 0:
            break
        enc = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        ids = np.asarray(enc["input_ids"], np.int64)
        mask = np.asarray(enc["attention_mask"], np.int64)
        if left is not None:
            ids, mask = _within(ids, mask, left)
            left -= int(mask.sum())
        batches.append((ids, mask))
    ids, mask = batches[0]
    length = int(mask[0].sum())
    bench = (ids[:1, :length].copy(), mask[:1, :length].copy())
    return Inputs(batches, bench, int(sum(int(m.sum()) for _, m in batches)), budget_bytes)


def _within(ids: np.ndarray, mask: np.ndarray, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a batch whose real tokens fit in ``tokens`` (the first row cut to it when
    not even that one fits)."""
    running = np.cumsum(mask.sum(axis=1))
    rows = int((running <= tokens).sum())
    if rows:
        return ids[:rows], mask[:rows]
    mask = mask[:1].copy()
    mask[0, np.cumsum(mask[0]) > tokens] = 0
    return ids[:1], mask


# --------------------------------------------------------------------------- memory


def _status_kb(key: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


class PeakMemory:
    """Peak memory added by a block: CUDA max allocated (summed over the GPUs), else the RSS
    high-water mark.

    On Linux the RSS high-water mark is reset through /proc/self/clear_refs; elsewhere a
    sampling thread watches the RSS.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0
        self._start = 0
        self._hwm = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        trim_heap()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
            devices = range(torch.cuda.device_count())
            for index in devices:  # a model spread over GPUs: every GPU counts
                torch.cuda.reset_peak_memory_stats(index)
            self._start = sum(int(torch.cuda.memory_allocated(i)) for i in devices)
            return self
        import psutil

        self._start = int(psutil.Process().memory_info().rss)
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._hwm = _status_kb("VmHWM") is not None
        except OSError:
            self._hwm = False
        if not self._hwm:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, int(proc.memory_info().rss))

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            import torch

            devices = range(torch.cuda.device_count())
            peak = sum(int(torch.cuda.max_memory_allocated(i)) for i in devices)
            self.peak = max(0, peak - self._start)
            return
        if self._hwm:
            self.peak = max(0, (_status_kb("VmHWM") or 0) - self._start)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(0, self._sampled - self._start)


# --------------------------------------------------------------------------- running


@dataclass
class Outputs:
    """What evaluation keeps of a model's outputs (small: no full logits)."""

    task: Task
    finite: bool = True
    top1: list[np.ndarray] = field(default_factory=list)  # argmax per batch (masked later)
    embeddings: list[np.ndarray] = field(default_factory=list)  # mean-pooled per batch
    nll: float = 0.0
    count: int = 0

    @property
    def perplexity(self) -> float | None:
        if self.task != Task.CAUSAL_LM or self.count == 0 or not self.finite:
            return None
        value = math.exp(self.nll / self.count)
        return value if math.isfinite(value) else None


def output_on_device(model: InferenceModel, ids: np.ndarray, mask: np.ndarray) -> Any:
    """The model's output as a torch tensor where it was computed: a torch model's own
    (``forward_tensor``: on its device, in its dtype), else the host array ``forward`` gives
    (ONNX Runtime) wrapped without a copy."""
    import torch

    forward_tensor = getattr(model, "forward_tensor", None)
    if callable(forward_tensor):
        return forward_tensor(ids, mask)
    return torch.from_numpy(np.asarray(model.forward(ids, mask), dtype=np.float32))


def _chunk_rows(batch: int, vocab: int, budget_bytes: int) -> int:
    """Sequence positions per log-softmax chunk: its fp32 buffers (the upcast logits and
    their log-softmax) stay within ``budget_bytes`` whatever the vocabulary."""
    return max(1, budget_bytes // max(1, batch * vocab * 4 * 2))


def _collect(
    out: Outputs,
    raw: Any,
    ids: np.ndarray,
    mask: np.ndarray,
    budget_bytes: int = LOGITS_BUDGET_BYTES,
) -> None:
    """Reduce one batch's output where it was computed: per-token top-1 ids, the target
    tokens' log-probabilities (log-softmax in fp32, ``torch.gather`` of the targets) and
    mean-pooled embeddings go to the host; full-vocabulary logits never do."""
    import torch

    if isinstance(raw, np.ndarray):
        raw = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
    with torch.no_grad():
        # Checked a chunk of positions at a time: a mask of the whole output would be half
        # the size of bf16 logits again.
        step = _chunk_rows(raw.shape[0], raw.shape[-1], budget_bytes)
        parts = (
            [raw[:, s : s + step] for s in range(0, raw.shape[1], step)] if raw.dim() > 2 else [raw]
        )
        if not all(bool(torch.isfinite(p).all()) for p in parts):
            out.finite = False
        device = raw.device
        mask_t = torch.as_tensor(mask, device=device)
        if out.task == Task.FEATURE_EXTRACTION:
            m = mask_t[..., None].to(torch.float32)
            pooled = (raw.to(torch.float32) * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
            out.embeddings.append(pooled.cpu().numpy())
            return
        out.top1.append(raw.argmax(dim=-1).cpu().numpy())
        if out.task != Task.CAUSAL_LM or raw.shape[1] < 2:
            return
        targets = torch.as_tensor(ids, device=device)[:, 1:]
        valid = mask_t[:, 1:].to(torch.bool)
        seq = raw.shape[1] - 1
        nll = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, seq, step):
            stop = min(seq, start + step)
            logp = torch.log_softmax(raw[:, start:stop, :].to(torch.float32), dim=-1)
            picked = torch.gather(logp, -1, targets[:, start:stop, None])[..., 0]
            nll -= picked[valid[:, start:stop]].to(torch.float64).sum()
        out.nll += float(nll)
        out.count += int(valid.sum())


@dataclass
class ModelRun:
    outputs: Outputs
    measurements: Measurements


def run_model(
    load: Callable[[], InferenceModel],
    inputs: Inputs,
    task: Task,
    device: str,
    repeats: int,
) -> ModelRun:
    """Load, run every evaluation batch, time the bench input, and free the model."""
    outputs = Outputs(task)
    with PeakMemory(device) as peak:
        model = load()
        try:
            for ids, mask in inputs.batches:
                raw = output_on_device(model, ids, mask)
                _collect(outputs, raw, ids, mask, inputs.budget_bytes)
                del raw
                trim_heap()
            ids, mask = inputs.bench
            for _ in range(WARMUP_RUNS):
                model.forward(ids, mask)
            timings = []
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                model.forward(ids, mask)
                _sync(device)
                timings.append(time.perf_counter() - t0)
        finally:
            model.close()
            del model
    gc.collect()
    latency = statistics.median(timings)
    measurements = Measurements(
        latency_ms=round(latency * 1000, 3),
        tokens_per_second=round(int(mask.sum()) / latency, 2) if latency > 0 else None,
        perplexity=_round(outputs.perplexity),
        peak_memory_bytes=peak.peak,
    )
    return ModelRun(outputs, measurements)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


# --------------------------------------------------------------------------- comparing


@dataclass
class Comparison:
    cosine_similarity: float | None = None
    top1_agreement: float | None = None
    perplexity_increase_percent: float | None = None
    finite: bool = True


def compare(reference: Outputs, candidate: Outputs, inputs: Inputs) -> Comparison:
    result = Comparison(finite=candidate.finite)
    if not candidate.finite:
        return result
    if reference.task == Task.FEATURE_EXTRACTION:
        a = np.concatenate(reference.embeddings).astype(np.float64)
        b = np.concatenate(candidate.embeddings).astype(np.float64)
        denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos = (a * b).sum(axis=1) / np.maximum(denom, 1e-12)
        result.cosine_similarity = _round(float(cos.mean()))
        return result
    agree = total = 0
    for (_, mask), ref, cand in zip(inputs.batches, reference.top1, candidate.top1, strict=True):
        if reference.task == Task.CAUSAL_LM:
            valid = mask.astype(bool)
            agree += int((ref[valid] == cand[valid]).sum())
            total += int(valid.sum())
        else:
            agree += int((ref == cand).sum())
            total += int(ref.size)
    result.top1_agreement = _round(agree / total) if total else None
    ref_ppl, cand_ppl = reference.perplexity, candidate.perplexity
    if ref_ppl is not None and cand_ppl is not None:
        result.perplexity_increase_percent = _round((cand_ppl / ref_ppl - 1.0) * 100.0, 4)
    elif reference.task == Task.CAUSAL_LM:
        result.finite = False
    return result


def gate_verdict(
    gate: QualityGate | None, comparison: Comparison | None
) -> tuple[GateVerdict, list[str]]:
    """The gate's verdict and, when Failed, why (one line per failed bound)."""
    if comparison is None:
        return GateVerdict.FAILED, ["the artifact could not be reloaded and measured"]
    if not comparison.finite:
        return GateVerdict.FAILED, ["the artifact produced non-finite outputs (NaN or inf)"]
    if gate is None or not gate.requested():
        return GateVerdict.NOT_REQUESTED, []
    failures = []
    checks = (
        ("maxPerplexityIncreasePercent", gate.max_perplexity_increase_percent,
         comparison.perplexity_increase_percent, "max"),
        ("minCosineSimilarity", gate.min_cosine_similarity, comparison.cosine_similarity, "min"),
        ("minTop1Agreement", gate.min_top1_agreement, comparison.top1_agreement, "min"),
    )  # fmt: skip
    for name, bound, value, kind in checks:
        if bound is None:
            continue
        if value is None:
            failures.append(f"{name}: not measured")
        elif (kind == "max" and value > bound) or (kind == "min" and value < bound):
            failures.append(f"{name}: measured {value:.6g}, bound {bound:g}")
    return (GateVerdict.FAILED if failures else GateVerdict.PASSED), failures
