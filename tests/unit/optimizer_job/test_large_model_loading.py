"""Memory that stays proportional to the model: a checkpoint is loaded in the dtype it is
stored in, evaluation reduces the outputs where they were computed (the same figures as
the host computation it replaced), and the evaluation token budget holds."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from kubequant_api.constants import Task
from kubequant_api.models import parse_spec
from optimizer_job import loading, modeling
from optimizer_job.corpus import split_corpus
from optimizer_job.evaluation import Outputs, _collect, compare, encode, output_on_device
from tests.fixtures.storage import EngineEnv, run_engine, write_manifest


def _host_reference(
    logits: np.ndarray, ids: np.ndarray, mask: np.ndarray
) -> tuple[float, int, np.ndarray]:
    """The computation evaluation used to do on the host: fp32 numpy log-softmax over the
    whole vocabulary, the targets' log-probabilities picked with take_along_axis."""
    arr = np.asarray(logits, dtype=np.float32)
    x = arr[:, :-1, :]
    shifted = x - x.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(logp, ids[:, 1:][..., None], axis=-1)[..., 0]
    valid = mask[:, 1:].astype(bool)
    return float(-picked[valid].sum()), int(valid.sum()), arr.argmax(axis=-1)


def _header_dtypes(model_dir: Path) -> set[str]:
    found: set[str] = set()
    for path in model_dir.glob("*.safetensors"):
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        found |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return found


def test_a_bf16_checkpoint_is_loaded_and_measured_as_bf16(
    tiny_lm_bf16_path: Path, tiny_lm_path: Path
) -> None:
    import torch

    assert _header_dtypes(tiny_lm_bf16_path) == {"BF16"}
    assert loading.checkpoint_dtype(tiny_lm_bf16_path) == "bfloat16"
    assert loading.checkpoint_dtype(tiny_lm_path) == "float32"
    model = modeling.load_original(tiny_lm_bf16_path, Task.CAUSAL_LM)
    try:
        module = model.module  # type: ignore[attr-defined]
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
        # the model holds bf16 weights only: no second full-precision copy
        held = sum(p.numel() * p.element_size() for p in module.parameters())
        assert held == sum(loading.safetensors_dtypes(tiny_lm_bf16_path).values())
        ids = np.array([[1, 5, 9, 13]], dtype=np.int64)
        out = output_on_device(model, ids, np.ones_like(ids))
        assert out.dtype == torch.bfloat16  # computed in the checkpoint's dtype
    finally:
        model.close()


