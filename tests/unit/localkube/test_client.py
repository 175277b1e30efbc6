"""The kubernetes client (36.0.0) against the emulator over real HTTP."""

from __future__ import annotations

import threading
import time
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiException

from kubequant_localkube.cluster import LocalCluster

GROUP, VERSION, PLURAL = "kubequant.io", "v1alpha1", "modeloptimizations"


def api(cluster: LocalCluster) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig_path))


def mopt(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B"},
        "method": "gptq",
        "output": {"uri": "s3://bucket/out"},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelOptimization",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": body,
    }


@pytest.fixture
def co(crd_cluster: LocalCluster) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api(crd_cluster))


ARGS = (GROUP, VERSION, "default", PLURAL)


def test_metadata_generation_and_status_subresource(
    co: kubernetes.client.CustomObjectsApi,
) -> None:
    created = co.create_namespaced_custom_object(*ARGS, mopt("a"))
    meta = created["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["creationTimestamp"].endswith("Z")
    assert created["spec"]["retries"] == 2 and created["spec"]["model"]["task"] == "auto"
    rv0 = int(meta["resourceVersion"])

    # status via the main endpoint is ignored (status is a subresource)
    p1 = co.patch_namespaced_custom_object(*ARGS, "a", {"status": {"phase": "Failed"}})
    assert "status" not in p1 and p1["metadata"]["resourceVersion"] == str(rv0)  # a no-op
    p2 = co.patch_namespaced_custom_object_status(
        *ARGS, "a", {"status": {"phase": "Running"}, "spec": {"method": "awq"}}
    )
    assert p2["status"]["phase"] == "Running" and p2["spec"]["method"] == "gptq"
    assert p2["metadata"]["generation"] == 1 and int(p2["metadata"]["resourceVersion"]) > rv0
    p3 = co.patch_namespaced_custom_object(*ARGS, "a", {"spec": {"method": "awq"}})
    assert p3["metadata"]["generation"] == 2 and p3["status"]["phase"] == "Running"
    p4 = co.patch_namespaced_custom_object(*ARGS, "a", {"metadata": {"labels": {"x": "y"}}})
    assert p4["metadata"]["generation"] == 2
    got = co.get_namespaced_custom_object(*ARGS, "a")
    assert got == p4


def test_put_conflict_and_preconditions(
    crd_cluster: LocalCluster, co: kubernetes.client.CustomObjectsApi
) -> None:
    obj = co.create_namespaced_custom_object(*ARGS, mopt("p"))
    stale = dict(obj)
    obj["spec"]["retries"] = 5
    updated = co.replace_namespaced_custom_object(*ARGS, "p", obj)
    assert updated["spec"]["retries"] == 5 and updated["metadata"]["generation"] == 2
    with pytest.raises(ApiException) as exc:
        co.replace_namespaced_custom_object(*ARGS, "p", stale)
    assert exc.value.status == 409 and "has been modified" in exc.value.body
    # a merge patch carrying a wrong uid is a conflict (the engine's precondition)
    with pytest.raises(ApiException) as exc:
        co.patch_namespaced_custom_object_status(
            *ARGS, "p", {"metadata": {"uid": "nope"}, "status": {"phase": "Running"}}
        )
    assert exc.value.status == 409 and "Precondition failed" in exc.value.body
    # a JSON patch `test` on resourceVersion (kopf's finalizer patches)
    rv = updated["metadata"]["resourceVersion"]
    client = api(crd_cluster)
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/p"
    ops_bad: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
    ]
    with pytest.raises(ApiException) as exc:
        client.call_api(
            path,
            "PATCH",
            body=ops_bad,
            header_params={"Content-Type": "application/json-patch+json"},
            response_types_map={200: "object"},
            _return_http_data_only=True,
        )
    assert exc.value.status == 422
    ops_ok = [{**ops_bad[0], "value": rv}, ops_bad[1]]
    result = client.call_api(
        path,
        "PATCH",
        body=ops_ok,
        header_params={"Content-Type": "application/json-patch+json"},
        response_types_map={200: "object"},
        _return_http_data_only=True,
    )
    assert result["metadata"]["finalizers"] == ["x/y"]


