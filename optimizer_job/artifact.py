"""What an artifact folder carries besides the model: tokenizer, metadata, results, card, digest.

The digest is ``sha256:`` + the SHA-256 of a manifest text with one line per file,
``<relative path>\\t<size>\\t<sha256 hex>\\n``, sorted by path. It covers every file of the
artifact except ``results.json``, ``README.md`` (both quote the digest) and the completion
marker. The same manifest over every file of a source that is not an ``hf://`` repository is
its recorded revision (:func:`source_revision`).

The model card (``README.md``) is a Hugging Face model card written with
``huggingface_hub.ModelCard``; its metadata is what the Hub reads:

- ``base_model`` (and ``base_model_relation: quantized``): the repository id of an ``hf://``
  source. Other sources (``s3://``, ``gs://``, ``pvc://``, ``file://``) carry neither: their
  ``config.json`` ``_name_or_path`` names wherever that config was last loaded from (often
  the model it was fine-tuned from, or a local folder), not the model quantized here.
- ``library_name``: ``transformers``, or ``onnx`` for ONNX artifacts (the Hub lists ONNX as a
  file format, not a library; ``onnx`` is the value ONNX-only repositories use).
- ``pipeline_tag``: from the task; ``tags``: ``kubequant``, the method, its precision
  (``int8``/``8-bit``, ``nf4``/``4-bit``...), the quantization library, ``quantized``.
- ``license`` (with ``license_name``/``license_link``): carried over from the source's own
  ``README.md`` when it has one; absent otherwise.

Its body: every measured figure in one table, the quality gate, the exact spec, the
reproducibility record and the method's "how to load" snippet
(:func:`optimizer_job.snippets.load_snippet`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Final

import yaml

from kubequant_api.constants import (
    ARTIFACT_META_FILE,
    COMPLETE_MARKER,
    MODEL_CARD_FILE,
    RESULTS_FILE,
    Task,
)
from kubequant_api.methods import method_spec
from kubequant_api.models import Reproducibility, Result
from optimizer_job.redact import redact
from optimizer_job.snippets import load_snippet

log = logging.getLogger(__name__)

DIGEST_EXCLUDED: Final = frozenset({RESULTS_FILE, MODEL_CARD_FILE, COMPLETE_MARKER})
_CHUNK: Final = 1 << 20
_HF_COMMIT: Final = re.compile(r"[0-9a-f]{40}")
# The Hub's pipeline tag of each task.
PIPELINE_TAGS: Final = {
    Task.CAUSAL_LM: "text-generation",
    Task.FEATURE_EXTRACTION: "feature-extraction",
    Task.SEQUENCE_CLASSIFICATION: "text-classification",
}
_PRECISION: Final = re.compile(r"(int|nf|fp)(\d+)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest(root: Path, excluded: frozenset[str] = DIGEST_EXCLUDED) -> list[tuple[str, int, str]]:
    """(relative path, size, sha256) of every digested file, sorted by path."""
    entries = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in excluded:
            entries.append((rel, p.stat().st_size, file_sha256(p)))
    return sorted(entries)


def manifest_text(entries: list[tuple[str, int, str]]) -> str:
    return "".join(f"{rel}\t{size}\t{sha}\n" for rel, size, sha in entries)


def digest(root: Path, excluded: frozenset[str] = DIGEST_EXCLUDED) -> str:
    text = manifest_text(manifest(root, excluded))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def source_revision(uri: str, source_dir: Path) -> str:
    """What the source resolved to: the commit of an ``hf://`` snapshot (the hub cache names
    each snapshot folder by its commit), otherwise the digest of every file of the source."""
    if (
        uri.startswith("hf://")
        and source_dir.parent.name == "snapshots"
        and _HF_COMMIT.fullmatch(source_dir.name)
    ):
        return source_dir.name
    return digest(source_dir, excluded=frozenset())


def write_results(root: Path, document: dict[str, Any]) -> None:
    """results.json into the artifact (the document is built by optimizer_job.results)."""
    write_results_file(root / RESULTS_FILE, document)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}{unit}"
    return f"{value}{unit}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value} bytes ({value / 1e6:.2f} MB)"


# --------------------------------------------------------------------------- card metadata


def hf_repo_id(uri: str) -> str | None:
    """``org/name`` of an ``hf://org/name[@revision]`` URI; None for other schemes."""
    if not uri.startswith("hf://"):
        return None
    return uri[len("hf://") :].split("?", 1)[0].partition("@")[0] or None


def artifact_format(artifact_dir: Path | None) -> str | None:
    """The ``format`` the method recorded in the artifact's metadata file."""
    if artifact_dir is None:
        return None
    try:
        meta = json.loads((artifact_dir / ARTIFACT_META_FILE).read_text())
    except (OSError, ValueError):
        return None
    fmt = meta.get("format") if isinstance(meta, dict) else None
    return fmt if isinstance(fmt, str) else None


