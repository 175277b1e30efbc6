"""CRD admission: every CEL rule of crds/modeloptimization.yaml, schema checks and defaults."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiException

from kubequant_localkube import admission
from kubequant_localkube.cluster import LocalCluster
from tests.fixtures.cluster import CRD_PATH

GROUP, VERSION, PLURAL = "kubequant.io", "v1alpha1", "modeloptimizations"
ARGS = (GROUP, VERSION, "default", PLURAL)

GOOD_SPEC: dict[str, Any] = {
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B"},
    "method": "gptq",
    "output": {"uri": "s3://bucket/out"},
}


def _schema() -> dict[str, Any]:
    import yaml

    crd = yaml.safe_load(CRD_PATH.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


SCHEMA = _schema()
# The pod-placement rules (tolerations, affinity, gpuResourceName) sit on nested nodes; each
# kind of them is driven through kubectl in tests/unit/api/test_placement_validation.py.
PLACEMENT = ".properties[spec].properties[resources].properties["
RULES = [(p, r) for p, r in admission.all_rules(SCHEMA) if not p.startswith(PLACEMENT)]
PARAM_KEYS = sorted(SCHEMA["properties"]["spec"]["properties"]["params"]["properties"])


def _bad_case(path: str, rule: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """A spec that breaks ``rule`` only, the field the API server names, and the CEL node."""
    text, message = rule["rule"], rule.get("message", "")
    in_candidates = ".properties[candidates].items" in path
    m = re.match(r"self\.method != '([^']+)' \|\| !has\(self\.params\)", text)
    if m and m.group(1) != "auto":
        method = m.group(1)
        accepted = message.split("accepts only:")[1].split("(")[0]
        allowed = {a.strip() for a in accepted.split(",")} - {"none"}
        forbidden = next(k for k in PARAM_KEYS if k not in allowed)
        value: Any = {"bits": 4, "groupSize": 128, "threshold": 6.0, "computeDtype": "float16"}
        value = value.get(forbidden, True)
        params = {forbidden: value}
        if in_candidates:
            spec = dict(GOOD_SPEC, method="auto", candidates=[{"method": method, "params": params}])
            return spec, "spec.candidates[0].params", "candidate"
        return dict(GOOD_SPEC, method=method, params=params), "spec.params", "spec"
    if "size(self.candidates) > 0" in text:
        return dict(GOOD_SPEC, method="auto"), "spec.candidates", "spec"
    if text.startswith("self.method != 'auto' || !has(self.params)"):
        spec = dict(
            GOOD_SPEC,
            method="auto",
            candidates=[{"method": "torchao-int8-weight"}],
            params={"bits": 4},
        )
        return spec, "spec.params", "spec"
    if "gpuResourceName" in text:
        spec = dict(GOOD_SPEC, resources={"gpu": 1, "gpuResourceName": ""})
        return spec, "spec.resources.gpuResourceName", "spec"
    raise AssertionError(f"no bad case written for rule at {path}: {text}")


def _node(spec: dict[str, Any], where: str) -> tuple[Any, dict[str, Any]]:
    props = SCHEMA["properties"]["spec"]
    if where == "candidate":
        return spec["candidates"][0], props["properties"]["candidates"]["items"]
    return spec, props


def test_crd_has_cel_rules() -> None:
    assert len(RULES) >= 20  # one per method, twice (spec and candidates), and the spec-wide ones


@pytest.mark.parametrize("path,rule", RULES, ids=[r["rule"][:60] for _, r in RULES])
def test_rule_compiles_and_evaluates_in_celpy(path: str, rule: dict[str, Any]) -> None:
    adm = admission.Admission()
    prog = adm.program(rule["rule"])
    good_spec = dict(GOOD_SPEC, method="auto", candidates=[{"method": "gptq"}])
    where = "candidate" if "candidates]" in path else "spec"
    for spec in (good_spec,) if where == "candidate" else (GOOD_SPEC, good_spec):
        value, schema = _node(copy.deepcopy(spec), where)
        assert bool(prog.evaluate({"self": admission.to_cel(value, schema)})) is True
    bad, _field, where = _bad_case(path, rule)
    value, schema = _node(bad, where)
    assert bool(prog.evaluate({"self": admission.to_cel(value, schema)})) is False


def _api(cluster: LocalCluster) -> kubernetes.client.CustomObjectsApi:
    client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    return kubernetes.client.CustomObjectsApi(client)


def _body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelOptimization",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_every_rule_rejects_a_bad_object_over_http(crd_cluster: LocalCluster) -> None:
    co = _api(crd_cluster)
    for i, (path, rule) in enumerate(RULES):
        spec, field, _where = _bad_case(path, rule)
        with pytest.raises(ApiException) as exc:
            co.create_namespaced_custom_object(*ARGS, _body(f"bad-{i}", spec))
        assert exc.value.status == 422, (rule["rule"], exc.value.body)
        status = json.loads(exc.value.body)
        assert status["kind"] == "Status" and status["reason"] == "Invalid"
        assert f"{field}: " in status["message"], (field, status["message"])
        assert rule["message"].split(":")[-1].strip()[:30] in status["message"]
        assert any(c["field"] == field for c in status["details"]["causes"])
    # and the good ones pass
    co.create_namespaced_custom_object(*ARGS, _body("good", GOOD_SPEC))
    auto = dict(GOOD_SPEC, method="auto", candidates=[{"method": "gptq", "params": {"bits": 4}}])
    co.create_namespaced_custom_object(*ARGS, _body("good-auto", auto))


def test_rules_also_guard_updates(crd_cluster: LocalCluster) -> None:
    co = _api(crd_cluster)
    co.create_namespaced_custom_object(*ARGS, _body("u", GOOD_SPEC))
    with pytest.raises(ApiException) as exc:
        co.patch_namespaced_custom_object(*ARGS, "u", {"spec": {"params": {"threshold": 1.0}}})
    assert exc.value.status == 422 and "spec.params" in exc.value.body
    assert co.get_namespaced_custom_object(*ARGS, "u")["spec"].get("params") is None


@pytest.mark.parametrize(
    "patch,field,words",
    [
        ({"method": "int3"}, "spec.method", "Unsupported value"),
        ({"model": {"uri": "ftp://x"}}, "spec.model.uri", "should match"),
        ({"model": {}}, "spec.model.uri", "Required value"),
        ({"retries": "two"}, "spec.retries", "must be of type integer"),
        ({"calibration": {"samples": 0}}, "spec.calibration.samples", "greater than or equal to 1"),
        (
            {"method": "auto", "candidates": [{"method": "gptq"}] * 17},
            "spec.candidates",
            "must have at most 16 items",
        ),
    ],
)
def test_schema_errors_name_the_field(
    crd_cluster: LocalCluster, patch: dict[str, Any], field: str, words: str
) -> None:
    spec = dict(GOOD_SPEC, **patch)
    with pytest.raises(ApiException) as exc:
        _api(crd_cluster).create_namespaced_custom_object(*ARGS, _body("s", spec))
    assert exc.value.status == 422
    assert f"{field}: " in exc.value.body and words in exc.value.body


def test_defaults_pruning_and_strict_validation(crd_cluster: LocalCluster) -> None:
    co = _api(crd_cluster)
    spec = dict(GOOD_SPEC, bogus=1, model={"uri": "hf://a/b", "extra": True})
    created = co.create_namespaced_custom_object(*ARGS, _body("d", spec))
    assert "bogus" not in created["spec"] and "extra" not in created["spec"]["model"]
    assert created["spec"]["model"]["task"] == "auto"
    assert created["spec"]["timeoutSeconds"] == 7200 and created["spec"]["suspend"] is False
    with pytest.raises(ApiException) as exc:
        co.create_namespaced_custom_object(*ARGS, _body("d2", spec), field_validation="Strict")
    message = json.loads(exc.value.body)["message"]
    assert exc.value.status == 400 and 'unknown field "spec.bogus"' in message
    assert "strict decoding error" in message


def test_broken_cel_rule_rejects_the_crd(local_cluster: LocalCluster) -> None:
    import yaml

    crd = yaml.safe_load(CRD_PATH.read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["x-kubernetes-validations"] = [{"rule": "self.method ==", "message": "x"}]
    client = kubernetes.config.new_client_from_config(
        config_file=str(local_cluster.kubeconfig_path)
    )
    ext = kubernetes.client.ApiextensionsV1Api(client)
    with pytest.raises(ApiException) as exc:
        ext.create_custom_resource_definition(crd)
    assert exc.value.status == 422 and "compilation failed" in exc.value.body


def test_unchanged_fields_are_not_rechecked(crd_cluster: LocalCluster) -> None:
    """Validation ratcheting: after the CRD tightens, old objects still take status writes."""
    import yaml

    co = _api(crd_cluster)
    co.create_namespaced_custom_object(*ARGS, _body("old", dict(GOOD_SPEC, retries=5)))
    crd = yaml.safe_load(CRD_PATH.read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["retries"]["maximum"] = 3
    crds = crd_cluster.store.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    current = crd_cluster.store.get(crds, None, crd["metadata"]["name"])
    crd["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    crd_cluster.store.replace(crds, None, crd["metadata"]["name"], crd)
    co.patch_namespaced_custom_object_status(*ARGS, "old", {"status": {"phase": "Running"}})
    co.patch_namespaced_custom_object(*ARGS, "old", {"metadata": {"labels": {"a": "b"}}})
    with pytest.raises(ApiException) as exc:
        co.patch_namespaced_custom_object(*ARGS, "old", {"spec": {"retries": 4}})
    assert exc.value.status == 422 and "spec.retries" in exc.value.body
