"""``helm template | kubectl apply -f -`` into the local control plane, then the real operator
with the settings of the rendered Deployment, one object taken to Ready, and the rendered
RBAC compared with every API call the operator made (the emulator records them).

The operator runs AS the chart's ServiceAccount: its kubeconfig is the admin's with ``as:``
(``system:serviceaccount:kubequant-system:<name>``) and the groups a real ServiceAccount token
carries, so every call it makes (kopf's and its own) is authorized by the rendered RBAC, with
the API server's escalation prevention on the Role and RoleBinding it creates per run.

The test's own reads and writes go straight to the emulator's store (not over HTTP), so every
recorded call after the apply is the operator's.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart.pss import violations
from tests.unit.chart.render import NAMESPACE, by_kind, env_of, one, pod_specs, render_text

pytestmark = pytest.mark.integration

Rule = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)
Res = tuple[str, str, str]  # (group, version, plural)
SECRETS: Res = ("", "v1", "secrets")
PVCS: Res = ("", "v1", "persistentvolumeclaims")
MOPTS: Res = ("kubequant.io", "v1alpha1", "modeloptimizations")
PRIORITY_CLASSES: Res = ("scheduling.k8s.io", "v1", "priorityclasses")


# Granted although this scenario makes no such call, each with the reason.
GRANTED_FOR_ADMISSION: dict[Rule, str] = {
    ("kubequant.io", "modeloptimizations/finalizers", "update"): (
        "never called: OwnerReferencesPermissionEnforcement requires it to create children "
        "whose ownerReference to the ModelOptimization sets blockOwnerDeletion"
    ),
}
GRANTED_WITHOUT_A_CALL = set(GRANTED_FOR_ADMISSION)


def _rules(role: dict[str, Any]) -> set[Rule]:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def _store_call(cluster: Any, fn: Callable[[], Any]) -> Any:
    async def run() -> Any:
        return fn()

    return cluster.run_in_loop(run)


class Objects:
    """Direct (unrecorded) access to the emulator's store from the test."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.store = cluster.store

    def create(self, res: Res, ns: str | None, body: dict[str, Any]) -> Any:
        r = self.store.resource(*res)
        return _store_call(self.cluster, lambda: self.store.create(r, ns, body))

    def merge_patch(self, res: Res, ns: str, name: str, patch: dict[str, Any]) -> Any:
        r = self.store.resource(*res)
        return _store_call(
            self.cluster,
            lambda: self.store.patch(r, ns, name, "application/merge-patch+json", patch),
        )

    def mopt(self, ns: str, name: str) -> dict[str, Any] | None:
        r = self.store.resource(*MOPTS)
        found: dict[str, Any] | None = _store_call(
            self.cluster, lambda: self.store.try_get(r, ns, name)
        )
        return found

    async def wait_stalled(
        self, ns: str, name: str, reason: str, timeout: float = 30
    ) -> dict[str, Any]:
        """The Stalled condition once it is True with ``reason``."""
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            obj = self.mopt(ns, name)
            for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
                if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
                    "Stalled",
                    "True",
                    reason,
                ):
                    return dict(cond)
            await asyncio.sleep(0.1)
        raise AssertionError(f"{ns}/{name} not Stalled with {reason}: {obj}")

    async def wait_ready(self, ns: str, name: str, generation: int, timeout: float = 40) -> Any:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            obj = self.mopt(ns, name)
            status = (obj or {}).get("status") or {}
            ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
            if (
                status.get("observedGeneration") == generation
                and ready
                and ready[0].get("status") == "True"
            ):
                return obj
            await asyncio.sleep(0.1)
        raise AssertionError(f"{ns}/{name} not Ready for generation {generation}: {obj}")


