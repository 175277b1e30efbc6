"""Whose children are ours, which names may reach a path, and which results are believed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from kubequant_api.constants import COMPLETE_MARKER, MODEL_CARD_FILE, RESULTS_FILE
from kubequant_api.errors import InvalidSpecError
from kubequant_api.models import Result, parse_spec
from kubequant_operator import builders
from kubequant_operator.children import controlled_pods, job_conflict, job_record, stranger
from kubequant_operator.harvest import artifact_digest, verify_output_digest
from kubequant_operator.kube import PathSegmentError, api_path, path_segment
from kubequant_operator.settings import Settings
from tests.fixtures.operator import make_object, pod_for

UID = "0b7c1f2e-0000-4000-8000-000000000001"
TRAVERSALS = ["../x", "a/b", "%2F", "..", "../../kube-system/secrets/x", "a%2Fb", "."]


def _job(uid: str = "job-uid-1") -> dict[str, Any]:
    obj = make_object()
    job = builders.build_job(obj, parse_spec(obj["spec"]), Settings())
    job["metadata"]["uid"] = uid
    return job


# --------------------------------------------------------------------------- adoption


def test_only_a_child_controlled_by_the_object_is_ours() -> None:
    job = _job()
    assert stranger(job, UID) is None
    labels_only = copy.deepcopy(job)
    del labels_only["metadata"]["ownerReferences"]
    assert stranger(labels_only, UID) == f"Job {job['metadata']['name']} (no controller)"
    other = copy.deepcopy(job)
    other["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    found = stranger(other, UID)
    assert found is not None and "controlled by ModelOptimization minilm, uid someone-else" in found
    not_controller = copy.deepcopy(job)
    not_controller["metadata"]["ownerReferences"][0]["controller"] = False
    assert stranger(not_controller, UID) is not None


def test_a_replaced_job_is_not_ours_even_with_our_owner_reference() -> None:
    job = _job("job-uid-2")
    assert job_conflict(job, UID, None) is None
    assert job_conflict(job, UID, job_record(job)) is None
    recorded = {"name": job["metadata"]["name"], "uid": "job-uid-1"}
    problem = job_conflict(job, UID, recorded)
    assert problem is not None and "replaced" in problem and "job-uid-1" in problem
    # a record of another Job (an older generation) says nothing about this one
    assert job_conflict(job, UID, {"name": "other-g1-abcd", "uid": "x"}) is None


def test_only_pods_the_job_controls_are_read() -> None:
    job = _job("job-uid-1")
    ours = pod_for(job)
    ours["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "j",
            "uid": "job-uid-1",
            "controller": True,
        }
    ]
    forged = pod_for(job, index=1)  # the same labels, no controller
    other = pod_for(job, index=2)
    other["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": "j",
            "uid": "job-uid-9",
            "controller": True,
        }
    ]
    assert controlled_pods([ours, forged, other], job) == [ours]
    assert controlled_pods([ours], {"metadata": {}}) == []  # a Job without uid controls nothing


# --------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize("bad", TRAVERSALS)
def test_path_builder_refuses_what_cannot_be_one_segment(bad: str) -> None:
    with pytest.raises(PathSegmentError):
        api_path("v1", "PersistentVolumeClaim", "default", bad)
    with pytest.raises(PathSegmentError):
        api_path("batch/v1", "Job", bad)


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        ("models", "models"),
        ("system:kubequant", "system%3Akubequant"),
        ("a?b", "a%3Fb"),
        ("a#b", "a%23b"),
        ("a b", "a%20b"),
        ("x.y", "x.y"),
    ],
)
def test_path_builder_escapes_every_segment(name: str, segment: str) -> None:
    assert path_segment(name) == segment
    assert api_path("v1", "PersistentVolumeClaim", "ns", name) == (
        f"/api/v1/namespaces/ns/persistentvolumeclaims/{segment}"
    )
    assert api_path("rbac.authorization.k8s.io/v1", "Role", "n s", name) == (
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/n%20s/roles/{segment}"
    )
    assert api_path("kubequant.io/v1alpha1", "ModelOptimization", "ns", name, "status").endswith(
        f"/modeloptimizations/{segment}/status"
    )


@pytest.mark.parametrize("bad", ["../x", "a/b", "%2F", "..", "../../kube-system/secrets/x"])
@pytest.mark.parametrize(
    ("field", "place"),
    [
        ("spec.cache.pvcName", lambda v: {"cache": {"pvcName": v}}),
        ("spec.model.uri", lambda v: {"model": {"uri": f"pvc://{v}/m"}}),
        ("spec.output.uri", lambda v: {"output": {"uri": f"pvc://{v}/o"}}),
        (
            "spec.model.credentialsSecret",
            lambda v: {"model": {"uri": "hf://a/b", "credentialsSecret": v}},
        ),
        (
            "spec.output.credentialsSecret",
            lambda v: {"output": {"uri": "s3://bucket/o", "credentialsSecret": v}},
        ),
        ("spec.resources.priorityClassName", lambda v: {"resources": {"priorityClassName": v}}),
        ("spec.queueName", lambda v: {"queueName": v}),
        ("spec.calibration.datasetUri", lambda v: {"calibration": {"datasetUri": f"pvc://{v}/d"}}),
    ],
)
def test_parse_spec_refuses_traversal_names_in_every_name_field(
    bad: str, field: str, place: Any
) -> None:
    raw: dict[str, Any] = {
        "model": {"uri": "pvc://models/m"},
        "method": "torchao-int8-weight",
        "output": {"uri": "pvc://models/o"},
    }
    for key, value in place(bad).items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    if bad == "a/b" and field.endswith(("uri", "Uri")):
        # pvc://a/b/...: the claim is "a", the rest a path inside it (the engine's concern)
        spec = parse_spec(raw)
        claims = {f: c for f, c in builders.referenced_claim_fields(spec)}
        assert claims.get(field, "a") == "a"
        return
    with pytest.raises(InvalidSpecError) as err:
        parse_spec(raw)
    assert err.value.field == field, str(err.value)


# --------------------------------------------------------------------------- results


def _artifact(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"weights" * 100)
    (root / "sub" / "config.json").write_text("{}")
    (root / RESULTS_FILE).write_text("{}")  # not digested
    (root / MODEL_CARD_FILE).write_text("# card")  # not digested
    (root / COMPLETE_MARKER).write_text("")  # not digested


def test_operator_digest_is_the_engines(tmp_path: Path) -> None:
    artifact = pytest.importorskip("optimizer_job.artifact")
    _artifact(tmp_path / "out")
    assert artifact_digest(tmp_path / "out") == artifact.digest(tmp_path / "out")


def test_a_harvested_result_needs_the_published_artifacts_digest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _artifact(out)
    uri = f"file://{out}"
    good = Result(generation=1, method="m", output_digest=artifact_digest(out))
    assert verify_output_digest(good, uri) is None

    forged = Result(generation=1, method="m", output_digest="sha256:" + "0" * 64)
    problem = verify_output_digest(forged, uri)
    assert problem is not None and "does not match" in problem

    missing = Result(generation=1, method="m")
    problem = verify_output_digest(missing, uri)
    assert problem is not None and "no outputDigest" in problem

    nothing = verify_output_digest(good, f"file://{tmp_path / 'absent'}")
    assert nothing is not None and "no artifact" in nothing

    (out / "model.safetensors").write_bytes(b"tampered")
    assert verify_output_digest(good, uri) is not None

    # what the operator cannot read is not checked here; a dry run names no artifact
    assert verify_output_digest(forged, "s3://bucket/out") is None
    assert verify_output_digest(forged, "pvc://models/out") is None
    assert verify_output_digest(Result(generation=1, plan={"x": 1}), uri) is None