def test_namespaces_generate_name_and_selectors(crd_cluster: LocalCluster) -> None:
    core = kubernetes.client.CoreV1Api(api(crd_cluster))
    names = {n.metadata.name for n in core.list_namespace().items}
    assert {"default", "kube-system"} <= names
    core.create_namespace({"metadata": {"name": "team-a"}})
    assert core.read_namespace("team-a").status.phase == "Active"
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map("nowhere", {"metadata": {"name": "x"}})
    assert exc.value.status == 404
    a = core.create_namespaced_config_map("team-a", {"metadata": {"generateName": "cm-"}})
    b = core.create_namespaced_config_map("team-a", {"metadata": {"generateName": "cm-"}})
    assert a.metadata.name != b.metadata.name and a.metadata.name.startswith("cm-")
    co = kubernetes.client.CustomObjectsApi(api(crd_cluster))
    for name, labels in [
        ("s1", {"tier": "gpu", "env": "prod"}),
        ("s2", {"tier": "cpu", "env": "prod"}),
        ("s3", {"tier": "cpu"}),
    ]:
        co.create_namespaced_custom_object(*ARGS, mopt(name, labels))

    def sel(**kw: str) -> set[str]:
        items = co.list_namespaced_custom_object(*ARGS, **kw)["items"]
        return {i["metadata"]["name"] for i in items}

    assert sel(label_selector="tier=cpu") == {"s2", "s3"}
    assert sel(label_selector="tier!=cpu") == {"s1"}
    assert sel(label_selector="tier in (gpu,tpu)") == {"s1"}
    assert sel(label_selector="tier notin (gpu),env") == {"s2"}
    assert sel(label_selector="!env") == {"s3"}
    assert sel(field_selector="metadata.name=s2") == {"s2"}
    assert sel(field_selector="metadata.namespace=default,metadata.name!=s2") == {"s1", "s3"}
    everywhere = co.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert len(everywhere["items"]) == 3


def test_watch_resume_and_timeout(co: kubernetes.client.CustomObjectsApi) -> None:
    first = co.create_namespaced_custom_object(*ARGS, mopt("w1"))
    rv = first["metadata"]["resourceVersion"]
    co.create_namespaced_custom_object(*ARGS, mopt("w2"))
    co.patch_namespaced_custom_object(*ARGS, "w1", {"spec": {"retries": 4}})
    co.delete_namespaced_custom_object(*ARGS, "w2")
    w = kubernetes.watch.Watch()
    started = time.monotonic()
    seen = [
        (e["type"], e["object"]["metadata"]["name"])
        for e in w.stream(
            co.list_namespaced_custom_object, *ARGS, resource_version=rv, timeout_seconds=1
        )
    ]
    assert seen == [("ADDED", "w2"), ("MODIFIED", "w1"), ("DELETED", "w2")]
    assert time.monotonic() - started < 10  # timeoutSeconds ends the stream


def test_no_events_lost_between_list_and_watch(co: kubernetes.client.CustomObjectsApi) -> None:
    listing = co.list_namespaced_custom_object(*ARGS)
    rv = listing["metadata"]["resourceVersion"]

    def writer() -> None:
        for i in range(10):
            co.create_namespaced_custom_object(*ARGS, mopt(f"n{i}"))

    t = threading.Thread(target=writer)
    t.start()
    t.join()
    w = kubernetes.watch.Watch()
    names = []
    for e in w.stream(
        co.list_namespaced_custom_object, *ARGS, resource_version=rv, timeout_seconds=1
    ):
        names.append(e["object"]["metadata"]["name"])
    assert names == [f"n{i}" for i in range(10)]


def test_too_old_resource_version_is_410(crd_cluster: LocalCluster) -> None:
    co = kubernetes.client.CustomObjectsApi(api(crd_cluster))
    co.create_namespaced_custom_object(*ARGS, mopt("old"))
    crd_cluster.store._history.clear()  # as if compacted
    w = kubernetes.watch.Watch()
    with pytest.raises(ApiException) as exc:
        for _ in w.stream(
            co.list_namespaced_custom_object, *ARGS, resource_version="1", timeout_seconds=1
        ):
            pass
    assert exc.value.status == 410


