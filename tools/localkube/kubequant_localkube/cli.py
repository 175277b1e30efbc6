"""``kubequant-localkube serve``: the local control plane for kubectl, kopf and the demo."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from importlib import metadata
from pathlib import Path

import shtab

from kubequant_api.logs import setup_logging
from kubequant_localkube.cluster import LocalCluster

ENV_HOST = "KUBEQUANT_LOCALKUBE_HOST"
ENV_PORT = "KUBEQUANT_LOCALKUBE_PORT"
ENV_STATE_DIR = "KUBEQUANT_LOCALKUBE_STATE_DIR"
ENV_KUBECONFIG_OUT = "KUBEQUANT_LOCALKUBE_KUBECONFIG"
ENV_RUN_PODS = "KUBEQUANT_LOCALKUBE_RUN_PODS"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubequant-localkube",
        description="A local Kubernetes API emulator and Job controller (no cluster needed).",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {metadata.version('kubequant-localkube')}"
    )
    shtab.add_argument_to(parser, ["--print-completion"], help="print a shell completion script")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the API on 127.0.0.1 until Ctrl-C")
    serve.add_argument(
        "--host",
        default=os.environ.get(ENV_HOST, "127.0.0.1"),
        help=f"address to listen on (env {ENV_HOST}; default 127.0.0.1)",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get(ENV_PORT, "0")),
        help=f"TCP port (0: a free one; env {ENV_PORT})",
    )
    serve.add_argument(
        "--kubeconfig",
        default=os.environ.get(ENV_KUBECONFIG_OUT),
        help=(
            "where to write the kubeconfig "
            f"(default <state-dir>/kubeconfig; env {ENV_KUBECONFIG_OUT})"
        ),
    )
    serve.add_argument(
        "--state-dir",
        default=os.environ.get(ENV_STATE_DIR),
        help=f"directory for PVCs, pod dirs and logs (default: a temp dir; env {ENV_STATE_DIR})",
    )
    serve.add_argument(
        "--run-pods",
        action="store_true",
        default=os.environ.get(ENV_RUN_PODS, "").lower() in ("1", "true", "yes"),
        help=f"run Job pods as local processes (env {ENV_RUN_PODS}=1); default: pods succeed",
    )
    serve.add_argument("--log-level", default=os.environ.get("KUBEQUANT_LOG_LEVEL", "INFO"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging("localkube", args.log_level)
    state_dir = Path(args.state_dir) if args.state_dir else None
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(
        host=args.host,
        port=args.port,
        kubeconfig_path=args.kubeconfig,
        state_dir=state_dir,
        run_pods=args.run_pods,
    )
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with cluster:
        kc = cluster.kubeconfig_path
        print(
            f"kubequant-localkube: API server at {cluster.url}\n"
            f"  kubeconfig: {kc}\n"
            f"  state dir:  {cluster.state_dir}\n"
            f"  pods:       {'run as local processes' if args.run_pods else 'scripted (succeed)'}\n"
            f"Use it:\n"
            f"  export KUBECONFIG={kc}\n"
            f"  kubectl apply -f crds/modeloptimization.yaml\n"
            f"  kubectl get mopt\n"
            f"Ctrl-C stops it (state is in memory and goes with it).",
            flush=True,
        )
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
