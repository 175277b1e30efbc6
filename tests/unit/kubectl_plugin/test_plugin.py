"""``kubectl kubequant`` through the real kubectl binary against the local control plane:
kubectl finds ``kubectl-kubequant`` on PATH (the venv's bin, where the package installs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubequant_api.constants import API_VERSION, KIND
from kubequant_api.models import parse_manifest
from kubequant_localkube.cluster import LocalCluster
from kubequant_localkube.outcomes import Outcome
from kubequant_operator.builders import build_job, build_service_account
from tests.fixtures.cluster import KUBECTL, Kubectl, make_kubectl
from tests.fixtures.operator import operator_test_settings
from tests.unit.kubectl_plugin.sample import auto_result, causal_result, history, last_successful
from tests.unit.kubectl_plugin.test_plot import png_size

VENV_BIN = Path(sys.executable).parent
PLUGIN = VENV_BIN / "kubectl-kubequant"

Plugin = Callable[..., "subprocess.CompletedProcess[str]"]

AUTO_SPEC: dict[str, Any] = {
    "model": {"uri": "hf://sentence-transformers/all-MiniLM-L6-v2", "task": "feature-extraction"},
    "method": "auto",
    "candidates": [
        {"method": "torchao-int8-weight"},
        {"method": "quanto-int8"},
        {"method": "onnx-int8"},
        {"method": "bnb-nf4"},
    ],
    "evaluation": {"qualityGate": {"minCosineSimilarity": 0.99}},
    "output": {"uri": "s3://models/minilm-auto"},
    "retries": 2,
}
GPTQ_SPEC: dict[str, Any] = {
    "model": {"uri": "hf://Qwen/Qwen2.5-0.5B", "task": "causal-lm"},
    "method": "gptq",
    "params": {"bits": 4, "groupSize": 128},
    "output": {"uri": "s3://models/qwen-gptq"},
}


@pytest.fixture(scope="module")
def cluster(
    local_cluster_module: LocalCluster, crd_manifest: dict[str, Any]
) -> Iterator[LocalCluster]:
    crds = local_cluster_module.store.resource(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions"
    )
    local_cluster_module.store.create(crds, None, crd_manifest)
    yield local_cluster_module


@pytest.fixture(scope="module")
def kubectl(cluster: LocalCluster) -> Kubectl:
    return make_kubectl(cluster)


@pytest.fixture(scope="module")
def plugin(cluster: LocalCluster) -> Plugin:
    """``kubectl kubequant ...`` with the venv's bin on PATH and KUBECONFIG set."""
    assert PLUGIN.exists(), f"{PLUGIN} is missing: make install (pip install -e .) installs it"
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECONFIG": str(cluster.kubeconfig_path),
    }

    def run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KUBECTL, "kubequant", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    return run


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}{proc.stdout}"
    return proc.stdout


def create(
    kubectl: Kubectl,
    name: str,
    spec: dict[str, Any],
    status: dict[str, Any] | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    """The object through kubectl, then its status through the status subresource."""
    if namespace != "default":
        kubectl("create", "namespace", namespace)
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name}, "spec": spec}
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=True)
    if status is not None:
        patch = json.dumps({"status": status})
        kubectl(
            "patch", "mopt", name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", patch, check=True,
        )  # fmt: skip
    obj: dict[str, Any] = json.loads(
        kubectl("get", "mopt", name, "-n", namespace, "-o", "json", check=True).stdout
    )
    return obj


def succeeded(result: dict[str, Any], job: str = "x-g1-0000") -> dict[str, Any]:
    return {"phase": "Succeeded", "observedGeneration": 1, "jobName": job, "result": result}


def test_results_table_and_json(kubectl: Kubectl, plugin: Plugin) -> None:
    obj = create(kubectl, "minilm-auto", AUTO_SPEC, succeeded(auto_result().to_api()))
    served = obj["status"]["result"]
    assert served["candidates"][1]["method"] == "quanto-int8"  # the schema kept it all
    text = ok(plugin("results", "minilm-auto"))
    assert "METHOD:        quanto-int8" in text
    assert "QUALITY GATE:  Passed" in text
    rows = {line.split("  ")[0]: line.split() for line in text.split("\n\n")[1].splitlines()}
    assert rows["size"][1:] == ["90.9", "MB", "23.9", "MB", "ratio", "3.80x"]
    assert rows["cosine similarity"][2:] == ["-", "0.998", "-"]
    assert json.loads(ok(plugin("results", "minilm-auto", "-o", "json"))) == served
    assert yaml.safe_load(ok(plugin("results", "minilm-auto", "-o", "yaml"))) == served


