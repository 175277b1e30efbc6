"""kopf in the test's own event loop, strategic merge patches, and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kopf
import kubernetes

from kubequant_localkube.cluster import LocalCluster
from tests.fixtures.cluster import KUBECTL

SPEC = {
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B"},
    "method": "gptq",
    "output": {"uri": "s3://bucket/out"},
}


async def test_kopf_in_the_same_loop(crd_cluster: LocalCluster) -> None:
    registry = kopf.OperatorRegistry()
    seen: asyncio.Queue[str] = asyncio.Queue()

    @kopf.on.create("kubequant.io", "v1alpha1", "modeloptimizations", registry=registry)
    async def on_create(name: str, patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Pending"
        await seen.put(name)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            standalone=True,
            namespaces=["default"],
            stop_flag=stop,
        )
    )
    res = crd_cluster.store.resource("kubequant.io", "v1alpha1", "modeloptimizations")
    body = {"metadata": {"name": "loop"}, "spec": SPEC}
    crd_cluster.store.create(res, "default", body)
    assert await asyncio.wait_for(seen.get(), 20) == "loop"
    for _ in range(200):
        obj = crd_cluster.store.get(res, "default", "loop")
        if (obj.get("status") or {}).get("phase") == "Pending":
            break
        await asyncio.sleep(0.05)
    assert obj["status"]["phase"] == "Pending"
    crd_cluster.emulator.cut_watches()  # kopf re-watches from where it was
    crd_cluster.store.create(res, "default", {"metadata": {"name": "loop2"}, "spec": SPEC})
    assert await asyncio.wait_for(seen.get(), 20) == "loop2"
    stop.set_result(None)
    await asyncio.wait_for(task, 20)


async def test_async_context_manager(tmp_path: Path) -> None:
    async with LocalCluster(state_dir=tmp_path) as cluster:
        assert cluster.url.startswith("http://127.0.0.1:")
        assert cluster.kubeconfig_path.exists()


def test_strategic_merge_patch(crd_cluster: LocalCluster) -> None:
    client = kubernetes.config.new_client_from_config(config_file=str(crd_cluster.kubeconfig_path))
    core = kubernetes.client.CoreV1Api(client)
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}]},
                {"name": "b", "image": "y"},
            ]
        },
    }
    core.create_namespaced_pod("default", pod)
    patched = core.patch_namespaced_pod(
        "p", "default", {"spec": {"containers": [{"name": "b", "image": "z"}]}}
    )  # the client sends application/strategic-merge-patch+json
    images = {c.name: c.image for c in patched.spec.containers}
    assert images == {"a": "x", "b": "z"}  # merged by name, not replaced
    co = kubernetes.client.CustomObjectsApi(client)
    args = ("kubequant.io", "v1alpha1", "default", "modeloptimizations")
    co.create_namespaced_custom_object(*args, {"metadata": {"name": "m"}, "spec": SPEC})
    out = client.call_api(
        "/apis/kubequant.io/v1alpha1/namespaces/default/modeloptimizations/m",
        "PATCH",
        body={"spec": {"method": "awq"}},
        header_params={"Content-Type": "application/strategic-merge-patch+json"},
        response_types_map={200: "object"},
        _return_http_data_only=True,
    )
    assert out["spec"]["method"] == "awq"


def test_cli_serve(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kc"
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubequant_localkube.cli", "serve", "--kubeconfig", str(kubeconfig)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not kubeconfig.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        out = subprocess.run(
            [KUBECTL, "--kubeconfig", str(kubeconfig), "get", "ns", "default", "-o", "name"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert out.stdout.strip() == "namespace/default"
    finally:
        proc.terminate()
        stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert f"export KUBECONFIG={kubeconfig}" in stdout
