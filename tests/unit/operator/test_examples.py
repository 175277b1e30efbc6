"""The top-level examples parse as valid ModelOptimizations and the operator can build them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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


# -- examples/serving: a ModelOptimization and the KServe InferenceService that serves its output

SERVING = EXAMPLES / "serving"
SERVING_DOC = EXAMPLES.parent / "docs" / "serving.md"
ISVC_API_VERSION = "serving.kserve.io/v1beta1"
# KServe's Go types (pkg/apis/serving/v1beta1): ModelSpec = modelFormat, runtime and the
# inline PredictorExtensionSpec (storageUri, runtimeVersion, protocolVersion, storage) and
# v1.Container; PredictorSpec = model, the inline ComponentExtensionSpec and v1.PodSpec.
MODEL_SPEC_FIELDS = {
    "modelFormat",
    "runtime",
    "storageUri",
    "runtimeVersion",
    "protocolVersion",
    "storage",
}
COMPONENT_EXTENSION_FIELDS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def serving_examples() -> list[Path]:
    return sorted(SERVING.glob("*.yaml"))


def _pair(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    (mo,) = [d for d in docs if d.get("kind") == "ModelOptimization"]
    (isvc,) = [d for d in docs if d.get("kind") == "InferenceService"]
    return mo, isvc


def runtime_table() -> dict[str, str]:
    """docs/serving.md's table: method -> the runtime cell of its row."""
    rows: dict[str, str] = {}
    for line in SERVING_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        for method in re.findall(r"`([a-z0-9-]+)`", cells[0]):
            assert method not in rows, f"{method} has two rows"
            rows[method] = cells[2]
    return rows


def test_serving_examples_exist_and_pass_yamllint() -> None:
    from tests.unit.gitops.test_examples import yamllint

    files = serving_examples()
    assert {p.name for p in files} >= {"qwen-gptq-vllm.yaml", "minilm-onnx-triton.yaml"}
    proc = yamllint(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", serving_examples(), ids=lambda p: p.name)
def test_serving_example_is_consistent(path: Path) -> None:
    import kubernetes_validate

    from tests.unit.chart.test_chart import K8S_VERSIONS

    mo, isvc = _pair(path)
    # The ModelOptimization: valid, and the operator builds its Job.
    spec = parse_manifest(mo)
    assert compatibility_problem(spec) is None
    mo["metadata"].update(namespace="default", uid="u", generation=1)
    builders.build_job(mo, spec, Settings())

    # The InferenceService: what KServe's v1beta1 API has, the required fields set.
    assert isvc["apiVersion"] == ISVC_API_VERSION
    name = isvc["metadata"]["name"]
    assert DNS1035_LABEL.match(name) and len(name) <= 63, name
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"], "spec.predictor.model.modelFormat.name is required"
    assert model["storageUri"], "the predictor must point at the artifact"
    container = {k: v for k, v in model.items() if k not in MODEL_SPEC_FIELDS}
    pod_spec = {
        k: v for k, v in predictor.items() if k != "model" and k not in COMPONENT_EXTENSION_FIELDS
    }
    # The container and pod fields (inline v1.Container / v1.PodSpec) against Kubernetes'
    # own schema: a misspelt or misplaced field fails here.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            **pod_spec,
            "containers": [{"name": "kserve-container", "image": "runtime", **container}],
        },
    }
    for version in (K8S_VERSIONS[0], K8S_VERSIONS[-1]):
        kubernetes_validate.validate(pod, version, strict=True)

    # It serves what the ModelOptimization writes, with a runtime docs/serving.md names for
    # that method.
    out = spec.output.uri
    fmt = model["modelFormat"]["name"]
    if fmt == "onnx":
        # A Triton model repository: <storageUri>/<model name>/<version>/model.onnx.
        assert re.fullmatch(re.escape(model["storageUri"]) + r"/[a-z0-9-]+/[1-9][0-9]*", out)
        assert model.get("protocolVersion") == "v2"
    else:
        assert model["storageUri"] == out
    row = runtime_table()[spec.method]
    assert f"modelFormat: {fmt}" in row and f"runtime: {model['runtime']}" in row, row
    for arg in model.get("args", []):
        if arg.startswith("--backend="):
            assert arg in row, (arg, row)
    if spec.gpu_count():
        assert container["resources"]["limits"]["nvidia.com/gpu"] == str(spec.gpu_count())


def test_serving_doc_covers_every_method() -> None:
    from kubequant_api.methods import QUANTIZATION_METHODS

    assert sorted(runtime_table()) == sorted(QUANTIZATION_METHODS)
