"""dryRun: problems are listed in the plan with their field, and the run exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubequant_api.constants import COMPLETE_MARKER
from optimizer_job.preflight import count_parameters, task_from_config
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
