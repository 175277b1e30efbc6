"""``kubectl kubequant``: read and drive ModelOptimization objects like kubectl.

Installed as ``kubectl-kubequant`` (kubectl runs any ``kubectl-<name>`` on PATH as
``kubectl <name>``)::

    kubectl kubequant results NAME [-o table|json|yaml]
    kubectl kubequant candidates NAME [-o table|json|yaml]
    kubectl kubequant history NAME [-o table|json|yaml]
    kubectl kubequant logs NAME [-f] [--tail N]
    kubectl kubequant plot NAME -o candidates.png
    kubectl kubequant rerun NAME
    kubectl kubequant --version | --print-completion bash|zsh

with kubectl's ``--kubeconfig``, ``--context`` and ``-n/--namespace`` (default: the
context's namespace, else ``default``). Exit code 0, or 1 with an error on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final, TextIO

import shtab
import yaml

from kubequant_api.constants import GENERATION_LABEL, GROUP, OWNER_UID_LABEL, PLURAL, SINGULAR
from kubequant_api.errors import KubequantError
from kubequant_api.status import RERUN_ANNOTATION
from kubequant_kubectl.client import DEFAULT_NAMESPACE, ApiError, Client, resolve_access
from kubequant_kubectl.format import (
    as_result,
    candidates_table,
    history_table,
    last_successful_text,
    results_table,
)
from kubequant_operator.builders import CONTAINER_NAME

PROG: Final = "kubectl kubequant"
SCRIPT: Final = "kubectl-kubequant"  # the console script kubectl runs as the plugin
DISTRIBUTION: Final = "kubequant"
OUTPUT_FORMATS: Final = ("table", "json", "yaml")
# The labels the Job controller puts on a Job's pods (the newer one first).
JOB_NAME_LABELS: Final = ("batch.kubernetes.io/job-name", "job-name")


class PluginError(KubequantError):
    """A request the plugin cannot satisfy (no results yet, nothing to plot...)."""


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def rfc3339_now() -> str:
    """The current UTC time, RFC 3339 with microseconds: two reruns never share a value."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- object facts


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def describe_phase(obj: Mapping[str, Any]) -> str:
    """``phase: Running``, with the failure's reason and message when there is one."""
    status = _status(obj)
    phase = status.get("phase")
    if not phase:
        return "no phase yet: the operator has not reported on it"
    text = f"phase: {phase}"
    failure = status.get("failure") or {}
    if failure.get("reason"):
        text += f", {failure['reason']}"
        if failure.get("message"):
            text += f": {failure['message']}"
    return text


def _ref(name: str) -> str:
    return f'{SINGULAR} "{name}"'


