"""A missing credentials Secret is learned from the engine pod (the operator holds no Secret
permission): the kubelet's CreateContainerConfigError naming a Secret is CredentialsMissing,
naming the Secret and the spec field it came from. Pure."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubequant_api.models import parse_spec
from kubequant_operator import builders
from kubequant_operator.settings import Settings
from kubequant_operator.status import Observation, StatusUpdate, compute_status
from tests.fixtures.operator import job_with, make_object, pod_for

S = Settings(pending_deadline_seconds=300)
NOW = datetime(2026, 11, 25, 10, 5, 0, tzinfo=UTC)
MODEL = {"uri": "hf://org/model", "task": "feature-extraction", "credentialsSecret": "hf-tok"}
OUTPUT = {"uri": "s3://bucket/out", "credentialsSecret": "s3-out"}


def _compute(obj: dict[str, Any], waiting: dict[str, Any]) -> StatusUpdate:
    spec = parse_spec(obj["spec"])
    job = job_with(builders.build_job(obj, spec, S), active=1)
    pod = pod_for(job, phase="Pending", waiting=waiting)
    return compute_status(
        Observation(obj=obj, spec=spec, job=job, pods=[pod], blocker=None), S, NOW
    )


def _stalled(up: StatusUpdate) -> dict[str, Any]:
    conds = {c["type"]: c for c in up.status["conditions"]}
    assert conds["Ready"]["status"] == "False"
    assert conds["Stalled"]["status"] == "True"
    return dict(conds["Stalled"])


@pytest.mark.parametrize(
    ("secret", "field", "message"),
    [
        ("hf-tok", "spec.model.credentialsSecret", 'secret "hf-tok" not found'),
        ("s3-out", "spec.output.credentialsSecret", 'secret "s3-out" not found'),
        (
            "hf-tok",
            "spec.model.credentialsSecret",
            "couldn't find key HF_TOKEN in Secret team-a/hf-tok",
        ),
    ],
)
def test_create_container_config_error_naming_a_secret_is_credentials_missing(
    secret: str, field: str, message: str
) -> None:
    obj = make_object(model=MODEL, output=OUTPUT)
    up = _compute(obj, {"reason": "CreateContainerConfigError", "message": message})
    assert up.phase == "Pending"
    stalled = _stalled(up)
    assert stalled["reason"] == "CredentialsMissing"
    assert field in stalled["message"] and repr(secret) in stalled["message"]
    assert up.status["failure"]["reason"] == "CredentialsMissing"
    assert message in up.status["failure"]["message"]


def test_the_same_secret_for_model_and_output_names_both_fields() -> None:
    obj = make_object(model=MODEL, output={**OUTPUT, "credentialsSecret": "hf-tok"})
    up = _compute(
        obj, {"reason": "CreateContainerConfigError", "message": 'secret "hf-tok" not found'}
    )
    msg = _stalled(up)["message"]
    assert "spec.model.credentialsSecret and spec.output.credentialsSecret" in msg


def test_a_config_error_naming_no_secret_is_not_credentials_missing() -> None:
    obj = make_object(model=MODEL)
    waiting = {"reason": "CreateContainerConfigError", "message": 'configmap "x" not found'}
    up = _compute(obj, waiting)
    assert up.status.get("failure") is None
    assert up.phase == "Pending"