def test_candidates_table(kubectl: Kubectl, plugin: Plugin) -> None:
    create(kubectl, "cands", AUTO_SPEC, succeeded(auto_result().to_api()))
    header, *lines = ok(plugin("candidates", "cands")).splitlines()
    assert header.split()[:5] == ["METHOD", "PARAMS", "SIZE", "RATIO", "SPEEDUP"]
    assert [line.split()[0] for line in lines] == [
        "torchao-int8-weight", "quanto-int8", "onnx-int8", "bnb-nf4",
    ]  # fmt: skip
    assert lines[1].split()[-2:] == ["Passed", "*"]
    assert "*" not in lines[0] + lines[2]
    assert lines[2].split()[-1] == "Failed"
    assert "needs a CUDA GPU" in lines[3]
    served = json.loads(ok(plugin("candidates", "cands", "-o", "json")))
    assert served == auto_result().to_api()["candidates"]


def test_plot_writes_a_png(kubectl: Kubectl, plugin: Plugin, tmp_path: Path) -> None:
    create(kubectl, "plotted", AUTO_SPEC, succeeded(auto_result().to_api()))
    target = tmp_path / "plots" / "plotted.png"
    assert ok(plugin("plot", "plotted", "-o", str(target))).strip() == str(target)
    assert png_size(target) == (880, 550)
    assert target.stat().st_size > 10_000


def test_single_method_has_no_candidates(kubectl: Kubectl, plugin: Plugin) -> None:
    create(kubectl, "qwen-gptq", GPTQ_SPEC, succeeded(causal_result().to_api()))
    text = ok(plugin("results", "qwen-gptq"))
    assert "bits=4,groupSize=128" in text and "+4.25%" in text
    for command in (["candidates", "qwen-gptq"], ["plot", "qwen-gptq", "-o", "/tmp/x.png"]):
        proc = plugin(*command)
        assert proc.returncode == 1
        assert 'error: modeloptimization "qwen-gptq" has no candidates' in proc.stderr
        assert "method gptq" in proc.stderr


def test_missing_object_as_kubectl_says_it(kubectl: Kubectl, plugin: Plugin) -> None:
    for command in ("results", "candidates", "logs", "rerun"):
        proc = plugin(command, "nope")
        assert proc.returncode == 1, proc
        assert proc.stderr.strip() == (
            'Error from server (NotFound): modeloptimizations.kubequant.io "nope" not found'
        )
    # kubectl's own wording for the same object, for comparison.
    own = kubectl("get", "mopt", "nope")
    assert own.stderr.strip() == proc.stderr.strip()


def test_no_results_yet_names_the_phase(kubectl: Kubectl, plugin: Plugin) -> None:
    create(kubectl, "fresh", AUTO_SPEC)
    proc = plugin("results", "fresh")
    assert proc.returncode == 1
    assert 'modeloptimization "fresh" has no results yet (no phase yet' in proc.stderr
    running = {"phase": "Running", "observedGeneration": 1, "jobName": "fresh-g1-abcd"}
    create(kubectl, "busy", AUTO_SPEC, running)
    proc = plugin("candidates", "busy")
    assert proc.returncode == 1
    assert proc.stderr == 'error: modeloptimization "busy" has no results yet (phase: Running)\n'
    failed = {
        "phase": "Failed",
        "observedGeneration": 1,
        "failure": {"reason": "InvalidSpec", "message": "spec.model.uri: no such model"},
    }
    create(kubectl, "broken", AUTO_SPEC, failed)
    proc = plugin("results", "broken")
    assert "(phase: Failed, InvalidSpec: spec.model.uri: no such model)" in proc.stderr


