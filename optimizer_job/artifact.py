"""What an artifact folder carries besides the model: tokenizer, metadata, results, card, digest.

The digest is ``sha256:`` + the SHA-256 of a manifest text with one line per file,
``<relative path>\\t<size>\\t<sha256 hex>\\n``, sorted by path. It covers every file of the
artifact except ``results.json``, ``README.md`` (both quote the digest) and the completion
marker.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final

from kubequant_api.constants import COMPLETE_MARKER, MODEL_CARD_FILE, RESULTS_FILE
from kubequant_api.models import Result

DIGEST_EXCLUDED: Final = frozenset({RESULTS_FILE, MODEL_CARD_FILE, COMPLETE_MARKER})
_CHUNK: Final = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest(root: Path) -> list[tuple[str, int, str]]:
    """(relative path, size, sha256) of every digested file, sorted by path."""
    entries = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in DIGEST_EXCLUDED:
            entries.append((rel, p.stat().st_size, file_sha256(p)))
    return sorted(entries)


def manifest_text(entries: list[tuple[str, int, str]]) -> str:
    return "".join(f"{rel}\t{size}\t{sha}\n" for rel, size, sha in entries)


def digest(root: Path) -> str:
    return "sha256:" + hashlib.sha256(manifest_text(manifest(root)).encode()).hexdigest()


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


def model_card(
    result: Result, *, source_uri: str, task: str, gate: dict[str, Any] | None, digest_value: str
) -> str:
    """README.md for the artifact: method, params and every measured figure."""
    base = result.baseline.to_api() if result.baseline else {}
    opt = result.optimized.to_api() if result.optimized else {}
    params = json.dumps(result.params, sort_keys=True) if result.params else "{} (defaults)"
    lines = [
        "---",
        "tags: [kubequant, quantized]",
        f"kubequant_method: {result.method}",
        "---",
        "",
        f"# Quantized model ({result.method})",
        "",
        "Produced by kubequant. Every figure below was measured on this artifact as written and "
        "reloaded from disk, against the original model on the same inputs.",
        "",
        f"- Source: `{source_uri}`",
        f"- Task: `{task}`",
        f"- Method: `{result.method}`",
        f"- Params: `{params}`",
        f"- Quality gate: **{result.quality_gate}** (bounds: `{json.dumps(gate or {})}`)",
        f"- Digest: `{digest_value}` (every file except README.md, results.json and "
        f"{COMPLETE_MARKER}; see results.json)",
        "",
        "## Size",
        "",
        f"- Original weights: {_bytes(result.original_size_bytes)}",
        f"- Optimized weights: {_bytes(result.optimized_size_bytes)}",
        f"- Compression ratio: {_fmt(result.compression_ratio, 'x')}",
        "",
        "## Measurements",
        "",
        "| figure | original | optimized |",
        "|---|---|---|",
    ]
    for key, label, unit in (
        ("latencyMs", "latency (median, ms)", ""),
        ("tokensPerSecond", "throughput (tokens/s)", ""),
        ("perplexity", "perplexity", ""),
        ("peakMemoryBytes", "peak memory (bytes)", ""),
    ):
        lines.append(f"| {label} | {_fmt(base.get(key), unit)} | {_fmt(opt.get(key), unit)} |")
    lines += [
        "",
        "## Quality",
        "",
        f"- Speedup: {_fmt(result.speedup, 'x')}",
        f"- Perplexity increase: {_fmt(result.perplexity_increase_percent, '%')}",
        f"- Cosine similarity (mean-pooled embeddings): {_fmt(result.cosine_similarity)}",
        f"- Top-1 agreement: {_fmt(result.top1_agreement)}",
        "",
    ]
    if result.candidates:
        lines += [
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
        lines.append("")
    return "\n".join(lines)


def write_results_file(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
