"""Which pod of a Job is the newest (``logs`` reads it): creation times have one-second
precision, so two attempts started in the same second need the pods' states to order them."""

from __future__ import annotations

from typing import Any

from kubequant_kubectl.cli import pod_newness

SECOND = "2026-12-01T03:00:00Z"


def pod(name: str, created: str, phase: str, finished: str | None = None) -> dict[str, Any]:
    state = {"terminated": {"finishedAt": finished}} if finished else {"running": {}}
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "status": {"phase": phase, "containerStatuses": [{"name": "engine", "state": state}]},
    }


def newest(*pods: dict[str, Any]) -> str:
    return str(max(pods, key=pod_newness)["metadata"]["name"])


def test_later_creation_wins() -> None:
    assert (
        newest(
            pod("job-zzzzz", SECOND, "Failed", SECOND),
            pod("job-aaaaa", "2026-12-01T03:00:01Z", "Failed", "2026-12-01T03:00:02Z"),
        )
        == "job-aaaaa"
    )


def test_same_second_a_failed_pod_is_older() -> None:
    # Names sort the other way round: the name is no tie-breaker here.
    assert (
        newest(
            pod("job-zzzzz", SECOND, "Failed", SECOND),
            pod("job-aaaaa", SECOND, "Succeeded", SECOND),
        )
        == "job-aaaaa"
    )
    assert (
        newest(pod("job-zzzzz", SECOND, "Failed", SECOND), pod("job-aaaaa", SECOND, "Running"))
        == "job-aaaaa"
    )


def test_same_second_two_failures_by_finish_time() -> None:
    assert (
        newest(
            pod("job-zzzzz", SECOND, "Failed", "2026-12-01T03:00:00Z"),
            pod("job-aaaaa", SECOND, "Failed", "2026-12-01T03:00:01Z"),
        )
        == "job-aaaaa"
    )
