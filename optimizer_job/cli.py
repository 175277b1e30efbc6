"""The engine's command line (console script ``kubequant-engine``, or ``python -m optimizer_job``).

    kubequant-engine run -f manifest.yaml [--model URI|PATH] [--output URI|PATH]
                         [--overwrite] [--dry-run] [--results FILE] [-o table|json|yaml]
    kubequant-engine run-in-cluster
    kubequant-engine validate -f manifest.yaml
    kubequant-engine --version
    kubequant-engine --print-completion bash|zsh

Every command takes ``--log-format auto|json|text`` (default ``KUBEQUANT_LOG_FORMAT``,
else ``auto``: readable lines and a progress bar when stderr is a terminal, JSON lines
otherwise). Results go to stdout, logs to stderr; an error is reported once (one log line).

``run`` and ``run-in-cluster`` share one code path (:mod:`optimizer_job.pipeline`); the
in-cluster entry reads its object from the API (namespace, name, uid and generation from
``KUBEQUANT_OBJECT_*``) and writes status.progress / status.result on it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Final, TextIO

import shtab
import yaml

from kubequant_api.constants import KIND, ExitCode
from kubequant_api.errors import InvalidSpecError, KubequantError
from kubequant_api.models import ModelOptimizationSpec, Result, parse_manifest
from optimizer_job import artifact
from optimizer_job.report.logs import configure_logging
from optimizer_job.settings import LOG_FORMATS, EngineSettings, load_settings

log = logging.getLogger("optimizer_job.cli")

OUTPUT_FORMATS: Final = ("table", "json", "yaml")
DISTRIBUTION: Final = "kubequant"


def version() -> str:
    """The installed kubequant distribution's version."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _as_uri(value: str) -> str:
    if "://" in value:
        return value
    return "file://" + str(Path(value).expanduser().resolve())


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: construct_mapping reports it
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first on line {first})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)


def _detach_stdin() -> None:
    """Nothing after the manifest reads stdin (a library prompt there must never be answered)."""
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - for the process lifetime


