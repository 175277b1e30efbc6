"""The method registry, task detection, artifact dispatch and the built-in corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kubequant_api.constants import Task
from kubequant_api.errors import InvalidSpecError
from kubequant_api.models import METHOD_PARAMS, METHODS, GptqParams, NoParams
from optimizer_job import modeling
from optimizer_job.corpus import builtin_corpus, corpus_digest, split_corpus
from optimizer_job.methods import registry
from optimizer_job.methods.base import (
    ArtifactInfo,
    IncompatibleError,
    MethodError,
    QuantizeRequest,
    get_method,
)

ENCODER_ONLY_MISSING = {"gptq", "awq"}


def test_every_api_method_but_auto_is_registered() -> None:
    registered = registry()
    assert set(registered) == {m for m in METHODS if m != "auto"}
    for name, cls in registered.items():
        assert cls.name == name
        assert cls.params_model() is METHOD_PARAMS[name]
        assert cls.supported_tasks, name
        assert cls.supported_tasks <= {
            Task.CAUSAL_LM,
            Task.FEATURE_EXTRACTION,
            Task.SEQUENCE_CLASSIFICATION,
        }
        assert cls.device_support in {"cpu", "cuda", "any"}
        assert 0.0 < cls.expected_size_ratio <= 1.0
        assert cls.needs_calibration == (name in {"gptq", "awq"})
        if name in ENCODER_ONLY_MISSING:
            assert cls.supported_tasks == {Task.CAUSAL_LM}
        else:
            assert Task.FEATURE_EXTRACTION in cls.supported_tasks
    assert registered["onnx-int8"].device_support == "cpu"


def test_unknown_method_is_an_incompatible_spec() -> None:
    with pytest.raises(IncompatibleError) as err:
        get_method("auto")
    assert err.value.field == "spec.method"


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_causal_only_method_refuses_an_encoder(
    method: str, minilm_path: Path, tmp_path: Path
) -> None:
    request = QuantizeRequest(
        source_dir=minilm_path,
        out_dir=tmp_path,
        task=Task.FEATURE_EXTRACTION,
        params=METHOD_PARAMS[method](),
        calibration=["some calibration text for the test"],
    )
    with pytest.raises(IncompatibleError) as err:
        get_method(method).quantize(request)
    assert err.value.field == "spec.model.task"
    assert "feature-extraction" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # refused before writing anything


def test_gptq_group_size_must_divide_the_layers(minilm_path: Path, tmp_path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    src, out = tmp_path / "src", tmp_path / "out"
    out.mkdir()
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=256,
        intermediate_size=384,  # down_proj has 384 input features: not a multiple of 256
        num_hidden_layers=1,
        num_attention_heads=4,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(src))  # type: ignore[no-untyped-call]
    modeling.copy_tokenizer(minilm_path, src)
    request = QuantizeRequest(
        source_dir=src,
        out_dir=out,
        task=Task.CAUSAL_LM,
        params=GptqParams(group_size=256),
        calibration=["some calibration text"],
    )
    with pytest.raises(IncompatibleError) as err:
        get_method("gptq").quantize(request)
    assert err.value.field == "spec.params.groupSize"
    assert "384" in err.value.message
    assert list(out.iterdir()) == []


def test_detect_task(minilm_path: Path, tiny_lm_path: Path, tmp_path: Path) -> None:
    assert modeling.detect_task(minilm_path) == Task.FEATURE_EXTRACTION
    assert modeling.detect_task(tiny_lm_path) == Task.CAUSAL_LM
    seq = tmp_path / "seq"
    seq.mkdir()
    config = json.loads((minilm_path / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (seq / "config.json").write_text(json.dumps(config))
    (seq / "model.safetensors").symlink_to(minilm_path / "model.safetensors")
    assert modeling.detect_task(seq) == Task.SEQUENCE_CLASSIFICATION


def test_detect_task_rejects_missing_or_corrupt_models(minilm_path: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError) as err:
        modeling.detect_task(tmp_path)
    assert err.value.field == "spec.model.uri" and "config.json" in err.value.message
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InvalidSpecError, match="not valid JSON"):
        modeling.detect_task(tmp_path)
    shutil.copy(minilm_path / "config.json", tmp_path / "config.json")
    with pytest.raises(InvalidSpecError, match="no model weights"):
        modeling.detect_task(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10not a safetensors file")
    with pytest.raises(InvalidSpecError) as err:
        modeling.load_original(tmp_path, Task.FEATURE_EXTRACTION)
    assert err.value.field == "spec.model.uri"


def test_load_original_forward_contract(minilm_path: Path) -> None:
    model = modeling.load_original(minilm_path, Task.FEATURE_EXTRACTION)
    ids = np.array([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    try:
        out = model.forward(ids, mask)
    finally:
        model.close()
    assert out.dtype == np.float32 and out.shape == (2, 4, 384)


def test_sequence_classification_roundtrip(minilm_path: Path, tmp_path: Path) -> None:
    """A sequence-classification model quantizes and reloads with logits [batch, labels]."""
    from transformers import AutoModelForSequenceClassification

    src = tmp_path / "cls"
    import torch

    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(
        str(minilm_path), num_labels=3
    ).save_pretrained(str(src))
    modeling.copy_tokenizer(minilm_path, src)
    assert modeling.detect_task(src) == Task.SEQUENCE_CLASSIFICATION
    out = tmp_path / "out"
    out.mkdir()
    info = get_method("quanto-int8").quantize(
        QuantizeRequest(src, out, Task.SEQUENCE_CLASSIFICATION, NoParams())
    )
    info.write(out)
    tokenizer = modeling.load_tokenizer(out)
    enc = tokenizer(["a short sentence", "another one, longer than that"], padding=True)
    ids, mask = np.array(enc["input_ids"]), np.array(enc["attention_mask"])
    original = modeling.load_original(src, Task.SEQUENCE_CLASSIFICATION)
    ref = original.forward(ids, mask)
    loaded = modeling.load_artifact(out)
    got = loaded.forward(ids, mask)
    original.close()
    loaded.close()
    assert got.shape == ref.shape == (2, 3)
    assert np.allclose(got, ref, atol=0.05)


def test_load_artifact_needs_its_metadata(tmp_path: Path) -> None:
    with pytest.raises(MethodError, match=r"kubequant-artifact\.json"):
        modeling.load_artifact(tmp_path)
    ArtifactInfo("no-such-method", {}, "causal-lm", "safetensors").write(tmp_path)
    with pytest.raises(IncompatibleError):
        modeling.load_artifact(tmp_path)


def test_builtin_corpus_is_deterministic_english_and_splits_stably() -> None:
    corpus = builtin_corpus()
    assert len(corpus) > 2000
    assert sum(len(t) for t in corpus) > 400_000
    assert all(len(t.split()) >= 12 for t in corpus)
    assert not any(t.lstrip().startswith(">>>") for t in corpus)
    common = {"the", "of", "is", "a", "to", "and", "in"}
    english = sum(1 for t in corpus if common & set(t.lower().split()))
    assert english / len(corpus) > 0.95
    assert corpus_digest() == corpus_digest(builtin_corpus())
    train, held = split_corpus()
    assert not set(train) & set(held)
    assert len(train) + len(held) == len(corpus)
    assert 0.05 < len(held) / len(corpus) < 0.15
    # A sample's side depends on its text only, not on which other samples are present.
    train_half, held_half = split_corpus(corpus[::2])
    assert set(held_half) <= set(held) and set(train_half) <= set(train)
    with pytest.raises(ValueError):
        split_corpus(corpus, held_out_fraction=1.5)
