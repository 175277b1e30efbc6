"""kopf's own needs: a tiny operator reacts to a create, manages its finalizer, posts events."""

from __future__ import annotations

import time
from typing import Any

import kopf
import kopf.testing

from kubequant_localkube.cluster import LocalCluster


def _wait(cond: Any, timeout: float = 15.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_kopf_operator_runs_against_emulator(crd_cluster: LocalCluster, tmp_path: Any) -> None:
    store = crd_cluster.store
    res = store.resource("kubequant.io", "v1alpha1", "modeloptimizations")
    events = store.resource("", "v1", "events")
    op = tmp_path / "op.py"
    op.write_text(
        "import kopf\n"
        "@kopf.on.startup()\n"
        "def cfg(settings, **_):\n"
        "    settings.posting.level = 0\n"
        "    settings.watching.server_timeout = 5\n"
        "@kopf.on.create('kubequant.io', 'v1alpha1', 'modeloptimizations')\n"
        "def created(name, body, patch, logger, **_):\n"
        "    patch.status['phase'] = 'Pending'\n"
        "    kopf.info(body, reason='Seen', message=f'seen {name}')\n"
        "    kopf.info(body, reason='Seen', message=f'seen {name} again')\n"
        "    logger.info(f'created {name}')\n"
        "    return {'seen': name}\n"
        "@kopf.on.delete('kubequant.io', 'v1alpha1', 'modeloptimizations')\n"
        "def deleted(name, **_):\n"
        "    pass\n"
    )
    args = ["run", "--standalone", "--namespace", "default", "--verbose", str(op)]
    with kopf.testing.KopfRunner(args, timeout=60) as runner:
        body = {
            "apiVersion": "kubequant.io/v1alpha1",
            "kind": "ModelOptimization",
            "metadata": {"name": "k1", "namespace": "default"},
            "spec": {
                "model": {"uri": "hf://Qwen/Qwen2.5-0.5B"},
                "method": "gptq",
                "output": {"uri": "s3://bucket/o"},
            },
        }
        store.create(res, "default", body)
        obj = _wait(
            lambda: (o := store.try_get(res, "default", "k1"))
            and (o.get("status") or {}).get("phase")
            and o
        )
        assert obj["status"]["phase"] == "Pending"
        # kopf stores handler results in status.<handler>; the CRD's status schema prunes it.
        assert "created" not in obj["status"]
        assert any("kopf" in f for f in obj["metadata"].get("finalizers", []))
        seen = _wait(
            lambda: (
                [
                    e
                    for e in store.list_objects(events, "default")[0]
                    if e["involvedObject"]["name"] == "k1" and e.get("reason") == "Seen"
                ]
                if len(store.list_objects(events, "default")[0]) >= 2
                else None
            )
        )
        # kopf posts events with generateName: two of them must not collide.
        assert len({e["metadata"]["name"] for e in seen}) == 2
        store.delete(res, "default", "k1")
        _wait(lambda: store.try_get(res, "default", "k1") is None)
        time.sleep(0.5)
    assert runner.exception is None, runner.exception
    assert runner.exit_code == 0
    assert "created k1" in runner.output
