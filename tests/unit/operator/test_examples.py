"""The top-level examples parse as valid ModelOptimizations and the operator can build them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubequant_api.models import parse_manifest
from kubequant_operator import builders
from kubequant_operator.checks import compatibility_problem
from kubequant_operator.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.mark.parametrize("name", ["quickstart.yaml", "gptq-qwen.yaml", "auto-search.yaml"])
def test_example_is_valid(name: str) -> None:
    obj = yaml.safe_load((EXAMPLES / name).read_text())
    spec = parse_manifest(obj)
    assert compatibility_problem(spec) is None
    obj["metadata"].update(namespace="default", uid="u", generation=1)
    job = builders.build_job(obj, spec, Settings())
    assert job["metadata"]["name"].startswith(obj["metadata"]["name"])


def test_quickstart_is_the_cpu_minilm_run() -> None:
    spec = parse_manifest(yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text()))
    assert spec.model.uri == "pvc://kubequant-models/all-MiniLM-L6-v2"
    assert spec.output.uri == "pvc://kubequant-models/minilm-int8"
    assert spec.gpu_count() == 0
    assert spec.evaluation.quality_gate is not None
    assert spec.evaluation.quality_gate.min_cosine_similarity == 0.99
