"""The real kubectl and the real operator against the local cluster: what `kubectl get mopt`
tells about the current run, reruns by annotation, lastSuccessful and history, and the
status schema (`kubectl explain`, metav1.Condition through the status subresource)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from kubequant_api.constants import Stage
from kubequant_api.models import Condition, Progress
from kubequant_api.status import RERUN_ANNOTATION
from kubequant_localkube.jobs import Outcome
from tests.fixtures.cluster import make_kubectl
from tests.fixtures.operator import OperatorHarness, operator_harness, summary_for

pytestmark = pytest.mark.integration

NAME = "minilm"


def _columns(table: str, *, row: int = 1) -> dict[str, str]:
    """A kubectl table row as {HEADER: cell}, cut at the header's column starts."""
    lines = table.rstrip("\n").splitlines()
    header, line = lines[0], lines[row]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    cells: dict[str, str] = {}
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else None
        cells[header[start:end].strip()] = line[start:end].strip()
    return cells


def _job_names(jobs: list[dict[str, Any]]) -> list[str]:
    return sorted(j["metadata"]["name"] for j in jobs)


async def test_columns_rerun_last_successful_and_history(tmp_path: Path) -> None:
    async with operator_harness(tmp_path, history_limit=2) as harness:
        await _scenario(harness)


