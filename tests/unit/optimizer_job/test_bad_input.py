"""Every bad input of issue 2: its own exit code and a message naming the field or file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.storage import (
    S3_SECRET_KEY,
    EngineEnv,
    S3Env,
    free_port,
    run_engine,
    write_manifest,
)


def spec(model: Path | str, out: Path | str, **extra: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "model": {"uri": model if isinstance(model, str) else f"file://{model}"},
        "method": "torchao-int8-weight",
        "evaluation": {"samples": 4},
        "output": {"uri": out if isinstance(out, str) else f"file://{out}"},
    }
    s.update(extra)
    return s


def run(
    tmp_path: Path, s: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, dict[str, Any] | None]:
    manifest = write_manifest(tmp_path / "bad.yaml", s)
    results = tmp_path / "results.json"
    code, text = run_engine(["run", "-f", str(manifest), "--results", str(results)], capsys)
    doc = json.loads(results.read_text()) if results.exists() else None
    return code, text, doc


def test_unknown_method(
    tmp_path: Path, minilm_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text, _ = run(tmp_path, {**spec(minilm_path, tmp_path / "o"), "method": "int3"}, capsys)
    assert code == 2
    assert "bad.yaml: spec.method" in text and "int3" in text


def test_params_that_do_not_fit_the_method(
    tmp_path: Path, minilm_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text, _ = run(tmp_path, spec(minilm_path, tmp_path / "o", params={"bits": 4}), capsys)
    assert code == 2
    assert "spec.params.bits" in text and "torchao-int8-weight" in text
    code, text, _ = run(
        tmp_path,
        {**spec(minilm_path, tmp_path / "o", params={"bits": 5}), "method": "gptq"},
        capsys,
    )
    assert code == 2 and "spec.params.bits" in text


def test_task_that_does_not_fit_the_method(
    tmp_path: Path, minilm_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, doc = run(tmp_path, {**spec(minilm_path, tmp_path / "o"), "method": "awq"}, capsys)
    assert code == 2
    assert doc is not None and doc["reason"] == "InvalidSpec"
    assert doc["message"].startswith(
        "spec.method: method awq does not support task feature-extraction"
    )
    assert not (tmp_path / "o").exists()


def test_missing_model_directory(
    tmp_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, doc = run(tmp_path, spec(tmp_path / "nope", tmp_path / "o"), capsys)
    assert code == 2 and doc is not None
    assert doc["message"].startswith("spec.model.uri:") and "does not exist" in doc["message"]


def test_model_without_weights(
    tmp_path: Path, minilm_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m"
    model.mkdir()
    shutil.copy2(minilm_path / "config.json", model)
    code, _, doc = run(tmp_path, spec(model, tmp_path / "o"), capsys)
    assert code == 2 and doc is not None
    assert doc["message"].startswith("spec.model.uri:") and "no model weights" in doc["message"]


def test_corrupt_config_json(
    tmp_path: Path, minilm_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m"
    shutil.copytree(minilm_path, model)
    (model / "config.json").write_text("{not json")
    code, _, doc = run(tmp_path, spec(model, tmp_path / "o"), capsys)
    assert code == 2 and doc is not None
    assert doc["message"].startswith("spec.model.uri:") and "config.json" in doc["message"]


def test_corrupt_weights(
    tmp_path: Path, minilm_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m"
    shutil.copytree(minilm_path, model)
    (model / "model.safetensors").write_bytes(b"\xff" * 4096)
    code, _, doc = run(tmp_path, spec(model, tmp_path / "o"), capsys)
    assert code == 2 and doc is not None
    assert doc["message"].startswith("spec.model.uri:")
    assert "cannot load the model" in doc["message"] or "cannot be loaded" in doc["message"]
    assert not (tmp_path / "o").exists()


def test_unwritable_output(
    tmp_path: Path, minilm_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, doc = run(tmp_path, spec(minilm_path, f"file://{blocker}/out"), capsys)
    assert code == 2 and doc is not None
    assert doc["message"].startswith("spec.output.uri:")


def test_unreachable_output_is_retryable(
    tmp_path: Path,
    minilm_path: Path,
    engine_env: EngineEnv,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, _, doc = run(tmp_path, spec(minilm_path, "s3://kq-out/model"), capsys)
    assert code == 1 and doc is not None
    assert doc["message"].startswith("spec.output.uri: cannot write to s3://kq-out/model")


def test_wrong_credentials(  # noqa: PLR0917
    tmp_path: Path,
    minilm_path: Path,
    engine_env: EngineEnv,
    s3_env: S3Env,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moto import settings as moto_settings

    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto checks keys
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-" + S3_SECRET_KEY)
    code, text, doc = run(tmp_path, spec(minilm_path, f"s3://{s3_env.bucket}/out"), capsys)
    assert code == 2 and doc is not None
    assert doc["message"].startswith("spec.output.uri:") and "access denied" in doc["message"]
    assert S3_SECRET_KEY not in text and S3_SECRET_KEY not in json.dumps(doc)
    assert S3_SECRET_KEY not in engine_env.termination_log.read_text()


def test_nonexistent_bucket_source(
    tmp_path: Path, engine_env: EngineEnv, s3_env: S3Env, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, doc = run(tmp_path, spec("s3://kq-missing-bucket/m", tmp_path / "o"), capsys)
    assert code == 2 and doc is not None
    assert doc["message"].startswith("spec.model.uri:") and "does not exist" in doc["message"]


def test_calibration_set_too_small(
    tmp_path: Path, tiny_lm_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"text": f"sample number {i}"}) + "\n" for i in range(3)))
    s = spec(
        tiny_lm_path,
        tmp_path / "o",
        method="gptq",
        calibration={"datasetUri": f"file://{data}", "samples": 16},
    )
    code, _, doc = run(tmp_path, s, capsys)
    assert code == 2 and doc is not None
    assert doc["message"].startswith("spec.calibration.samples:")
    assert "spec.calibration.datasetUri" in doc["message"] and "holds only 3" in doc["message"]


def test_calibration_file_without_text_field(
    tmp_path: Path, tiny_lm_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "calib.jsonl"
    data.write_text(json.dumps({"content": "x"}) + "\n")
    s = spec(
        tiny_lm_path, tmp_path / "o", method="gptq", calibration={"datasetUri": f"file://{data}"}
    )
    code, _, doc = run(tmp_path, s, capsys)
    assert code == 2 and doc is not None
    assert doc["message"].startswith("spec.calibration.datasetUri:") and "line 1" in doc["message"]


def test_gate_bound_that_the_task_does_not_measure(
    tmp_path: Path, minilm_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    s = spec(minilm_path, tmp_path / "o", evaluation={"qualityGate": {"minTop1Agreement": 0.9}})
    code, _, doc = run(tmp_path, s, capsys)
    assert code == 2 and doc is not None
    assert doc["message"].startswith("spec.evaluation.qualityGate.minTop1Agreement:")


def test_manifest_file_problems(
    tmp_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.yaml"
    code, text = run_engine(["run", "-f", str(missing)], capsys)
    assert code == 2 and f"{missing}: cannot read the manifest" in text
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: [unclosed")
    code, text = run_engine(["run", "-f", str(broken)], capsys)
    assert code == 2 and f"{broken}: not valid YAML" in text