def read_manifest(path: str) -> tuple[dict[str, Any], ModelOptimizationSpec]:
    """The first ModelOptimization in a YAML file, parsed; errors name the file and field."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise InvalidSpecError(path, f"cannot read the manifest: {exc.strerror or exc}") from exc
    _detach_stdin()
    try:
        docs = [d for d in yaml.load_all(text, Loader=_UniqueKeyLoader) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidSpecError(path, f"not valid YAML: {exc}") from exc
    objs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not objs:
        raise InvalidSpecError(path, f"no {KIND} object in the file")
    obj = objs[0]
    try:
        return obj, parse_manifest(obj)
    except InvalidSpecError as exc:
        raise InvalidSpecError(f"{path}: {exc.field}", exc.message) from exc


def _override(
    spec: ModelOptimizationSpec, model: str | None, output: str | None, overwrite: bool, dry: bool
) -> ModelOptimizationSpec:
    from kubequant_api.models import parse_spec

    raw = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    if model:
        raw["model"]["uri"] = _as_uri(model)
    if output:
        raw["output"]["uri"] = _as_uri(output)
    if overwrite:
        raw["output"]["overwrite"] = True
    if dry:
        raw["dryRun"] = True
    return parse_spec(raw)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_table(result: Result, reason: str, message: str, out: TextIO) -> None:
    """A human-readable results table."""
    r = result.to_api()
    out.write(f"\n{reason}: {message}\n\n")
    if result.plan is not None:
        out.write(json.dumps(result.plan, indent=2, sort_keys=True) + "\n")
        return
    rows = [
        ("method", r.get("method"), ""),
        ("params", json.dumps(r.get("params") or {}, sort_keys=True), ""),
        ("size (bytes)", r.get("originalSizeBytes"), r.get("optimizedSizeBytes")),
        ("compression ratio", "", r.get("compressionRatio")),
    ]
    base, opt = r.get("baseline") or {}, r.get("optimized") or {}
    for key in ("latencyMs", "tokensPerSecond", "perplexity", "peakMemoryBytes"):
        rows.append((key, base.get(key), opt.get(key)))
    for key in ("speedup", "perplexityIncreasePercent", "cosineSimilarity", "top1Agreement"):
        rows.append((key, "", r.get(key)))
    rows += [
        ("qualityGate", "", r.get("qualityGate")),
        ("outputUri", "", r.get("outputUri")),
        ("outputDigest", "", r.get("outputDigest")),
    ]
    out.write(f"{'figure':<28}{'original':>20}  {'optimized':<}\n")
    for name, a, b in rows:
        out.write(f"{name:<28}{_fmt(a):>20}  {_fmt(b)}\n")
    if result.candidates:
        out.write("\ncandidates:\n")
        for c in result.candidates:
            out.write(
                f"  {c.method:<22} size={_fmt(c.optimized_size_bytes)} "
                f"ratio={_fmt(c.compression_ratio)} cos={_fmt(c.cosine_similarity)} "
                f"top1={_fmt(c.top1_agreement)} ppl+%={_fmt(c.perplexity_increase_percent)} "
                f"gate={c.quality_gate or '-'}" + (f" error={c.error}" if c.error else "") + "\n"
            )
    out.flush()


def _reporter(ctx: Any, settings: EngineSettings, kube: bool) -> Any:
    from optimizer_job.report import build_reporter

    return build_reporter(
        ctx,
        metrics_port=settings.metrics_port,
        pushgateway_url=settings.pushgateway_url,
        termination_log=settings.termination_log,
        kube=kube,
        settings=settings,
    )


def _close(reporter: Any) -> None:
    close = getattr(reporter, "close", None)
    if callable(close):
        close()


def cmd_run(args: argparse.Namespace, settings: EngineSettings) -> int:
    from optimizer_job import pipeline
    from optimizer_job.report.base import RunContext

    obj, spec = read_manifest(args.file)
    spec = _override(spec, args.model, args.output, args.overwrite, args.dry_run)
    meta = obj.get("metadata") or {}
    generation = meta.get("generation")
    ctx = RunContext(
        name=str(meta.get("name") or Path(args.file).stem),
        namespace=meta.get("namespace"),
        generation=generation if isinstance(generation, int) else None,
        method=spec.method,
    )
    reporter = _reporter(ctx, settings, kube=False)
    try:
        outcome = pipeline.run(spec, ctx, settings, reporter)
    finally:
        _close(reporter)
    if args.results:
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        artifact.write_results_file(Path(args.results), outcome.results_document)
    print_results(outcome.results_document, args.output_format, sys.stdout)
    if args.results and args.output_format == "table":
        print(f"results: {args.results}")
    return int(outcome.exit_code)


def print_results(document: dict[str, Any], output_format: str, out: TextIO) -> None:
    """The run's results document (what results.json holds) as a table, JSON or YAML."""
    if output_format == "json":
        out.write(json.dumps(document, indent=2) + "\n")
    elif output_format == "yaml":
        out.write(yaml.safe_dump(document, sort_keys=False))
    else:
        result = Result.model_validate(document["result"])
        print_table(result, document["reason"], document["message"], out)
    out.flush()


def _identity(settings: EngineSettings) -> tuple[str, str, str, int]:
    """``(namespace, name, uid, generation)`` of the object the Job runs for."""
    values = {
        "object_namespace": settings.object_namespace,
        "object_name": settings.object_name,
        "object_uid": settings.object_uid,
        "object_generation": settings.object_generation,
    }
    for field, value in values.items():
        if not value:
            raise InvalidSpecError(
                settings.env_name(field), "environment variable is not set (set by the operator)"
            )
    try:
        generation = int(settings.object_generation)
    except ValueError as exc:
        raise InvalidSpecError(
            settings.env_name("object_generation"),
            f"not an integer: {settings.object_generation!r}",
        ) from exc
    return settings.object_namespace, settings.object_name, settings.object_uid, generation


