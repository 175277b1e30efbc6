"""The engine's logs: one structured line per stage, result and finish (``LogReporter``), and
the process-wide log setup (``configure_logging``).

Two formats. ``json`` (in a Job, or whenever stderr is not a terminal): one JSON object per
line on stderr (:mod:`kubequant_api.logs`), and every library that logs on its own is routed
into it: loguru (llm-compressor) is forwarded into ``logging`` with its level mapped and its
module in ``source_module``; transformers' and torch's own stream handlers are adopted;
``warnings`` go through ``logging``; progress bars (tqdm, huggingface_hub, datasets,
transformers) are turned off, since the run's progress is already reported by stage (logs,
metrics, ``status.progress``). ``text`` (a terminal): readable lines and a progress bar of
the run's stages on stderr. ``auto`` picks ``text`` when stderr is a terminal.

A library message logged again with the same template (bitsandbytes warns that it casts
bf16 inputs to fp16 on every forward of every 8-bit layer: thousands of lines for one
evaluation) is kept once per logger, level and template; the engine's own lines are never
dropped.

Libraries imported after the setup (the engine imports them lazily) reconfigure their own
logging on import (llm-compressor replaces every loguru sink with a stdout one; torch and
transformers add stream handlers); a post-import hook applies the routing again right after
each of those modules is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, TextIO

from kubequant_api.constants import ExitCode, Stage
from kubequant_api.logs import setup_logging
from kubequant_api.models import Result
from optimizer_job.redact import scrub, scrub_obj
from optimizer_job.report.base import RunContext
from optimizer_job.settings import LOG_FORMATS

if TYPE_CHECKING:
    from loguru import Message, Record

LOGGER_NAME = "optimizer_job.report"
COMPONENT: Final = "engine"
# Set (unless already set) when logs are JSON: read by tqdm (at import), huggingface_hub,
# transformers (through huggingface_hub) and datasets.
QUIET_PROGRESS_ENV: Final = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}
# loguru level names -> logging levels (llm-compressor adds METRIC, 38: figures, not warnings).
_LOGURU_LEVELS: Final = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "SUCCESS": logging.INFO,
    "METRIC": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
}


def _isatty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False


def resolve_log_format(log_format: str, stream: TextIO | None = None) -> str:
    """``json`` or ``text``; ``auto`` is ``text`` when ``stream`` (default stderr) is a TTY."""
    fmt = log_format.lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, got {log_format!r}")
    if fmt == "auto":
        return "text" if _isatty(stream if stream is not None else sys.stderr) else "json"
    return fmt


class TextFormatter(logging.Formatter):
    """One readable line: local time, level, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = f"{stamp} {record.levelname.lower():<7} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class ProgressBar:
    """The run's progress on one terminal line, redrawn in place (``\\r``)."""

    WIDTH: Final = 30

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.line = ""

    def update(self, stage: str, percent: int, candidate: str | None = None) -> None:
        pct = max(0, min(100, int(percent)))
        done = self.WIDTH * pct // 100
        self.line = f"[{'#' * done}{'.' * (self.WIDTH - done)}] {pct:3d}% {stage}" + (
            f" ({candidate})" if candidate else ""
        )
        self.draw()

    def draw(self) -> None:
        if self.line:
            self.stream.write("\r\x1b[2K" + self.line)
            self.stream.flush()

    def clear(self) -> None:
        if self.line:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def close(self) -> None:
        """Leave the last state on its own line; later writes start on a fresh one."""
        if self.line:
            self.draw()
            self.stream.write("\n")
            self.stream.flush()
            self.line = ""


class TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Text lines that keep the progress bar below them."""

    def __init__(self, stream: TextIO, bar: ProgressBar | None) -> None:
        super().__init__(stream)
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar is not None:
            self.bar.clear()
        super().emit(record)
        if self.bar is not None:
            self.bar.draw()


# The progress bar of this process (text logs on a terminal only), drawn by LogReporter.
_progress: dict[str, ProgressBar] = {}


def terminal_progress() -> ProgressBar | None:
    return _progress.get("bar")


# -- libraries that log on their own


def _loguru_level(record: Record) -> int:
    level = record["level"]
    mapped = _LOGURU_LEVELS.get(level.name)
    if mapped is not None:
        return mapped
    for bound in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if level.no >= bound:
            return bound
    return logging.DEBUG


_logged_once: set[str] = set()


def _loguru_filter(record: Record) -> bool:
    """llm-compressor's ``logger.bind(log_once=True)``: its own sink's filter, kept here."""
    if not record["extra"].get("log_once", False):
        return True
    key = f"{record['level'].name}{record['message']}"
    if key in _logged_once:
        return False
    _logged_once.add(key)
    return True


def forward_loguru(message: Message) -> None:
    """A loguru sink: the record goes on through ``logging`` (so it is formatted like ours)."""
    record = message.record
    level = _loguru_level(record)
    name = record["name"] or "loguru"
    logger = logging.getLogger(name)
    if not logger.isEnabledFor(level):
        return
    exc = record["exception"]
    exc_info = (
        (exc.type, exc.value, exc.traceback)
        if exc is not None and exc.type is not None and exc.value is not None
        else None
    )
    out = logger.makeRecord(
        name,
        level,
        record["file"].path if record["file"] else "",
        record["line"] or 0,
        record["message"],
        (),
        exc_info,
        func=record["function"],
        extra={"source_module": name, "source_level": record["level"].name},
    )
    logger.handle(out)


def route_loguru() -> bool:
    """Replace every loguru sink by :func:`forward_loguru`; False when loguru is absent."""
    try:
        from loguru import logger
    except ImportError:
        return False
    logger.remove()
    level = logging.getLogger().getEffectiveLevel()
    logger.add(forward_loguru, level=max(level, 5), format="{message}", filter=_loguru_filter)
    return True


def _adopt_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    if _state.get("format") == "json":
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _adopt_stream_handlers() -> None:
    """Library stream handlers on stdout/stderr (torch's) format their lines like ours."""
    root = logging.getLogger()
    formatter = root.handlers[0].formatter if root.handlers else None
    if formatter is None:
        return
    for logger in list(logging.root.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger):
            continue
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (
                sys.stderr,
                sys.stdout,
                sys.__stderr__,
                sys.__stdout__,
            ):
                handler.setFormatter(formatter)
                if handler.stream is not sys.stderr:
                    handler.setStream(sys.stderr)


def _quiet_progress_bars() -> None:
    for name, value in QUIET_PROGRESS_ENV.items():
        os.environ.setdefault(name, value)
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        hub.disable_progress_bars()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


# Module (imported after the setup) -> what to apply again once it has run.
_AFTER_IMPORT: Final[dict[str, Callable[[], object]]] = {
    "llmcompressor.logger": route_loguru,
    "torch": _adopt_stream_handlers,
    "transformers": _adopt_transformers,
}
_state: dict[str, str] = {}


class _ThenLoader(importlib.abc.Loader):
    """Runs a module with its own loader, then calls ``then``."""

    def __init__(self, inner: importlib.abc.Loader, then: Callable[[], object]) -> None:
        self.inner = inner
        self.then = then

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        # The module keeps its own loader (resources, source lookups).
        module.__loader__ = self.inner
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner
        try:
            self.then()
        except Exception as exc:  # noqa: BLE001 - logging setup must never break an import
            logging.getLogger(__name__).debug("log routing after %s: %s", module.__name__, exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _AfterImportHook(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        then = _AFTER_IMPORT.get(fullname)
        if then is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec: importlib.machinery.ModuleSpec | None = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenLoader(spec.loader, then)
                return spec
        return None


def _install_after_import_hook() -> None:
    if not any(isinstance(f, _AfterImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImportHook())


class LibraryRepeatFilter(logging.Filter):
    """Drop a library's record when the same logger already logged the same template at the
    same level; the engine's own records (``optimizer_job``, ``kubequant_api``) all pass."""

    OWN_PREFIXES: Final = ("optimizer_job", "kubequant_api")

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(self.OWN_PREFIXES):
            return True
        key = (record.name, record.levelno, str(record.msg))
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


def configure_logging(level: str = "INFO", log_format: str = "auto") -> str:
    """The engine's logging for this process; returns the format in use (``json``/``text``).

    Idempotent. Routes loguru, ``warnings`` and the stream handlers of libraries already
    imported, and arranges the same for llm-compressor, torch and transformers when they are
    imported later.
    """
    fmt = resolve_log_format(log_format, sys.stderr)
    setup_logging(COMPONENT, level)
    root = logging.getLogger()
    if fmt == "text":
        bar = ProgressBar(sys.stderr) if _isatty(sys.stderr) else None
        handler = TerminalHandler(sys.stderr, bar)
        handler.setFormatter(TextFormatter())
        root.handlers[:] = [handler]
        _progress.clear()
        if bar is not None:
            _progress["bar"] = bar
    else:
        _progress.clear()
        _quiet_progress_bars()
    _state["format"] = fmt
    repeats = LibraryRepeatFilter()  # the handlers are new: so is what they have seen
    for each in root.handlers:
        each.addFilter(repeats)
    logging.captureWarnings(True)
    route_loguru()
    _adopt_stream_handlers()
    if "transformers" in sys.modules:
        _adopt_transformers()
    _install_after_import_hook()
    return fmt


# Result fields copied into the log line's context (scalars only, never URIs with secrets:
# every string goes through ``scrub``).
_RESULT_FIELDS = (
    "method",
    "original_size_bytes",
    "optimized_size_bytes",
    "compression_ratio",
    "speedup",
    "perplexity_increase_percent",
    "cosine_similarity",
    "top1_agreement",
    "quality_gate",
    "output_uri",
    "output_digest",
)


class LogReporter:
    """Logs through ``logging`` (``kubequant_api.logs`` formats it as JSON)."""

    def __init__(self, ctx: RunContext, logger: logging.Logger | None = None) -> None:
        self.ctx = ctx
        self.log = logger or logging.getLogger(LOGGER_NAME)

    def _extra(self, **fields: Any) -> dict[str, Any]:
        out = dict(self.ctx.log_extra())
        out.update(fields)
        return {k: scrub(v) if isinstance(v, str) else v for k, v in out.items()}

    def stage(self, stage: Stage, percent: int, candidate: str | None = None) -> None:
        suffix = f" (candidate {candidate})" if candidate else ""
        self.log.info(
            "stage %s, %d%%%s",
            Stage(stage).value,
            percent,
            suffix,
            extra=self._extra(stage=Stage(stage).value, percent=percent, candidate=candidate),
        )
        bar = terminal_progress()
        if bar is not None:
            bar.update(Stage(stage).value, percent, candidate)

    def result(self, result: Result) -> None:
        fields: dict[str, Any] = {f"result_{k}": getattr(result, k) for k in _RESULT_FIELDS}
        fields["result_candidates"] = len(result.candidates)
        fields["result_generation"] = result.generation
        self.log.info(
            "result: method %s, compression ratio %s, quality gate %s",
            result.method,
            result.compression_ratio,
            result.quality_gate,
            extra=self._extra(**fields),
        )

    def finish(self, exit_code: ExitCode, summary: dict[str, Any]) -> None:
        code = ExitCode(exit_code)
        bar = terminal_progress()
        if bar is not None:
            bar.close()
        level = logging.INFO if code == ExitCode.SUCCESS else logging.WARNING
        self.log.log(
            level,
            "finished with exit code %d (%s)",
            int(code),
            code.name.lower(),
            extra=self._extra(
                exit_code=int(code),
                summary=json.dumps(scrub_obj(summary), separators=(",", ":"), default=str),
            ),
        )