def library_name(fmt: str | None) -> str:
    """The Hub's ``library_name`` of an artifact of this format."""
    return "onnx" if fmt == "onnx" else "transformers"


def precision_tags(method: str, params: dict[str, Any]) -> list[str]:
    """``int4``/``4-bit``...: from the ``bits`` param when the method has one, else from the
    method's name (``bnb-nf4``: ``nf4``, ``4-bit``)."""
    bits = params.get("bits")
    if isinstance(bits, int) and not isinstance(bits, bool):
        return [f"int{bits}", f"{bits}-bit"]
    found = _PRECISION.search(method)
    return [found.group(0), f"{found.group(2)}-bit"] if found else []


def library_tag(method: str) -> str | None:
    """The quantization library of ``method``: its first runtime module's package
    (``optimum.quanto``: ``quanto``)."""
    modules = method_spec(method).runtime_modules
    if not modules:
        return None
    parts = modules[0].split(".")
    return parts[1] if parts[0] == "optimum" and len(parts) > 1 else parts[0]


def source_license(source_dir: Path | None) -> dict[str, str]:
    """``license`` (and ``license_name``, ``license_link``) of the source's own model card."""
    if source_dir is None or not (source_dir / MODEL_CARD_FILE).is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        data = ModelCard.load(source_dir / MODEL_CARD_FILE, ignore_metadata_errors=True).data
    except (OSError, ValueError, yaml.YAMLError) as exc:
        log.warning("the source's model card cannot be read; no license carried over: %s", exc)
        return {}
    found = {}
    for key in ("license", "license_name", "license_link"):
        value = getattr(data, key, None)
        if isinstance(value, str) and value:
            found[key] = value
    return found


def card_metadata(
    result: Result,
    *,
    source_uri: str,
    task: str,
    source_dir: Path | None = None,
    artifact_dir: Path | None = None,
) -> dict[str, Any]:
    """The card's metadata block (the keys the Hub reads), without empty values."""
    method = result.method or ""
    tags = ["kubequant"]
    if method:
        tags += [method, *precision_tags(method, result.params)]
        tags += [t for t in (library_tag(method),) if t]
    tags.append("quantized")
    base_model = hf_repo_id(source_uri)
    meta: dict[str, Any] = {}
    if base_model:
        meta["base_model"] = base_model
        meta["base_model_relation"] = "quantized"
    meta["library_name"] = library_name(artifact_format(artifact_dir))
    pipeline_tag = PIPELINE_TAGS.get(Task(task)) if task in set(Task) else None
    if pipeline_tag:
        meta["pipeline_tag"] = pipeline_tag
    meta["tags"] = list(dict.fromkeys(tags))
    meta.update(source_license(source_dir))
    return meta


