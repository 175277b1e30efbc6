"""The CRD is generated from the pydantic models and agrees with them, rule by rule."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import celpy
import pytest
import yaml
from celpy.adapter import json_to_cel

from kubequant_api import crd as crdgen
from kubequant_api.errors import InvalidSpecError
from kubequant_api.models import METHOD_PARAMS, parse_spec


def _crd() -> dict[str, Any]:
    return dict(yaml.safe_load(crdgen.CRD_PATH.read_text()))


def _spec_schema() -> dict[str, Any]:
    schema = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(schema["properties"]["spec"])


def test_committed_crd_is_generated_from_models() -> None:
    assert (
        crdgen.CRD_PATH.read_text() == crdgen.render()
    ), "crds/modeloptimization.yaml is stale: run `python -m kubequant_api.crd --write`"


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    root = _crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(root):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for banned in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"):
            assert banned not in node, f"{path} has {banned}"
        if node.get("type") == "object" and path not in ("", ".metadata"):
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
            ), f"{path}: an object without a schema would be pruned to nothing"


def test_names_and_printer_columns_follow_the_contract() -> None:
    crd = _crd()
    names = crd["spec"]["names"]
    assert names["kind"] == "ModelOptimization"
    assert names["plural"] == "modeloptimizations"
    assert names["shortNames"] == ["mopt"]
    assert names["categories"] == ["kubequant"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        "Phase",
        "Method",
        "Model",
        "Progress",
        "Ratio",
        "Quality",
        "Ready",
        "Reason",
        "Run",
        "Last-Ratio",
        "Age",
    ]


def _typed(value: Any, schema: dict[str, Any]) -> Any:
    """JSON as the API server hands it to CEL: `number` fields are doubles, even when integral."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _typed(v, props.get(k, {})) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v, schema.get("items", {})) for v in value]
    return value


def _cel_verdicts(spec: dict[str, Any]) -> list[str]:
    """Messages of every CEL rule (spec level and candidate level) that rejects ``spec``."""
    env = celpy.Environment()
    schema = _spec_schema()
    failed: list[str] = []

    def run(rules: list[dict[str, str]], obj: dict[str, Any]) -> None:
        for rule in rules:
            program = env.program(env.compile(rule["rule"]))
            if not bool(program.evaluate({"self": json_to_cel(obj)})):
                failed.append(rule["message"])

    spec = _typed(spec, schema)
    run(schema["x-kubernetes-validations"], spec)
    cand_schema = schema["properties"]["candidates"]["items"]
    for cand in spec.get("candidates", []):
        run(cand_schema["x-kubernetes-validations"], cand)
    return failed


BASE: dict[str, Any] = {
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B@main"},
    "method": "gptq",
    "output": {"uri": "s3://bucket/models/qwen"},
}


def _with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec.update(changes)
    return spec


CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("gptq defaults", _with(), None),
    ("gptq bits 4 group 64", _with(params={"bits": 4, "groupSize": 64}), None),
    ("gptq bits 5", _with(params={"bits": 5}), "spec.params.bits"),
    ("gptq groupSize 100", _with(params={"groupSize": 100}), "spec.params.groupSize"),
    ("gptq threshold", _with(params={"threshold": 6.0}), "spec.params.threshold"),
    ("awq bits 3", _with(method="awq", params={"bits": 3}), "spec.params.bits"),
    ("bnb-int8 threshold", _with(method="bnb-int8", params={"threshold": 5.5}), None),
    ("bnb-int8 threshold 500", _with(method="bnb-int8", params={"threshold": 500}), "threshold"),
    ("bnb-nf4 perChannel", _with(method="bnb-nf4", params={"perChannel": True}), "perChannel"),
    ("onnx perChannel", _with(method="onnx-int8", params={"perChannel": False}), None),
    ("torchao-int8 bits", _with(method="torchao-int8-weight", params={"bits": 8}), "bits"),
    ("int4 group 32", _with(method="torchao-int4-weight", params={"groupSize": 32}), None),
    ("int4 group -1", _with(method="torchao-int4-weight", params={"groupSize": -1}), "groupSize"),
    ("auto without candidates", _with(method="auto"), "spec.candidates"),
    (
        "auto with params",
        _with(method="auto", params={"bits": 4}, candidates=[{"method": "gptq"}]),
        "spec.params",
    ),
    ("candidates without auto", _with(candidates=[{"method": "gptq"}]), "spec.candidates"),
    (
        "auto good",
        _with(method="auto", candidates=[{"method": "torchao-int8-weight"}, {"method": "gptq"}]),
        None,
    ),
    (
        "auto bad candidate params",
        _with(method="auto", candidates=[{"method": "gptq", "params": {"bits": 7}}]),
        "bits",
    ),
]


@pytest.mark.parametrize(("label", "spec", "bad_field"), CASES, ids=[c[0] for c in CASES])
def test_pydantic_and_cel_agree(label: str, spec: dict[str, Any], bad_field: str | None) -> None:
    cel_failures = _cel_verdicts(spec)
    if bad_field is None:
        parse_spec(spec)
        assert cel_failures == [], label
        return
    with pytest.raises(InvalidSpecError) as err:
        parse_spec(spec)
    assert bad_field in err.value.field or bad_field in str(err.value), str(err.value)
    assert cel_failures, f"{label}: the CRD accepts what the models reject"
    # The admission message names the field as well.
    assert any(m.startswith("spec.") for m in cel_failures), cel_failures


def test_every_method_has_a_params_rule_or_none_needed() -> None:
    messages = " ".join(r["message"] for r in _spec_schema()["x-kubernetes-validations"])
    for method in METHOD_PARAMS:
        assert f"method {method} " in messages