def test_garbage_collection_and_finalizers(crd_cluster: LocalCluster) -> None:
    core = kubernetes.client.CoreV1Api(api(crd_cluster))
    co = kubernetes.client.CustomObjectsApi(api(crd_cluster))

    def owned(name: str, owner: dict[str, Any]) -> None:
        ref = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelOptimization",
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": name, "ownerReferences": [ref]}}
        )

    def cms() -> set[str]:
        return {c.metadata.name for c in core.list_namespaced_config_map("default").items}

    bg = co.create_namespaced_custom_object(*ARGS, mopt("bg"))
    owned("bg-child", bg)
    co.delete_namespaced_custom_object(*ARGS, "bg")
    assert "bg-child" not in cms()

    orphaner = co.create_namespaced_custom_object(*ARGS, mopt("orph"))
    owned("orph-child", orphaner)
    co.delete_namespaced_custom_object(*ARGS, "orph", propagation_policy="Orphan")
    child = core.read_namespaced_config_map("orph-child", "default")
    assert not child.metadata.owner_references

    fin = mopt("fin")
    fin["metadata"]["finalizers"] = ["kubequant.io/test"]
    fg = co.create_namespaced_custom_object(*ARGS, fin)
    owned("fin-child", fg)
    co.delete_namespaced_custom_object(*ARGS, "fin", propagation_policy="Foreground")
    held = co.get_namespaced_custom_object(*ARGS, "fin")
    assert held["metadata"]["deletionTimestamp"]
    assert "fin-child" not in cms()  # dependents go first
    assert held["metadata"]["finalizers"] == ["kubequant.io/test"]
    co.patch_namespaced_custom_object(*ARGS, "fin", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as exc:
        co.get_namespaced_custom_object(*ARGS, "fin")
    assert exc.value.status == 404


def test_events_both_apis(crd_cluster: LocalCluster) -> None:
    client = api(crd_cluster)
    core = kubernetes.client.CoreV1Api(client)
    ev = {
        "metadata": {"generateName": "x-"},
        "involvedObject": {"kind": "ModelOptimization", "name": "x", "namespace": "default"},
        "reason": "Testing",
        "message": "hello",
        "type": "Normal",
    }
    core.create_namespaced_event("default", ev)
    new = kubernetes.client.EventsV1Api(client)
    new.create_namespaced_event(
        "default",
        {
            "metadata": {"generateName": "y-"},
            "eventTime": "2026-01-01T00:00:00.000000Z",
            "reportingController": "kubequant.io/test",
            "reportingInstance": "t",
            "action": "Test",
            "reason": "Testing",
            "regarding": {"kind": "ModelOptimization", "name": "x", "namespace": "default"},
            "type": "Normal",
        },
    )
    assert len(core.list_namespaced_event("default").items) == 1
    assert len(new.list_namespaced_event("default").items) == 1


def test_fault_injection_and_request_log(crd_cluster: LocalCluster) -> None:
    co = kubernetes.client.CustomObjectsApi(api(crd_cluster))
    co.create_namespaced_custom_object(*ARGS, mopt("f"))
    crd_cluster.emulator.clear_calls()
    crd_cluster.emulator.inject_failures("patch", PLURAL, count=2, status=500, subresource="status")
    crd_cluster.emulator.inject_failures("get", PLURAL, count=1, status=409)
    codes = []
    for _ in range(3):
        try:
            co.patch_namespaced_custom_object_status(*ARGS, "f", {"status": {"phase": "Running"}})
            codes.append(200)
        except ApiException as failure:
            codes.append(failure.status)
    assert codes == [500, 500, 200]
    with pytest.raises(ApiException) as exc:
        co.get_namespaced_custom_object(*ARGS, "f")
    assert exc.value.status == 409
    assert co.get_namespaced_custom_object(*ARGS, "f")["status"]["phase"] == "Running"
    calls = crd_cluster.emulator.api_calls()
    verbs = [(c.verb, c.rbac_resource, c.namespace, c.name) for c in calls]
    assert verbs.count(("patch", f"{PLURAL}/status", "default", "f")) == 3
    assert verbs.count(("get", PLURAL, "default", "f")) == 2


def test_cut_watches_ends_streams(crd_cluster: LocalCluster) -> None:
    co = kubernetes.client.CustomObjectsApi(api(crd_cluster))
    ended = threading.Event()

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for _ in w.stream(co.list_namespaced_custom_object, *ARGS, timeout_seconds=30):
            pass
        ended.set()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while crd_cluster.store.open_watches == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert crd_cluster.emulator.cut_watches() == 1
    assert ended.wait(5)


def test_discovery_and_crd_removal(crd_cluster: LocalCluster) -> None:
    client = api(crd_cluster)
    res = client.call_api(
        f"/apis/{GROUP}/{VERSION}",
        "GET",
        response_types_map={200: "object"},
        _return_http_data_only=True,
    )
    by_name = {r["name"]: r for r in res["resources"]}
    assert by_name[PLURAL]["shortNames"] == ["mopt"]
    assert by_name[PLURAL]["categories"] == ["kubequant"]
    assert f"{PLURAL}/status" in by_name
    core = client.call_api(
        "/api/v1", "GET", response_types_map={200: "object"}, _return_http_data_only=True
    )
    assert core["groupVersion"] == "v1"
    ext = kubernetes.client.ApiextensionsV1Api(client)
    crd = ext.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"
    ext.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")
    with pytest.raises(ApiException) as exc:
        kubernetes.client.CustomObjectsApi(client).list_namespaced_custom_object(*ARGS)
    assert exc.value.status == 404


def test_request_log_against_rbac_rules(crd_cluster: LocalCluster) -> None:
    co = kubernetes.client.CustomObjectsApi(api(crd_cluster))
    co.create_namespaced_custom_object(*ARGS, mopt("r"))
    crd_cluster.emulator.clear_calls()
    co.get_namespaced_custom_object(*ARGS, "r")
    co.patch_namespaced_custom_object_status(*ARGS, "r", {"status": {"phase": "Running"}})
    co.list_namespaced_custom_object(*ARGS)
    calls = crd_cluster.emulator.api_calls()
    assert [c.code for c in calls] == [200, 200, 200]
    engine_role = [
        {
            "apiGroups": [GROUP],
            "resources": [f"{PLURAL}/status"],
            "verbs": ["get", "patch"],
            "resourceNames": ["r"],
        },
        {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get"], "resourceNames": ["r"]},
    ]
    allowed = [c.allowed_by(engine_role) for c in calls]
    assert allowed == [True, True, False]  # the list is outside the engine's Role
    assert crd_cluster.emulator.used_permissions("OpenAPI-Generator") == {
        (GROUP, PLURAL, "get"),
        (GROUP, f"{PLURAL}/status", "patch"),
        (GROUP, PLURAL, "list"),
    }


def test_pagination_and_delete_collection(co: kubernetes.client.CustomObjectsApi) -> None:
    for i in range(5):
        co.create_namespaced_custom_object(*ARGS, mopt(f"pg{i}", {"batch": "a" if i < 3 else "b"}))
    first = co.list_namespaced_custom_object(*ARGS, limit=2)
    names = [i["metadata"]["name"] for i in first["items"]]
    token = first["metadata"]["continue"]
    while token:
        page = co.list_namespaced_custom_object(*ARGS, limit=2, _continue=token)
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert names == [f"pg{i}" for i in range(5)]
    co.delete_collection_namespaced_custom_object(*ARGS, label_selector="batch=a")
    left = co.list_namespaced_custom_object(*ARGS)["items"]
    assert [i["metadata"]["name"] for i in left] == ["pg3", "pg4"]


def test_pod_identity_url_token_and_rbac(crd_cluster: LocalCluster) -> None:
    import urllib.error
    import urllib.request

    from kubequant_localkube import rbac

    base = rbac.identity_url(crd_cluster.url, "default", "engine")
    path = f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}"
    token = rbac.service_account_token("default", "engine")

    def status(headers: dict[str, str]) -> int:
        req = urllib.request.Request(base + path, headers=headers)
        try:
            with urllib.request.urlopen(req) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    auth = {"Authorization": f"Bearer {token}"}
    assert status(auth) == 403  # no Role yet
    store = crd_cluster.store
    rb = "rbac.authorization.k8s.io"
    rule = {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["list"]}
    store.create(
        store.resource(rb, "v1", "clusterroles"),
        None,
        {"metadata": {"name": "lister"}, "rules": [rule]},
    )
    binding = {
        "metadata": {"name": "lister"},
        "roleRef": {"apiGroup": rb, "kind": "ClusterRole", "name": "lister"},
        "subjects": [{"kind": "ServiceAccount", "name": "engine", "namespace": "default"}],
    }
    store.create(store.resource(rb, "v1", "rolebindings"), "default", binding)
    assert status(auth) == 200
    assert status({}) == 200  # the URL names the pod's ServiceAccount
    crd_cluster.emulator.require_pod_token = True
    assert status({}) == 401  # like a real API server when a client drops its token
    assert status(auth) == 200
    with urllib.request.urlopen(crd_cluster.url + path) as resp:  # the admin: no RBAC
        assert resp.status == 200


def test_builtin_kinds_validated_when_asked(crd_cluster: LocalCluster) -> None:
    crd_cluster.store.validate_builtins = True
    batch = kubernetes.client.BatchV1Api(api(crd_cluster))
    job: dict[str, Any] = {
        "metadata": {"name": "j"},
        "spec": {
            "template": {
                "spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "b"}]}
            },
            "podFailurePolicy": {
                "rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}],
            },
        },
    }
    created = batch.create_namespaced_job("default", job)  # status is defaulted, not required
    assert created.spec.pod_failure_policy.rules[0].on_pod_conditions[0].status == "True"
    job["metadata"]["name"] = "j2"
    job["spec"]["backoffLimit"] = "many"
    with pytest.raises(ApiException) as exc:
        batch.create_namespaced_job("default", job)
    assert exc.value.status == 422 and "spec.backoffLimit: Invalid value" in exc.value.body
