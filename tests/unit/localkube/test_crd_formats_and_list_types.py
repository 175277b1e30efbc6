"""CRD admission: string formats and list types checked as a real API server checks them.

kube-openapi's ``strfmt`` formats (``date-time``, ``date``, ``uuid``, ``byte``, ``ipv4``, ...)
and ``x-kubernetes-list-type: set``/``map`` uniqueness (``listtype/validation.go``), on the
object and on its ``status`` subresource, through the real kubectl and over HTTP.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from kubequant_localkube import schemaformats
from kubequant_localkube.cluster import LocalCluster
from tests.fixtures.cluster import Kubectl, make_kubectl

Obj = dict[str, Any]
GROUP, PLURAL = "formats.example.com", "widgets"
BASE = f"/apis/{GROUP}/v1/namespaces/default/{PLURAL}"

CONDITIONS = {
    "type": "array",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
    "items": {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    },
}
SPEC = {
    "type": "object",
    "properties": {
        "when": {"type": "string", "format": "date-time"},
        "day": {"type": "string", "format": "date"},
        "id": {"type": "string", "format": "uuid"},
        "blob": {"type": "string", "format": "byte"},
        "ip": {"type": "string", "format": "ipv4"},
        "net": {"type": "string", "format": "cidr"},
        "secret": {"type": "string", "format": "password"},
        "label": {"type": "string", "format": "not-a-known-format"},
        "count": {"type": "integer", "format": "int32"},
        "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
        "ports": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["port", "protocol"],
            "items": {
                "type": "object",
                "required": ["port"],
                "properties": {
                    "port": {"type": "integer"},
                    "protocol": {"type": "string", "default": "TCP"},
                },
            },
        },
        "conditions": CONDITIONS,
    },
}
CRD: Obj = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": PLURAL,
            "singular": "widget",
            "kind": "Widget",
            "listKind": "WidgetList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": SPEC,
                            "status": {
                                "type": "object",
                                "properties": {"conditions": CONDITIONS},
                            },
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture(scope="module")
def cluster(local_cluster_module: LocalCluster) -> Iterator[LocalCluster]:
    crds = local_cluster_module.store.resource(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions"
    )
    local_cluster_module.store.create(crds, None, CRD)
    yield local_cluster_module


@pytest.fixture(scope="module")
def kubectl(cluster: LocalCluster) -> Kubectl:
    return make_kubectl(cluster)


def widget(name: str, **spec: Any) -> Obj:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def http(cluster: LocalCluster, method: str, path: str, body: Obj, ctype: str) -> tuple[int, Obj]:
    request = urllib.request.Request(
        cluster.url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": ctype},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def refused(kubectl: Kubectl, obj: Obj) -> str:
    proc = kubectl("apply", "-f", "-", input=json.dumps(obj))
    assert proc.returncode != 0, proc.stdout
    name = obj["metadata"]["name"]
    assert f'The Widget "{name}" is invalid: ' in proc.stderr, proc.stderr
    return proc.stderr


READY = {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-01T03:50:00Z"}


def test_valid_values_of_every_format_are_accepted_through_kubectl(kubectl: Kubectl) -> None:
    ok = widget(
        "good",
        when="2026-12-01T03:50:00.123456+01:00",
        day="2024-02-29",
        id="0F8FAD5B-D9CB-469F-A165-70867728950E",
        blob="aGVsbG8=",
        ip="10.0.0.1",
        net="10.0.0.0/8",
        secret="anything at all",
        label="no check for a format the server does not know",
        count=2**40,  # int32 is not range-checked by the server's format validator
        tags=["a", "b"],
        ports=[{"port": 80}, {"port": 80, "protocol": "UDP"}],
        conditions=[READY, dict(READY, type="Stalled", status="False")],
    )
    proc = kubectl("apply", "-f", "-", input=json.dumps(ok))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(kubectl("get", "widget", "good", "-o", "json", check=True).stdout)
    assert got["spec"]["ports"][0] == {"port": 80, "protocol": "TCP"}  # defaulted


@pytest.mark.parametrize(
    ("field", "value", "fmt"),
    [
        ("when", "2026-12-01 03:50:00", "date-time"),
        ("when", "2026-12-01T25:00:00Z", "date-time"),
        ("when", "2026-12-01T03:50:00", "date-time"),  # no zone
        ("day", "2023-02-29", "date"),
        ("day", "2024-1-05", "date"),
        ("id", "not-a-uuid", "uuid"),
        ("blob", "%%%", "byte"),
        ("ip", "10.0.0.256", "ipv4"),
        ("ip", "::1", "ipv4"),
        ("net", "10.0.0.1", "cidr"),
    ],
)
def test_a_value_breaking_its_format_is_refused_through_kubectl(
    kubectl: Kubectl, field: str, value: str, fmt: str
) -> None:
    err = refused(kubectl, widget("bad-format", **{field: value}))
    quoted = json.dumps(value)
    assert (
        f"spec.{field}: Invalid value: {quoted}: spec.{field} in body must be of type {fmt}: "
        f"{quoted}"
    ) in err


def test_list_map_and_set_duplicates_are_refused_through_kubectl(kubectl: Kubectl) -> None:
    err = refused(kubectl, widget("dup-cond", conditions=[READY, dict(READY, status="False")]))
    assert 'spec.conditions[1]: Duplicate value: map[string]interface {}{"type":"Ready"}' in err
    err = refused(kubectl, widget("dup-tags", tags=["a", "b", "a", "a", "b"]))
    # only the second appearance of each value, as the server reports it
    assert 'spec.tags[2]: Duplicate value: "a"' in err
    assert 'spec.tags[4]: Duplicate value: "b"' in err and "spec.tags[3]" not in err
    # two keys; the second item's protocol comes from the default, so the keys collide
    err = refused(
        kubectl, widget("dup-ports", ports=[{"port": 80, "protocol": "TCP"}, {"port": 80}])
    )
    assert (
        'spec.ports[1]: Duplicate value: map[string]interface {}{"port":80, "protocol":"TCP"}'
        in err
    )


def test_status_subresource_is_checked_over_http(cluster: LocalCluster) -> None:
    status, body = http(cluster, "POST", BASE, widget("st"), "application/json")
    assert status == 201, body
    path = f"{BASE}/st/status"
    merge = "application/merge-patch+json"
    status, body = http(cluster, "PATCH", path, {"status": {"conditions": [READY, READY]}}, merge)
    assert status == 422, body
    assert body["reason"] == "Invalid"
    assert body["details"]["causes"] == [
        {
            "field": "status.conditions[1]",
            "reason": "FieldValueDuplicate",
            "message": 'Duplicate value: map[string]interface {}{"type":"Ready"}',
        }
    ]
    assert body["message"] == (
        'Widget.formats.example.com "st" is invalid: status.conditions[1]: '
        'Duplicate value: map[string]interface {}{"type":"Ready"}'
    )
    late = dict(READY, lastTransitionTime="now")
    status, body = http(cluster, "PATCH", path, {"status": {"conditions": [late]}}, merge)
    assert status == 422, body
    (cause,) = body["details"]["causes"]
    assert cause == {
        "field": "status.conditions[0].lastTransitionTime",
        "reason": "FieldValueTypeInvalid",
        "message": 'Invalid value: "now": status.conditions[0].lastTransitionTime in body '
        'must be of type date-time: "now"',
    }
    status, body = http(cluster, "PATCH", path, {"status": {"conditions": [READY]}}, merge)
    assert status == 200, body
    assert body["status"]["conditions"] == [READY]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2026-12-01T03:50:00Z", True),
        ("2026-12-01t03:50:00.5z", True),
        ("2026-12-01T23:59:59-07:00", True),
        ("2026-12-01T03:50Z", False),
        ("2026-12-01T03:60:00Z", False),
        ("2026-13-01T03:50:00Z", False),
        ("abc", False),
    ],
)
def test_date_time_as_strfmt_is_date_time(value: str, ok: bool) -> None:
    assert schemaformats.is_date_time(value) is ok


def test_go_formatting_of_duplicates() -> None:
    assert schemaformats.go_repr({"b": 1.5, "a": [True, None]}) == (
        'map[string]interface {}{"a":[]interface {}{true, interface {}(nil)}, "b":1.5}'
    )
    assert schemaformats.duplicate_shown(3) == "3"
    assert schemaformats.list_type_problems(
        {"x-kubernetes-list-type": "set"}, [1, 1.0, True, 1]
    ) == [(3, "Duplicate value: 1")]
    keyless = schemaformats.list_type_problems(
        {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}, [{}, {"x": 1}]
    )
    assert keyless == [(1, "Duplicate value: map[string]interface {}{}")]
