"""Patches applied as a real API server applies them (evanphx/json-patch, strategicpatch)."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiException

from kubequant_localkube.cluster import LocalCluster
from kubequant_localkube.patching import PatchError, patched


def pod() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "finalizers": ["a/x"],
            "ownerReferences": [{"uid": "u1", "name": "one", "kind": "Job"}],
        },
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "img:1",
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    "ports": [{"containerPort": 80, "name": "http"}],
                    "envFrom": [{"configMapRef": {"name": "one"}}],
                },
                {"name": "side", "image": "side:1"},
            ],
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        },
    }


def smp(patch: dict[str, Any], target: dict[str, Any] | None = None) -> Any:
    return patched(target or pod(), "strategic", patch, custom=False)


def containers(obj: Any) -> dict[str, Any]:
    return {c["name"]: c for c in obj["spec"]["containers"]}


# --- JSON patch (RFC 6902 as evanphx/json-patch applies it) ---


@pytest.mark.parametrize("path", ["/spec/containers/-1/image", "/spec/containers/01/image"])
def test_json_patch_refuses_negative_and_leading_zero_indices(path: str) -> None:
    with pytest.raises(PatchError) as exc:
        patched(pod(), "json", [{"op": "replace", "path": path, "value": "x"}], custom=False)
    assert exc.value.status == 422
    assert "is not a valid sequence index" in str(exc.value)


def test_json_patch_test_compares_by_json_equality() -> None:
    doc = {"a": True, "n": 1.0}
    with pytest.raises(PatchError) as exc:
        patched(doc, "json", [{"op": "test", "path": "/a", "value": 1}], custom=True)
    assert exc.value.status == 422
    assert "testing value /a failed" in str(exc.value)
    # numbers compare by value, as JSON numbers do
    ops = [{"op": "test", "path": "/n", "value": 1}, {"op": "add", "path": "/b", "value": 2}]
    assert patched(doc, "json", ops, custom=True) == {"a": True, "n": 1.0, "b": 2}
    assert doc == {"a": True, "n": 1.0}  # the stored object is not touched


def test_json_patch_malformed_bodies() -> None:
    with pytest.raises(PatchError) as exc:
        patched(pod(), "json", {"op": "add"}, custom=False)
    assert exc.value.status == 400  # DecodePatch refuses it
    with pytest.raises(PatchError) as exc:
        patched(pod(), "json", [{"op": "remove", "path": "/nope"}], custom=False)
    assert exc.value.status == 422  # Apply refuses it


# --- strategic merge patch with the API types' merge keys ---


def test_containers_merged_by_name() -> None:
    out = smp({"spec": {"containers": [{"name": "side", "image": "side:2"}]}})
    assert {n: c["image"] for n, c in containers(out).items()} == {
        "main": "img:1",
        "side": "side:2",
    }
    assert containers(out)["main"]["env"] == pod()["spec"]["containers"][0]["env"]


def test_env_merged_by_name_and_ports_by_container_port() -> None:
    patch = {
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                    "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 81}],
                    "envFrom": [{"secretRef": {"name": "two"}}],
                }
            ]
        }
    }
    main = containers(smp(patch))["main"]
    assert main["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "3"},
        {"name": "C", "value": "4"},
    ]
    assert main["ports"] == [
        {"containerPort": 80, "name": "http", "protocol": "TCP"},
        {"containerPort": 81},
    ]
    assert main["envFrom"] == [{"secretRef": {"name": "two"}}]  # no merge key: replaced


def test_tolerations_replaced_as_a_list() -> None:
    new = [{"key": "spot", "operator": "Exists"}]
    assert smp({"spec": {"tolerations": new}})["spec"]["tolerations"] == new


def test_patch_delete_directive_removes_a_container_by_name() -> None:
    out = smp({"spec": {"containers": [{"name": "main", "$patch": "delete"}]}})
    assert list(containers(out)) == ["side"]
    # a list $patch: replace replaces the whole list
    patch = {"spec": {"containers": [{"$patch": "replace"}, {"name": "only", "image": "o"}]}}
    assert smp(patch)["spec"]["containers"] == [{"name": "only", "image": "o"}]


def test_metadata_lists_finalizers_as_a_set_owner_references_by_uid() -> None:
    patch = {
        "metadata": {
            "finalizers": ["a/x", "b/y"],
            "ownerReferences": [{"uid": "u2", "name": "two", "kind": "Job"}],
        }
    }
    meta = smp(patch)["metadata"]
    assert meta["finalizers"] == ["a/x", "b/y"]
    assert [r["uid"] for r in meta["ownerReferences"]] == ["u1", "u2"]
    gone = smp({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a/x"]}})
    assert gone["metadata"]["finalizers"] == []


def test_null_deletes_retain_keys_and_map_directives() -> None:
    out = smp({"spec": {"volumes": [{"name": "v", "emptyDir": None, "hostPath": {"path": "/d"}}]}})
    assert out["spec"]["volumes"] == [{"name": "v", "hostPath": {"path": "/d"}}]
    retained = smp(
        {"spec": {"volumes": [{"name": "v", "$retainKeys": ["name", "secret"], "secret": {}}]}}
    )
    assert retained["spec"]["volumes"] == [{"name": "v", "secret": {}}]
    with pytest.raises(PatchError) as exc:
        smp({"spec": {"volumes": [{"name": "v", "$retainKeys": ["name"], "secret": {}}]}})
    assert exc.value.status == 422
    replaced = smp({"spec": {"$patch": "replace", "containers": [{"name": "n", "image": "i"}]}})
    assert replaced["spec"] == {"containers": [{"name": "n", "image": "i"}]}


def test_merge_key_missing_is_refused_and_order_follows_set_element_order() -> None:
    with pytest.raises(PatchError) as exc:
        smp({"spec": {"containers": [{"image": "x"}]}})
    assert "does not contain declared merge key: name" in str(exc.value)
    order = {
        "spec": {
            "$setElementOrder/containers": [{"name": "side"}, {"name": "main"}],
            "containers": [{"name": "main", "image": "img:2"}],
        }
    }
    assert [c["name"] for c in smp(order)["spec"]["containers"]] == ["side", "main"]


def test_service_ports_merge_by_port_and_custom_resources_replace_lists() -> None:
    svc = {"kind": "Service", "metadata": {}, "spec": {"ports": [{"port": 80, "name": "h"}]}}
    out = smp({"spec": {"ports": [{"port": 443, "name": "s"}]}}, target=svc)
    assert [p["port"] for p in out["spec"]["ports"]] == [80, 443]
    cr = {"kind": "ModelOptimization", "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}
    out = patched(
        copy.deepcopy(cr), "strategic", {"spec": {"containers": [{"name": "b"}]}}, custom=True
    )
    assert out["spec"]["containers"] == [{"name": "b"}]


# --- over HTTP, as clients send them ---


def test_patches_over_http(crd_cluster: LocalCluster) -> None:
    kubeconfig = str(crd_cluster.kubeconfig_path)
    client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    core = kubernetes.client.CoreV1Api(client)
    meta = kubernetes.client.V1ObjectMeta(name="cm", finalizers=["a/x"])
    core.create_namespaced_config_map("default", kubernetes.client.V1ConfigMap(metadata=meta))
    for bad in ("/metadata/finalizers/-1", "/metadata/finalizers/01"):
        with pytest.raises(ApiException) as exc:
            # a list body: the client sends application/json-patch+json
            core.patch_namespaced_config_map(
                "cm", "default", [{"op": "replace", "path": bad, "value": "b/y"}]
            )
        assert exc.value.status == 422 and "Invalid" in str(exc.value.body)
    # the client sends a strategic merge patch: finalizers are merged as a set
    out = core.patch_namespaced_config_map("cm", "default", {"metadata": {"finalizers": ["b/y"]}})
    assert out.metadata is not None and out.metadata.finalizers == ["a/x", "b/y"]
    core.patch_namespaced_config_map("cm", "default", {"metadata": {"finalizers": None}})