async def _scenario(harness: OperatorHarness) -> None:
    kubectl = make_kubectl(harness.cluster)

    async def run(*args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = await asyncio.to_thread(kubectl, *args, input=stdin, check=check)
        return str(proc.stdout + proc.stderr)

    outcomes = harness.cluster.outcomes
    outcomes[f"{NAME}-g1-*"] = Outcome(duration=0.2, message=summary_for(1, compressionRatio=3.2))
    # generation 2 runs long enough to be seen running
    outcomes[f"{NAME}-g2-*"] = Outcome(
        duration=4.0, message=summary_for(2, compressionRatio=3.9, qualityGate="Passed")
    )
    outcomes[f"{NAME}-g2r2-*"] = Outcome(exit_code=3, message="quality gate failed")
    outcomes[f"{NAME}-g2r3-*"] = Outcome(duration=0.2, message=summary_for(2, compressionRatio=4.1))
    spec = {
        "apiVersion": "kubequant.io/v1alpha1",
        "kind": "ModelOptimization",
        "metadata": {"name": NAME, "namespace": "default"},
        "spec": {
            "model": {"uri": "pvc://models/all-MiniLM-L6-v2", "task": "feature-extraction"},
            "method": "torchao-int8-weight",
            "output": {"uri": "pvc://models/minilm-int8"},
            "evaluation": {"qualityGate": {"minCosineSimilarity": 0.99}},
        },
    }
    await run("apply", "-f", "-", stdin=json.dumps(spec))
    await harness.wait_condition(NAME, "Ready", status="True", reason="Succeeded")
    table = await run("get", "mopt", NAME)
    first = _columns(table)
    assert list(first) == [
        "NAME",
        "PHASE",
        "METHOD",
        "MODEL",
        "PROGRESS",
        "RATIO",
        "QUALITY",
        "READY",
        "AGE",
    ]
    assert first["RATIO"] == "3.2" and first["QUALITY"] == "Passed"
    wide = _columns(await run("get", "mopt", NAME, "-o", "wide"))
    assert wide["REASON"] == "Succeeded" and wide["RUN"] == "1"
    assert wide["LAST-RATIO"] == "3.2"

    # A new generation: while it runs, Ratio and Quality are empty (kubectl prints a
    # missing cell as blank: its own figures, none yet);
    # lastSuccessful keeps the previous run's figures.
    spec["spec"]["method"] = "quanto-int8"
    await run("apply", "-f", "-", stdin=json.dumps(spec))
    await harness.wait_for(
        NAME,
        lambda o: o["status"].get("observedGeneration") == 2 and o["status"]["phase"] == "Running",
        what="generation 2 running",
    )
    # the engine's progress write (the same model the engine's reporter writes)
    progress = Progress(stage=Stage.QUANTIZING, percent=40, generation=2).to_api()
    await run(
        "patch", "mopt", NAME, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"progress": progress}}),
    )  # fmt: skip
    running = _columns(await run("get", "mopt", NAME, "-o", "wide"))
    assert running["PHASE"] == "Running"
    assert running["PROGRESS"] == "Quantizing 40%"
    assert running["RATIO"] == "" and running["QUALITY"] == ""
    assert running["REASON"] == "Running"
    assert running["LAST-RATIO"] == "3.2"
    last = json.loads(await run("get", "mopt", NAME, "-o", "jsonpath={.status.lastSuccessful}"))
    assert last["generation"] == 1 and last["run"] == 1 and last["compressionRatio"] == 3.2
    assert last["outputUri"] == "pvc://models/minilm-int8"

    # A rerun asked while the run is active is queued, then starts once the run ends.
    await run("annotate", "mopt", NAME, f"{RERUN_ANNOTATION}=2026-11-25T11:00:00Z")
    await harness.wait_event(NAME, "Normal", "RerunQueued")
    assert len(await harness.jobs(NAME)) == 2  # queued: no Job yet
    obj = await harness.wait_for(
        NAME,
        lambda o: o["status"].get("run") == 2 and o["status"]["phase"] == "Failed",
        timeout=40,
        what="run 2 failed",
    )
    await harness.wait_event(NAME, "Normal", "RerunStarted")
    status = obj["status"]
    assert status["rerun"] == {"requested": "2026-11-25T11:00:00Z", "run": 2}
    assert "result" not in status  # run 2 wrote none; run 1's went when run 2 started
    assert status["lastSuccessful"]["generation"] == 2
    assert status["lastSuccessful"]["run"] == 1
    assert status["lastSuccessful"]["compressionRatio"] == 3.9
    failed = _columns(await run("get", "mopt", NAME, "-o", "wide"))
    assert failed["RATIO"] == "" and failed["REASON"] == "QualityGateFailed"
    assert failed["LAST-RATIO"] == "3.9" and failed["RUN"] == "2"

    # A rerun after the run ended starts a new Job of the same generation, once.
    await run("annotate", "--overwrite", "mopt", NAME, f"{RERUN_ANNOTATION}=again")
    obj = await harness.wait_for(
        NAME,
        lambda o: o["status"].get("run") == 3 and o["status"]["phase"] == "Succeeded",
        timeout=30,
        what="run 3 succeeded",
    )
    await asyncio.sleep(2.5)  # a resync and more watch events: nothing starts again
    names = _job_names(await harness.jobs(NAME))
    assert len(names) == 4, names
    assert [n.rsplit("-", 1)[0] for n in names] == [
        f"{NAME}-g1",
        f"{NAME}-g2",
        f"{NAME}-g2r2",
        f"{NAME}-g2r3",
    ]
    obj = await harness.get(NAME)
    assert obj is not None
    status = obj["status"]
    assert status["run"] == 3 and status["observedGeneration"] == 2
    assert status["result"]["compressionRatio"] == 4.1
    assert status["lastSuccessful"]["run"] == 3
    assert status["jobName"] == next(n for n in names if "-g2r3-" in n)
    # history: newest first, capped at KUBEQUANT_HISTORY_LIMIT=2
    history = status["history"]
    assert [(h["generation"], h["run"]) for h in history] == [(2, 3), (2, 2)]
    assert history[0]["outcome"] == "Succeeded" and history[0]["compressionRatio"] == 4.1
    assert history[0]["qualityMetric"] == "cosineSimilarity"
    assert history[0]["jobName"] == status["jobName"]
    assert history[1]["outcome"] == "Failed" and history[1]["reason"] == "QualityGateFailed"
    assert history[1]["startTime"] and history[1]["completionTime"]

    # conditions as metav1.Condition, through the status subresource
    for cond in status["conditions"]:
        Condition.model_validate(cond)
    bad = {"type": "Ready", "status": "Yes", "reason": "not camel case"}
    out = await run(
        "patch", "mopt", NAME, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"conditions": [bad]}}), check=False,
    )  # fmt: skip
    assert "is invalid" in out
    assert 'status.conditions[0].status: Unsupported value: "Yes"' in out
    assert "status.conditions[0].reason in body should match" in out
    assert "status.conditions[0].lastTransitionTime: Required value" in out

    # kubectl explain documents the status (the CRD's published OpenAPI schema)
    explained = await run("explain", "modeloptimization.status.result")
    assert "originalSizeBytes / optimizedSizeBytes." in explained
    assert "Cleared when a new run starts." in explained
    recursive = await run("explain", "mopt.status", "--recursive")
    for field in ("lastSuccessful", "history", "rerun", "summary", "qualityValue"):
        assert field in recursive
    history_doc = await run("explain", "mopt.status.history.qualityValue")
    assert "That metric's value." in history_doc
