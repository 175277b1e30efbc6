"""Status reporting against a Kubernetes API emulator over real HTTP."""

from __future__ import annotations

import logging

import pytest

from kubequant_api.constants import ExitCode, GateVerdict, Stage
from kubequant_api.models import CandidateResult, Result
from optimizer_job.report import KubeStatusReporter, RunContext, StaleRunError, load_object
from optimizer_job.report.kube import KubeApiError, replacement_patch
from tests.unit.optimizer_job.report.conftest import KubeApi

NS, NAME, UID = "team-a", "qwen-int8", "6f1c2c62-0000-4000-8000-000000000001"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ctx(generation: int = 3, uid: str = UID) -> RunContext:
    return RunContext(
        name=NAME, namespace=NS, uid=uid, generation=generation, method="torchao-int8-weight"
    )


def reporter(clock: FakeClock | None = None, **kw: object) -> KubeStatusReporter:
    return KubeStatusReporter(
        kw.pop("context", ctx()),  # type: ignore[arg-type]
        clock=clock or FakeClock(),
        **kw,  # type: ignore[arg-type]
    )


def test_progress_and_result_written_with_uid_and_resource_version_preconditions(
    kube_api: KubeApi,
) -> None:
    kube_api.create(NS, NAME, uid=UID, generation=3)
    r = reporter()
    try:
        r.stage(Stage.LOADING, 5)
        r.result(Result(method="torchao-int8-weight", compression_ratio=3.9, speedup=1.1))
    finally:
        r.close()
    obj = kube_api.get(NS, NAME)
    assert obj["status"]["progress"] == {
        "stage": "Loading",
        "percent": 5,
        "generation": 3,
        "summary": "Loading 5%",
    }
    assert obj["status"]["result"]["generation"] == 3
    assert obj["status"]["result"]["compressionRatio"] == 3.9
    assert r.writes == 2
    # Every accepted PATCH carried the object's uid and the resourceVersion it had just read.
    patches = kube_api.emulator.patches
    assert [p["metadata"]["uid"] for p in patches] == [UID, UID]
    assert [p["metadata"]["resourceVersion"] for p in patches] == ["1", "2"]
    # Only status.progress / status.result are written: no spec, no other status field.
    assert all(set(p) == {"metadata", "status"} for p in patches)
    assert [set(p["status"]) for p in patches] == [{"progress"}, {"result"}]


def test_wrong_uid_raises_stale_and_writes_nothing(kube_api: KubeApi) -> None:
    kube_api.create(NS, NAME, uid="someone-else", generation=3)
    r = reporter()
    with pytest.raises(StaleRunError, match="uid"):
        r.stage(Stage.LOADING, 5)
    with pytest.raises(StaleRunError):  # and it stays stale, without another request
        r.result(Result(method="torchao-int8-weight"))
    r.finish(ExitCode.SUCCESS, {})  # finish never raises: the run is over anyway
    r.close()
    assert kube_api.emulator.patches == [] and kube_api.emulator.refused == []
    assert "status" not in kube_api.get(NS, NAME)


def test_generation_moved_on_before_the_run_writes_nothing(kube_api: KubeApi) -> None:
    kube_api.create(NS, NAME, uid=UID, generation=4)
    r = reporter(context=ctx(generation=3))
    with pytest.raises(StaleRunError, match="generation"):
        r.result(Result(method="torchao-int8-weight", compression_ratio=2.0))
    r.close()
    assert kube_api.emulator.patches == []
    assert "status" not in kube_api.get(NS, NAME)


def test_generation_moving_on_mid_run_stops_the_writes(kube_api: KubeApi) -> None:
    kube_api.create(NS, NAME, uid=UID, generation=3)
    r = reporter()
    r.stage(Stage.LOADING, 5)
    # The user edits the spec: the operator sees generation 4 and writes its own status.
    kube_api.patch(NS, NAME, {"metadata": {"generation": 4}})
    kube_api.patch(NS, NAME, {"status": {"progress": {"stage": "Pending", "generation": 4}}})
    with pytest.raises(StaleRunError):
        r.stage(Stage.QUANTIZING, 40)
    with pytest.raises(StaleRunError):
        r.result(Result(method="torchao-int8-weight", compression_ratio=2.0))
    r.close()
    status = kube_api.get(NS, NAME)["status"]
    assert status["progress"]["stage"] == "Pending"  # the engine's Quantizing never landed
    assert status["progress"]["generation"] == 4
    assert "result" not in status
    assert len(kube_api.emulator.patches) == 1


def test_conflict_rereads_and_retries(kube_api: KubeApi) -> None:
    kube_api.create(NS, NAME, uid=UID, generation=3)
    # Between the engine's GET and its PATCH, the operator writes the phase (twice).
    kube_api.emulator.interfere += [
        {"status": {"phase": "Running"}},
        {"status": {"message": "job running"}},
    ]
    r = reporter()
    r.stage(Stage.QUANTIZING, 40, candidate="gptq")
    r.close()
    assert len(kube_api.emulator.refused) == 2 and len(kube_api.emulator.patches) == 1
    status = kube_api.get(NS, NAME)["status"]
    assert status["phase"] == "Running" and status["message"] == "job running"
    assert status["progress"] == {
        "stage": "Quantizing",
        "percent": 40,
        "generation": 3,
        "candidate": "gptq",
        "summary": "Quantizing 40% (gptq)",
    }


