"""GPTQ and AWQ calibrate the model offloaded to disk: nothing holds the whole model, and the
artifact is the one calibrating it on the host gives."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from kubequant_api.constants import Task
from kubequant_api.models import METHOD_PARAMS
from optimizer_job.methods.base import QuantizeRequest, get_method
from optimizer_job.methods.llmcompressor_methods import load_offloaded, save_shard_bytes, unpacked

from .conftest import CALIBRATION_SAMPLES_PER_METHOD, LM_MAX_LENGTH

pytestmark = pytest.mark.slow


def _as_torch_bin(source: Path, dest: Path) -> Path:
    """A copy of ``source`` with its weights as ``pytorch_model.bin``: a checkpoint that can
    only be loaded whole (no safetensors to leave on disk)."""
    import torch
    from safetensors.torch import load_file

    dest.mkdir()
    state = {}
    for path in source.iterdir():
        if path.suffix == ".safetensors":
            state.update(load_file(str(path)))
        elif path.is_file() and path.name != "model.safetensors.index.json":
            shutil.copy2(path, dest / path.name)
    torch.save(state, dest / "pytorch_model.bin")
    return dest


def _tensors(artifact: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    found: dict[str, object] = {}
    for path in sorted(artifact.glob("*.safetensors")):
        found.update(load_file(str(path)))
    return found


def test_a_safetensors_checkpoint_loads_with_no_weight_in_memory(
    tiny_lm_path: Path, tmp_path: Path
) -> None:
    import torch

    model = load_offloaded(Task.CAUSAL_LM, tiny_lm_path, torch.float32, tmp_path)
    assert model is not None
    from compressed_tensors.offload import disable_onloading

    with disable_onloading():
        devices = {p.device.type for p in model.parameters()}
    assert devices == {"meta"}, f"parameters held on {devices}"
    bin_copy = _as_torch_bin(tiny_lm_path, tmp_path / "bin")
    assert load_offloaded(Task.CAUSAL_LM, bin_copy, torch.float32, tmp_path / "o") is None


def _quantize(method: str, source: Path, out: Path, calibration: list[str]) -> None:
    out.mkdir()
    get_method(method).quantize(
        QuantizeRequest(
            source_dir=source,
            out_dir=out,
            task=Task.CAUSAL_LM,
            params=METHOD_PARAMS[method].model_validate({}),
            calibration=tuple(calibration[: CALIBRATION_SAMPLES_PER_METHOD[method]]),
            sequence_length=LM_MAX_LENGTH,
        )
    )


def _digests(model_dir: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model_dir.iterdir())
        if p.is_file()
    }


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_calibrated_on_disk_the_artifact_equals_the_one_calibrated_on_the_host(
    method: str, tiny_lm_path: Path, calibration_subset: list[str], tmp_path: Path
) -> None:
    """The offloaded run reads the source shards in place and writes what it calibrates
    elsewhere: the source is unchanged after it, and the offload folder is gone."""
    import torch

    source = tmp_path / "source"
    shutil.copytree(tiny_lm_path, source)
    before = _digests(source)
    work = tmp_path / "work"
    work.mkdir()
    _quantize(method, source, work / "disk", calibration_subset)
    assert _digests(source) == before, "the offloaded calibration wrote into the source"
    assert [p.name for p in work.iterdir()] == ["disk"], "the offload folder was left"
    _quantize(
        method, _as_torch_bin(source, tmp_path / "bin"), tmp_path / "host", calibration_subset
    )
    disk, host = _tensors(work / "disk"), _tensors(tmp_path / "host")
    assert sorted(disk) == sorted(host)
    differ = [k for k in disk if not torch.equal(disk[k], host[k])]  # type: ignore[arg-type]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def test_the_artifact_shards_scale_with_the_checkpoint() -> None:
    mib, gib = 1024**2, 1024**3
    assert save_shard_bytes(200 * mib) == 32 * mib
    assert save_shard_bytes(16 * gib) == gib
    assert save_shard_bytes(140 * gib) == 5 * gib


def test_what_the_decompressing_reload_keeps_mapped_is_what_is_not_packed() -> None:
    names = [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight_packed",
        "model.layers.0.self_attn.q_proj.weight_scale",
        "model.layers.0.self_attn.q_proj.weight_shape",
        "model.layers.0.input_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    assert unpacked(names) == {
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    }
