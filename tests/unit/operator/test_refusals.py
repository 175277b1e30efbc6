"""A child the API server refuses to create (403, 422): Stalled with a named reason. Pure."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from kubequant_api.constants import STALLED_REASONS, Reason
from kubequant_api.models import parse_spec
from kubequant_operator import builders
from kubequant_operator.failures import ChildRefusal, refusal_failure
from kubequant_operator.handlers import RETRY_DELAY_MAX_SECONDS, retry_delay
from kubequant_operator.harvest import MESSAGE_MAX
from kubequant_operator.settings import Settings
from kubequant_operator.status import Observation, StatusUpdate, compute_status
from tests.fixtures.operator import job_with, make_object

S = Settings(pending_deadline_seconds=300)
NOW = datetime(2026, 11, 25, 10, 5, 0, tzinfo=UTC)
ESCALATION = (
    'roles.rbac.authorization.k8s.io "x-g1-abcd" is forbidden: user "system:serviceaccount:'
    'kubequant:kubequant" is attempting to grant RBAC permissions not currently held'
)


def _compute(
    obj: dict[str, Any],
    refusal: ChildRefusal | None,
    job: dict[str, Any] | None = None,
) -> StatusUpdate:
    spec = parse_spec(obj["spec"])
    return compute_status(Observation(obj=obj, spec=spec, job=job, refusal=refusal), S, NOW)


def _conds(update: StatusUpdate) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in update.status["conditions"]}


def _with_status(obj: dict[str, Any], update: StatusUpdate) -> dict[str, Any]:
    return {**obj, "status": update.status}


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        ("Role", 403, "Forbidden"),
        ("Job", 403, "Forbidden"),
        ("Job", 422, "InvalidJobSpec"),
        ("RoleBinding", 422, "InvalidChildSpec"),
        ("ServiceAccount", 422, "InvalidChildSpec"),
    ],
)
def test_refused_create_is_stalled_pending_with_the_reason_and_message(
    kind: str, status: int, reason: str
) -> None:
    obj = make_object()
    name = builders.names_for(obj)
    up = _compute(obj, ChildRefusal(kind, name, status, ESCALATION))
    c = _conds(up)
    assert up.phase == "Pending"  # not terminal: retried, and it recovers by itself
    assert c["Stalled"]["status"] == "True"
    assert c["Stalled"]["reason"] == reason
    assert c["Reconciling"]["status"] == "False"
    assert c["Ready"]["status"] == "False"
    for text in (ESCALATION, f"{kind} {name}", f"HTTP {status}"):
        assert text in c["Stalled"]["message"]
        assert text in up.status["message"]
    assert up.status["failure"]["reason"] == reason
    assert up.status["jobName"] is None
    assert [(e.type, e.reason) for e in up.events] == [("Warning", reason)]
    assert ESCALATION in up.events[0].message
    assert Reason(reason) in STALLED_REASONS


def test_refusal_message_is_clipped_and_keeps_what_was_refused() -> None:
    obj = make_object()
    name = builders.names_for(obj)
    huge = "spec.template.spec.tolerations[0].value: Invalid value: " + "x" * 5000 + " END"
    up = _compute(obj, ChildRefusal("Job", name, 422, huge))
    message = up.status["message"]
    assert len(message) <= MESSAGE_MAX
    assert f"Job {name}" in message
    assert message.endswith(" END")
    assert len(refusal_failure(ChildRefusal("Job", name, 422, huge)).message) <= MESSAGE_MAX


def test_the_same_refusal_again_posts_no_second_event() -> None:
    obj = make_object()
    refusal = ChildRefusal("Role", builders.names_for(obj), 403, ESCALATION)
    first = _compute(obj, refusal)
    again = _compute(_with_status(obj, first), refusal)
    assert again.events == []
    assert again.patch is None


def test_recovers_to_job_created_once_the_create_succeeds() -> None:
    obj = make_object()
    refused = _compute(obj, ChildRefusal("Role", builders.names_for(obj), 403, ESCALATION))
    job = job_with(builders.build_job(obj, parse_spec(obj["spec"]), S), start=None)
    up = _compute(_with_status(obj, refused), None, job)
    c = _conds(up)
    assert c["Stalled"]["status"] == "False"
    assert c["Reconciling"]["status"] == "True"
    assert c["Reconciling"]["reason"] == "JobCreated"
    assert up.status["failure"] is None
    assert up.patch is not None and up.patch["failure"] is None
    assert up.status["jobName"] == job["metadata"]["name"]


def test_a_refusal_changes_nothing_once_the_job_exists() -> None:
    obj = make_object()
    job = job_with(builders.build_job(obj, parse_spec(obj["spec"]), S), start=None)
    refusal = ChildRefusal("Role", builders.names_for(obj), 403, ESCALATION)
    assert _compute(obj, refusal, job).status == _compute(obj, None, job).status


def test_retry_delay_grows_exponentially_up_to_a_cap() -> None:
    delays = [retry_delay(n) for n in range(12)]
    assert delays[0] > 0
    assert all(b == min(2 * a, RETRY_DELAY_MAX_SECONDS) for a, b in itertools.pairwise(delays))
    assert delays[-1] == RETRY_DELAY_MAX_SECONDS
    assert retry_delay(10_000) == RETRY_DELAY_MAX_SECONDS
