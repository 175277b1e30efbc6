"""Operator benchmark: N objects created at once -> how fast do their Jobs appear?

For N in (200, 1000), on a fresh local cluster each time (API emulator, Job controller off so
that only the operator's work is measured):

- operator: the real operator (``kubequant-operator``'s ``main``) in its own process;
- floor: a minimal controller in its own process that watches the objects and makes the
  same API calls per object as the operator does (get object, get the Job, check the PVC,
  create SA, Role, RoleBinding and Job, patch status, post an event, kopf's
  annotation patch, the reads of the reconcile the new Job triggers) with the same number
  of client threads, and nothing else: what these API calls cost on this emulator.

Reported for each: creation-to-Job latency p50/p99 (both timestamps taken by the emulator
itself), objects per second until all Jobs exist, and the process's peak RSS (VmHWM).
Goals: p50 <= 100 ms, p99 <= 1 s, RSS <= 150 MiB at 1,000 objects.

``python -m tests.performance.bench_operator [--sizes 200,1000]``; writes
``bench-results/operator.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kubequant_api.constants import API_VERSION, GROUP, KIND, PLURAL, VERSION
from kubequant_api.models import parse_spec
from kubequant_operator import builders
from kubequant_operator.kube import Kube
from kubequant_operator.settings import Settings

if TYPE_CHECKING:
    from kubequant_localkube.cluster import LocalCluster
    from kubequant_localkube.store import WatchEvent

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "modeloptimization.yaml"
RESULTS = REPO / "bench-results" / "operator.json"
NAMESPACE = "default"
API_WORKERS = 16
CREATORS = 16
GOALS = {"p50_ms": 100.0, "p99_ms": 1000.0, "rss_mib_at_1000": 150.0}
SPEC: dict[str, Any] = {
    "model": {"uri": "pvc://models/all-MiniLM-L6-v2", "task": "feature-extraction"},
    "method": "torchao-int8-weight",
    "output": {"uri": "pvc://models/out"},
    "resources": {"gpu": 0},
}


# --------------------------------------------------------------------------- measuring


class Stopwatch:
    """Emulator-side timestamps: when each object and each of its Jobs was stored."""

    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.job_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.all_jobs = threading.Event()
        self.expected = 0

    def __call__(self, event: WatchEvent) -> None:
        if event.type != "ADDED":
            return
        now = time.perf_counter()
        meta = event.obj.get("metadata") or {}
        with self.lock:
            if event.key == (GROUP, PLURAL):
                self.created[str(meta.get("name"))] = now
            elif event.key == ("batch", "jobs"):
                owner = builders.owner_of_child(event.obj)
                if owner is not None and owner not in self.job_at:
                    self.job_at[owner] = now
                    if len(self.job_at) >= self.expected:
                        self.all_jobs.set()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _peak_rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------- the floor


async def _floor_one(kube: Kube, s: Settings, obj_name: str) -> None:
    obj = await kube.get_object(NAMESPACE, obj_name)
    assert obj is not None
    await kube.get("batch/v1", "Job", NAMESPACE, builders.names_for(obj))
    await kube.exists("v1", "PersistentVolumeClaim", NAMESPACE, "models")
    spec = parse_spec(obj["spec"])
    for manifest in builders.build_children(obj, spec, s):
        await kube.create(manifest)
    await kube.patch_status(
        NAMESPACE,
        obj_name,
        {"phase": "Pending", "observedGeneration": 1, "jobName": builders.names_for(obj)},
        obj["metadata"].get("resourceVersion"),
    )
    await kube.post_event(obj, "Normal", "JobCreated", "created")
    # what kopf writes once per new object (its last-handled-spec annotation) ...
    await kube.request(
        "PATCH",
        f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}/{obj_name}",
        {"metadata": {"annotations": {"kubequant.io/last-handled-spec": json.dumps(obj["spec"])}}},
        content_type="application/merge-patch+json",
    )
    # ... and the second reconcile the Job's ADDED event triggers (reads only)
    await kube.get_object(NAMESPACE, obj_name)
    await kube.get("batch/v1", "Job", NAMESPACE, builders.names_for(obj))


def floor_worker(kubeconfig: str) -> int:
    """A minimal controller: watch the objects, make the operator's calls for each one."""
    s = Settings(kubeconfig=kubeconfig, api_connections=API_WORKERS)

    async def run() -> None:
        kube = Kube(s)
        queue: asyncio.Queue[str] = asyncio.Queue()

        async def watch() -> None:
            path = f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}"
            async for ev in kube.stream(path, [("watch", "true")]):
                if ev.get("type") == "ADDED":
                    queue.put_nowait(ev["object"]["metadata"]["name"])

        async def worker() -> None:
            while True:
                name = await queue.get()
                try:
                    await _floor_one(kube, s, name)
                except Exception as exc:
                    print(f"floor: {name}: {exc}", file=sys.stderr)

        await asyncio.gather(watch(), *(worker() for _ in range(API_WORKERS)))

    print("ready", flush=True)
    asyncio.run(run())
    return 0


