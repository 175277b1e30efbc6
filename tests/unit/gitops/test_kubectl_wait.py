"""What docs/gitops.md promises about `kubectl wait --for=condition=Ready`, checked with the
real kubectl binaries against the local control plane: a Ready condition stamped for an
older generation does not satisfy the wait; once it describes the current spec, it does."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.cluster import KUBECTL

pytestmark = pytest.mark.integration

MERGE = "application/merge-patch+json"


def _in_loop(cluster: Any, fn: Any) -> Any:
    async def run() -> Any:
        return fn()

    return cluster.run_in_loop(run)


def _ready(generation: int) -> dict[str, Any]:
    cond = {
        "type": "Ready",
        "status": "True",
        "reason": "Succeeded",
        "message": "done",
        "lastTransitionTime": "2026-11-25T10:00:00Z",
        "observedGeneration": generation,
    }
    return {
        "status": {"phase": "Succeeded", "observedGeneration": generation, "conditions": [cond]}
    }


@pytest.mark.parametrize("which", ["machine", "new"])
def test_kubectl_wait_respects_observed_generation(
    crd_cluster: Any, kubectl_new_bin: Path, which: str
) -> None:
    binary = KUBECTL if which == "machine" else str(kubectl_new_bin)
    if not Path(binary).exists():
        pytest.skip(f"no kubectl at {binary}")
    store = crd_cluster.store
    res = store.resource("kubequant.io", "v1alpha1", "modeloptimizations")
    body = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": "qwen", "namespace": "default"},
        "spec": {
            "model": {"uri": "hf://Qwen/Qwen2.5-0.5B"},
            "method": "torchao-int8-weight",
            "output": {"uri": "s3://bucket/out"},
        },
    }
    _in_loop(crd_cluster, lambda: store.create(res, "default", body))
    _in_loop(
        crd_cluster,
        lambda: store.patch(res, "default", "qwen", MERGE, _ready(1), subresource="status"),
    )
    # A spec edit: generation 2, while the status still describes generation 1.
    _in_loop(
        crd_cluster,
        lambda: store.patch(
            res, "default", "qwen", MERGE, {"spec": {"method": "torchao-int8-dynamic"}}
        ),
    )
    obj = _in_loop(crd_cluster, lambda: store.get(res, "default", "qwen"))
    assert obj["metadata"]["generation"] == 2

    def wait(timeout: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "--kubeconfig", str(crd_cluster.kubeconfig_path), "wait",
             "--for=condition=Ready", "mopt/qwen", f"--timeout={timeout}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    stale = wait("2s")
    assert stale.returncode != 0, stale.stdout
    assert "timed out" in stale.stderr
    _in_loop(
        crd_cluster,
        lambda: store.patch(res, "default", "qwen", MERGE, _ready(2), subresource="status"),
    )
    current = wait("10s")
    assert current.returncode == 0, current.stderr
    assert "condition met" in current.stdout