@pytest.fixture
def kubectl_new(local_cluster: Any, kubectl_new_bin: Path) -> Callable[..., Any]:
    """kubectl 1.35 (from the tools fixture) bound to ``local_cluster``."""
    cache = local_cluster.state_dir / "kubectl-new-cache"

    def run(*args: str, input: str | None = None, check: bool = False) -> Any:
        cmd = [str(kubectl_new_bin), "--kubeconfig", str(local_cluster.kubeconfig_path)]
        proc = subprocess.run(
            [*cmd, "--cache-dir", str(cache), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}{proc.stdout}")
        return proc

    return run


def _apply_chart(
    kubectl: Any, sets: tuple[str, ...], namespaces: list[str], server_side: bool = False
) -> str:
    """``helm template | kubectl apply -f -`` (server-side like Flux and Argo CD's SSA)."""
    for ns in [NAMESPACE, *namespaces]:
        kubectl("create", "namespace", ns, check=True)
    manifest = render_text((), sets)
    mode = ["--server-side"] if server_side else []
    out = kubectl("apply", *mode, "-f", "-", input=manifest, check=True).stdout
    return str(out)


def _operator_settings(docs: list[dict[str, Any]], kubeconfig: Path) -> Any:
    """The rendered Deployment's env as settings; only what must differ locally changes."""
    settings_mod = pytest.importorskip("kubequant_operator.settings")
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    loaded = settings_mod.Settings.load(env=env_of(container))
    return loaded.replace(
        kubeconfig=str(kubeconfig),
        metrics_port=0,
        health_port=0,
        bind_address="127.0.0.1",
        reconcile_interval_seconds=2.0,
        watch_server_timeout=60,
        watch_client_timeout=70.0,
        watch_connect_timeout=5.0,
    )


def _service_account_user(docs: list[dict[str, Any]]) -> str:
    """The username the rendered ServiceAccount's token authenticates as."""
    name = one(docs, "ServiceAccount")["metadata"]["name"]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == name
    return f"system:serviceaccount:{NAMESPACE}:{name}"


def _kubeconfig_as(cluster: Any, user: str, path: Path) -> Path:
    """The admin kubeconfig with ``as``/``as-groups``: every request the operator makes is
    impersonated as ``user`` with the groups of a real ServiceAccount token."""
    config = yaml.safe_load(cluster.kubeconfig_path.read_text())
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}"]
    for entry in config["users"]:
        entry["user"].update({"as": user, "as-groups": [*groups, "system:authenticated"]})
    path.write_text(yaml.safe_dump(config))
    return path


def _no_secret_access(kubectl: Any, user: str, ns: str) -> None:
    """Through the real kubectl as ``user``: no Secret can be read, what the chart grants can."""
    can_i = kubectl("auth", "can-i", "get", "secrets", "-n", ns, f"--as={user}")
    assert can_i.stdout.strip() == "no", can_i.stdout + can_i.stderr
    got = kubectl("get", "secrets", "-n", ns, f"--as={user}")
    assert got.returncode != 0
    assert f'User "{user}" cannot list resource "secrets"' in got.stderr, got.stderr
    assert "Forbidden" in got.stderr, got.stderr
    jobs = kubectl("auth", "can-i", "create", "jobs.batch", "-n", ns, f"--as={user}")
    assert jobs.stdout.strip() == "yes", jobs.stdout + jobs.stderr