# --------------------------------------------------------------------------- one run


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


BLOCK_KUBERNETES = "import sys; sys.modules['kubernetes'] = None; "


def _start_process(
    kind: str, cluster: LocalCluster, with_kubernetes: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ)
    env.update(
        {
            "KUBECONFIG": str(cluster.kubeconfig_path),
            "KUBEQUANT_METRICS_PORT": "0",
            "KUBEQUANT_BIND_ADDRESS": "127.0.0.1",
            "KUBEQUANT_LOG_LEVEL": "WARNING",
            "KUBEQUANT_RECONCILE_INTERVAL_SECONDS": "3600",
            "KUBEQUANT_API_CONNECTIONS": str(API_WORKERS),
        }
    )
    health = free_port()
    env["KUBEQUANT_HEALTH_PORT"] = str(health)
    code = (
        # The operator needs no kubernetes client; kopf imports it when it is installed
        # (as in this dev venv), adding ~60 MiB. Run it as in an image without it.
        BLOCK_KUBERNETES * (not with_kubernetes)
        + "from kubequant_operator.main import main; raise SystemExit(main([]))"
        if kind == "operator"
        else "from tests.performance.bench_operator import floor_worker; import sys; "
        f"raise SystemExit(floor_worker({str(cluster.kubeconfig_path)!r}))"
    )
    log = (cluster.state_dir / f"{kind}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stderr=log)
    return proc, health


def _wait_ready(kind: str, proc: subprocess.Popen[bytes], health: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited with {proc.returncode}")
        if kind == "operator":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1):
                    time.sleep(1.0)  # watches open
                    return
            except OSError:
                pass
        else:
            time.sleep(2.0)  # imports + watch open
            return
        time.sleep(0.2)
    raise RuntimeError(f"{kind} did not become ready")


async def _create_all(kube: Kube, n: int) -> None:
    sem = asyncio.Semaphore(CREATORS)

    async def one(i: int) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": f"bench-{i:05d}", "namespace": NAMESPACE},
            "spec": SPEC,
        }
        async with sem:
            await kube.request(
                "POST", f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/{PLURAL}", body
            )

    await asyncio.gather(*(one(i) for i in range(n)))


