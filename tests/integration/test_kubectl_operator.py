"""The real kubectl against the local cluster with the real operator: the quickstart flow."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import yaml

from kubequant_localkube.jobs import Outcome
from tests.fixtures.cluster import make_kubectl
from tests.fixtures.operator import OperatorHarness, summary_for

pytestmark = pytest.mark.integration

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


async def test_quickstart_with_kubectl(harness: OperatorHarness) -> None:
    kubectl = make_kubectl(harness.cluster)

    async def run(*args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = await asyncio.to_thread(kubectl, *args, input=stdin, check=check)
        return str(proc.stdout + proc.stderr)

    await harness.create_pvc("kubequant-models")
    harness.cluster.outcomes["minilm-int8-g1-*"] = Outcome(
        duration=0.5,
        message=summary_for(
            1, compressionRatio=3.61, outputUri="pvc://kubequant-models/minilm-int8"
        ),
    )
    out = await run("apply", "-f", str(QUICKSTART))
    assert "modeloptimization.kubequant.io/minilm-int8 created" in out
    await run("wait", "--for=condition=Ready", "modeloptimization/minilm-int8", "--timeout=60s")
    ratio = await run(
        "get", "mopt", "minilm-int8", "-o", "jsonpath={.status.result.compressionRatio}"
    )
    assert ratio.strip() == "3.61"
    table = await run("get", "modeloptimizations")
    header, row = table.strip().splitlines()[:2]
    assert header.split()[:4] == ["NAME", "PHASE", "METHOD", "MODEL"]
    assert row.split()[:3] == ["minilm-int8", "Succeeded", "auto"]
    job_name = (await run("get", "mopt", "minilm-int8", "-o", "jsonpath={.status.jobName}")).strip()
    job = json.loads(await run("get", "job", job_name, "-o", "json"))
    assert job["metadata"]["ownerReferences"][0]["name"] == "minilm-int8"

    # a spec the CRD rejects: kubectl shows the rule's message
    bad = yaml.safe_load(QUICKSTART.read_text())
    bad["metadata"]["name"] = "minilm-bad"
    assert bad["spec"]["candidates"][1]["method"] == "torchao-int8-weight"
    bad["spec"]["candidates"][1]["params"] = {"bits": 4}
    out = await run("apply", "-f", "-", stdin=yaml.safe_dump(bad), check=False)
    assert "params: method torchao-int8-weight accepts only: none" in out

    out = await run("delete", "-f", str(QUICKSTART), "--wait=true", "--timeout=30s")
    assert "deleted" in out
    for _ in range(50):
        if not await harness.jobs("minilm-int8"):
            break
        await asyncio.sleep(0.1)
    assert await harness.jobs("minilm-int8") == []