def test_object_recreated_between_get_and_patch_is_refused_and_stale(
    kube_api: KubeApi,
) -> None:
    kube_api.create(NS, NAME, uid=UID, generation=3)
    kube_api.emulator.interfere.append({"metadata": {"uid": "new-uid", "generation": 1}})
    r = reporter()
    with pytest.raises(StaleRunError, match="uid"):
        r.stage(Stage.LOADING, 5)
    r.close()
    assert len(kube_api.emulator.refused) == 1 and kube_api.emulator.patches == []
    assert "status" not in kube_api.get(NS, NAME)


def test_progress_is_throttled_unless_the_stage_changes(kube_api: KubeApi) -> None:
    kube_api.create(NS, NAME, uid=UID, generation=3)
    clock = FakeClock()
    r = reporter(clock, min_interval=1.0)
    r.stage(Stage.QUANTIZING, 10)
    for pct in range(11, 30):  # 19 updates within the same second: throttled
        clock.now += 0.01
        r.stage(Stage.QUANTIZING, pct)
    assert r.writes == 1
    assert kube_api.get(NS, NAME)["status"]["progress"]["percent"] == 10
    clock.now += 1.0
    r.stage(Stage.QUANTIZING, 30)  # interval passed
    r.stage(Stage.QUANTIZING, 31)  # throttled, pending
    r.stage(Stage.EVALUATING, 80)  # a new stage is always written
    assert r.writes == 3
    r.stage(Stage.EVALUATING, 85)  # pending, written at finish
    r.finish(ExitCode.SUCCESS, {"exitCode": 0})
    r.close()
    assert r.writes == 4
    assert kube_api.get(NS, NAME)["status"]["progress"]["percent"] == 85


def test_result_replaces_the_previous_one(kube_api: KubeApi) -> None:
    kube_api.create(NS, NAME, uid=UID, generation=3)
    r = reporter()
    r.result(
        Result(
            method="auto",
            params={"bits": 4, "groupSize": 128},
            plan={"estimatedPeakMemoryBytes": 1},
            candidates=[CandidateResult(method="gptq", compression_ratio=3.0)],
        )
    )
    r.result(
        Result(
            method="torchao-int8-weight",
            compression_ratio=3.9,
            quality_gate=GateVerdict.PASSED,
            candidates=[],
        )
    )
    r.close()
    result = kube_api.get(NS, NAME)["status"]["result"]
    assert result == {
        "generation": 3,
        "method": "torchao-int8-weight",
        "params": {},
        "compressionRatio": 3.9,
        "qualityGate": "Passed",
        "candidates": [],
    }


def test_load_object_checks_identity(kube_api: KubeApi) -> None:
    kube_api.create(NS, NAME, uid=UID, generation=3)
    obj = load_object(NS, NAME, uid=UID, generation=3)
    assert obj["metadata"]["uid"] == UID and obj["spec"]["method"] == "torchao-int8-weight"
    with pytest.raises(StaleRunError, match="generation"):
        load_object(NS, NAME, uid=UID, generation=2)
    with pytest.raises(StaleRunError, match="uid"):
        load_object(NS, NAME, uid="other")
    with pytest.raises(StaleRunError, match="gone"):
        load_object(NS, "missing")


def test_unreachable_api_is_logged_not_raised(
    kube_api: KubeApi,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.fixtures.observability import free_port
    from tests.unit.optimizer_job.report.conftest import write_kubeconfig

    dead = write_kubeconfig(
        kube_api.kubeconfig.with_name("dead.json"), f"http://127.0.0.1:{free_port()}"
    )
    monkeypatch.setenv("KUBECONFIG", str(dead))
    with pytest.raises(KubeApiError):
        load_object(NS, NAME)
    clock = FakeClock()
    r = reporter(clock, request_timeout=2.0, min_interval=1.0)
    with caplog.at_level(logging.WARNING, logger="optimizer_job.report.kube"):
        r.stage(Stage.LOADING, 5)
        for pct in range(6, 50):  # failed attempts are throttled too: no request here
            r.stage(Stage.LOADING, pct)
        r.result(Result(method="torchao-int8-weight"))  # flushes the pending progress
        r.finish(ExitCode.RETRYABLE, {})
    r.close()
    assert r.writes == 0 and r.stale is None
    failed = [rec.getMessage() for rec in caplog.records if "not written" in rec.getMessage()]
    assert len(failed) == 3, failed
    assert [m.split(":")[0] for m in failed] == [
        "status.progress not written",
        "status.progress not written",
        "status.result not written",
    ]


def test_missing_kubeconfig_disables_status_reporting(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with caplog.at_level(logging.ERROR, logger="optimizer_job.report.kube"):
        r = reporter()
    r.stage(Stage.LOADING, 1)
    r.finish(ExitCode.SUCCESS, {})
    assert r.writes == 0
    assert any("status reporting disabled" in rec.getMessage() for rec in caplog.records)


def test_replacement_patch_is_rfc7386() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
    new = {"b": {"c": 5}, "e": [2], "f": {"g": 1}}
    assert replacement_patch(old, new) == {
        "a": None,
        "b": {"d": None, "c": 5},
        "e": [2],
        "f": {"g": 1},
    }
    assert replacement_patch(None, {"x": 1}) == {"x": 1}


def test_api_errors_are_described_with_the_servers_message() -> None:
    from kubernetes.client.exceptions import ApiException

    from optimizer_job.report.kube import _describe

    exc = ApiException(status=422, reason="Unprocessable Entity")
    exc.body = '{"kind":"Status","message":"status.progress.percent: must be <= 100"}'
    assert _describe(exc) == (
        "HTTP 422 Unprocessable Entity: status.progress.percent: must be <= 100"
    )
    assert _describe(ApiException(status=403, reason="Forbidden")) == "HTTP 403 Forbidden"
    assert _describe(ConnectionRefusedError(111, "refused")).startswith("ConnectionRefusedError")