def test_the_header_dtype_wins_over_a_config_that_says_otherwise(
    tiny_lm_bf16_path: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "mislabelled"
    shutil.copytree(tiny_lm_bf16_path, copy)
    config = json.loads((copy / "config.json").read_text())
    config["dtype"] = "float32"
    (copy / "config.json").write_text(json.dumps(config))
    assert loading.checkpoint_dtype(copy) == "bfloat16"
    # without safetensors the config decides; a .bin without either is fp32
    assert loading.dtype_from({"torch_dtype": "float16"}, {}) == "float16"
    assert loading.dtype_from({"text_config": {"dtype": "bfloat16"}}, {}) == "bfloat16"
    assert loading.dtype_from({}, {}) == "float32"


def test_evaluation_on_device_equals_the_host_computation(tiny_lm_path: Path) -> None:
    texts = split_corpus()[1][:12]
    tokenizer = modeling.load_tokenizer(tiny_lm_path)
    inputs = encode(tokenizer, texts, 64, 2048, Task.CAUSAL_LM)
    model = modeling.load_original(tiny_lm_path, Task.CAUSAL_LM)
    on_device = Outputs(Task.CAUSAL_LM)
    nll = 0.0
    count = 0
    try:
        for ids, mask in inputs.batches:
            _collect(on_device, output_on_device(model, ids, mask), ids, mask)
            ref_nll, ref_count, ref_top1 = _host_reference(model.forward(ids, mask), ids, mask)
            nll += ref_nll
            count += ref_count
            assert np.array_equal(on_device.top1[-1], ref_top1)
    finally:
        model.close()
    assert on_device.count == count > 100
    assert math.isclose(on_device.nll, nll, rel_tol=1e-5)
    assert on_device.perplexity is not None
    assert math.isclose(on_device.perplexity, math.exp(nll / count), rel_tol=1e-5)
    same = compare(on_device, on_device, inputs)
    assert same.top1_agreement == 1.0 and same.perplexity_increase_percent == 0.0


def test_the_log_softmax_is_chunked_and_gathered() -> None:
    """Logits wider than one chunk's budget give the same figures chunk by chunk."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 40, 50_000)).astype(np.float32) * 4
    ids = rng.integers(0, 50_000, size=(2, 40)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    budget = 2 * 50_000 * 4 * 2 * 6  # six positions per chunk: seven chunks over 39
    out = Outputs(Task.CAUSAL_LM)
    _collect(out, logits, ids, mask, budget_bytes=budget)
    ref_nll, ref_count, _ = _host_reference(logits, ids, mask)
    assert out.count == ref_count
    assert math.isclose(out.nll, ref_nll, rel_tol=1e-5)


def test_the_host_logits_budget_shrinks_with_the_model(tiny_lm_path: Path) -> None:
    """A small model's evaluation batches are sized to it, and the batch's log-softmax buffers
    are chunked to the same budget (the figures do not depend on it)."""
    from optimizer_job.evaluation import (
        LOGITS_BUDGET_BYTES,
        MIN_LOGITS_BUDGET_BYTES,
        logits_budget,
        run_model,
    )

    mb = 1024 * 1024
    assert logits_budget("cpu") == LOGITS_BUDGET_BYTES
    assert logits_budget("cpu", 400 * mb) == 25 * mb  # a 16th of the model
    assert logits_budget("cpu", 10 * mb) == MIN_LOGITS_BUDGET_BYTES
    assert logits_budget("cpu", 70 * 1024 * mb) == LOGITS_BUDGET_BYTES
    texts = split_corpus()[1][:12]
    tokenizer = modeling.load_tokenizer(tiny_lm_path)
    vocab = 32_000  # sizes the batches: 64 positions * 32k * 4 B = 8 MiB of fp32 per row
    narrow = encode(
        tokenizer, texts, 64, vocab, Task.CAUSAL_LM, budget_bytes=MIN_LOGITS_BUDGET_BYTES
    )
    roomy = encode(tokenizer, texts, 64, vocab, Task.CAUSAL_LM)
    assert {b[0].shape[0] for b in narrow.batches} == {1}
    assert narrow.budget_bytes == MIN_LOGITS_BUDGET_BYTES
    assert max(b[0].shape[0] for b in roomy.batches) == 8

    def load() -> object:
        return modeling.load_original(tiny_lm_path, Task.CAUSAL_LM)

    a = run_model(load, narrow, Task.CAUSAL_LM, "cpu", 1)  # type: ignore[arg-type]
    b = run_model(load, roomy, Task.CAUSAL_LM, "cpu", 1)  # type: ignore[arg-type]
    assert a.outputs.count == b.outputs.count
    assert math.isclose(a.outputs.nll, b.outputs.nll, rel_tol=1e-4)


def test_the_evaluation_token_budget_cuts_later_texts(tiny_lm_path: Path) -> None:
    texts = split_corpus()[1][:40]
    tokenizer = modeling.load_tokenizer(tiny_lm_path)
    whole = encode(tokenizer, texts, 64, 2048, Task.CAUSAL_LM)
    cut = encode(tokenizer, texts, 64, 2048, Task.CAUSAL_LM, max_tokens=300)
    assert whole.tokens > 300
    assert 0 < cut.tokens <= 300
    one = encode(tokenizer, texts, 64, 2048, Task.CAUSAL_LM, max_tokens=20)
    assert one.tokens == 20 and len(one.batches) == 1
    spec = parse_spec(
        {
            "model": {"uri": "file:///m"},
            "method": "torchao-int8-weight",
            "output": {"uri": "file:///o"},
        }
    )
    assert spec.evaluation.max_tokens == 65536
    with pytest.raises(ValueError):
        parse_spec(
            {
                "model": {"uri": "file:///m"},
                "method": "torchao-int8-weight",
                "evaluation": {"maxTokens": 0},
                "output": {"uri": "file:///o"},
            }
        )


def test_a_run_on_a_bf16_checkpoint_reports_its_dtype_and_fit(
    tiny_lm_bf16_path: Path,
    tmp_path: Path,
    engine_env: EngineEnv,
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = tmp_path / "results.json"
    manifest = write_manifest(
        tmp_path / "m.yaml",
        {
            "model": {"uri": f"file://{tiny_lm_bf16_path}"},
            "method": "torchao-int8-weight",
            "evaluation": {"samples": 8, "maxTokens": 200},
            "calibration": {"sequenceLength": 64},
            "output": {"uri": f"file://{tmp_path / 'out'}"},
        },
    )
    code, text = run_engine(["run", "-f", str(manifest), "--results", str(results)], capsys)
    assert code == 0, text[-2000:]
    result = json.loads(results.read_text())["result"]
    assert result["baselineDtype"] == "bfloat16"
    fit = result["plan"]["fit"]
    weights = sum(loading.safetensors_dtypes(tiny_lm_bf16_path).values())
    assert fit["needsBytes"] > weights and fit["summary"].startswith("needs ~")
    assert "memory: needs ~" in text  # said before the model loaded
    assert text.index("memory: needs ~") < text.index("loaded the original model")
    assert result["baseline"]["perplexity"] > 1.0
