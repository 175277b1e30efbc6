"""Remote code only when asked (issue 12, finding 4).

A model whose config.json maps its classes (``auto_map``) to code shipped in the model folder
is refused with exit 2 naming ``spec.model.trustRemoteCode`` unless the spec sets it, before
transformers sees the model (so nothing is read from stdin, and a ``yes`` there runs nothing);
with the flag on, the model quantizes. The model is built here: a tiny BERT whose classes are
subclasses in ``configuration_kq.py`` / ``modeling_kq.py`` beside its weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.storage import EngineEnv, run_engine, write_manifest

REPO = Path(__file__).resolve().parents[3]

CONFIGURATION = """
from transformers import BertConfig


class KqConfig(BertConfig):
    model_type = "kq-remote-bert"
"""

MODELING = """
import os
from pathlib import Path

from transformers import BertModel

from .configuration_kq import KqConfig

if os.environ.get("KQ_REMOTE_SENTINEL"):
    Path(os.environ["KQ_REMOTE_SENTINEL"]).write_text("the model's code ran")


class KqModel(BertModel):
    config_class = KqConfig
"""


@pytest.fixture
def remote_code_model(tmp_path: Path, minilm_path: Path) -> Path:
    from transformers import BertConfig, BertModel

    out = tmp_path / "remote-model"
    base = json.loads((minilm_path / "config.json").read_text())
    config = BertConfig(
        vocab_size=base["vocab_size"],
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)  # type: ignore[no-untyped-call]
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (minilm_path / name).is_file():
            shutil.copy(minilm_path / name, out / name)
    (out / "configuration_kq.py").write_text(CONFIGURATION)
    (out / "modeling_kq.py").write_text(MODELING)
    doc = json.loads((out / "config.json").read_text())
    doc.update(
        model_type="kq-remote-bert",
        architectures=["KqModel"],
        auto_map={"AutoConfig": "configuration_kq.KqConfig", "AutoModel": "modeling_kq.KqModel"},
    )
    (out / "config.json").write_text(json.dumps(doc))
    return out


def spec(model: Path, out: Path, trust: bool) -> dict[str, object]:
    return {
        "model": {"uri": f"file://{model}", "trustRemoteCode": trust},
        "method": "torchao-int8-weight",
        "evaluation": {"samples": 4},
        "output": {"uri": f"file://{out}"},
    }


def test_auto_map_without_the_flag_is_refused_and_a_yes_on_stdin_runs_nothing(
    tmp_path: Path, remote_code_model: Path, engine_env: EngineEnv
) -> None:
    sentinel = tmp_path / "sentinel"
    manifest = write_manifest(tmp_path / "m.yaml", spec(remote_code_model, tmp_path / "o", False))
    env = {
        **os.environ,
        "KQ_REMOTE_SENTINEL": str(sentinel),
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "optimizer_job", "run", "-f", str(manifest)],
        cwd=REPO,
        env=env,
        input="yes\nyes\n",
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "spec.model.trustRemoteCode" in text and "auto_map" in text
    assert not sentinel.exists()
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_remote_code_model_quantizes_with_the_flag_on(
    tmp_path: Path,
    remote_code_model: Path,
    engine_env: EngineEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sentinel = tmp_path / "sentinel"
    monkeypatch.setenv("KQ_REMOTE_SENTINEL", str(sentinel))
    out = tmp_path / "o"
    manifest = write_manifest(tmp_path / "m.yaml", spec(remote_code_model, out, True))
    code, text = run_engine(["run", "-f", str(manifest)], capsys)
    assert code == 0, text
    assert sentinel.exists()  # the model's own class was used
    assert (out / "_KUBEQUANT_COMPLETE").is_file()
