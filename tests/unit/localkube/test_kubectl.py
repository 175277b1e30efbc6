"""The real kubectl binary against the emulator."""

from __future__ import annotations

import json
import subprocess
import time

import yaml

from kubequant_localkube.cluster import LocalCluster
from tests.fixtures.cluster import CRD_PATH, KUBECTL, Kubectl

MOPT = """
apiVersion: kubequant.io/v1alpha1
kind: ModelOptimization
metadata:
  name: demo
  namespace: default
  labels: {team: ml}
spec:
  model: {uri: "hf://Qwen/Qwen2.5-0.5B"}
  method: gptq
  params: {bits: 4}
  output: {uri: "s3://bucket/models/demo"}
"""


def test_apply_get_wait_delete(local_cluster: LocalCluster, kubectl: Kubectl) -> None:
    out = kubectl("apply", "-f", str(CRD_PATH), check=True)
    assert "created" in out.stdout
    assert "configured" in kubectl("apply", "-f", str(CRD_PATH), check=True).stdout or True
    kubectl("apply", "-f", "-", input=MOPT, check=True)
    again = kubectl("apply", "-f", "-", input=MOPT, check=True)
    assert "unchanged" in again.stdout

    table = kubectl("get", "mopt", check=True).stdout.splitlines()
    header = table[0].split()
    assert header[:3] == ["NAME", "PHASE", "METHOD"] and "AGE" in header
    assert table[1].split()[:2] == ["demo", "gptq"]
    assert "demo" in kubectl("get", "kubequant", check=True).stdout  # by category

    changed = MOPT.replace("bits: 4", "bits: 8")
    kubectl("apply", "-f", "-", input=changed, check=True)
    got = json.loads(kubectl("get", "mopt", "demo", "-o", "json", check=True).stdout)
    assert got["spec"]["params"] == {"bits": 8} and got["metadata"]["generation"] == 2
    assert "kubectl.kubernetes.io/last-applied-configuration" in got["metadata"]["annotations"]

    # kubectl wait (watch-based) sees a status patch made meanwhile
    wait = subprocess.Popen(
        [
            KUBECTL,
            "--kubeconfig",
            str(local_cluster.kubeconfig_path),
            "wait",
            "--for=condition=Ready",
            "mopt/demo",
            "--timeout=20s",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    status = {
        "status": {
            "phase": "Succeeded",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Succeeded",
                    "message": "done",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        }
    }
    kubectl(
        "patch",
        "mopt",
        "demo",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
        check=True,
    )
    stdout, stderr = wait.communicate(timeout=30)
    assert wait.returncode == 0, stderr
    assert "condition met" in stdout
    phase = kubectl("get", "mopt", "demo", "-o", "jsonpath={.status.phase}", check=True).stdout
    assert phase == "Succeeded"
    row = kubectl("get", "mopt", "-l", "team=ml", check=True).stdout.splitlines()[1].split()
    assert row[:3] == ["demo", "Succeeded", "gptq"] and "True" in row

    assert "deleted" in kubectl("delete", "mopt", "demo", check=True).stdout
    assert "No resources found" in kubectl("get", "mopt", check=True).stderr


def test_apply_rejects_bad_specs_and_explain(crd_cluster: LocalCluster, kubectl: Kubectl) -> None:
    bad_pattern = MOPT.replace("s3://bucket/models/demo", "ftp://nope")
    res = kubectl("apply", "-f", "-", input=bad_pattern)
    assert res.returncode != 0 and "spec.output.uri" in res.stderr
    bad_cel = MOPT.replace("bits: 4", "threshold: 6.0")
    res = kubectl("apply", "-f", "-", input=bad_cel)
    assert res.returncode != 0
    assert "spec.params" in res.stderr and "method gptq accepts only" in res.stderr
    unknown = MOPT.replace("method: gptq", "method: gptq\n  bogus: 1")
    res = kubectl("apply", "-f", "-", input=unknown)
    assert res.returncode != 0 and 'unknown field "spec.bogus"' in res.stderr
    res = kubectl("apply", "--validate=false", "-f", "-", input=unknown, check=True)
    got = yaml.safe_load(kubectl("get", "mopt", "demo", "-o", "yaml", check=True).stdout)
    assert "bogus" not in got["spec"]  # pruned, as a real API server prunes
    explain = kubectl("explain", "mopt.spec.model", check=True).stdout
    assert "uri" in explain and "-required-" in explain


def test_server_side_apply(crd_cluster: LocalCluster, kubectl: Kubectl) -> None:
    kubectl("apply", "--server-side", "-f", "-", input=MOPT, check=True)
    smaller = MOPT.replace("  params: {bits: 4}\n", "")
    kubectl("apply", "--server-side", "-f", "-", input=smaller, check=True)
    got = json.loads(kubectl("get", "mopt", "demo", "-o", "json", check=True).stdout)
    assert "params" not in got["spec"]  # fields the manager stopped applying are removed


def test_builtin_kinds(local_cluster: LocalCluster, kubectl: Kubectl) -> None:
    job = """
apiVersion: batch/v1
kind: Job
metadata: {name: hello}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: busybox, command: ["true"]}]
"""
    kubectl("apply", "-f", "-", input=job, check=True)
    kubectl("wait", "--for=condition=Complete", "job/hello", "--timeout=20s", check=True)
    pods = kubectl("get", "pods", "-l", "job-name=hello", "-o", "json", check=True).stdout
    items = json.loads(pods)["items"]
    assert len(items) == 1 and items[0]["status"]["phase"] == "Succeeded"
    kubectl("delete", "job", "hello", check=True)
    assert kubectl("get", "pods", "-o", "name", check=True).stdout.strip() == ""
    kubectl("create", "namespace", "demo", check=True)
    kubectl("create", "configmap", "cm", "-n", "demo", "--from-literal=a=b", check=True)
    kubectl("create", "secret", "generic", "s", "-n", "demo", "--from-literal=k=v", check=True)
    cm = json.loads(kubectl("get", "cm", "cm", "-n", "demo", "-o", "json", check=True).stdout)
    assert cm["data"] == {"a": "b"}
    assert kubectl("auth", "can-i", "get", "pods").stdout.strip() == "yes"
    kubectl("delete", "namespace", "demo", check=True)
    assert kubectl("get", "namespace", "demo").returncode != 0
