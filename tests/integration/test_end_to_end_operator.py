"""End to end: the real operator, the real engine as the Job's pod, the real MiniLM model.

The Job controller runs the pod's command (``python -m optimizer_job run-in-cluster``) as a
local process; ``pvc://kubequant-models/...`` maps to a local directory holding the model.
One run only (it is the expensive test).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubequant_operator.builders import PVC_MOUNT_ROOT
from tests.fixtures.operator import OperatorHarness, condition, operator_harness

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


def _map_pvc_mount_root(h: OperatorHarness) -> None:
    """Point the pod's KUBEQUANT_PVC_MOUNT_ROOT at the local PVC root.

    The Job controller maps each mount (``/mnt/kubequant/pvc/<claim>``) to a local directory
    but leaves their parent, the mount root the engine resolves ``pvc://`` URIs against,
    unmapped. Until it maps it, the test does (and stops doing so once it is mapped).
    """
    jobs = h.cluster.jobs
    original = jobs._env
    local_root = str(h.cluster.state_dir / "pvc")

    def env(*args: Any, **kwargs: Any) -> dict[str, str]:
        out: dict[str, str] = original(*args, **kwargs)
        if out.get("KUBEQUANT_PVC_MOUNT_ROOT") == PVC_MOUNT_ROOT:
            out["KUBEQUANT_PVC_MOUNT_ROOT"] = local_root
        return out

    jobs._env = env  # type: ignore[method-assign]


async def test_quickstart_end_to_end_with_the_real_engine(
    tmp_path: Path, minilm_path: Path
) -> None:
    async with operator_harness(tmp_path, run_pods=True) as h:
        _map_pvc_mount_root(h)
        await h.create_pvc("kubequant-models")
        models = h.cluster.jobs.pvc_dir("kubequant-models")
        shutil.copytree(minilm_path, models / "all-MiniLM-L6-v2")
        obj = yaml.safe_load(QUICKSTART.read_text())
        obj["spec"]["evaluation"]["samples"] = 16  # keep the one real run short
        await h.create(obj)
        # method auto: three candidates, each quantized, written, reloaded and measured
        done = await h.wait_condition("minilm-int8", "Ready", status="True", timeout=600)

        status = done["status"]
        result = status["result"]
        assert status["phase"] == "Succeeded"
        assert condition(done, "Ready")["reason"] == "Succeeded"
        assert result["generation"] == 1
        # the smallest artifact that passes the gate: ONNX int8 (4x smaller than fp32)
        assert result["method"] == "onnx-int8"
        assert [c["method"] for c in result["candidates"]] == [
            "onnx-int8",
            "torchao-int8-weight",
            "quanto-int8",
        ]
        assert result["qualityGate"] == "Passed"
        assert result["compressionRatio"] > 3.5
        assert result["cosineSimilarity"] >= 0.99
        assert result["outputUri"] == "pvc://kubequant-models/minilm-int8"
        assert (status.get("progress") or {}).get("stage") == "Done"
        out = models / "minilm-int8"
        on_disk = json.loads((out / "results.json").read_text())
        assert json.dumps(on_disk)  # the engine wrote its full results beside the artifact
        assert len(await h.jobs("minilm-int8")) == 1
        text = h.scrape_metrics()
        assert 'kubequant_optimization_cosine_similarity{method="onnx-int8"' in text
        assert 'kubequant_runs_total{result="succeeded"} 1.0' in text
