"""The engine's Pushgateway groups do not pile up: the operator deletes the group of a run
it has harvested (after the retention, so Prometheus scraped it) and of a deleted object.

Against the real Pushgateway binary, the engine's real MetricsReporter pushing, and the
operator's janitor reading objects over HTTP from the local API emulator.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from kubequant_api.constants import ExitCode
from kubequant_api.models import Result
from kubequant_localkube.outcomes import Outcome
from kubequant_operator.metrics import Metrics
from kubequant_operator.pushgateway import (
    ENGINE_PUSH_JOB,
    PushgatewayJanitor,
    group_path,
    split_credentials,
)
from optimizer_job.report import MetricsReporter, RunContext
from optimizer_job.report.metrics import PUSH_JOB
from tests.fixtures.observability import Pushgateway, metric_values
from tests.fixtures.operator import make_object, operator_harness, summary_for


def engine_push(pgw: Pushgateway, namespace: str, name: str, method: str = "auto") -> None:
    """What the engine does at the end of a run: one push of its registry."""
    r = MetricsReporter(
        RunContext(name=name, namespace=namespace, method=method), pushgateway_url=pgw.url
    )
    r.result(Result(method="torchao-int8-weight", compression_ratio=2.0))
    r.finish(ExitCode.SUCCESS, {})
    r.close()


def groups(pgw: Pushgateway) -> set[tuple[str, str]]:
    text = pgw.metrics_text()
    found = set()
    for line in text.splitlines():
        if line.startswith("push_time_seconds{") and f'job="{PUSH_JOB}"' in line:
            labels = dict(
                part.split("=", 1)
                for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            found.add((labels["namespace"].strip('"'), labels["name"].strip('"')))
    return found


def test_the_job_names_agree() -> None:
    assert ENGINE_PUSH_JOB == PUSH_JOB
    assert group_path("team-a", "x") == f"/metrics/job/{PUSH_JOB}/namespace/team-a/name/x"
    assert group_path("", "a/b") == f"/metrics/job/{PUSH_JOB}/namespace@base64/=/name@base64/YS9i"
    bare, auth = split_credentials("http://engine:s3cret@pgw.monitoring:9091/")
    assert bare == "http://pgw.monitoring:9091" and auth is not None
    assert (auth.login, auth.password) == ("engine", "s3cret")


async def test_sweep_deletes_harvested_and_orphaned_groups_only(
    pushgateway: Pushgateway, tmp_path: Path
) -> None:
    async with operator_harness(
        tmp_path,
        start=False,
        namespaces=("default",),
        engine_pushgateway_url=pushgateway.url,
        engine_pushgateway_retention_seconds=300,
    ) as h:
        for name in ("done", "running", "failed-old-gen"):
            await h.create(make_object(name))
        await h.kube.patch_status(
            "default", "done", {"phase": "Succeeded", "observedGeneration": 1}, None
        )
        await h.kube.patch_status(
            "default", "running", {"phase": "Running", "observedGeneration": 1}, None
        )
        # Failed for generation 1, but the spec changed since: a new run is coming.
        await h.kube.patch_status(
            "default", "failed-old-gen", {"phase": "Failed", "observedGeneration": 1}, None
        )
        await h.patch_spec("failed-old-gen", {"suspend": True})
        for name in ("done", "running", "failed-old-gen", "gone"):
            engine_push(pushgateway, "default", name)
        engine_push(pushgateway, "elsewhere", "not-watched")
        ours = {("default", n) for n in ("done", "running", "failed-old-gen", "gone")}
        assert ours | {("elsewhere", "not-watched")} <= groups(pushgateway)

        metrics = Metrics()
        now = time.time()
        janitor = PushgatewayJanitor(h.settings, h.kube, metrics, clock=lambda: now)
        # Within the retention: only the deleted object's group goes.
        assert await janitor.sweep() == [("default", "gone", "deleted")]
        assert ("default", "gone") not in groups(pushgateway)
        assert ("default", "done") in groups(pushgateway)
        # After the retention: the harvested run's group goes too; a run under way, a
        # generation not yet run and another namespace's group stay.
        janitor.clock = lambda: now + 301
        assert await janitor.sweep() == [("default", "done", "harvested")]
        left = groups(pushgateway)
        assert {("default", "running"), ("default", "failed-old-gen")} <= left
        assert ("elsewhere", "not-watched") in left
        assert ("default", "done") not in left
        assert await janitor.sweep() == []
        for name in ("running", "failed-old-gen"):
            pushgateway.delete_group(PUSH_JOB, namespace="default", name=name)
        pushgateway.delete_group(PUSH_JOB, namespace="elsewhere", name="not-watched")


async def test_the_running_operator_deletes_the_group_once_it_harvested_the_run(
    pushgateway: Pushgateway, tmp_path: Path
) -> None:
    async with operator_harness(
        tmp_path,
        reconcile_interval_seconds=0.5,
        engine_pushgateway_url=pushgateway.url,
        engine_pushgateway_retention_seconds=0,
    ) as h:
        h.cluster.outcomes["harvested-g1-*"] = Outcome(duration=3.0, message=summary_for(1))
        await h.create(make_object("harvested"))
        await h.wait_for(
            "harvested", lambda o: (o.get("status") or {}).get("phase") == "Running", what="Running"
        )
        engine_push(pushgateway, "default", "harvested")
        await asyncio.sleep(1.5)  # sweeps ran: the run is not done, its group stays
        assert ("default", "harvested") in groups(pushgateway)
        await h.wait_condition("harvested", "Ready", status="True", reason="Succeeded")
        for _ in range(100):
            if ("default", "harvested") not in groups(pushgateway):
                break
            await asyncio.sleep(0.1)
        assert ("default", "harvested") not in groups(pushgateway)
        text = h.scrape_metrics()
        assert metric_values(
            text, "kubequant_pushgateway_group_deletes_total", cause="harvested"
        ) == [1.0]
        assert metric_values(text, "kubequant_pushgateway_errors_total") == [0.0]
