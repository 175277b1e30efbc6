"""Harvesting the engine's results: the one home for where a run's Result comes from.

The engine writes ``status.result`` itself when it can. When it could not, the operator
harvests the result from the engine's JSON summary in its pod's termination message, or
from ``results.json`` beside a ``file://`` output. Only :func:`read_results_file` and
:func:`verify_output_digest` do I/O (local file reads; the reconciler runs them off the event
loop).

A harvested result is believed only with a digest that matches the published artifact where
the operator can read it (:func:`verify_output_digest`: ``file://`` outputs); ``s3://``,
``gs://`` and ``pvc://`` outputs are not readable by the operator, so there the result is
taken from the Job the operator created alone (docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import ValidationError

from kubequant_api.constants import COMPLETE_MARKER, MODEL_CARD_FILE, RESULTS_FILE
from kubequant_api.models import Result
from kubequant_operator.children import sorted_pods, terminated_state

MESSAGE_MAX = 1024
_RESULT_KEYS = frozenset(f.alias or n for n, f in Result.model_fields.items())


def clip(text: str, limit: int = MESSAGE_MAX) -> str:
    """``text`` stripped and cut to ``limit`` characters, keeping its end (where errors are)."""
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


# --------------------------------------------------------------------------- status.result


def result_for_generation(obj: Mapping[str, Any], generation: int) -> dict[str, Any] | None:
    """The result the object's status already holds for ``generation`` (the engine's write)."""
    result = (obj.get("status") or {}).get("result")
    if isinstance(result, dict) and result.get("generation") == generation:
        return result
    return None


# --------------------------------------------------------------------------- the summary


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """The engine's JSON summary from a termination message, if it is one."""
    if not message:
        return None
    try:
        data = json.loads(message)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def result_from_summary(summary: Mapping[str, Any], generation: int) -> Result | None:
    """A Result from the engine's summary (``{"result": {...}}`` or the result itself)."""
    raw = summary.get("result") if isinstance(summary.get("result"), dict) else summary
    if not isinstance(raw, Mapping):
        return None
    picked = {k: v for k, v in raw.items() if k in _RESULT_KEYS}
    if not picked.get("method") and not picked.get("plan") and not picked.get("candidates"):
        return None
    try:
        result = Result.model_validate(picked)
    except ValidationError:
        return None
    if result.generation is None:
        outer = summary.get("generation")
        result.generation = outer if isinstance(outer, int) else generation
    return result if result.generation == generation else None


def summary_detail(term: Mapping[str, Any] | None) -> str:
    """What a terminated engine said: its summary's message, or the raw message, clipped."""
    text = str((term or {}).get("message") or "")
    summary = parse_summary(text)
    if summary is not None:
        for key in ("message", "error", "detail"):
            if summary.get(key):
                return clip(str(summary[key]))
        return ""
    return clip(text)


def harvest_from_pods(pods: Sequence[Mapping[str, Any]], generation: int) -> Result | None:
    """The newest pod's termination message, parsed as the engine's summary."""
    for pod in reversed(sorted_pods(pods)):
        term = terminated_state(pod)
        summary = parse_summary((term or {}).get("message"))
        if summary is not None:
            result = result_from_summary(summary, generation)
            if result is not None:
                return result
    return None


# --------------------------------------------------------------------------- results.json


def read_results_file(output_uri: str, generation: int) -> tuple[Result | None, str]:
    """``results.json`` beside a file:// output (other schemes are not readable here).

    Returns the result, or None and why it could not be read (for ResultsUnavailable).
    """
    parsed = urlparse(output_uri)
    if parsed.scheme != "file":
        return None, f"{RESULTS_FILE} at {parsed.scheme}:// outputs is not readable by the operator"
    path = Path(unquote(parsed.path)) / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except (OSError, ValueError) as exc:
        return None, f"{path} is not readable JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"{path} does not hold a JSON object"
    result = result_from_summary(data, generation)
    if result is None:
        return None, f"{path} holds no result for generation {generation}"
    return result, ""


# --------------------------------------------------------------------------- the artifact's digest
# The engine's digest (optimizer_job/artifact.py, which the operator may not import):
# "sha256:" + SHA-256 of one line "<relative path>\t<size>\t<sha256 hex>\n" per file, sorted
# by path, over every file except results.json, README.md and the completion marker.
DIGEST_EXCLUDED = frozenset({RESULTS_FILE, MODEL_CARD_FILE, COMPLETE_MARKER})
_CHUNK = 1 << 20


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def artifact_digest(root: Path) -> str:
    """The digest of the artifact folder ``root``, computed as the engine computes it."""
    lines = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in DIGEST_EXCLUDED:
            lines.append((rel, p.stat().st_size, _file_sha256(p)))
    text = "".join(f"{rel}\t{size}\t{sha}\n" for rel, size, sha in sorted(lines))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def verify_output_digest(result: Result, output_uri: str) -> str | None:
    """Why a harvested ``result`` is not believed, or None.

    Where the operator can read the output (``file://``), a result that names an artifact must
    carry ``outputDigest`` and it must equal the digest of the files published there. A dry
    run's plan names no artifact; other schemes cannot be read here (None)."""
    parsed = urlparse(output_uri)
    if parsed.scheme != "file" or result.plan is not None:
        return None
    root = Path(unquote(parsed.path))
    if not result.output_digest:
        return f"the result names no outputDigest for the artifact at {root}"
    if not root.is_dir():
        return f"no artifact at {root} to check outputDigest {result.output_digest} against"
    try:
        found = artifact_digest(root)
    except OSError as exc:
        return f"the artifact at {root} is not readable ({exc})"
    if found != result.output_digest:
        return (
            f"outputDigest {result.output_digest} does not match the artifact at {root} "
            f"({found})"
        )
    return None
