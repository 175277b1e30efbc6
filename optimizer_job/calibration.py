"""Calibration and evaluation texts: from a dataset URI (text, JSONL, Parquet) or built in.

- Plain text: one sample per paragraph (blank-line separated), or per line when the file has
  no blank lines.
- JSONL: one JSON object per line with a string field ``text``.
- Parquet: a string column ``text``.

Without ``spec.evaluation.datasetUri`` the evaluation texts are a held-out slice that never
overlaps the calibration texts.

:func:`texts_digest` names a list of texts for the record (``results.json``, the model card):
``sha256:`` + the SHA-256 of the texts, in order, as a compact JSON array in UTF-8.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass

from kubequant_api.errors import InvalidSpecError
from kubequant_api.models import ModelOptimizationSpec
from optimizer_job.corpus import builtin_corpus, split_corpus
from optimizer_job.redact import redact
from optimizer_job.settings import EngineSettings
from optimizer_job.storage import read_bytes

log = logging.getLogger(__name__)

CAL_URI_FIELD = "spec.calibration.datasetUri"
CAL_SAMPLES_FIELD = "spec.calibration.samples"
EVAL_URI_FIELD = "spec.evaluation.datasetUri"
HELD_OUT_FRACTION = 0.1


def parse_texts(data: bytes, name: str, field: str) -> list[str]:
    """Samples in ``data``; the format is chosen by the file name's extension."""
    lower = name.lower().split("?", 1)[0]
    if lower.endswith(".parquet"):
        return _parquet(data, name, field)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidSpecError(field, f"{name} is not UTF-8 text: {exc}") from exc
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return _jsonl(text, name, field)
    blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
    if len([b for b in blocks if b]) <= 1:
        blocks = [line.strip() for line in text.splitlines()]
    return [b for b in blocks if b]


def _jsonl(text: str, name: str, field: str) -> list[str]:
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidSpecError(field, f"{name} line {number} is not JSON: {exc.msg}") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InvalidSpecError(field, f"{name} line {number} has no string field 'text'")
        if row["text"].strip():
            out.append(row["text"].strip())
    return out


def _parquet(data: bytes, name: str, field: str) -> list[str]:
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:
        raise InvalidSpecError(field, f"{name} is not a Parquet file: {exc}") from exc
    if "text" not in table.column_names:
        raise InvalidSpecError(
            field, f"{name} has no 'text' column (columns: {table.column_names})"
        )
    return [str(v).strip() for v in table.column("text").to_pylist() if v and str(v).strip()]


def load_dataset(uri: str, settings: EngineSettings, field: str) -> list[str]:
    texts = parse_texts(read_bytes(uri, settings, field), uri, field)
    if not texts:
        raise InvalidSpecError(field, f"{redact(uri)} holds no text samples")
    return texts


def texts_digest(texts: list[str]) -> str:
    """``sha256:`` over ``texts`` in order (a JSON array, so no two lists share a digest)."""
    payload = json.dumps(texts, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return "sha256:" + hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True)
class Texts:
    calibration: list[str]
    evaluation: list[str]
    source: str  # where they came from, for the record


def select_texts(
    spec: ModelOptimizationSpec, settings: EngineSettings, needs_calibration: bool
) -> Texts:
    """Calibration texts (only when a method needs them) and disjoint evaluation texts."""
    cal_spec, eval_spec = spec.calibration, spec.evaluation
    builtin_train, builtin_held = split_corpus(builtin_corpus(), HELD_OUT_FRACTION)
    if cal_spec.dataset_uri:
        pool = load_dataset(cal_spec.dataset_uri, settings, CAL_URI_FIELD)
        if needs_calibration and len(pool) < cal_spec.samples:
            raise InvalidSpecError(
                CAL_SAMPLES_FIELD,
                f"{cal_spec.samples} samples requested but {CAL_URI_FIELD} "
                f"{redact(cal_spec.dataset_uri)} holds only {len(pool)}; lower "
                f"{CAL_SAMPLES_FIELD} or add data",
            )
        calibration = pool[: cal_spec.samples] if needs_calibration else []
        held_out = pool[cal_spec.samples :] if needs_calibration else pool
        source = redact(cal_spec.dataset_uri)
    else:
        if needs_calibration and len(builtin_train) < cal_spec.samples:
            raise InvalidSpecError(
                CAL_SAMPLES_FIELD,
                f"{cal_spec.samples} samples requested but the built-in corpus holds only "
                f"{len(builtin_train)}; set {CAL_URI_FIELD} or lower {CAL_SAMPLES_FIELD}",
            )
        calibration = builtin_train[: cal_spec.samples] if needs_calibration else []
        held_out = builtin_held
        source = "builtin"
    if eval_spec.dataset_uri:
        evaluation = load_dataset(eval_spec.dataset_uri, settings, EVAL_URI_FIELD)
    elif held_out:
        evaluation = held_out
    else:
        log.info("no held-out calibration text left; evaluating on the built-in held-out slice")
        evaluation = [t for t in builtin_held if t not in set(calibration)]
    evaluation = evaluation[: eval_spec.samples]
    if not evaluation:
        raise InvalidSpecError(EVAL_URI_FIELD, "no evaluation texts available")
    return Texts(calibration=calibration, evaluation=evaluation, source=source)
