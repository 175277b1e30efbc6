"""In a pod the engine authenticates with its service-account token, as the kubelet mounts it.

kubernetes 36.0.0 stored the in-cluster token under ``api_key['authorization']`` but sent
only ``api_key['BearerToken']``, so every request went out anonymous
(kubernetes-client/python#2582, fixed in 36.0.1). The pinned client must send it without
any help from our code.
"""

from __future__ import annotations

from kubequant_api.constants import GROUP, PLURAL, VERSION, Stage
from optimizer_job.report import KubeStatusReporter, RunContext
from optimizer_job.report.kube import api_client, in_cluster
from tests.unit.optimizer_job.report.conftest import (
    KUBECONFIG_TOKEN,
    SERVICE_ACCOUNT_TOKEN,
    InClusterApi,
    KubeApi,
)


def _bearer(headers: list[str | None]) -> list[str | None]:
    """The bearer token of each ``Authorization`` header (the scheme is case-insensitive)."""
    out: list[str | None] = []
    for header in headers:
        scheme, _, token = (header or "").partition(" ")
        out.append(token if scheme.lower() == "bearer" else None)
    return out


def test_in_cluster_requests_carry_the_service_account_token(
    in_cluster_api: InClusterApi,
) -> None:
    from kubernetes import client

    in_cluster_api.create("prod", "bert", uid="uid-1", generation=1)
    assert in_cluster()
    api = client.CustomObjectsApi(api_client())
    got = api.get_namespaced_custom_object(GROUP, VERSION, "prod", PLURAL, "bert")
    assert isinstance(got, dict) and got["metadata"]["uid"] == "uid-1"
    assert _bearer(in_cluster_api.emulator.authorizations) == [SERVICE_ACCOUNT_TOKEN]


def test_status_writes_in_cluster_are_authenticated(in_cluster_api: InClusterApi) -> None:
    in_cluster_api.create("prod", "bert", uid="uid-1", generation=1)
    ctx = RunContext(
        name="bert", namespace="prod", uid="uid-1", generation=1, method="torchao-int8-weight"
    )
    reporter = KubeStatusReporter(ctx, min_interval=0)
    reporter.stage(Stage.LOADING, 5)
    reporter.close()
    status = in_cluster_api.get("prod", "bert")["status"]
    assert status["progress"]["stage"] == "Loading"
    tokens = _bearer(in_cluster_api.emulator.authorizations)
    assert len(tokens) >= 2 and set(tokens) == {SERVICE_ACCOUNT_TOKEN}, tokens  # GET, PATCH


def test_kubeconfig_token_is_sent_too(kube_api: KubeApi) -> None:
    """Outside a pod the kubeconfig's user token goes out the same way (same upstream bug)."""
    from kubernetes import client

    kube_api.create("prod", "bert", uid="uid-1", generation=1)
    assert not in_cluster()
    api = client.CustomObjectsApi(api_client())
    api.get_namespaced_custom_object(GROUP, VERSION, "prod", PLURAL, "bert")
    assert _bearer(kube_api.emulator.authorizations) == [KUBECONFIG_TOKEN]