def run_once(kind: str, n: int, timeout: float) -> dict[str, Any]:
    from kubequant_localkube.cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="kubequant-bench-") as tmp:
        cluster = LocalCluster(state_dir=Path(tmp), job_controller=False)
        cluster.start()
        watch = Stopwatch()
        watch.expected = n
        proc: subprocess.Popen[bytes] | None = None
        try:
            s = Settings(kubeconfig=str(cluster.kubeconfig_path), api_connections=CREATORS)

            async def setup() -> None:
                kube = Kube(s)
                await kube.request(
                    "POST",
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                    yaml.safe_load(CRD_FILE.read_text()),
                )
                await kube.request(
                    "POST",
                    f"/api/v1/namespaces/{NAMESPACE}/persistentvolumeclaims",
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": {"name": "models", "namespace": NAMESPACE},
                        "spec": {"accessModes": ["ReadWriteOnce"]},
                    },
                )
                await kube.close()

            asyncio.run(setup())
            proc, health = _start_process(kind, cluster)
            _wait_ready(kind, proc, health)
            cluster.store.add_listener(watch)

            async def create() -> None:
                kube = Kube(s)
                await _create_all(kube, n)
                await kube.close()

            started = time.perf_counter()
            asyncio.run(create())
            done = watch.all_jobs.wait(timeout)
            ended = time.perf_counter()
            rss = _peak_rss(proc.pid)
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            cluster.stop()
        with watch.lock:
            lat = [watch.job_at[k] - watch.created[k] for k in watch.job_at if k in watch.created]
            last_job = max(watch.job_at.values()) if watch.job_at else ended
            jobs = len(watch.job_at)
        span = (last_job if done else ended) - started
        return {
            "kind": kind,
            "objects": n,
            "jobs": jobs,
            "complete": bool(done),
            "p50_ms": round(_percentile(lat, 0.50) * 1000, 1),
            "p99_ms": round(_percentile(lat, 0.99) * 1000, 1),
            "max_ms": round(max(lat) * 1000, 1) if lat else None,
            "objects_per_second": round(jobs / span, 1) if span > 0 else None,
            "seconds": round(span, 2),
            "peak_rss_mib": round(rss / 2**20, 1),
        }


def idle_rss() -> dict[str, float]:
    """Peak RSS of an idle operator (no objects), with and without the kubernetes client."""
    from kubequant_localkube.cluster import LocalCluster

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kubequant-bench-") as tmp:
        cluster = LocalCluster(state_dir=Path(tmp), job_controller=False)
        cluster.start()
        try:
            for with_k8s in (False, True):
                proc, health = _start_process("operator", cluster, with_kubernetes=with_k8s)
                try:
                    _wait_ready("operator", proc, health)
                    key = "with_kubernetes_client" if with_k8s else "without_kubernetes_client"
                    out[key] = round(_peak_rss(proc.pid) / 2**20, 1)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(60)
        finally:
            cluster.stop()
    return out


# --------------------------------------------------------------------------- entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_operator", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200,1000", help="comma list of object counts")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(list(argv) if argv is not None else None)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    idle = idle_rss()
    print(f"idle operator peak RSS (MiB): {idle}", flush=True)
    rows: list[dict[str, Any]] = []
    for n in sizes:
        for kind in ("operator", "floor"):
            row = run_once(kind, n, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    header = (
        f"{'objects':>7} {'who':>8} {'jobs':>5} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'obj/s':>7} {'RSS MiB':>8}"
    )
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['objects']:>7} {r['kind']:>8} {r['jobs']:>5} {r['p50_ms']:>8} "
            f"{r['p99_ms']:>8} {r['objects_per_second']!s:>7} {r['peak_rss_mib']:>8}"
        )
    big = [r for r in rows if r["kind"] == "operator" and r["objects"] == max(sizes)]
    verdict = {}
    if big:
        b = big[0]
        verdict = {
            "p50_ok": b["p50_ms"] <= GOALS["p50_ms"],
            "p99_ok": b["p99_ms"] <= GOALS["p99_ms"],
            "rss_ok": b["peak_rss_mib"] <= GOALS["rss_mib_at_1000"],
        }
        print(f"\ngoals at {b['objects']} objects: {GOALS} -> {verdict}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "operator",
                "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                "setup": {
                    "api_connections": API_WORKERS,
                    "creators": CREATORS,
                    "job_controller": False,
                    "operator_process": "kubernetes client not importable (as the operator "
                    "image needs it not); see idle_operator_peak_rss_mib for both",
                    "clock": "emulator-side timestamps (object stored -> Job stored)",
                },
                "goals": GOALS,
                "idle_operator_peak_rss_mib": idle,
                "verdict": verdict,
                "runs": rows,
            },
            indent=2,
        )
    )
    print(f"results: {out}")
    return 0 if all(r["complete"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
