"""Status reporting against the project's own API emulator with the real CRD installed.

Complements ``test_kube.py``: here the API server assigns uid, generation and
resourceVersion, serves the status subresource, checks merge-patch preconditions and
validates what the engine writes against the CRD's schema.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from kubequant_api.constants import API_VERSION, GROUP, KIND, PLURAL, VERSION, GateVerdict, Stage
from kubequant_api.models import CandidateResult, Measurements, Result
from optimizer_job.report import KubeStatusReporter, RunContext, StaleRunError, load_object
from optimizer_job.report.kube import api_client

NS = "default"


def _manifest(name: str, method: str = "torchao-int8-weight") -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"uri": "file:///models/bert"},
            "method": method,
            "output": {"uri": "file:///out/bert"},
        },
    }


def _api() -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client())


def _ctx(obj: dict[str, Any]) -> RunContext:
    meta = obj["metadata"]
    return RunContext(
        name=meta["name"],
        namespace=NS,
        uid=meta["uid"],
        generation=meta["generation"],
        method=obj["spec"]["method"],
    )


@pytest.fixture()
def cluster_env(crd_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KUBECONFIG", str(crd_cluster.kubeconfig_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return crd_cluster


def test_status_written_and_schema_accepted(cluster_env: Any) -> None:
    api = _api()
    created = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _manifest("a"))
    ctx = _ctx(created)
    assert ctx.uid and ctx.generation == 1
    r = KubeStatusReporter(ctx, min_interval=0)
    try:
        r.stage(Stage.QUANTIZING, 40, candidate="0:torchao-int8-weight")
        r.result(
            Result(
                method="torchao-int8-weight",
                original_size_bytes=90_900_000,
                optimized_size_bytes=58_700_000,
                compression_ratio=1.5478,
                baseline=Measurements(latency_ms=38.5, peak_memory_bytes=141_000_000),
                optimized=Measurements(latency_ms=56.2),
                speedup=0.685,
                cosine_similarity=0.9996,
                quality_gate=GateVerdict.PASSED,
                output_uri="file:///out/bert",
                output_digest="sha256:" + "0" * 64,
                candidates=[CandidateResult(method="torchao-int8-weight", compression_ratio=1.5)],
            )
        )
        r.stage(Stage.DONE, 100)
    finally:
        r.close()
    assert r.writes == 3 and r.stale is None
    obj = load_object(NS, "a", uid=ctx.uid, generation=1)
    status = obj["status"]
    assert status["progress"] == {
        "stage": "Done",
        "percent": 100,
        "generation": 1,
        "summary": "Done 100%",
    }
    assert status["result"]["generation"] == 1
    assert status["result"]["cosineSimilarity"] == 0.9996
    assert status["result"]["candidates"][0]["compressionRatio"] == 1.5
    # The status subresource leaves the spec alone; the generation did not move.
    assert obj["metadata"]["generation"] == 1
    assert obj["spec"]["method"] == "torchao-int8-weight"


def test_spec_change_makes_the_run_stale(cluster_env: Any) -> None:
    api = _api()
    created = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _manifest("b"))
    ctx = _ctx(created)
    r = KubeStatusReporter(ctx, min_interval=0)
    r.stage(Stage.LOADING, 5)
    api.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "b", {"spec": {"method": "quanto-int8"}}
    )
    with pytest.raises(StaleRunError, match="generation"):
        r.result(Result(method="torchao-int8-weight", compression_ratio=1.5))
    r.close()
    obj = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "b")
    assert obj["metadata"]["generation"] == 2
    assert "result" not in obj.get("status", {})
    assert obj["status"]["progress"]["generation"] == 1  # only the write made before the edit


def test_recreated_object_makes_the_run_stale(cluster_env: Any) -> None:
    api = _api()
    created = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _manifest("c"))
    ctx = _ctx(created)
    api.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "c")
    again = api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, _manifest("c"))
    assert again["metadata"]["uid"] != ctx.uid
    assert again["metadata"]["generation"] == ctx.generation  # same generation, new object
    r = KubeStatusReporter(ctx, min_interval=0)
    with pytest.raises(StaleRunError, match="uid"):
        r.stage(Stage.LOADING, 5)
    r.close()
    obj = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "c")
    assert "status" not in obj or "progress" not in obj["status"]
    assert os.environ["KUBECONFIG"] == str(cluster_env.kubeconfig_path)
