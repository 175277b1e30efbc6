"""The Job controller emulator: scripted outcomes and process mode."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from kubequant_localkube.cluster import LocalCluster
from kubequant_localkube.jobs import RUN_PROCESS, Outcome
from kubequant_localkube.store import Obj


def wait_for(fn: Callable[[], Any], timeout: float = 15.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {fn}")


def job(name: str, command: list[str] | None = None, **spec: Any) -> Obj:
    container: Obj = {"name": "engine", "image": "kubequant/engine:test"}
    if command:
        container["command"] = command
    body: Obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "test"}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }
    body["spec"].update(spec)
    return body


FAIL_ON_2_3 = {
    "rules": [
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": "engine", "operator": "In", "values": [2, 3]},
        },
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
    ]
}


class Helper:
    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.store = cluster.store
        self.jobs = self.store.resource("batch", "v1", "jobs")
        self.pods = self.store.resource("", "v1", "pods")

    def create(self, body: Obj) -> Obj:
        return self.store.create(self.jobs, "default", body)

    def get(self, name: str) -> Obj | None:
        return self.store.try_get(self.jobs, "default", name)

    def conditions(self, name: str) -> dict[str, Obj]:
        j = self.get(name) or {}
        return {c["type"]: c for c in (j.get("status") or {}).get("conditions") or []}

    def finished(self, name: str) -> dict[str, Obj] | None:
        conds = self.conditions(name)
        return conds if ("Complete" in conds or "Failed" in conds) else None

    def pods_of(self, name: str) -> list[Obj]:
        return self.store.list_objects(
            self.pods,
            "default",
            lambda p: p["metadata"]["labels"].get("job-name") == name,
        )[0]


@pytest.fixture
def h(local_cluster: LocalCluster) -> Helper:
    return Helper(local_cluster)


def test_scripted_success(h: Helper, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the controller's own log records must not break it
    created = h.create(job("ok"))
    conds = wait_for(lambda: h.finished("ok"))
    assert conds["Complete"]["status"] == "True" and "SuccessCriteriaMet" in conds
    status = (h.get("ok") or {})["status"]
    assert status["succeeded"] == 1 and status["active"] == 0
    assert status["startTime"] and status["completionTime"]
    (pod,) = h.pods_of("ok")
    assert pod["metadata"]["name"].startswith("ok-")
    assert pod["metadata"]["labels"]["controller-uid"] == created["metadata"]["uid"]
    assert pod["metadata"]["labels"]["app"] == "test"
    ref = pod["metadata"]["ownerReferences"][0]
    assert ref["kind"] == "Job" and ref["uid"] == created["metadata"]["uid"] and ref["controller"]
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert pod["status"]["phase"] == "Succeeded" and term["exitCode"] == 0
    assert any(r.getMessage() == "pod terminated" for r in caplog.records)
    assert term["reason"] == "Completed"


def test_fail_job_rule_stops_retries(h: Helper) -> None:
    h.cluster.outcomes["gate-*"] = Outcome(exit_code=3, message='{"reason":"QualityGateFailed"}')
    h.create(job("gate-1", backoffLimit=4, podFailurePolicy=FAIL_ON_2_3))
    conds = wait_for(lambda: h.finished("gate-1"))
    assert conds["Failed"]["reason"] == "PodFailurePolicy"
    assert "exit code 3" in conds["Failed"]["message"] and "FailureTarget" in conds
    (pod,) = h.pods_of("gate-1")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term == term | {
        "exitCode": 3,
        "reason": "Error",
        "message": '{"reason":"QualityGateFailed"}',
    }


def test_backoff_limit_and_oom(h: Helper) -> None:
    h.cluster.outcomes["oom"] = [
        Outcome(exit_code=1, message="transient"),
        Outcome(exit_code=137, reason="OOMKilled"),
    ]
    h.create(job("oom", backoffLimit=1))
    conds = wait_for(lambda: h.finished("oom"))
    assert conds["Failed"]["reason"] == "BackoffLimitExceeded"
    assert (h.get("oom") or {})["status"]["failed"] == 2
    reasons = sorted(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"]
        for p in h.pods_of("oom")
    )
    assert reasons == ["Error", "OOMKilled"]


def test_disruption_is_ignored_then_success(h: Helper) -> None:
    h.cluster.outcomes["evicted"] = [Outcome(exit_code=143, disruption=True), Outcome()]
    h.create(job("evicted", backoffLimit=0, podFailurePolicy=FAIL_ON_2_3))
    conds = wait_for(lambda: h.finished("evicted"))
    assert "Complete" in conds and len(h.pods_of("evicted")) == 2
    assert (h.get("evicted") or {})["status"].get("failed", 0) == 0


def test_rules_in_order_an_exit_code_rule_matches_a_disrupted_pod_too(h: Helper) -> None:
    """matchPodFailurePolicy: first matching rule wins, disrupted pods included (a rule
    naming a container outside the template is refused by validation, so it is not here)."""
    policy = {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [1]}},
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [143]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
        ]
    }
    h.cluster.outcomes["killed"] = [Outcome(exit_code=143, disruption=True), Outcome()]
    h.create(job("killed", backoffLimit=3, podFailurePolicy=policy))
    conds = wait_for(lambda: h.finished("killed"))
    assert conds["Failed"]["reason"] == "PodFailurePolicy"
    assert "matching FailJob rule at index 1" in conds["Failed"]["message"]
    assert len(h.pods_of("killed")) == 1


def test_unschedulable_until_deadline(h: Helper) -> None:
    h.cluster.outcomes["stuck"] = Outcome(pending="Unschedulable")
    h.cluster.outcomes["pull"] = Outcome(
        waiting="ImagePullBackOff", waiting_message="no such image"
    )
    h.create(job("stuck", activeDeadlineSeconds=3))
    h.create(job("pull"))
    pod = wait_for(lambda: [p for p in h.pods_of("stuck") if p["status"].get("conditions")])[0]
    sched = pod["status"]["conditions"][0]
    assert pod["status"]["phase"] == "Pending" and sched["reason"] == "Unschedulable"
    pulling = wait_for(
        lambda: [p for p in h.pods_of("pull") if p["status"].get("containerStatuses")]
    )
    waiting = pulling[0]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "ImagePullBackOff", "message": "no such image"}
    conds = wait_for(lambda: h.finished("stuck"), timeout=10)
    assert conds["Failed"]["reason"] == "DeadlineExceeded"
    assert h.pods_of("stuck") == []  # the active pod is deleted


def test_suspend_and_resume(h: Helper) -> None:
    h.cluster.outcomes["queued"] = Outcome(duration=0.5)
    h.create(job("queued", suspend=True))
    conds = wait_for(lambda: h.conditions("queued").get("Suspended"))
    assert conds["status"] == "True" and h.pods_of("queued") == []
    h.store.patch(h.jobs, "default", "queued", "merge", {"spec": {"suspend": False}})
    wait_for(lambda: h.pods_of("queued"))
    h.store.patch(h.jobs, "default", "queued", "merge", {"spec": {"suspend": True}})
    wait_for(lambda: not h.pods_of("queued"))  # the running pod is stopped
    wait_for(lambda: h.conditions("queued")["Suspended"]["status"] == "True")
    h.store.patch(h.jobs, "default", "queued", "merge", {"spec": {"suspend": False}})
    conds = wait_for(lambda: h.finished("queued"))
    assert "Complete" in conds and h.conditions("queued")["Suspended"]["status"] == "False"


def test_ttl_after_finished_deletes_job_and_pods(h: Helper) -> None:
    h.create(job("short", ttlSecondsAfterFinished=0))
    wait_for(lambda: h.get("short") is None)
    assert h.pods_of("short") == []


def test_process_mode_runs_the_command(h: Helper, tmp_path: Any) -> None:
    script = (
        "import os, sys\n"
        "out = os.path.join(os.environ['OUT_DIR'], 'hello.txt')\n"
        "open(out, 'w').write(os.environ['GREETING'])\n"
        "open(os.environ['TERM_LOG'], 'w').write('wrote ' + os.environ['OUT_DIR'])\n"
        "print('to the log')\n"
        "assert os.path.isdir(os.path.join(os.environ['PVC_ROOT'], 'models', 'out'))\n"
        "assert os.environ['KUBECONFIG'], 'kubeconfig injected'\n"
        "sys.exit(3)\n"
    )
    h.cluster.outcomes["proc"] = RUN_PROCESS
    body = job("proc", command=["python", "-c", script], podFailurePolicy=FAIL_ON_2_3)
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": "OUT_DIR", "value": "/mnt/kubequant/pvc/models/out"},
        {"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "TERM_LOG", "value": "/dev/termination-log"},
        {"name": "PVC_ROOT", "value": "/mnt/kubequant/pvc"},
    ]
    container["volumeMounts"] = [
        {"name": "pvc-models", "mountPath": "/mnt/kubequant/pvc/models"},
        {"name": "scratch", "mountPath": "/scratch"},
    ]
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    body["spec"]["template"]["spec"]["volumes"] = [
        {"name": "pvc-models", "persistentVolumeClaim": {"claimName": "models"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    secrets = h.store.resource("", "v1", "secrets")
    h.store.create(
        secrets,
        "default",
        {"metadata": {"name": "creds"}, "stringData": {}, "data": {"token": "aGk="}},
    )
    (h.cluster.state_dir / "pvc" / "models" / "out").mkdir(parents=True)
    h.create(body)
    conds = wait_for(lambda: h.finished("proc"), timeout=30)
    assert conds["Failed"]["reason"] == "PodFailurePolicy"
    out = h.cluster.state_dir / "pvc" / "models" / "out" / "hello.txt"
    assert out.read_text() == "hi"
    (pod,) = h.pods_of("proc")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["message"] == f"wrote {out.parent}"
    logs = h.cluster.emulator.pod_logs[("default", pod["metadata"]["name"])]
    assert "to the log" in logs


def test_process_mode_falls_back_to_logs_and_missing_secret(h: Helper) -> None:
    h.cluster.jobs.run_pods = True  # every job without a scripted outcome runs as a process
    body = job("crash", command=["python", "-c", "import sys; print('boom'); sys.exit(1)"])
    body["spec"]["template"]["spec"]["containers"][0][
        "terminationMessagePolicy"
    ] = "FallbackToLogsOnError"
    h.create(body)
    conds = wait_for(lambda: h.finished("crash"), timeout=30)
    assert conds["Failed"]["reason"] == "BackoffLimitExceeded"
    term = h.pods_of("crash")[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 1 and term["message"].strip() == "boom"

    nosecret = job("nosecret", command=["python", "-c", "pass"])
    nosecret["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [
        {"secretRef": {"name": "missing"}}
    ]
    h.create(nosecret)
    pod = wait_for(
        lambda: [p for p in h.pods_of("nosecret") if p["status"].get("containerStatuses")]
    )[0]
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError"


def test_job_deletion_orphans_pods_by_default(h: Helper) -> None:
    h.create(job("keep"))
    h.create(job("drop"))
    wait_for(lambda: h.finished("keep") and h.finished("drop"))
    h.store.delete(h.jobs, "default", "keep")  # the API's default for batch/v1 Jobs: Orphan
    h.store.delete(h.jobs, "default", "drop", propagation="Background")
    (orphan,) = h.pods_of("keep")
    assert not orphan["metadata"].get("ownerReferences")
    assert h.pods_of("drop") == []


def test_process_pods_act_as_their_service_account(h: Helper) -> None:
    """A pod's process reaches the API as its ServiceAccount; RBAC decides what it may do."""
    co = ("kubequant.io", "v1alpha1", "default", "modeloptimizations")
    script = (
        "import sys, kubernetes\n"
        "kubernetes.config.load_kube_config()\n"
        "api = kubernetes.client.CustomObjectsApi()\n"
        f"args = {co!r}\n"
        "running = {'status': {'phase': 'Running'}}\n"
        "api.patch_namespaced_custom_object_status(*args, 'mine', running)\n"
        "try:\n"
        "    api.patch_namespaced_custom_object_status(*args, 'other', {'status': {}})\n"
        "except kubernetes.client.ApiException as exc:\n"
        "    sys.exit(10 if exc.status == 403 else 11)\n"
    )
    rbac = "rbac.authorization.k8s.io"
    store = h.store
    crds = store.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    import yaml

    from tests.fixtures.cluster import CRD_PATH

    store.create(crds, None, yaml.safe_load(CRD_PATH.read_text()))
    res = store.resource(*co[:2], co[3])
    spec = {"model": {"uri": "hf://a/b"}, "method": "gptq", "output": {"uri": "s3://bucket/o"}}
    for name in ("mine", "other"):
        store.create(res, "default", {"metadata": {"name": name}, "spec": spec})
    rule = {
        "apiGroups": ["kubequant.io"],
        "resources": ["modeloptimizations/status"],
        "verbs": ["get", "patch"],
        "resourceNames": ["mine"],
    }
    store.create(
        store.resource(rbac, "v1", "roles"), "default", {"metadata": {"name": "r"}, "rules": [rule]}
    )
    binding = {
        "metadata": {"name": "r"},
        "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": "default"}],
    }
    store.create(store.resource(rbac, "v1", "rolebindings"), "default", binding)
    h.cluster.outcomes["as-sa"] = RUN_PROCESS
    body = job("as-sa", command=["python", "-c", script])
    body["spec"]["template"]["spec"]["serviceAccountName"] = "runner"
    h.create(body)
    time.sleep(0.5)
    assert h.pods_of("as-sa") == []  # no pod until its ServiceAccount exists
    store.create(
        store.resource("", "v1", "serviceaccounts"), "default", {"metadata": {"name": "runner"}}
    )
    wait_for(lambda: h.finished("as-sa"), timeout=30)
    term = h.pods_of("as-sa")[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    calls = [(c.user, c.verb, c.name, c.code) for c in h.cluster.emulator.api_calls()]
    assert term["exitCode"] == 10, (h.cluster.emulator.pod_logs, calls)
    assert store.get(res, "default", "mine")["status"]["phase"] == "Running"
    user = "system:serviceaccount:default:runner"
    denied = [c for c in h.cluster.emulator.api_calls() if c.user == user and c.code == 403]
    assert [(c.name, c.rbac_resource) for c in denied] == [("other", "modeloptimizations/status")]
