"""A safetensors file rewritten with its tensors on 64-byte boundaries: the same tensors
and metadata, through safetensors' own loader, and every weight matrix aligned in the map."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from optimizer_job.alignment import ALIGNMENT, align_safetensors, misaligned


def _tensors() -> dict[str, torch.Tensor]:
    # what quanto writes: 2-byte scales between the int8 matrices put them off the boundary
    return {
        "a.input_scale": torch.tensor(0.5, dtype=torch.bfloat16),
        "a.weight._data": torch.randint(-127, 127, (64, 96), dtype=torch.int8),
        "a.weight._scale": torch.rand(64, 1, dtype=torch.bfloat16),
        "b.norm": torch.rand(33, dtype=torch.bfloat16),
        "b.weight._data": torch.randint(-127, 127, (128, 64), dtype=torch.int8),
        "embed": torch.rand(40, 32, dtype=torch.bfloat16),
    }


def _data_start(path: Path) -> int:
    with path.open("rb") as fh:
        return 8 + int(struct.unpack("<Q", fh.read(8))[0])


def test_every_weight_matrix_lands_on_the_boundary_and_nothing_changes(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    tensors = _tensors()
    save_file(tensors, str(path), metadata={"format": "pt"})
    path.chmod(0o600)
    before = misaligned(path)
    assert "a.weight._data" in before or "b.weight._data" in before  # the case this is for

    assert align_safetensors(path) is True
    assert misaligned(path) == []
    assert path.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.aligning"))
    start = _data_start(path)
    assert start % ALIGNMENT == 0
    with path.open("rb") as fh:
        fh.seek(8)
        header = json.loads(fh.read(start - 8))
    assert header["__metadata__"] == {"format": "pt"}
    for name in ("a.weight._data", "b.weight._data", "embed"):  # lengths multiple of 64
        assert (start + header[name]["data_offsets"][0]) % ALIGNMENT == 0, name
    # the loader's own views: the int8 matrices sit on the boundary in the mapped file
    loaded = load_file(str(path))
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
    # already aligned: left as it is
    assert align_safetensors(path) is False


def test_a_truncated_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(OSError, match="ends inside a tensor"):
        align_safetensors(path)
    assert path.read_bytes() == data[:-100]
    assert not list(tmp_path.glob("*.aligning"))
