"""``run-in-cluster`` against the project's API emulator with the real CRD installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kubequant_api.constants import API_VERSION, GROUP, KIND, PLURAL, VERSION
from tests.fixtures.storage import EngineEnv, run_engine

NS = "default"


@pytest.fixture()
def cluster_env(crd_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KUBECONFIG", str(crd_cluster.kubeconfig_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBEQUANT_STATUS_PROGRESS_INTERVAL_SECONDS", "0")
    return crd_cluster


def _api() -> Any:
    from kubernetes import client

    from optimizer_job.report.kube import api_client

    return client.CustomObjectsApi(api_client())


def _create(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}
    created: dict[str, Any] = _api().create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, body
    )
    return created


def _point_at(obj: dict[str, Any], monkeypatch: pytest.MonkeyPatch, **override: str) -> None:
    meta = obj["metadata"]
    env = {
        "KUBEQUANT_OBJECT_NAMESPACE": NS,
        "KUBEQUANT_OBJECT_NAME": meta["name"],
        "KUBEQUANT_OBJECT_UID": meta["uid"],
        "KUBEQUANT_OBJECT_GENERATION": str(meta["generation"]),
    }
    env.update(override)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_in_cluster_dry_run_writes_the_plan_to_status(  # noqa: PLR0917
    cluster_env: Any,
    minilm_path: Path,
    tmp_path: Path,
    engine_env: EngineEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    obj = _create(
        "dry",
        {
            "model": {"uri": f"file://{minilm_path}"},
            "method": "torchao-int8-weight",
            "output": {"uri": f"file://{tmp_path}/out"},
            "dryRun": True,
        },
    )
    _point_at(obj, monkeypatch)
    code, text = run_engine(["run-in-cluster"], capsys)
    assert code == 0, text
    got = _api().get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "dry")
    status = got.get("status") or {}
    result = status["result"]
    assert result["generation"] == obj["metadata"]["generation"]
    assert result["plan"]["model"]["task"] == "feature-extraction"
    assert result["plan"]["candidates"][0]["compatible"] is True
    assert status["progress"]["stage"] == "Done"
    assert not (tmp_path / "out").exists()


def test_in_cluster_run_for_an_old_generation_does_nothing(  # noqa: PLR0917
    cluster_env: Any,
    minilm_path: Path,
    tmp_path: Path,
    engine_env: EngineEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    obj = _create(
        "stale",
        {
            "model": {"uri": f"file://{minilm_path}"},
            "method": "torchao-int8-weight",
            "output": {"uri": f"file://{tmp_path}/out"},
        },
    )
    _point_at(obj, monkeypatch, KUBEQUANT_OBJECT_GENERATION=str(obj["metadata"]["generation"] + 1))
    code, _ = run_engine(["run-in-cluster"], capsys)
    assert code == 2
    _point_at(obj, monkeypatch, KUBEQUANT_OBJECT_UID="not-the-uid")
    code, _ = run_engine(["run-in-cluster"], capsys)
    assert code == 2
    got = _api().get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "stale")
    assert "result" not in (got.get("status") or {})
    assert not (tmp_path / "out").exists()


def test_in_cluster_needs_its_object_identity(
    engine_env: EngineEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("NAMESPACE", "NAME", "UID", "GENERATION"):
        monkeypatch.delenv(f"KUBEQUANT_OBJECT_{key}", raising=False)
    code, text = run_engine(["run-in-cluster"], capsys)
    assert code == 2 and "KUBEQUANT_OBJECT_NAMESPACE" in text