def test_rerun_sets_the_annotation(kubectl: Kubectl, plugin: Plugin) -> None:
    create(kubectl, "again", AUTO_SPEC, succeeded(auto_result().to_api()))
    before = datetime.now(UTC)
    out = ok(plugin("rerun", "again"))
    after = datetime.now(UTC)
    obj = json.loads(kubectl("get", "mopt", "again", "-o", "json", check=True).stdout)
    value = obj["metadata"]["annotations"]["kubequant.io/rerun"]
    assert value.endswith("Z") and value in out
    when = datetime.fromisoformat(value)
    assert before - timedelta(seconds=1) <= when <= after
    assert obj["metadata"]["generation"] == 1  # metadata only: the spec is unchanged
    assert obj["status"]["result"] == auto_result().to_api()  # status untouched
    ok(plugin("rerun", "again"))
    obj = json.loads(kubectl("get", "mopt", "again", "-o", "json", check=True).stdout)
    assert obj["metadata"]["annotations"]["kubequant.io/rerun"] > value  # a new request


def test_history_newest_first(kubectl: Kubectl, plugin: Plugin) -> None:
    runs = [e.to_api() for e in history()]
    status = {
        "phase": "Failed",
        "observedGeneration": 2,
        "run": 1,
        "jobName": "minilm-auto-g2-1a2b",
        "lastSuccessful": last_successful().to_api(),
        "history": runs,
    }
    obj = create(kubectl, "historied", AUTO_SPEC, status)
    assert obj["status"]["history"] == runs  # the schema kept every field
    header, *lines = ok(plugin("history", "historied")).splitlines()
    assert header.split() == [
        "GEN", "RUN", "OUTCOME", "REASON", "METHOD", "RATIO", "QUALITY", "GATE", "STARTED",
        "DURATION", "JOB",
    ]  # fmt: skip
    assert [line.split()[:3] for line in lines] == [
        ["2", "1", "Failed"], ["1", "2", "Failed"], ["1", "1", "Succeeded"],
    ]  # fmt: skip
    assert lines[1].split()[4:8] == ["onnx-int8", "3.94x", "cosine=0.974", "Failed"]
    assert lines[2].split()[-3:] == ["2026-11-25T09:00:00Z", "3m5s", "minilm-auto-g1-5e6f"]
    assert json.loads(ok(plugin("history", "historied", "-o", "json"))) == runs
    assert yaml.safe_load(ok(plugin("history", "historied", "-o", "yaml"))) == runs
    # No finished run yet: the error names the phase, in every output format.
    create(kubectl, "unrun", AUTO_SPEC, {"phase": "Running", "observedGeneration": 1})
    for output in ("table", "json"):
        proc = plugin("history", "unrun", "-o", output)
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr == (
            'error: modeloptimization "unrun" has no finished runs yet (phase: Running)\n'
        )
    proc = plugin("history", "nope")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        'Error from server (NotFound): modeloptimizations.kubequant.io "nope" not found'
    )


def test_results_falls_back_to_the_last_successful_run(kubectl: Kubectl, plugin: Plugin) -> None:
    """A rerun cleared status.result: results shows status.lastSuccessful and says so."""
    summary = last_successful().to_api()
    status = {
        "phase": "Running",
        "observedGeneration": 1,
        "run": 2,
        "jobName": "minilm-auto-g1r2-3c4d",
        "lastSuccessful": summary,
    }
    create(kubectl, "rerunning", AUTO_SPEC, status)
    proc = plugin("results", "rerunning")
    text = ok(proc)
    note, block = text.split("\n\n", 1)
    assert note == (
        'modeloptimization "rerunning" has no results yet for its current run (generation 1, '
        "run 2; phase: Running): showing the last successful run's (generation 1, run 1); "
        "see: kubectl kubequant history rerunning"
    )
    head, *fields = block.splitlines()
    assert head == "LAST SUCCESSFUL RUN"
    values = {k: v.strip() for k, v in (line.split(":  ", 1) for line in fields)}
    assert values["METHOD"] == "quanto-int8" and values["RATIO"] == "3.80x"
    assert values["JOB"] == "minilm-auto-g1-5e6f" and values["RUN"] == "1"
    assert values["OUTPUT"] == "s3://models/minilm-auto"
    # -o json/yaml: status.lastSuccessful as served; the note goes to stderr.
    proc = plugin("results", "rerunning", "-o", "json")
    assert json.loads(ok(proc)) == summary
    assert proc.stderr.startswith('note: modeloptimization "rerunning" has no results yet')
    assert yaml.safe_load(ok(plugin("results", "rerunning", "-o", "yaml"))) == summary
    # candidates still needs the current run's result.
    proc = plugin("candidates", "rerunning")
    assert proc.returncode == 1 and "has no results yet (phase: Running)" in proc.stderr
    # Once the current run has a result, results shows it, not the last successful run.
    kubectl(
        "patch", "mopt", "rerunning", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"result": auto_result().to_api()}}), check=True,
    )  # fmt: skip
    proc = plugin("results", "rerunning")
    assert ok(proc).startswith("METHOD:        quanto-int8")
    assert "LAST SUCCESSFUL" not in proc.stdout and proc.stderr == ""


