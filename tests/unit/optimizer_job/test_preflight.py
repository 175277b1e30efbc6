"""dryRun: problems are listed in the plan with their field, and the run exits 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kubequant_api.constants import COMPLETE_MARKER
from kubequant_api.methods import method_spec
from kubequant_api.models import parse_spec
from optimizer_job.evaluation import LOGITS_BUDGET_BYTES
from optimizer_job.preflight import (
    ModelWeights,
    candidate_disk,
    candidate_peak,
    count_parameters,
    disk_fit,
    disk_needs,
    model_weights,
    run_fit,
    task_from_config,
)
from tests.fixtures.storage import EngineEnv, run_engine, write_manifest


def test_task_and_parameters_from_config_alone() -> None:
    assert task_from_config({"architectures": ["LlamaForCausalLM"]}) == "causal-lm"
    assert task_from_config({"architectures": ["BertModel"]}) == "feature-extraction"
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
           "vocab_size": 100, "hidden_act": "silu"}  # fmt: skip
    count, source = count_parameters({"config": cfg, "files": {}, "safetensors": {}})
    assert source == "config.json"
    assert count == 100 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128)


def test_dry_run_lists_every_problem(
    minilm_path: Path, tmp_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / COMPLETE_MARKER).write_text("{}")
    results = tmp_path / "r.json"
    manifest = write_manifest(
        tmp_path / "m.yaml",
        {
            "model": {"uri": f"file://{minilm_path}"},
            "method": "gptq",
            "evaluation": {"qualityGate": {"maxPerplexityIncreasePercent": 5}},
            "output": {"uri": f"file://{out}"},
            "dryRun": True,
        },
    )
    code, text = run_engine(["run", "-f", str(manifest), "--results", str(results)], capsys)
    assert code == 2, text
    plan = json.loads(results.read_text())["result"]["plan"]
    fields = [e["field"] for e in plan["errors"]]
    assert fields == [
        "spec.output.uri",
        "spec.evaluation.qualityGate.maxPerplexityIncreasePercent",
        "spec.method",
    ]
    # a bare marker is not a kubequant artifact (it lists no files): refused as foreign data,
    # with no suggestion to overwrite it
    message = plan["errors"][0]["message"]
    assert "is not empty" in message and "never deletes other data" in message
    assert "overwrite: true" not in message
    assert plan["source"]["reachable"] is True
    assert plan["candidates"][0]["compatible"] is False
    assert sorted(p.name for p in out.iterdir()) == [COMPLETE_MARKER]  # untouched


def test_disk_estimates_per_method_and_for_a_search() -> None:
    # 1B parameters in bf16: 0.2B embeddings and LM head, 1M in norms
    weights = ModelWeights(10**9, 2 * 10**8, 10**6, stored=2 * 10**9, shard=5 * 10**8)
    int8 = candidate_disk("torchao-int8-weight", weights)
    ratio = method_spec("torchao-int8-weight").expected_size_ratio
    kept = 2 * 10**8 + 10**6
    assert (
        int8
        == weights.expected_size("torchao-int8-weight")
        == int((10**9 - kept) * 4 * ratio) + 2 * kept
    )
    gptq = weights.expected_size("gptq")
    # + the offload folder: the decoder layers, 0.8B parameters in bf16
    assert candidate_disk("gptq", weights) == gptq + 16 * 10**8
    # ONNX Runtime quantizes the embeddings too; its fp32 export sits beside the int8 model
    onnx = weights.expected_size("onnx-int8")
    ratio = method_spec("onnx-int8").expected_size_ratio
    assert onnx == int((10**9 - 10**6) * 4 * ratio) + 2 * 10**6
    assert candidate_disk("onnx-int8", weights) == onnx + 4 * 10**9
    rows = [
        {"compatible": True, "estimatedDiskBytes": 300, "expectedSizeBytes": 100},
        {"compatible": True, "estimatedDiskBytes": 150, "expectedSizeBytes": 150},
        {"compatible": False, "estimatedDiskBytes": 900, "expectedSizeBytes": 900},
    ]
    # one method: its own; a search: the largest, plus the best artifact kept meanwhile
    assert disk_needs(rows[:1], 0, auto=False)["needsBytes"] == 300
    searched = disk_needs(rows, 50, auto=True)
    assert searched["needsBytes"] == 50 + 300 + 150
    assert searched["sourceBytes"] == 50
    assert "for the download" in searched["summary"]
    assert "read in place" in disk_needs(rows, 0, auto=True)["summary"]


def test_a_run_states_its_disk_against_the_free_space(minilm_path: Path, tmp_path: Path) -> None:
    spec = parse_spec(
        {
            "model": {"uri": f"file://{minilm_path}"},
            "method": "torchao-int8-weight",
            "output": {"uri": f"file://{tmp_path / 'out'}"},
        }
    )
    found = run_fit(minilm_path, spec, tmp_path)
    disk = found["disk"]
    assert disk["freeBytes"] == shutil.disk_usage(tmp_path).free
    assert 0 < disk["needsBytes"] < disk["freeBytes"] and disk["fits"] is True
    assert disk["summary"].startswith(f"needs ~0.1 GiB in {tmp_path}")
    assert disk_fit(2 * disk["freeBytes"] + 1, tmp_path)["fits"] is False


def test_gptq_and_awq_peak_at_the_model_as_stored_when_it_can_stay_on_disk() -> None:
    weights = ModelWeights(10**9, 2 * 10**8, 10**6, stored=2 * 10**9, shard=5 * 10**8)
    runtime = 512 * 2**20
    logits = LOGITS_BUDGET_BYTES
    for method in ("gptq", "awq"):
        # offloaded, calibration holds a layer at a time: the peak is the baseline or the
        # artifact decompressed on the host, each the stored weights plus a batch's logits
        assert candidate_peak(method, weights) == 2 * 10**9 + logits + runtime
        assert candidate_peak(method, weights, "cuda") == 2 * 10**9 + logits + runtime
        # a model with its own code or .bin weights is calibrated on the host, whole
        on_host = ModelWeights(10**9, 2 * 10**8, 10**6, 2 * 10**9, 2 * 10**9, offloadable=False)
        expected = on_host.expected_size(method)
        assert candidate_peak(method, on_host) == 2 * 10**9 + expected + runtime
        assert candidate_disk(method, on_host) == expected  # and writes no offload folder


def test_a_checkpoint_with_code_of_its_own_or_no_safetensors_is_not_offloadable() -> None:
    header = {"w": {"dtype": "BF16", "shape": [64, 64], "data_offsets": [0, 8192]}}
    probe = {
        "files": {"model.safetensors": 8300},
        "config": {"architectures": ["LlamaForCausalLM"]},
        "safetensors": {"model.safetensors": header},
    }
    assert model_weights(probe).offloadable is True
    custom = {**probe, "config": {"auto_map": {"AutoModelForCausalLM": "m.M"}}}
    assert model_weights(custom).offloadable is False
    cfg = {"hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 10}
    legacy = {"files": {"pytorch_model.bin": 10**6}, "config": cfg, "safetensors": {}}
    assert model_weights(legacy).offloadable is False
