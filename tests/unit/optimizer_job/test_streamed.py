"""Quantize-while-loading from streamed shards: the same model as transformers' own load
from the path, without the checkpoint mapped into the process, and the fallbacks."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from kubequant_api.constants import Task
from optimizer_job import streamed


@pytest.fixture(scope="module")
def sharded_bf16_lm(tiny_lm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LM as a sharded bf16 checkpoint (several shards and an index), with a
    generation config that differs from the model config's defaults."""
    import torch
    from transformers import AutoModelForCausalLM

    target = tmp_path_factory.mktemp("streamed") / "tiny-lm-sharded"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_path), dtype=torch.bfloat16)
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(str(target), max_shard_size="2MB")
    for path in tiny_lm_path.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and not (target / path.name).exists():
            shutil.copy2(path, target / path.name)
    assert len(list(target.glob("*.safetensors"))) > 2
    return target


def _int8_config() -> Any:
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def _load_int8(model_dir: Path) -> Any:
    import torch

    return streamed.load_streamed(
        Task.CAUSAL_LM,
        model_dir,
        trust_remote_code=False,
        dtype=torch.bfloat16,
        quantization_config=_int8_config(),
        device_map="cpu",
    )


def _mapped(paths: list[Path]) -> set[str]:
    """Which of ``paths`` this process has mapped into memory now."""
    maps = Path("/proc/self/maps").read_text()
    return {p.name for p in paths if str(p.resolve()) in maps}


def _logits(model: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(torch.tensor([[1, 5, 9, 13, 2, 7]])).logits


def test_a_streamed_load_is_the_model_from_pretrained_gives_without_the_mapped_checkpoint(
    sharded_bf16_lm: Path,
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    shards = sorted(sharded_bf16_lm.glob("*.safetensors"))
    assert streamed.shard_files(sharded_bf16_lm) == shards

    from_path = AutoModelForCausalLM.from_pretrained(
        str(sharded_bf16_lm),
        dtype=torch.bfloat16,
        quantization_config=_int8_config(),
        device_map="cpu",
    )
    # transformers' own load leaves the shards mapped: its unquantized tensors view them
    assert _mapped(shards)
    expected = _logits(from_path)
    del from_path
    gc.collect()
    assert not _mapped(shards)

    model = _load_int8(sharded_bf16_lm)
    assert not _mapped(shards), "the streamed model holds views into the checkpoint's maps"
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
    assert torch.equal(_logits(model), expected)
    assert model.generation_config.max_new_tokens == 7
    assert model.name_or_path == str(sharded_bf16_lm)


def test_a_streamed_artifact_saves_and_reloads(sharded_bf16_lm: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = _load_int8(sharded_bf16_lm)
    model.save_pretrained(str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["quantization_config"]["quant_method"] == "torchao"
    assert (
        json.loads((tmp_path / "out" / "generation_config.json").read_text())["max_new_tokens"] == 7
    )
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), device_map="cpu")
    assert torch.equal(_logits(reloaded), _logits(model))


def test_what_cannot_stream_loads_from_its_path(
    sharded_bf16_lm: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:

    # an index naming a shard that is not there; .bin weights
    broken = tmp_path / "broken"
    shutil.copytree(sharded_bf16_lm, broken)
    index = json.loads((broken / streamed.INDEX_FILE).read_text())
    index["weight_map"]["extra.weight"] = "model-99999-of-99999.safetensors"
    (broken / streamed.INDEX_FILE).write_text(json.dumps(index))
    assert streamed.shard_files(broken) is None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pytorch_model.bin").write_bytes(b"")
    assert streamed.shard_files(bin_dir) is None

    # a model that ships its own code is left to from_pretrained (and trust_remote_code)
    remote = tmp_path / "remote"
    shutil.copytree(sharded_bf16_lm, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    (remote / "config.json").write_text(json.dumps(config))
    with caplog.at_level("INFO", logger="optimizer_job.streamed"):
        model = _load_int8(remote)
    assert "not streamed" in caplog.text
    assert type(model.model.layers[0].mlp.up_proj.weight).__name__ == "Int8Tensor"
