"""Spec parsing: defaults, typed params and messages that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from kubequant_api.errors import InvalidSpecError
from kubequant_api.models import (
    GptqParams,
    ModelOptimizationStatus,
    Result,
    parse_manifest,
    parse_spec,
)


def _spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "file:///models/minilm"},
        "method": "torchao-int8-weight",
        "output": {"uri": "file:///out/minilm"},
    }
    spec.update(over)
    return spec


def test_defaults_follow_the_api() -> None:
    spec = parse_spec(_spec())
    assert spec.model.task == "auto"
    assert spec.model.trust_remote_code is False
    assert spec.calibration.samples == 128
    assert spec.calibration.sequence_length == 512
    assert spec.evaluation.samples == 64
    assert spec.output.overwrite is False
    assert spec.timeout_seconds == 7200
    assert spec.retries == 2
    assert spec.ttl_seconds_after_finished == 86400
    assert spec.resources.gpu_resource_name == "nvidia.com/gpu"
    assert spec.gpu_count() == 0


def test_gpu_defaults_to_one_for_gpu_methods() -> None:
    assert parse_spec(_spec(method="gptq")).gpu_count() == 1
    assert parse_spec(_spec(method="gptq", resources={"gpu": 0})).gpu_count() == 0


def test_typed_params() -> None:
    params = parse_spec(_spec(method="gptq", params={"bits": 8, "descAct": True})).method_params()
    assert isinstance(params, GptqParams)
    assert (params.bits, params.group_size, params.desc_act, params.sym) == (8, 128, True, True)


def test_auto_plans_each_candidate_in_order() -> None:
    spec = parse_spec(
        _spec(
            method="auto",
            candidates=[
                {"method": "torchao-int8-weight"},
                {"method": "gptq", "params": {"bits": 4}},
            ],
        )
    )
    assert [m for m, _ in spec.plan_candidates()] == ["torchao-int8-weight", "gptq"]


@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"method": "int3-magic"}, "spec.method", "int3-magic"),
        ({"model": {"uri": "ftp://x/y"}}, "spec.model.uri", "pattern"),
        ({"output": {"uri": "hf://org/repo"}}, "spec.output.uri", "pattern"),
        ({"calibration": {"samples": 0}}, "spec.calibration.samples", "greater than"),
        ({"resources": {"memory": "lots"}}, "spec.resources.memory", "pattern"),
        ({"unknownField": 1}, "spec.unknownField", "Extra inputs"),
        ({"method": "gptq", "params": {"perChannel": True}}, "spec.params.perChannel", "gptq"),
        ({"method": "gptq", "params": {"bits": 5}}, "spec.params.bits", "gptq"),
    ],
)
def test_bad_specs_name_the_field(over: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        parse_spec(_spec(**over))
    assert err.value.field == field, str(err.value)
    assert words in str(err.value)


def test_missing_output_names_the_field() -> None:
    spec = _spec()
    del spec["output"]
    with pytest.raises(InvalidSpecError) as err:
        parse_spec(spec)
    assert err.value.field == "spec.output"


def test_manifest_kind_and_version_checked() -> None:
    with pytest.raises(InvalidSpecError) as err:
        parse_manifest({"apiVersion": "kubequant.io/v1", "kind": "ModelOptimization", "spec": {}})
    assert err.value.field == "apiVersion"
    obj = {"apiVersion": "kubequant.io/v1alpha1", "kind": "ModelOptimization", "spec": _spec()}
    assert parse_manifest(obj).method == "torchao-int8-weight"


def test_status_round_trips_in_camel_case() -> None:
    status = ModelOptimizationStatus(
        phase="Succeeded",
        observed_generation=3,
        result=Result(method="gptq", compression_ratio=2.16, quality_gate="Passed"),
    )
    api = status.to_api()
    assert api["observedGeneration"] == 3
    assert api["result"]["compressionRatio"] == 2.16
    assert ModelOptimizationStatus.model_validate(api) == status
