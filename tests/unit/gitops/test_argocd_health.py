"""deploy/argocd/health.lua under a real Lua 5.1 (lupa), on written fixtures and on statuses
the operator's own status computation produces."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.operator import job_with, make_object, pod_for
from tests.unit.gitops.luahealth import ARGO_HEALTH_STATUSES, HEALTH_LUA, run_health

FIXTURES = Path(__file__).parent / "fixtures"
CASES = yaml.safe_load((FIXTURES / "objects.yaml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_health_on_status_fixtures(case: dict[str, Any]) -> None:
    hs = run_health(case["object"])
    assert hs["status"] == case["expect"]["status"], hs
    if "message" in case["expect"]:
        assert case["expect"]["message"] in hs.get("message", ""), hs


def test_every_argo_status_the_script_returns_is_a_real_one() -> None:
    seen = {run_health(c["object"])["status"] for c in CASES}
    assert seen <= ARGO_HEALTH_STATUSES
    assert seen == {"Healthy", "Progressing", "Degraded", "Suspended"}


def test_a_broken_script_fails_the_runner(tmp_path: Path) -> None:
    """The runner really executes the script (a syntax error surfaces)."""
    bad = tmp_path / "bad.lua"
    bad.write_text(HEALTH_LUA.read_text().replace("return hs\nend", "return hs\nen", 1))
    with pytest.raises(Exception, match=r"health\.lua"):
        run_health(CASES[0]["object"], bad)


def test_sandbox_has_no_os_or_io() -> None:
    obj = {"status": {"phase": "Running"}, "metadata": {"generation": 1}}
    assert run_health(obj)["status"] == "Progressing"
    assert "os." not in HEALTH_LUA.read_text() and "io." not in HEALTH_LUA.read_text()


# --------------------------------------------------------------------------- operator statuses

NOW = datetime(2026, 11, 25, 10, 5, 0, tzinfo=UTC)
RESULT = {
    "generation": 1,
    "method": "torchao-int8-weight",
    "compressionRatio": 3.1,
    "cosineSimilarity": 0.9996,
    "qualityGate": "Passed",
    "outputUri": "pvc://models/minilm-int8",
}


def _operator_status(
    obj: dict[str, Any],
    job_state: Callable[[dict[str, Any]], tuple[dict[str, Any], list[dict[str, Any]]]] | None,
    blocker: tuple[str, str, bool] | None = None,
) -> dict[str, Any]:
    """``obj`` with the status the operator's compute_status writes for that observation."""
    status_mod = pytest.importorskip("kubequant_operator.status")
    builders = pytest.importorskip("kubequant_operator.builders")
    from kubequant_api.constants import Reason
    from kubequant_api.models import parse_spec
    from kubequant_operator.settings import Settings

    s = Settings(pending_deadline_seconds=300)
    spec = parse_spec(obj["spec"])
    job: dict[str, Any] | None = None
    pods: list[dict[str, Any]] = []
    if job_state is not None:
        job, pods = job_state(builders.build_job(obj, spec, s))
    block = None
    if blocker is not None:
        block = status_mod.Blocker(Reason(blocker[0]), blocker[1], blocker[2])
    update = status_mod.compute_status(
        status_mod.Observation(
            obj=obj,
            spec=None if blocker and blocker[2] else spec,
            job=job,
            pods=pods,
            blocker=block,
        ),
        s,
        NOW,
    )
    out = copy.deepcopy(obj)
    status = dict(out.get("status") or {})
    status.update({k: v for k, v in update.status.items() if v is not None})
    out["status"] = status
    return out


def _complete(job: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    done = job_with(
        job,
        succeeded=1,
        completion="2026-11-25T10:04:00Z",
        conditions=[{"type": "Complete", "status": "True"}],
    )
    return done, [pod_for(done, phase="Succeeded", terminated={"exitCode": 0})]


def _running(job: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = job_with(job, active=1)
    return run, [pod_for(run)]


def _created(job: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return job_with(job, start=None), []


def _failed_gate(job: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    failed = job_with(
        job,
        failed=1,
        conditions=[
            {
                "type": "Failed",
                "status": "True",
                "reason": "PodFailurePolicy",
                "lastTransitionTime": "2026-11-25T10:03:00Z",
            }
        ],
    )
    term = {
        "exitCode": 3,
        "reason": "Error",
        "message": '{"exitCode": 3, "message": "cosine 0.93 < 0.99"}',
    }
    return failed, [pod_for(failed, phase="Failed", terminated=term)]


def _oom(job: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    failed = job_with(
        job,
        failed=3,
        conditions=[
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "lastTransitionTime": "2026-11-25T10:03:00Z",
            }
        ],
    )
    return failed, [
        pod_for(failed, phase="Failed", terminated={"exitCode": 137, "reason": "OOMKilled"})
    ]


def _queued(job: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return job_with(job, start=None, suspend=True), []


def _image_pull(job: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = job_with(job, active=1)
    waiting = {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}
    return run, [pod_for(run, phase="Pending", waiting=waiting, created="2026-11-25T09:50:00Z")]


OPERATOR_CASES: list[tuple[str, dict[str, Any], Any, Any, str]] = [
    ("no-job-yet", {}, None, None, "Progressing"),
    ("job-created", {}, _created, None, "Progressing"),
    ("running", {}, _running, None, "Progressing"),
    ("succeeded", {"status": {"result": RESULT}}, _complete, None, "Healthy"),
    (
        "dry-run",
        {"dryRun": True, "status": {"result": {"generation": 1, "plan": {"m": 1}}}},
        _complete,
        None,
        "Healthy",
    ),
    ("quality-gate-failed", {}, _failed_gate, None, "Degraded"),
    ("oom-killed", {}, _oom, None, "Degraded"),
    ("image-pull-backoff", {}, _image_pull, None, "Degraded"),
    ("suspended", {"suspend": True}, None, None, "Suspended"),
    ("queued-by-kueue", {"queueName": "gpu"}, _queued, None, "Suspended"),
    (
        "credentials-missing",
        {},
        None,
        ("CredentialsMissing", "Secret hf-token not found", False),
        "Degraded",
    ),
    (
        "invalid-spec",
        {},
        None,
        ("InvalidSpec", "spec.params.bits: 5 not allowed", True),
        "Degraded",
    ),
]


@pytest.mark.parametrize(
    ("over", "state", "blocker", "want"),
    [c[1:] for c in OPERATOR_CASES],
    ids=[c[0] for c in OPERATOR_CASES],
)
def test_health_on_statuses_the_operator_computes(
    over: dict[str, Any], state: Any, blocker: Any, want: str
) -> None:
    over = dict(over)
    status = over.pop("status", None)
    obj = make_object(status=status, **over)
    obj = _operator_status(obj, state, blocker)
    hs = run_health(obj)
    assert hs["status"] == want, (hs, obj["status"])
    assert hs.get("message"), "Argo CD shows a message for every state"


def test_spec_edit_turns_healthy_into_progressing_until_observed() -> None:
    obj = _operator_status(make_object(status={"result": RESULT}), _complete)
    assert run_health(obj)["status"] == "Healthy"
    obj["metadata"]["generation"] = 2  # the user edits the spec
    hs = run_health(obj)
    assert hs["status"] == "Progressing"
    assert "generation 2" in hs["message"]
    # The operator observes generation 2 and starts its Job: still Progressing, not Healthy.
    obj["status"]["result"] = {**RESULT, "generation": 1}
    observed = _operator_status(obj, _created)
    assert observed["status"]["observedGeneration"] == 2
    assert run_health(observed)["status"] == "Progressing"