def test_logs_of_the_current_runs_newest_pod(
    cluster: LocalCluster, kubectl: Kubectl, plugin: Plugin
) -> None:
    """The operator's Job for the object (its builders), run by the Job controller: the first
    pod fails, the second succeeds; logs shows the second pod's log."""
    obj = create(kubectl, "logged", AUTO_SPEC)
    settings = operator_test_settings(cluster.kubeconfig_path)
    spec = parse_manifest(obj)
    job = build_job(obj, spec, settings)
    name = job["metadata"]["name"]
    cluster.jobs.outcomes[name] = [
        Outcome(exit_code=1, logs='{"msg": "attempt 1: connection reset"}\n'),
        Outcome(exit_code=0, logs='{"msg": "attempt 2: loading"}\n{"msg": "attempt 2: done"}\n'),
    ]
    proc = plugin("logs", "logged")  # no Job yet
    assert proc.returncode == 1
    assert proc.stderr == (
        'error: modeloptimization "logged" has no engine pod '
        "(no phase yet: the operator has not reported on it)\n"
    )
    kubectl("apply", "-f", "-", input=yaml.safe_dump(build_service_account(obj)), check=True)
    kubectl("apply", "-f", "-", input=yaml.safe_dump(job), check=True)
    kubectl("wait", f"job/{name}", "--for=condition=Complete", "--timeout=30s", check=True)
    kubectl(
        "patch", "mopt", "logged", "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"phase": "Running", "jobName": name}}), check=True,
    )  # fmt: skip
    pods = json.loads(kubectl("get", "pods", "-o", "json", check=True).stdout)["items"]
    assert len([p for p in pods if p["metadata"]["name"].startswith(name)]) == 2
    out = ok(plugin("logs", "logged"))
    assert out == '{"msg": "attempt 2: loading"}\n{"msg": "attempt 2: done"}\n'
    assert ok(plugin("logs", "logged", "--tail", "1")) == '{"msg": "attempt 2: done"}\n'
    # -f: the local control plane answers with the log so far and ends the stream.
    assert ok(plugin("logs", "logged", "-f")) == out


def test_namespace_and_context_flags(
    cluster: LocalCluster, kubectl: Kubectl, plugin: Plugin, tmp_path: Path
) -> None:
    create(kubectl, "elsewhere", AUTO_SPEC, succeeded(auto_result().to_api()), "team-a")
    assert plugin("results", "elsewhere").returncode == 1  # default namespace
    assert "quanto-int8" in ok(plugin("results", "elsewhere", "-n", "team-a"))
    assert "quanto-int8" in ok(plugin("-n", "team-a", "candidates", "elsewhere"))
    # A context whose namespace is team-a, in a second kubeconfig file.
    config = yaml.safe_load(cluster.kubeconfig_path.read_text())
    ctx = dict(config["contexts"][0])
    ctx["name"] = "team-a"
    ctx["context"] = {**ctx["context"], "namespace": "team-a"}
    config["contexts"].append(ctx)
    other = tmp_path / "kubeconfig"
    other.write_text(yaml.safe_dump(config))
    assert "quanto-int8" in ok(
        plugin("results", "elsewhere", "--kubeconfig", str(other), "--context", "team-a")
    )
    proc = plugin("results", "elsewhere", "--kubeconfig", str(other), "--context", "nope")
    assert proc.returncode == 1 and "no context 'nope'" in proc.stderr


def test_version_and_completion(plugin: Plugin) -> None:
    assert ok(plugin("--version")).startswith("kubectl-kubequant 0.1.0")
    script = ok(plugin("--print-completion", "bash"))
    assert "candidates" in script and "rerun" in script and "history" in script
    usage = ok(plugin("--help"))
    for command in ("results", "candidates", "history", "logs", "plot", "rerun"):
        assert command in usage