def _redact_uris(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value) if "://" in value else value
    if isinstance(value, dict):
        return {k: _redact_uris(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_uris(v) for v in value]
    return value


def spec_yaml(spec: dict[str, Any]) -> str:
    """The spec as the card shows it: YAML, URIs without credentials."""
    text: str = yaml.safe_dump(_redact_uris(spec), sort_keys=False, allow_unicode=True)
    return text


def load_path_for(output_uri: str) -> str:
    """The ``path`` of the card's loading snippet: the folder of a ``file://`` output, else
    ``.`` (the folder holding the card, once the artifact is downloaded)."""
    if output_uri.startswith("file://"):
        return output_uri[len("file://") :].split("?", 1)[0] or "."
    return "."


# --------------------------------------------------------------------------- card body

# (gate key, what it bounds, comparison, Result attribute)
_GATE_ROWS: Final = (
    (
        "maxPerplexityIncreasePercent",
        "perplexity increase (%)",
        "<=",
        "perplexity_increase_percent",
    ),
    ("minCosineSimilarity", "cosine similarity", ">=", "cosine_similarity"),
    ("minTop1Agreement", "top-1 agreement", ">=", "top1_agreement"),
)


def _results_table(result: Result) -> list[str]:
    base = result.baseline.to_api() if result.baseline else {}
    opt = result.optimized.to_api() if result.optimized else {}
    rows = [
        "| figure | original | quantized |",
        "|---|---|---|",
        f"| weights size | {_bytes(result.original_size_bytes)} | "
        f"{_bytes(result.optimized_size_bytes)} |",
        f"| compression ratio | - | {_fmt(result.compression_ratio, 'x')} |",
    ]
    for key, label in (
        ("latencyMs", "latency (median, ms)"),
        ("tokensPerSecond", "throughput (tokens/s)"),
        ("perplexity", "perplexity"),
        ("peakMemoryBytes", "peak memory (bytes)"),
    ):
        rows.append(f"| {label} | {_fmt(base.get(key))} | {_fmt(opt.get(key))} |")
    rows += [
        f"| speedup | - | {_fmt(result.speedup, 'x')} |",
        f"| perplexity increase | - | {_fmt(result.perplexity_increase_percent, '%')} |",
        f"| cosine similarity (mean-pooled embeddings) | - | "
        f"{_fmt(result.cosine_similarity)} |",
        f"| top-1 agreement | - | {_fmt(result.top1_agreement)} |",
    ]
    return rows


def _gate_section(result: Result, gate: dict[str, Any] | None) -> list[str]:
    lines = [
        "## Quality gate",
        "",
        f"Verdict: **{result.quality_gate or 'n/a'}** (bounds: `{json.dumps(gate or {})}`)",
        "",
    ]
    bounds = [row for row in _GATE_ROWS if (gate or {}).get(row[0]) is not None]
    if bounds:
        lines += ["| bound | limit | measured |", "|---|---|---|"]
        for key, label, op, attr in bounds:
            lines.append(
                f"| {label} | {op} {_fmt((gate or {})[key])} | {_fmt(getattr(result, attr))} |"
            )
        lines.append("")
    else:
        lines += ["No bound was requested.", ""]
    return lines


def _candidates_section(result: Result) -> list[str]:
    if not result.candidates:
        return []
    lines = [
        "## Candidates tried",
        "",
        "| method | params | size (bytes) | ratio | cosine | top-1 | ppl +% | gate | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result.candidates:
        lines.append(
            f"| {c.method} | `{json.dumps(c.params, sort_keys=True)}` | "
            f"{_fmt(c.optimized_size_bytes)} | {_fmt(c.compression_ratio)} | "
            f"{_fmt(c.cosine_similarity)} | {_fmt(c.top1_agreement)} | "
            f"{_fmt(c.perplexity_increase_percent)} | {c.quality_gate or 'n/a'} | "
            f"{c.error or ''} |"
        )
    return [*lines, ""]


def _reproducibility_section(record: Reproducibility | None) -> list[str]:
    if record is None:
        return []
    cal = (
        f"{record.calibration_samples} texts from {record.calibration_source}, "
        f"`{record.calibration_digest}`"
        if record.calibration_digest
        else "none (no method needed calibration)"
    )
    lines = [
        "## Reproducibility",
        "",
        "The same spec on the same inputs with these versions reproduces this artifact "
        "(also in `results.json`, key `reproducibility`).",
        "",
        "| item | value |",
        "|---|---|",
        f"| source | `{record.source_uri}` |",
        f"| source revision | `{record.source_revision}` |",
        f"| calibration texts | {cal} |",
        f"| evaluation texts | {record.evaluation_samples} texts, `{record.evaluation_digest}` |",
        f"| seed | {record.seed} |",
    ]
    lines += [f"| {lib} | {version} |" for lib, version in record.library_versions.items()]
    return [*lines, ""]


def _load_section(method: str, task: str, load_path: str) -> list[str]:
    where = (
        "the folder holding this card (download the artifact first)"
        if load_path == "."
        else "where kubequant published the artifact"
    )
    return [
        "## How to load",
        "",
        f"`path` is {where}.",
        "",
        "```python",
        load_snippet(method, task, load_path).rstrip("\n"),
        "```",
        "",
    ]


def model_card(
    result: Result,
    *,
    source_uri: str,
    task: str,
    gate: dict[str, Any] | None,
    digest_value: str,
    spec: dict[str, Any] | None = None,
    reproducibility: Reproducibility | None = None,
    source_dir: Path | None = None,
    artifact_dir: Path | None = None,
    load_path: str = ".",
) -> str:
    """README.md for the artifact: Hub metadata, every measured figure and the gate, the
    spec, the reproducibility record and how to load it."""
    from huggingface_hub import ModelCard, ModelCardData

    meta = card_metadata(
        result, source_uri=source_uri, task=task, source_dir=source_dir, artifact_dir=artifact_dir
    )
    data = ModelCardData(**meta)
    method = result.method or ""
    params = json.dumps(result.params, sort_keys=True) if result.params else "{} (defaults)"
    title = meta.get("base_model") or source_uri.rstrip("/").rsplit("/", 1)[-1]
    lines = [
        f"# {title}, quantized ({method})",
        "",
        "Produced by kubequant. Every figure below was measured on this artifact as written and "
        "reloaded from disk, against the original model on the same inputs.",
        "",
        f"- Source: `{source_uri}`",
        f"- Task: `{task}`",
        f"- Method: `{method}`",
        f"- Params: `{params}`",
        f"- Digest: `{digest_value}` (every file except README.md, results.json and "
        f"{COMPLETE_MARKER}; see results.json)",
        "",
        "## Results",
        "",
        *_results_table(result),
        "",
        *_gate_section(result, gate),
        *_candidates_section(result),
    ]
    if spec is not None:
        lines += ["## Spec", "", "```yaml", spec_yaml(spec).rstrip("\n"), "```", ""]
    lines += _reproducibility_section(reproducibility)
    if method:
        lines += _load_section(method, task, load_path)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    text: str = str(card)
    return text


def write_results_file(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
