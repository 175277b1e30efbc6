"""The kubernetes client against the emulator: CRUD, watch, status, GC."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest

from kubequant_localkube.cluster import LocalCluster


def _api(cluster: LocalCluster) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig_path))


def _mopt(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B"},
        "method": "gptq",
        "output": {"uri": "s3://bucket/out"},
    }
    body.update(spec)
    return {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": name},
        "spec": body,
    }


def test_custom_object_lifecycle(crd_cluster: LocalCluster) -> None:
    co = kubernetes.client.CustomObjectsApi(_api(crd_cluster))
    args = ("kubequant.io", "v1alpha1", "default", "modeloptimizations")
    created = co.create_namespaced_custom_object(*args, _mopt("a"))
    meta = created["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["creationTimestamp"]
    assert created["spec"]["retries"] == 2  # schema default applied
    patched = co.patch_namespaced_custom_object_status(*args, "a", {"status": {"phase": "Running"}})
    assert patched["status"]["phase"] == "Running"
    assert patched["metadata"]["generation"] == 1
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    again = co.patch_namespaced_custom_object(*args, "a", {"spec": {"method": "awq"}})
    assert again["metadata"]["generation"] == 2
    assert again["status"]["phase"] == "Running"
    with pytest.raises(kubernetes.client.ApiException) as exc:
        co.create_namespaced_custom_object(*args, _mopt("b", method="auto"))
    assert exc.value.status == 422
    assert "spec.candidates" in exc.value.body