async def _healthz(port: int, timeout: float = 15.0) -> int:
    """Status of GET /healthz (kopf serves it once its first probes ran)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            url = f"http://127.0.0.1:{port}/healthz"
            resp = await asyncio.to_thread(urllib.request.urlopen, url, timeout=5)
            with resp:
                return int(resp.status)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _run_scenario(cluster: Any, settings: Any, ns: str) -> dict[str, Any]:
    """PVC + object naming a missing PriorityClass and a missing Secret -> Stalled
    PriorityClassNotFound (from the Job's FailedCreate events) -> PriorityClass created ->
    Stalled CredentialsMissing (learned from the pod: the chart grants no Secret permission)
    -> Secret created -> Running; spec edit while running -> old Job stopped -> Ready.

    OwnerReferencesPermissionEnforcement is on (as OpenShift runs it), so every child the
    operator creates with ``blockOwnerDeletion`` needs the chart's finalizers grant."""
    from kubequant_localkube.jobs import Outcome
    from kubequant_operator.kube import Kube
    from tests.fixtures.operator import OperatorHarness, make_object, summary_for

    objects = Objects(cluster)
    objects.create(PVCS, ns, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": ns},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    })  # fmt: skip
    # Generation 1 runs long enough to be replaced; generation 2 succeeds.
    cluster.outcomes["minilm-g1-*"] = Outcome(exit_code=0, message=summary_for(1), duration=60)
    cluster.outcomes["minilm-g2-*"] = Outcome(exit_code=0, message=summary_for(2))
    cluster.emulator.owner_references_permission_enforcement = True
    cluster.emulator.clear_calls()
    # The first Job create conflicts: the operator reads what exists and retries, so the
    # conflict path (get on each child) runs too.
    cluster.emulator.inject_failures("create", "jobs", count=1, status=409)

    harness = OperatorHarness(cluster=cluster, settings=settings, kube=Kube(settings))
    runtime = await harness.start_operator()
    try:
        # The liveness probe's path and the metrics the ServiceMonitor scrapes are served.
        assert await _healthz(runtime.health_port) == 200
        assert "kubequant_reconciles_total" in harness.scrape_metrics()
        body = make_object(namespace=ns)
        body["spec"]["model"]["credentialsSecret"] = "s3-creds"
        body["spec"].setdefault("resources", {})["priorityClassName"] = "batch-low"
        body["metadata"] = {"name": "minilm", "namespace": ns}
        objects.create(MOPTS, ns, body)
        stalled = await objects.wait_stalled(ns, "minilm", "PriorityClassNotFound")
        assert "'batch-low'" in stalled["message"], stalled
        objects.create(PRIORITY_CLASSES, None, {
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": "batch-low"}, "value": 100,
        })  # fmt: skip
        stalled = await objects.wait_stalled(ns, "minilm", "CredentialsMissing")
        assert "spec.model.credentialsSecret" in stalled["message"]
        assert "'s3-creds'" in stalled["message"]
        objects.create(SECRETS, ns, {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": ns},
            "stringData": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"},
        })  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = (objects.mopt(ns, "minilm") or {}).get("status") or {}
            if status.get("phase") == "Running":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"generation 1 never ran: {objects.mopt(ns, 'minilm')}")
        objects.merge_patch(MOPTS, ns, "minilm", {"spec": {"calibration": {"samples": 64}}})
        obj = await objects.wait_ready(ns, "minilm", generation=2)
        # The Job the operator really created passes Pod Security "restricted".
        jobs = _store_call(
            cluster,
            lambda: cluster.store.list_objects(cluster.store.resource("batch", "v1", "jobs"), ns),
        )
        specs = pod_specs(list(jobs[0]))
        assert specs
        for where, pod_spec in specs:
            assert violations(pod_spec) == [], where
    finally:
        await harness.stop_operator()
        await harness.kube.close()
    return dict(obj)


def _used(cluster: Any, user: str) -> tuple[set[Rule], set[tuple[str | None, str]]]:
    """RBAC triples the operator used, and (namespace, resource) pairs it touched; every one
    of its calls was made as ``user`` (impersonated), none as the admin."""
    used: set[Rule] = set()
    where: set[tuple[str | None, str]] = set()
    for call in cluster.emulator.api_calls():
        if not call.resource:
            continue  # discovery and other non-resource URLs (granted to everyone)
        assert call.user == user, f"a call not made as the ServiceAccount: {call}"
        used.add((call.group, call.rbac_resource, call.verb))
        where.add((call.namespace, call.rbac_resource))
    return used, where


def _compare(used: set[Rule], granted: set[Rule], where: str) -> None:
    """granted == used, but for the grants listed (with their reason) as needed without a
    call; the Secret rule is absent from both."""
    missing = used - granted
    unused = granted - used - GRANTED_WITHOUT_A_CALL
    assert not missing, f"{where}: the operator made calls not granted: {sorted(missing)}"
    assert not unused, f"{where}: granted but never used: {sorted(unused)}"
    assert not {r for r in used | granted if r[1] == "secrets"}, "no Secret permission at all"


def test_chart_applies_and_operator_as_its_service_account_reaches_ready_cluster_wide(
    local_cluster: Any, kubectl_new: Any, tmp_path: Path
) -> None:
    kubectl = kubectl_new
    sets = ("image.tag=test",)
    out = _apply_chart(kubectl, sets, ["team-a"])
    docs = [d for d in yaml.safe_load_all(render_text((), sets)) if d]
    for doc in docs:
        kind = doc["kind"].lower()
        assert f"{kind}" in out.lower(), f"kubectl did not apply {doc['kind']}"
    # Applied objects are really there (read back through kubectl).
    got = kubectl("get", "deployment", "-n", NAMESPACE, "kq-kubequant", "-o", "name", check=True)
    assert got.stdout.strip() == "deployment.apps/kq-kubequant"
    kubectl("get", "crd", "modeloptimizations.kubequant.io", check=True)
    # A second apply of the same manifest changes nothing (no perpetual GitOps diff).
    again = kubectl("apply", "-f", "-", input=render_text((), sets), check=True).stdout
    assert again.count("unchanged") == len(docs), again

    sa_user = _service_account_user(docs)
    _no_secret_access(kubectl, sa_user, "team-a")
    kubeconfig = _kubeconfig_as(local_cluster, sa_user, tmp_path / "as-operator")
    settings = _operator_settings(docs, kubeconfig)
    assert settings.clusterwide and settings.engine_image == "ghcr.io/kubequant/engine:0.1.0"
    obj = asyncio.run(_run_scenario(local_cluster, settings, "team-a"))
    assert obj["status"]["phase"] == "Succeeded"
    assert obj["status"]["result"]["generation"] == 2

    used, _ = _used(local_cluster, sa_user)
    _compare(used, _rules(one(docs, "ClusterRole")), "ClusterRole")


def test_chart_namespaced_rbac_covers_the_operator_as_its_service_account(
    local_cluster: Any, kubectl_new: Any, tmp_path: Path
) -> None:
    sets = ("watchNamespaces={team-b}",)
    out = _apply_chart(kubectl_new, sets, ["team-b"], server_side=True)
    assert "role.rbac.authorization.k8s.io/kq-kubequant serverside-applied" in out
    docs = [d for d in yaml.safe_load_all(render_text((), sets)) if d]
    sa_user = _service_account_user(docs)
    _no_secret_access(kubectl_new, sa_user, "team-b")
    kubeconfig = _kubeconfig_as(local_cluster, sa_user, tmp_path / "as-operator")
    settings = _operator_settings(docs, kubeconfig)
    assert settings.namespaces == ("team-b",)
    obj = asyncio.run(_run_scenario(local_cluster, settings, "team-b"))
    assert obj["status"]["phase"] == "Succeeded"

    (role,) = by_kind(docs, "Role")
    assert role["metadata"]["namespace"] == "team-b"
    _, where = _used(local_cluster, sa_user)
    for ns, resource in where:
        assert ns in ("team-b", None), f"call outside the watched namespace: {ns} {resource}"
    calls = local_cluster.emulator.api_calls()
    in_ns = {(c.group, c.rbac_resource, c.verb) for c in calls if c.resource and c.namespace}
    outside = {(c.group, c.rbac_resource, c.verb) for c in calls if c.resource and not c.namespace}
    _compare(in_ns, _rules(role), "Role in team-b")
    _compare(outside, _rules(one(docs, "ClusterRole")), "ClusterRole")
