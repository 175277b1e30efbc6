"""Pod placement fields are refused at admission when the API server would refuse the Job.

The operator copies ``spec.resources.tolerations``, ``affinity``, ``gpuResourceName`` and
``priorityClassName`` into the Job's pod template and ``queueName`` into the Kueue label; a
value the real server refuses there (``ValidateTolerations``, ``validateAffinity``,
``IsExtendedResourceName``, label values) would leave an object that can never run. Each bad
spec below is refused by the CRD (through the local control plane and the real kubectl) naming
the field, and by ``parse_spec`` naming the same field; a good spec goes through both and the
operator's builders copy it unchanged into the Job.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubequant_api import crd as crdgen
from kubequant_api.constants import API_VERSION, CRD_NAME, KIND, KUEUE_QUEUE_LABEL
from kubequant_api.errors import InvalidSpecError
from kubequant_api.models import parse_spec
from kubequant_localkube.admission import all_rules
from kubequant_localkube.cluster import LocalCluster
from kubequant_operator import builders
from kubequant_operator.settings import Settings
from tests.fixtures.cluster import Kubectl, make_kubectl

BASE: dict[str, Any] = {
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B@main"},
    "method": "gptq",
    "output": {"uri": "s3://bucket/models/qwen"},
}
REQ = "requiredDuringSchedulingIgnoredDuringExecution"
PREF = "preferredDuringSchedulingIgnoredDuringExecution"


def _spec(**resources: Any) -> dict[str, Any]:
    spec = copy.deepcopy(BASE)
    spec["resources"] = resources
    return spec


def _node_term(*exprs: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {REQ: {"nodeSelectorTerms": [{"matchExpressions": list(exprs)}]}}}


# (label, spec, the field both refuse, words of the message)
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "toleration Exists with a value",
        _spec(tolerations=[{"key": "gpu", "operator": "Exists", "value": "a"}]),
        "spec.resources.tolerations[0].operator",
        "value must be empty when `operator` is 'Exists'",
    ),
    (
        "toleration without key and not Exists",
        _spec(tolerations=[{"operator": "Equal", "value": "a"}]),
        "spec.resources.tolerations[0].operator",
        'operator must be Exists when `key` is empty, which means "match all values and all keys"',
    ),
    (
        "tolerationSeconds without NoExecute",
        _spec(
            tolerations=[
                {"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}
            ]
        ),
        "spec.resources.tolerations[0].effect",
        "effect must be 'NoExecute' when `tolerationSeconds` is set",
    ),
    (
        "toleration effect unknown",
        _spec(tolerations=[{"key": "k", "operator": "Exists", "effect": "NoRun"}]),
        "spec.resources.tolerations[0].effect",
        "NoSchedule",
    ),
    (
        "toleration key not a qualified name",
        _spec(tolerations=[{"key": "bad key", "operator": "Exists"}]),
        "spec.resources.tolerations[0].key",
        "match",
    ),
    (
        "toleration value not a label value",
        _spec(tolerations=[{"key": "k", "operator": "Equal", "value": "a b"}]),
        "spec.resources.tolerations[0].value",
        "match",
    ),
    (
        "gpuResourceName without a domain",
        _spec(gpu=1, gpuResourceName="gpu"),
        "spec.resources.gpuResourceName",
        "match",
    ),
    (
        "gpuResourceName in kubernetes.io",
        _spec(gpu=1, gpuResourceName="kubernetes.io/gpu"),
        "spec.resources.gpuResourceName",
        "must be an extended resource name, outside the kubernetes.io/ namespace",
    ),
    (
        "gpuResourceName with the requests. prefix",
        _spec(gpu=1, gpuResourceName="requests.example.com/gpu"),
        "spec.resources.gpuResourceName",
        "must be an extended resource name, without the requests. prefix",
    ),
    (
        "priorityClassName not a DNS subdomain",
        _spec(priorityClassName="Batch_Low"),
        "spec.resources.priorityClassName",
        "match",
    ),
    (
        "node affinity In without values",
        _spec(affinity=_node_term({"key": "pool", "operator": "In"})),
        f"spec.resources.affinity.nodeAffinity.{REQ}.nodeSelectorTerms[0].matchExpressions[0]"
        ".values",
        "must be specified when `operator` is 'In' or 'NotIn'",
    ),
    (
        "node affinity Gt with two values",
        _spec(affinity=_node_term({"key": "cores", "operator": "Gt", "values": ["1", "2"]})),
        f"spec.resources.affinity.nodeAffinity.{REQ}.nodeSelectorTerms[0].matchExpressions[0]"
        ".values",
        "must be specified single value when `operator` is 'Lt' or 'Gt'",
    ),
    (
        "node affinity operator unknown",
        _spec(affinity=_node_term({"key": "pool", "operator": "Near", "values": ["a"]})),
        f"spec.resources.affinity.nodeAffinity.{REQ}.nodeSelectorTerms[0].matchExpressions[0]"
        ".operator",
        "In",
    ),
    (
        "node affinity without terms",
        _spec(affinity={"nodeAffinity": {REQ: {"nodeSelectorTerms": []}}}),
        f"spec.resources.affinity.nodeAffinity.{REQ}.nodeSelectorTerms",
        "1",
    ),
    (
        "pod anti-affinity Exists with values",
        _spec(
            affinity={
                "podAntiAffinity": {
                    PREF: [
                        {
                            "weight": 10,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {
                                    "matchExpressions": [
                                        {"key": "app", "operator": "Exists", "values": ["x"]}
                                    ]
                                },
                            },
                        }
                    ]
                }
            }
        ),
        f"spec.resources.affinity.podAntiAffinity.{PREF}[0].podAffinityTerm.labelSelector"
        ".matchExpressions[0].values",
        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
    ),
    (
        "node affinity preference Exists with values",
        _spec(
            affinity={
                "nodeAffinity": {
                    PREF: [
                        {
                            "weight": 1,
                            "preference": {
                                "matchExpressions": [
                                    {"key": "gpu", "operator": "Exists", "values": ["a"]}
                                ]
                            },
                        }
                    ]
                }
            }
        ),
        f"spec.resources.affinity.nodeAffinity.{PREF}[0].preference.matchExpressions[0].values",
        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
    ),
    (
        "pod affinity namespaceSelector NotIn without values",
        _spec(
            affinity={
                "podAffinity": {
                    REQ: [
                        {
                            "topologyKey": "zone",
                            "namespaceSelector": {
                                "matchExpressions": [{"key": "team", "operator": "NotIn"}]
                            },
                        }
                    ]
                }
            }
        ),
        f"spec.resources.affinity.podAffinity.{REQ}[0].namespaceSelector.matchExpressions[0]"
        ".values",
        "must be specified when `operator` is 'In' or 'NotIn'",
    ),
    (
        "pod affinity weight 0",
        _spec(
            affinity={
                "podAffinity": {PREF: [{"weight": 0, "podAffinityTerm": {"topologyKey": "zone"}}]}
            }
        ),
        f"spec.resources.affinity.podAffinity.{PREF}[0].weight",
        "1",
    ),
    (
        "pod affinity term without topologyKey",
        _spec(affinity={"podAffinity": {REQ: [{"labelSelector": {"matchLabels": {"a": "b"}}}]}}),
        f"spec.resources.affinity.podAffinity.{REQ}[0].topologyKey",
        "equired",
    ),
    (
        "affinity with a field core/v1 Affinity does not have",
        _spec(affinity={"nodeAffinity": {"x": 1}}),
        "spec.resources.affinity.nodeAffinity.x",
        "",
    ),
    (
        "queueName not a label value",
        {**BASE, "queueName": "team queue"},
        "spec.queueName",
        "match",
    ),
]

GOOD_TOLERATIONS = [
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "pool", "operator": "Equal", "value": "a100", "effect": "NoExecute"},
    {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"operator": "Exists"},
]
GOOD_AFFINITY = {
    "nodeAffinity": {
        REQ: {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {
                            "key": "node.kubernetes.io/instance-type",
                            "operator": "In",
                            "values": ["a"],
                        },
                        {"key": "cores", "operator": "Gt", "values": ["8"]},
                        {"key": "spot", "operator": "DoesNotExist"},
                    ],
                    "matchFields": [
                        {"key": "metadata.name", "operator": "NotIn", "values": ["node-1"]}
                    ],
                }
            ]
        },
        PREF: [
            {"weight": 50, "preference": {"matchExpressions": [{"key": "z", "operator": "Exists"}]}}
        ],
    },
    "podAntiAffinity": {
        REQ: [
            {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {
                    "matchLabels": {"app.kubernetes.io/name": "kubequant"},
                    "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}],
                },
                "namespaces": ["team-a"],
                "namespaceSelector": {"matchLabels": {"team": "ml"}},
            }
        ],
        PREF: [
            {"weight": 1, "podAffinityTerm": {"topologyKey": "zone", "matchLabelKeys": ["run"]}}
        ],
    },
}


@pytest.fixture(scope="module")
def kubectl(local_cluster_module: LocalCluster) -> Kubectl:
    """The real kubectl against one local control plane with the ModelOptimization CRD."""
    run = make_kubectl(local_cluster_module)
    run("apply", "-f", str(crdgen.CRD_PATH), check=True)
    run("wait", "--for=condition=Established", f"crd/{CRD_NAME}", check=True)
    return run


def _manifest(name: str, spec: dict[str, Any]) -> str:
    obj = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }
    return yaml.safe_dump(obj)


def _dotted(field: str) -> str:
    """A field as parse_spec names one pydantic located (``a.0.b``) or a rule named (``a[0].b``)."""
    return re.sub(r"\[(\d+)\]", r".\1", field)


@pytest.mark.parametrize(("label", "spec", "field", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_placement_is_refused_by_the_crd_and_by_parse_spec(
    kubectl: Kubectl, label: str, spec: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(InvalidSpecError) as err:
        parse_spec(spec)
    assert _dotted(err.value.field) == _dotted(field), str(err.value)
    assert words in err.value.message, str(err.value)

    name = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    refused = kubectl("apply", "-f", "-", input=_manifest(name, spec))
    assert refused.returncode != 0, f"{label}: the CRD admitted it"
    assert field in refused.stderr, refused.stderr
    assert words in refused.stderr, refused.stderr
    assert kubectl("get", KIND.lower(), name).returncode != 0  # nothing stored


def test_good_placement_is_admitted_and_copied_unchanged_into_the_job(kubectl: Kubectl) -> None:
    spec = _spec(
        gpu=1,
        gpuResourceName="gpu.intel.com/i915",
        tolerations=GOOD_TOLERATIONS,
        affinity=GOOD_AFFINITY,
        priorityClassName="batch.low-1",
    )
    spec["queueName"] = "team-a.gpu_queue"
    kubectl("apply", "-f", "-", input=_manifest("good", spec), check=True)
    stored = json.loads(kubectl("get", KIND.lower(), "good", "-o", "json", check=True).stdout)
    resources = stored["spec"]["resources"]
    assert resources["tolerations"] == GOOD_TOLERATIONS  # nothing pruned
    assert resources["affinity"] == GOOD_AFFINITY

    job = builders.build_job(stored, parse_spec(stored["spec"]), Settings())
    pod = job["spec"]["template"]["spec"]
    assert pod["tolerations"] == GOOD_TOLERATIONS
    assert pod["affinity"] == GOOD_AFFINITY
    assert pod["priorityClassName"] == "batch.low-1"
    assert pod["containers"][0]["resources"]["limits"]["gpu.intel.com/i915"] == "1"
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "team-a.gpu_queue"


def _nodes(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(schema.get(key), dict):
            yield from _nodes(schema[key], path + suffix)


def test_placement_schema_is_structural_and_bounded_for_the_cel_cost_estimate() -> None:
    """The API server estimates each CEL rule's cost times the most items it can run on: every
    list and map under the placement fields is bounded, every string too (or an enum), and no
    node keeps unknown fields."""
    crd = yaml.safe_load(crdgen.CRD_PATH.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    resources = spec["properties"]["resources"]["properties"]
    roots = {
        f"resources.{k}": resources[k]
        for k in ("tolerations", "affinity", "gpuResourceName", "priorityClassName")
    }
    roots["queueName"] = spec["properties"]["queueName"]
    cardinality: dict[str, int] = {}
    ruled = 0
    for root, schema in roots.items():
        for path, node in _nodes(schema, root):
            assert not node.get("x-kubernetes-preserve-unknown-fields"), path
            kind = node.get("type")
            assert kind, path
            if kind == "array":
                assert "maxItems" in node, path
            if kind == "object" and "additionalProperties" in node:
                assert "maxProperties" in node, path
            if kind == "string":
                assert "maxLength" in node or "enum" in node, path
            if node.get("x-kubernetes-validations"):
                ruled += 1
                # how many times the rule can run: the product of the enclosing lists' bounds
                runs, prefix = 1, ""
                for part in re.split(r"(?<=\[\])", path):
                    prefix += part
                    if prefix.endswith("[]"):
                        parent = dict(_nodes(schema, root))[prefix[:-2]]
                        runs *= int(parent["maxItems"])
                cardinality[path] = runs
    assert ruled >= 5, cardinality
    # Each rule here costs well under 100 units per run (has/size/in on bounded values);
    # 10**6 is a tenth of the per-expression limit (StaticEstimatedCostLimit = 10**7).
    assert max(cardinality.values()) * 100 < 10**6, cardinality


def test_every_kind_of_placement_rule_has_a_bad_case() -> None:
    """Each CEL rule under spec.resources (the same selector rules sit on several nodes) is
    tripped by a case above, on a node of its kind (node or label selector requirement)."""
    crd = yaml.safe_load(crdgen.CRD_PATH.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [
        (path, rule)
        for path, rule in all_rules(schema)
        if path.startswith(".properties[spec].properties[resources].")
    ]
    assert len(rules) >= 20, rules
    for path, rule in rules:
        kind = _kind(path)
        hit = [b[0] for b in BAD if b[3] == rule["message"] and _kind(b[2]) == kind]
        assert hit, f"no bad case trips {rule['message']!r} on a {kind} node ({path})"


def _kind(where: str) -> str:
    """Which placement field a schema path or a field path is under (pod (anti-)affinity
    share their selector rules)."""
    for marker in ("tolerations", "gpuResourceName", "nodeAffinity"):
        if marker in where:
            return marker
    return "pod" if "podAffinity" in where or "podAntiAffinity" in where else where
