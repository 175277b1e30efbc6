"""The engine Job's memory, GPU count and /dev/shm come from a dry run's estimate when the
spec gives none; a dry run's Job asks for no GPU and little memory."""

from __future__ import annotations

from typing import Any

from kubequant_api.models import parse_spec
from kubequant_operator import builders
from kubequant_operator.settings import Settings
from tests.fixtures.operator import make_object

S = Settings()
MODEL = "hf://meta-llama/Llama-3.1-70B"
GIB = 2**30


def _spec(**extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": MODEL, "task": "causal-lm"},
        "method": "gptq",
        "output": {"uri": "pvc://models/llama-gptq"},
    }
    spec.update(extra)
    return spec


def _plan(peak: int, uri: str = MODEL) -> dict[str, Any]:
    return {
        "result": {
            "generation": 1,
            "plan": {
                "source": {"uri": uri, "reachable": True},
                "candidates": [
                    {"method": "gptq", "estimatedPeakMemoryBytes": peak},
                    {"method": "awq", "estimatedPeakMemoryBytes": 2 * peak},
                ],
                "estimatedPeakMemoryBytes": 2 * peak,
            },
        }
    }


def _pod(obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    job = builders.build_job(obj, parse_spec(obj["spec"]), S)
    pod = job["spec"]["template"]["spec"]
    resources: dict[str, Any] = pod["containers"][0]["resources"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]
    return resources, shm


def test_a_large_estimate_asks_for_its_gpus_memory_and_shm() -> None:
    obj = make_object(spec=_spec(), status=_plan(150 * GIB))
    resources, shm = _pod(obj)
    assert resources["limits"]["nvidia.com/gpu"] == "3"  # 150 GiB at 72 GiB usable per GPU
    assert resources["requests"]["nvidia.com/gpu"] == "3"
    # 150 GiB x 1.25 headroom + 3 GiB of /dev/shm
    assert resources["limits"]["memory"] == "191Gi" == resources["requests"]["memory"]
    assert shm == {"medium": "Memory", "sizeLimit": "3Gi"}
    small = make_object(spec=_spec(), status=_plan(3 * GIB))
    resources, shm = _pod(small)
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["limits"]["memory"] == "5Gi"
    assert shm["sizeLimit"] == "1Gi"


def test_the_spec_wins_and_without_an_estimate_the_defaults_hold() -> None:
    given = make_object(spec=_spec(resources={"memory": "40Gi", "gpu": 2}), status=_plan(150 * GIB))
    resources, shm = _pod(given)
    assert resources["limits"]["memory"] == "40Gi"
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert shm["sizeLimit"] == "2Gi"
    for status in ({}, _plan(150 * GIB, uri="hf://someone/else")):
        resources, shm = _pod(make_object(spec=_spec(), status=status))
        assert resources["limits"]["memory"] == S.default_memory
        assert resources["limits"]["nvidia.com/gpu"] == "1"
        assert "sizeLimit" not in shm
    cpu_only = make_object(spec=_spec(method="torchao-int8-weight"), status=_plan(10 * GIB))
    resources, _ = _pod(cpu_only)
    assert "nvidia.com/gpu" not in resources["limits"]
    assert resources["limits"]["memory"] == "26Gi"  # no row for it: the plan's peak, 20 GiB


def test_a_dry_run_job_asks_for_no_gpu_and_little_memory() -> None:
    resources, shm = _pod(make_object(spec=_spec(dryRun=True), status=_plan(150 * GIB)))
    assert resources["limits"]["memory"] == builders.DRY_RUN_MEMORY == "1Gi"
    assert not any(k.endswith("/gpu") for k in resources["limits"])
    assert "sizeLimit" not in shm
    resources, _ = _pod(make_object(spec=_spec(dryRun=True, resources={"memory": "2Gi"})))
    assert resources["limits"]["memory"] == "2Gi"


def _disk_plan(uri: str = MODEL) -> dict[str, Any]:
    status = _plan(10 * GIB, uri)
    plan = status["result"]["plan"]
    plan["source"]["sizeBytes"] = 140 * GIB  # the weights the run downloads
    plan["candidates"][0]["estimatedDiskBytes"] = 180 * GIB  # gptq: artifact + offload folder
    plan["candidates"][1]["estimatedDiskBytes"] = 100 * GIB
    plan["disk"] = {"needsBytes": 340 * GIB, "sourceBytes": 140 * GIB}
    return status


def test_the_disk_estimate_is_requested_as_ephemeral_storage_and_never_limited() -> None:
    # hf:// with no cache claim: the download lands on the cache emptyDir, beside the work
    # directory's artifact and offload folder; x1.25 headroom
    resources, _ = _pod(make_object(spec=_spec(), status=_disk_plan()))
    assert resources["requests"]["ephemeral-storage"] == "400Gi"  # (180 + 140) x 1.25
    assert "ephemeral-storage" not in resources["limits"]
    # with a cache claim the download takes none of it
    cached = make_object(spec=_spec(cache={"pvcName": "hub-cache"}), status=_disk_plan())
    resources, _ = _pod(cached)
    assert resources["requests"]["ephemeral-storage"] == "225Gi"  # 180 x 1.25
    # a pvc:// model is read in place
    uri = "pvc://models/llama"
    local = make_object(spec=_spec(model={"uri": uri, "task": "causal-lm"}), status=_disk_plan(uri))
    assert _pod(local)[0]["requests"]["ephemeral-storage"] == "225Gi"
    # a method with no row of its own: the plan's search less its download, plus the download
    other = make_object(spec=_spec(method="torchao-int8-weight"), status=_disk_plan())
    assert _pod(other)[0]["requests"]["ephemeral-storage"] == "425Gi"  # (200 + 140) x 1.25


def test_no_disk_estimate_asks_for_no_ephemeral_storage() -> None:
    for obj in (
        make_object(spec=_spec(), status=_plan(10 * GIB)),  # a plan from before disk estimates
        make_object(spec=_spec()),  # no dry run
        make_object(spec=_spec(dryRun=True), status=_disk_plan()),  # a dry run writes nothing
        # Kueue admits no Job asking for a resource its ClusterQueue does not cover
        make_object(spec=_spec(queueName="team-a"), status=_disk_plan()),
    ):
        resources, _ = _pod(obj)
        assert "ephemeral-storage" not in resources["requests"]
        assert "ephemeral-storage" not in resources["limits"]