def cmd_run_in_cluster(settings: EngineSettings) -> int:
    from optimizer_job import pipeline
    from optimizer_job.report import load_object
    from optimizer_job.report.base import RunContext, StaleRunError

    namespace, name, uid, generation = _identity(settings)
    try:
        obj = load_object(namespace, name, uid=uid, generation=generation)
    except StaleRunError as exc:
        log.warning("nothing to run: %s", exc)
        return int(ExitCode.INVALID_SPEC)
    ctx = RunContext(name=name, namespace=namespace, uid=uid, generation=generation)
    reporter = _reporter(ctx, settings, kube=True)
    try:
        try:
            spec = parse_manifest(obj)
        except InvalidSpecError as exc:
            message = str(exc)
            log.error("invalid spec: %s", message, extra=ctx.log_extra())
            reporter.finish(
                ExitCode.INVALID_SPEC,
                {
                    "exitCode": 2,
                    "reason": "InvalidSpec",
                    "message": message,
                    "generation": generation,
                },
            )
            return int(ExitCode.INVALID_SPEC)
        ctx = RunContext(
            name=name, namespace=namespace, uid=uid, generation=generation, method=spec.method
        )
        outcome = pipeline.run(spec, ctx, settings, reporter)
    finally:
        _close(reporter)
    return int(outcome.exit_code)


def cmd_validate(args: argparse.Namespace) -> int:
    from optimizer_job.pipeline import build_candidates

    _, spec = read_manifest(args.file)
    candidates = build_candidates(spec)
    names = ", ".join(c.name for c in candidates)
    print(f"{args.file}: valid ({spec.method}: {names}; output {spec.output.uri})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # Options every command takes, before or after the command's name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=argparse.SUPPRESS,
        help="auto: text on a terminal, JSON otherwise (default: $KUBEQUANT_LOG_FORMAT or auto)",
    )
    parser = argparse.ArgumentParser(
        prog="kubequant-engine", description="kubequant's optimization engine", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    shtab.add_argument_to(parser, ["--print-completion"], help="print a shell completion script")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a ModelOptimization manifest locally", parents=[common])
    run.add_argument(
        "-f", "--file", required=True, help="manifest YAML ('-' for stdin)"
    ).complete = shtab.FILE  # type: ignore[attr-defined]
    run.add_argument("--model", help="override spec.model.uri (a URI, or a local path)")
    run.add_argument("--output", help="override spec.output.uri (a URI, or a local directory)")
    run.add_argument("--overwrite", action="store_true", help="set spec.output.overwrite")
    run.add_argument("--dry-run", action="store_true", help="set spec.dryRun (preflight only)")
    run.add_argument(
        "--results", help="also write results.json here (success or failure)"
    ).complete = shtab.FILE  # type: ignore[attr-defined]
    run.add_argument(
        "-o",
        "--output-format",
        choices=OUTPUT_FORMATS,
        default="table",
        help="how to print the results on stdout (json and yaml: the results.json document)",
    )
    sub.add_parser(
        "run-in-cluster",
        help="run the object named by KUBEQUANT_OBJECT_* (in a Job)",
        parents=[common],
    )
    val = sub.add_parser("validate", help="check a manifest without running it", parents=[common])
    val.add_argument(
        "-f", "--file", required=True, help="manifest YAML ('-' for stdin)"
    ).complete = shtab.FILE  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except InvalidSpecError as exc:
        sys.stderr.write(f"error: {exc}\n")  # logging is not set up without settings
        return int(ExitCode.INVALID_SPEC)
    configure_logging(settings.log_level, getattr(args, "log_format", settings.log_format))
    if args.command == "run-in-cluster":
        _detach_stdin()
    try:
        if args.command == "run":
            return cmd_run(args, settings)
        if args.command == "run-in-cluster":
            return cmd_run_in_cluster(settings)
        return cmd_validate(args)
    except KubequantError as exc:
        from optimizer_job.pipeline import exit_code_for

        code, reason = exit_code_for(exc)
        # Once: the log line is the message (JSON in a Job, a readable line on a terminal).
        log.error("%s", exc, extra={"reason": reason, "exit_code": int(code)})
        return int(code)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
