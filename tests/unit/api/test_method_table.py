"""Adding a method is one table entry plus one engine class: a throwaway method, registered
here alone, is accepted by the CRD generator, the operator and the engine, end to end."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
from celpy.adapter import json_to_cel

from kubequant_api import crd as crdgen
from kubequant_api.constants import Task
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.methods import (
    METHODS,
    MethodSpec,
    NoParams,
    incompatibility,
    method_names,
    register_method,
    unregister_method,
)
from kubequant_api.models import Result, parse_manifest, parse_spec
from kubequant_operator import builders
from kubequant_operator.checks import compatibility_problem
from kubequant_operator.settings import Settings
from optimizer_job import loading, modeling
from optimizer_job.methods import registry
from optimizer_job.methods._common import finish_artifact
from optimizer_job.methods.base import (
    ArtifactInfo,
    IncompatibleError,
    InferenceModel,
    QuantizationMethod,
    QuantizeRequest,
    get_method,
    register,
    unregister,
)
from optimizer_job.pipeline import build_candidates
from tests.fixtures.storage import EngineEnv, run_engine, write_manifest

NAME = "copy-fp32"
ENTRY = MethodSpec(
    NAME,
    NoParams,
    engine_module=__name__,
    supported_tasks=frozenset({Task.FEATURE_EXTRACTION}),
    expected_size_ratio=1.0,
    runtime_modules=("safetensors",),
)


class CopyFp32(QuantizationMethod):
    """The whole engine side of the throwaway method: "quantize" by copying the fp32 weights."""

    name = NAME

    def _quantize(self, request: QuantizeRequest, task: Task) -> ArtifactInfo:
        for path in request.source_dir.iterdir():
            if path.name == "config.json" or path.suffix == ".safetensors":
                shutil.copy2(path, request.out_dir / path.name)
        return finish_artifact(self.name, request, task, "safetensors")

    def load(self, artifact_dir: Path, info: ArtifactInfo, device: str = "cpu") -> InferenceModel:
        model = loading.auto_class(info.task).from_pretrained(str(artifact_dir))
        return loading.TorchInferenceModel(model, info.task, device)


@pytest.fixture
def throwaway() -> Iterator[MethodSpec]:
    """The method in the table and the engine for one test; both restored afterwards."""
    register_method(ENTRY)
    register(CopyFp32)
    try:
        yield ENTRY
    finally:
        unregister(NAME)
        unregister_method(NAME)


def _spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "pvc://models/minilm", "task": "feature-extraction"},
        "method": NAME,
        "output": {"uri": "pvc://models/out"},
    }
    spec.update(over)
    return spec


def _cel_failures(rules: list[dict[str, str]], obj: dict[str, Any]) -> list[str]:
    env = celpy.Environment()
    return [
        r["message"]
        for r in rules
        if not bool(env.program(env.compile(r["rule"])).evaluate({"self": json_to_cel(obj)}))
    ]


def test_the_table_is_restored_without_the_fixture() -> None:
    assert NAME not in method_names() and NAME not in METHODS
    assert NAME not in registry()
    assert crdgen.render() == crdgen.CRD_PATH.read_text()
    with pytest.raises(InvalidSpecError) as err:
        parse_spec(_spec())
    assert err.value.field == "spec.method" and NAME in str(err.value)


def test_a_name_is_registered_once(throwaway: MethodSpec) -> None:
    with pytest.raises(KubequantError):
        register_method(throwaway)


def test_the_crd_generator_accepts_it(throwaway: MethodSpec) -> None:
    spec_schema = crdgen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"][
        "properties"
    ]["spec"]
    assert NAME in spec_schema["properties"]["method"]["enum"]
    candidate = spec_schema["properties"]["candidates"]["items"]
    assert NAME in candidate["properties"]["method"]["enum"]
    rules = spec_schema["x-kubernetes-validations"]
    assert any(f"method {NAME} accepts only: none" in r["message"] for r in rules)
    assert _cel_failures(rules, _spec()) == []
    refused = _cel_failures(rules, _spec(params={"bits": 4}))
    assert refused and all(m.startswith("spec.params") for m in refused)
    auto = {"method": NAME, "params": {"perChannel": True}}
    assert _cel_failures(candidate["x-kubernetes-validations"], auto)


def test_the_operator_accepts_it(throwaway: MethodSpec) -> None:
    spec = parse_spec(_spec())
    assert [p.method for p in spec.planned] == [throwaway]
    assert isinstance(spec.method_params(), NoParams)
    assert spec.gpu_count() == 0
    assert compatibility_problem(spec) is None
    obj = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": "copy", "namespace": "default", "uid": "u", "generation": 1},
        "spec": _spec(),
    }
    job = builders.build_job(obj, spec, Settings())
    assert job["metadata"]["name"].startswith("copy")
    with pytest.raises(InvalidSpecError) as err:
        parse_spec(_spec(params={"bits": 4}))
    assert err.value.field == "spec.params.bits" and NAME in str(err.value)
    causal = parse_spec(
        _spec(
            model={"uri": "pvc://models/lm", "task": "causal-lm"},
            method="auto",
            candidates=[{"method": "torchao-int8-weight"}, {"method": NAME}],
        )
    )
    problem = compatibility_problem(causal)
    assert problem is not None and problem.field == "spec.candidates[1].method"
    assert f"method {NAME} does not support task causal-lm" in problem.message


def test_one_compatibility_wording_for_operator_and_engine(throwaway: MethodSpec) -> None:
    operator_side = incompatibility(NAME, Task.CAUSAL_LM, "spec.method")
    assert operator_side is not None
    with pytest.raises(IncompatibleError) as err:
        get_method(NAME).quantize(
            QuantizeRequest(Path("/nonexistent"), Path("/nonexistent"), Task.CAUSAL_LM, NoParams())
        )
    assert err.value.field == "spec.model.task"
    assert err.value.message == operator_side.message


def test_the_engine_plans_and_looks_it_up(throwaway: MethodSpec) -> None:
    obj = {"apiVersion": "kubequant.io/v1alpha1", "kind": "ModelOptimization", "spec": _spec()}
    spec = parse_manifest(obj)
    (run,) = build_candidates(spec)
    assert (run.name, run.field, run.params) == (NAME, "spec.method", NoParams())
    assert isinstance(run.method, CopyFp32)
    assert registry()[NAME] is CopyFp32
    assert CopyFp32.supported_tasks == {Task.FEATURE_EXTRACTION}
    assert CopyFp32.expected_size_ratio == 1.0 and not CopyFp32().needs_calibration


@pytest.mark.slow
def test_the_engine_runs_it_end_to_end(
    throwaway: MethodSpec,
    minilm_path: Path,
    tmp_path: Path,
    engine_env: EngineEnv,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    manifest = write_manifest(
        tmp_path / "m.yaml",
        {
            "model": {"uri": f"file://{minilm_path}"},
            "method": NAME,
            "evaluation": {"samples": 4, "qualityGate": {"minCosineSimilarity": 0.9999}},
            "output": {"uri": f"file://{out}"},
        },
    )
    code, text = run_engine(["run", "-f", str(manifest)], capsys)
    assert code == 0, text
    result = Result.model_validate(json.loads((out / "results.json").read_text())["result"])
    assert result.method == NAME and result.quality_gate == "Passed"
    assert result.cosine_similarity is not None and result.cosine_similarity > 0.9999
    assert result.compression_ratio is not None and 0.99 < result.compression_ratio < 1.01
    info = ArtifactInfo.read(out)
    assert info.method == NAME and "tokenizer.json" in info.files
    loaded = modeling.load_artifact(out)
    assert loaded.task == Task.FEATURE_EXTRACTION
    loaded.close()


def test_the_wire_params_hold_every_param_of_every_method() -> None:
    """``spec.params`` on the wire (:class:`~kubequant_api.methods.Params`) is the one place a
    method with a parameter no other method has touches besides its table entry: a method
    whose parameter is missing there could never be given it (the CRD prunes it)."""
    from kubequant_api.methods import METHOD_PARAMS, Params

    wire = {f.alias or n for n, f in Params.model_fields.items()}
    missing = {
        method: sorted(
            f.alias or n for n, f in model.model_fields.items() if (f.alias or n) not in wire
        )
        for method, model in METHOD_PARAMS.items()
    }
    assert {m: p for m, p in missing.items() if p} == {}