def measured_result(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """``status.result`` as served, when the engine has measured something for it."""
    result = _status(obj).get("result")
    if isinstance(result, dict) and (
        result.get("optimizedSizeBytes") is not None
        or result.get("candidates")
        or result.get("plan") is not None
        or result.get("baseline") is not None
    ):
        return result
    return None


def result_of(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``status.result`` as served (raises :class:`PluginError` naming the phase when the
    engine has measured nothing yet)."""
    result = measured_result(obj)
    if result is None:
        raise PluginError(f"{_ref(name)} has no results yet ({describe_phase(obj)})")
    return result


def _current_run(obj: Mapping[str, Any]) -> str:
    """``generation 2, run 3`` of the run the status describes (what is known of it)."""
    status = _status(obj)
    generation = status.get("observedGeneration") or (obj.get("metadata") or {}).get("generation")
    text = f"generation {generation}" if generation is not None else "the current run"
    if generation is not None and status.get("run") is not None:
        text += f", run {status['run']}"
    return text


def _stale_note(obj: Mapping[str, Any], result: Mapping[str, Any], err: TextIO) -> None:
    generation = (obj.get("metadata") or {}).get("generation")
    of = result.get("generation")
    if of is not None and generation is not None and of != generation:
        err.write(
            f"note: these results are for generation {of}; the spec is at generation "
            f"{generation} ({describe_phase(obj)})\n"
        )


def _dump(data: Any, output: str, out: TextIO) -> None:
    if output == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(yaml.safe_dump(data, sort_keys=False))


# --------------------------------------------------------------------------- commands


def cmd_results(client: Client, ns: str, args: argparse.Namespace, out: TextIO) -> None:
    obj = client.get_object(ns, args.name)
    last = _status(obj).get("lastSuccessful")
    if measured_result(obj) is None and isinstance(last, dict) and last:
        # The current run has no figures yet (a new run clears them): show the last
        # successful run's summary, and say whose it is.
        note = (
            f"{_ref(args.name)} has no results yet for its current run "
            f"({_current_run(obj)}; {describe_phase(obj)}): showing the last successful "
            f"run's (generation {last.get('generation')}, run {last.get('run') or 1}); "
            f"see: {PROG} history {args.name}"
        )
        if args.output != "table":
            sys.stderr.write(f"note: {note}\n")
            _dump(last, args.output, out)
            return
        out.write(f"{note}\n\nLAST SUCCESSFUL RUN\n{last_successful_text(last)}\n")
        return
    result = result_of(obj, args.name)
    _stale_note(obj, result, sys.stderr)
    if args.output != "table":
        _dump(result, args.output, out)
        return
    if result.get("plan") is not None and result.get("optimizedSizeBytes") is None:
        out.write(f"dry run of {_ref(args.name)}: the plan (no model was quantized)\n")
        out.write(yaml.safe_dump(result["plan"], sort_keys=False))
        return
    out.write(results_table(result) + "\n")


def cmd_candidates(client: Client, ns: str, args: argparse.Namespace, out: TextIO) -> None:
    obj = client.get_object(ns, args.name)
    result = result_of(obj, args.name)
    candidates = result.get("candidates") or []
    if not candidates:
        method = ((obj.get("spec") or {}).get("method")) or result.get("method")
        raise PluginError(
            f"{_ref(args.name)} has no candidates: it runs method {method}; only method auto "
            f"tries candidates (see: {PROG} results {args.name})"
        )
    _stale_note(obj, result, sys.stderr)
    if args.output != "table":
        _dump(candidates, args.output, out)
        return
    out.write(candidates_table(result) + "\n")


def cmd_history(client: Client, ns: str, args: argparse.Namespace, out: TextIO) -> None:
    obj = client.get_object(ns, args.name)
    history = _status(obj).get("history") or []
    if not history:
        raise PluginError(f"{_ref(args.name)} has no finished runs yet ({describe_phase(obj)})")
    if args.output != "table":
        _dump(history, args.output, out)
        return
    out.write(history_table(history) + "\n")


def cmd_plot(client: Client, ns: str, args: argparse.Namespace, out: TextIO) -> None:
    from kubequant_kubectl.plot import plot_candidates

    obj = client.get_object(ns, args.name)
    result = result_of(obj, args.name)
    if not result.get("candidates"):
        method = ((obj.get("spec") or {}).get("method")) or result.get("method")
        raise PluginError(
            f"{_ref(args.name)} has no candidates to plot: it runs method {method}; only "
            "method auto tries candidates"
        )
    path = plot_candidates(as_result(result), Path(args.output), title=f"{ns}/{args.name}")
    out.write(f"{path}\n")


def engine_pod(client: Client, ns: str, obj: Mapping[str, Any], name: str) -> str:
    """The newest pod of the current run's Job (``status.jobName``; without one, of the
    newest generation that has pods)."""
    uid = str((obj.get("metadata") or {}).get("uid") or "")
    pods = client.list_pods(ns, f"{OWNER_UID_LABEL}={uid}")
    job = _status(obj).get("jobName")

    def labels(pod: Mapping[str, Any]) -> Mapping[str, str]:
        return (pod.get("metadata") or {}).get("labels") or {}

    def of_job(pod: Mapping[str, Any]) -> bool:
        owners = (pod.get("metadata") or {}).get("ownerReferences") or []
        return any(labels(pod).get(k) == job for k in JOB_NAME_LABELS) or any(
            o.get("kind") == "Job" and o.get("name") == job for o in owners
        )

    if job:
        pods = [p for p in pods if of_job(p)]
        where = f"job {job} of {_ref(name)}"
    else:
        newest = max((int(labels(p).get(GENERATION_LABEL) or 0) for p in pods), default=0)
        pods = [p for p in pods if int(labels(p).get(GENERATION_LABEL) or 0) == newest]
        where = _ref(name)
    if not pods:
        raise PluginError(f"{where} has no engine pod ({describe_phase(obj)})")

    return str((max(pods, key=pod_newness).get("metadata") or {}).get("name"))


def pod_newness(pod: Mapping[str, Any]) -> tuple[str, bool, str, str]:
    """Order of a Job's pods, oldest first. Creation times have one-second precision, and a
    Job (parallelism 1) creates its next pod only once the last one failed: at the same
    second, a failed pod is older than one that is not, and a pod still running (no finish
    time) is the newest."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    finished = ""
    running = True
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            running = False
            finished = max(finished, str(terminated.get("finishedAt") or ""))
    return (
        str(meta.get("creationTimestamp") or ""),
        status.get("phase") != "Failed",
        "~" if running else finished,  # "~" sorts after any timestamp
        str(meta.get("name") or ""),
    )


def cmd_logs(client: Client, ns: str, args: argparse.Namespace, out: TextIO) -> None:
    obj = client.get_object(ns, args.name)
    pod = engine_pod(client, ns, obj, args.name)
    sink = out.buffer if hasattr(out, "buffer") else None
    for chunk in client.pod_log(ns, pod, CONTAINER_NAME, follow=args.follow, tail=args.tail):
        if sink is not None:
            sink.write(chunk)
            sink.flush()
        else:
            out.write(chunk.decode("utf-8", "replace"))
            out.flush()


def cmd_rerun(client: Client, ns: str, args: argparse.Namespace, out: TextIO) -> None:
    client.get_object(ns, args.name)  # NotFound as kubectl words it, before any patch
    value = rfc3339_now()
    client.patch_object(ns, args.name, {"metadata": {"annotations": {RERUN_ANNOTATION: value}}})
    out.write(f"{PLURAL}.{GROUP}/{args.name} rerun requested ({RERUN_ANNOTATION}={value})\n")


COMMANDS = {
    "results": cmd_results,
    "candidates": cmd_candidates,
    "history": cmd_history,
    "plot": cmd_plot,
    "logs": cmd_logs,
    "rerun": cmd_rerun,
}


# --------------------------------------------------------------------------- parser


class _PrintCompletion(argparse.Action):
    """``--print-completion SHELL``: shtab's script for the installed program name."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        shown = parser.prog
        parser.prog = SCRIPT
        try:
            print(shtab.complete(parser, shell=str(values)))
        finally:
            parser.prog = shown
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    # kubectl's connection flags, accepted before and after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--kubeconfig", default=argparse.SUPPRESS, help="path to the kubeconfig file"
    ).complete = shtab.FILE  # type: ignore[attr-defined]
    common.add_argument(
        "--context", default=argparse.SUPPRESS, help="the kubeconfig context to use"
    )
    common.add_argument(
        "-n",
        "--namespace",
        default=argparse.SUPPRESS,
        help="the namespace (default: the context's namespace, else default)",
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Results, candidates, history, logs, plots and reruns of ModelOptimizations.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"kubectl-kubequant {version()}")
    # The script completes the program as installed (``kubectl-kubequant``): one for the name
    # kubectl shows (two words) would register itself for ``kubectl`` and take over its
    # completion.
    parser.add_argument(
        "--print-completion",
        choices=shtab.SUPPORTED_SHELLS,
        action=_PrintCompletion,
        help="print a shell completion script for kubectl-kubequant",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        p.add_argument("name", metavar="NAME", help="the ModelOptimization")
        return p

    def output(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default="table")

    output(command("results", "the measured figures: original against the reloaded artifact"))
    output(command("candidates", "method auto: every candidate tried, the winner marked"))
    output(command("history", "the last finished runs, newest first (status.history)"))
    logs = command("logs", "the engine's logs of the current run (its newest pod)")
    logs.add_argument("-f", "--follow", action="store_true", help="stream until it ends")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines")
    plot = command("plot", "method auto: the candidates' size against quality (matplotlib)")
    plot.add_argument(
        "-o", "--output", required=True, help="the image to write (png, svg, pdf)"
    ).complete = shtab.FILE  # type: ignore[attr-defined]
    command("rerun", f"run the current spec once more (annotation {RERUN_ANNOTATION})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        access = resolve_access(getattr(args, "kubeconfig", None), getattr(args, "context", None))
        namespace = getattr(args, "namespace", None) or access.namespace or DEFAULT_NAMESPACE
        COMMANDS[args.command](Client(access), namespace, args, sys.stdout)
    except ApiError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    except KubequantError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except BrokenPipeError:  # | head
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
