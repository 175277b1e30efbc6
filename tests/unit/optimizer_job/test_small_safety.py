"""The smaller safety items of issue 12 (finding 7).

Duplicate YAML keys, the termination log outside a pod, and storage libraries' DEBUG logs
carrying the access key id. Artifact file modes, symlinked outputs and leftover temporary
folders are in test_output_safety.py (test_published_files_are_world_readable_...,
test_output_given_as_a_symlink_is_refused_at_the_check,
test_leftover_temporary_folders_are_cleaned_by_the_next_run).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kubequant_api.constants import ExitCode
from optimizer_job.report.termination import KUBERNETES_TERMINATION_LOG, TerminationMessageReporter
from optimizer_job.settings import EngineSettings, load_settings
from optimizer_job.storage import OutputSink, fetch_model
from tests.fixtures.storage import S3_ACCESS_KEY, EngineEnv, S3Env, run_engine

MANIFEST = """\
apiVersion: kubequant.io/v1alpha1
kind: ModelOptimization
metadata:
  name: dup
spec:
  model:
    uri: file:///models/a
  method: torchao-int8-weight
  output:
    uri: file:///out/a
  method: gptq
"""


def test_a_duplicate_yaml_key_is_refused_naming_the_key_and_its_lines(
    tmp_path: Path, engine_env: EngineEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(MANIFEST)
    code, text = run_engine(["validate", "-f", str(path)], capsys)
    assert code == int(ExitCode.INVALID_SPEC), text
    assert "duplicate key 'method'" in text and "first on line 8" in text and "line 11" in text
    # the same keys at different levels are fine
    path.write_text(MANIFEST.replace("  method: gptq\n", ""))
    code, text = run_engine(["validate", "-f", str(path)], capsys)
    assert code == 0 and "duplicate key" not in text, text


def test_the_termination_log_is_written_only_inside_a_pod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    existed = KUBERNETES_TERMINATION_LOG.exists()
    TerminationMessageReporter(KUBERNETES_TERMINATION_LOG).finish(ExitCode.SUCCESS, {})
    assert KUBERNETES_TERMINATION_LOG.exists() == existed
    # an explicitly configured file is written anywhere
    own = tmp_path / "termination"
    TerminationMessageReporter(own).finish(ExitCode.SUCCESS, {"exitCode": 0})
    assert own.read_text()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EngineSettings:
    monkeypatch.setenv("KUBEQUANT_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("KUBEQUANT_CACHE_DIR", str(tmp_path / "hf-cache"))
    return load_settings()


def test_storage_at_debug_never_logs_the_access_key_id(
    s3_env: S3Env, settings: EngineSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the engine at KUBEQUANT_LOG_LEVEL=DEBUG
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "kubequant-artifact.json").write_text("{}")
    (staged / "config.json").write_text("{}")
    uri = f"s3://{s3_env.bucket}/m"
    OutputSink(uri, settings, overwrite=False).publish(staged, None)
    fetch_model(uri, settings)
    assert caplog.records  # the run did log at DEBUG
    assert S3_ACCESS_KEY not in caplog.text
    assert all(logging.getLogger(n).getEffectiveLevel() >= logging.INFO for n in ("botocore",))
