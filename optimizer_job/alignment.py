"""Rewrite a safetensors file so that its tensors start on 64-byte boundaries.

A safetensors loader maps the file and hands out views into it, so a tensor's address is the
page-aligned mapping plus 8, plus the header's length, plus the tensor's offset: whatever the
writer happened to produce. CPU kernels with aligned vector loads crash on a view that is
not aligned: torch's ``_weight_int8pack_mm`` (quanto's int8 matmul for bf16 and fp16
activations) segfaults on int8 weights at an address that is 8 mod 16 (measured with torch
2.13 on the 0.1B synthetic Llama, where all 56 int8 matrices of quanto's artifact sat 40 mod
64; the tiny LM is fp32 and never takes that path). Loaded with quanto's own loader the
artifact crashed the first forward, in the engine's evaluation and in a user's process alike.

The format allows neither holes between tensors nor padding after them, but the header may
end in spaces and the tensors may be stored in any order. So the header is padded to make
the data start at a multiple of :data:`ALIGNMENT`, and the tensors whose byte length is a
multiple of it (every weight matrix of a real model) come first, each then aligned; the odd
sizes (scales, norms) follow. The bytes of every tensor are copied unchanged.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Final

from optimizer_job.loading import read_safetensors_header

ALIGNMENT: Final = 64
_COPY_CHUNK: Final = 64 * 1024 * 1024
_METADATA: Final = "__metadata__"


def _read_header(path: Path) -> tuple[int, dict[str, Any]]:
    found = read_safetensors_header(path)
    if found is None:
        raise ValueError(f"{path} is not a safetensors file")
    return found


def _misaligned(length: int, header: dict[str, Any], alignment: int) -> list[str]:
    start = 8 + length
    found = []
    for name, entry in header.items():
        if name == _METADATA:
            continue
        begin, end = entry["data_offsets"]
        if (end - begin) % alignment == 0 and (start + begin) % alignment:
            found.append(name)
    return found


def misaligned(path: Path, alignment: int = ALIGNMENT) -> list[str]:
    """The tensors of ``path`` whose byte length is a multiple of ``alignment`` but whose
    data does not start on such a boundary in the file."""
    return _misaligned(*_read_header(path), alignment)


def align_safetensors(path: Path, alignment: int = ALIGNMENT) -> bool:
    """Rewrite ``path`` in place (through a sibling temporary file) with every tensor whose
    length is a multiple of ``alignment`` aligned to it; False when it already was."""
    length, header = _read_header(path)
    if not _misaligned(length, header, alignment):
        return False
    source_start = 8 + length
    tensors = [(name, entry) for name, entry in header.items() if name != _METADATA]
    tensors.sort(key=lambda item: item[1]["data_offsets"][0])
    sized = [t for t in tensors if _nbytes(t[1]) % alignment == 0]
    rest = [t for t in tensors if _nbytes(t[1]) % alignment]
    layout: dict[str, Any] = {}
    if _METADATA in header:
        layout[_METADATA] = header[_METADATA]
    copies: list[tuple[int, int]] = []  # (source offset, length), in the new order
    offset = 0
    for name, entry in sized + rest:
        size = _nbytes(entry)
        layout[name] = {**entry, "data_offsets": [offset, offset + size]}
        copies.append((source_start + entry["data_offsets"][0], size))
        offset += size
    encoded = json.dumps(layout, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % alignment)
    tmp = path.with_name(path.name + ".aligning")
    try:
        with path.open("rb") as src, tmp.open("wb") as dst:
            dst.write(struct.pack("<Q", len(encoded)))
            dst.write(encoded)
            for where, size in copies:
                src.seek(where)
                left = size
                while left:
                    chunk = src.read(min(left, _COPY_CHUNK))
                    if not chunk:
                        raise OSError(f"{path}: the file ends inside a tensor")
                    dst.write(chunk)
                    left -= len(chunk)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _nbytes(entry: dict[str, Any]) -> int:
    begin, end = entry["data_offsets"]
    return int(end) - int(begin)
