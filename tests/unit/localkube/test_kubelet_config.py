"""The kubelet's CreateContainerConfigError: a container whose environment names a Secret (or
a key of it) that does not exist waits with the real kubelet's reason and message, and
starts once the Secret appears (the kubelet retries on each sync)."""

from __future__ import annotations

from typing import Any

import pytest

from kubequant_localkube.cluster import LocalCluster
from kubequant_localkube.jobs import RUN_PROCESS, Outcome
from kubequant_localkube.store import Obj
from tests.unit.localkube.test_jobs import Helper, job, wait_for


@pytest.fixture
def h(local_cluster: LocalCluster) -> Helper:
    return Helper(local_cluster)


def _waiting(h: Helper, name: str) -> Obj:
    def found() -> Any:
        for p in h.pods_of(name):
            for cs in (p.get("status") or {}).get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting")
                if waiting:
                    return p, waiting
        return None

    pod, waiting = wait_for(found)
    assert pod["status"]["phase"] == "Pending"
    return dict(waiting)


def _secret(h: Helper, name: str, data: dict[str, str]) -> None:
    secrets = h.store.resource("", "v1", "secrets")
    h.store.create(secrets, "default", {"metadata": {"name": name}, "stringData": data})


@pytest.mark.parametrize("mode", ["scripted", "process"])
def test_missing_env_from_secret_waits_then_starts_when_created(h: Helper, mode: str) -> None:
    name = f"creds-{mode}"
    h.cluster.outcomes[f"{name}*"] = RUN_PROCESS if mode == "process" else Outcome()
    body = job(name, command=["python", "-c", "import os; assert os.environ['TOKEN'] == 'x'"])
    body["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [
        {"secretRef": {"name": "hf-token"}}
    ]
    h.create(body)
    waiting = _waiting(h, name)
    assert waiting == {
        "reason": "CreateContainerConfigError",
        "message": 'secret "hf-token" not found',
    }
    assert h.finished(name) is None
    _secret(h, "hf-token", {"TOKEN": "x"})
    conds = wait_for(lambda: h.finished(name), timeout=30)
    assert "Complete" in conds, conds
    (pod,) = h.pods_of(name)
    assert pod["status"]["phase"] == "Succeeded"


def test_missing_key_and_optional_references(h: Helper) -> None:
    _secret(h, "partial", {"OTHER": "y"})
    body = job("keyed")
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "partial", "key": "TOKEN"}}},
        {
            "name": "MAYBE",
            "valueFrom": {"secretKeyRef": {"name": "absent", "key": "K", "optional": True}},
        },
    ]
    h.create(body)
    waiting = _waiting(h, "keyed")
    assert waiting["reason"] == "CreateContainerConfigError"
    assert waiting["message"] == "couldn't find key TOKEN in Secret default/partial"

    optional = job("optional")
    optional["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [
        {"secretRef": {"name": "absent", "optional": True}}
    ]
    h.create(optional)
    assert "Complete" in wait_for(lambda: h.finished("optional"))


def test_deleting_a_waiting_pod_ends_its_wait(h: Helper) -> None:
    body = job("gone", backoffLimit=0)
    body["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [
        {"secretRef": {"name": "never"}}
    ]
    h.create(body)
    _waiting(h, "gone")
    h.store.delete(h.jobs, "default", "gone", propagation="Background")
    wait_for(lambda: h.get("gone") is None and h.pods_of("gone") == [])
