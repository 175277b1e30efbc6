"""Storage: URIs, redaction, atomic publishing (local and on a real S3 server), hf:// cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kubequant_api.constants import ARTIFACT_META_FILE, COMPLETE_MARKER
from kubequant_api.errors import InvalidSpecError
from optimizer_job import storage
from optimizer_job.redact import redact, scrub
from optimizer_job.settings import EngineSettings, load_settings
from optimizer_job.storage import OutputSink, StorageUnavailableError, fetch_model
from tests.fixtures.storage import S3_SECRET_KEY, S3Env, make_hf_cache


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EngineSettings:
    monkeypatch.setenv("KUBEQUANT_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("KUBEQUANT_CACHE_DIR", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("KUBEQUANT_PVC_MOUNT_ROOT", str(tmp_path / "pvc"))
    return load_settings()


def staged_artifact(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(b"weights" * 100)
    (root / ARTIFACT_META_FILE).write_text(json.dumps({"method": "x"}))
    (root / "sub").mkdir()
    (root / "sub" / "extra.json").write_text("{}")
    return root


def test_redact_removes_userinfo_and_query() -> None:
    assert redact("s3://AKIA:secret@bucket/p?X-Amz-Signature=abc") == "s3://***@bucket/p"
    assert redact("hf://org/model@main") == "hf://org/model@main"
    assert redact("file:///a/b") == "file:///a/b"


def test_scrub_masks_secret_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_API_TOKEN", "tok-very-secret-1")
    assert scrub("boom tok-very-secret-1 boom") == "boom *** boom"


def test_pvc_uri_resolves_under_the_mount_root(settings: EngineSettings) -> None:
    loc = storage.locate("pvc://models/a/b", settings, "spec.model.uri")
    assert loc.path == str(settings.pvc_mount_root / "models" / "a" / "b")
    with pytest.raises(InvalidSpecError, match=r"spec\.model\.uri.*'\.\.'"):
        storage.locate("pvc://models/../etc", settings, "spec.model.uri")


def test_local_publish_is_complete_and_refuses_overwrite(
    settings: EngineSettings, tmp_path: Path
) -> None:
    staged = staged_artifact(tmp_path / "staged")
    dest = tmp_path / "out" / "model"
    sink = OutputSink(f"file://{dest}", settings, overwrite=False)
    sink.check()
    sink.publish(staged, "sha256:abc")
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [COMPLETE_MARKER, "model.safetensors", ARTIFACT_META_FILE, "sub"]
    )
    assert json.loads((dest / COMPLETE_MARKER).read_text())["digest"] == "sha256:abc"
    assert not [p for p in dest.parent.iterdir() if "kubequant-" in p.name]
    with pytest.raises(InvalidSpecError, match=r"spec\.output\.uri.*already holds a complete"):
        OutputSink(f"file://{dest}", settings, overwrite=False).check()
    (staged / "model.safetensors").write_bytes(b"new")
    OutputSink(f"file://{dest}", settings, overwrite=True).publish(staged, "sha256:def")
    assert (dest / "model.safetensors").read_bytes() == b"new"
    assert json.loads((dest / COMPLETE_MARKER).read_text())["digest"] == "sha256:def"


def test_local_publish_failure_leaves_nothing(
    settings: EngineSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = staged_artifact(tmp_path / "staged")
    dest = tmp_path / "out" / "model"
    real_rename = Path.rename

    def failing_rename(self: Path, target: Path) -> Path:
        if "kubequant-tmp" in self.name:
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(StorageUnavailableError, match=r"spec\.output\.uri"):
        OutputSink(f"file://{dest}", settings, overwrite=False).publish(staged, None)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_foreign_nonempty_output_is_refused(settings: EngineSettings, tmp_path: Path) -> None:
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(InvalidSpecError, match=r"spec\.output\.uri.*not empty"):
        OutputSink(f"file://{dest}", settings, overwrite=False).check()


def test_unwritable_output_names_the_field(settings: EngineSettings, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = "file:///proc/kubequant-cannot-write/out"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = f"file://{ro}/out"
    with pytest.raises((InvalidSpecError, StorageUnavailableError), match=r"spec\.output\.uri"):
        OutputSink(target, settings, overwrite=False).check()


def test_s3_publish_and_fetch_roundtrip(
    s3_env: S3Env, settings: EngineSettings, tmp_path: Path
) -> None:
    staged = staged_artifact(tmp_path / "staged")
    uri = f"s3://{s3_env.bucket}/models/m1"
    sink = OutputSink(uri, settings, overwrite=False)
    sink.check()
    sink.publish(staged, "sha256:1")
    keys = s3_env.list_keys()
    assert keys == sorted(
        f"models/m1/{k}"
        for k in (COMPLETE_MARKER, "model.safetensors", ARTIFACT_META_FILE, "sub/extra.json")
    )
    with pytest.raises(InvalidSpecError, match="already holds a complete artifact"):
        OutputSink(uri, settings, overwrite=False).check()
    (staged / "sub" / "extra.json").unlink()
    OutputSink(uri, settings, overwrite=True).publish(staged, "sha256:2")
    assert "models/m1/sub/extra.json" not in s3_env.list_keys()
    got = fetch_model(uri, settings)
    assert (got / "model.safetensors").read_bytes() == b"weights" * 100
    assert (got / COMPLETE_MARKER).is_file()


def test_s3_failed_publish_leaves_nothing(
    s3_env: S3Env, settings: EngineSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = staged_artifact(tmp_path / "staged")
    uri = f"s3://{s3_env.bucket}/models/broken"
    sink = OutputSink(uri, settings, overwrite=False)
    real_copy = sink.loc.fs.copy
    calls = {"n": 0}

    def flaky_copy(src: str, dst: str, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("connection reset by peer")
        real_copy(src, dst, **kw)

    monkeypatch.setattr(sink.loc.fs, "copy", flaky_copy)
    with pytest.raises(StorageUnavailableError, match=r"spec\.output\.uri"):
        sink.publish(staged, None)
    assert s3_env.list_keys() == []


def test_s3_missing_bucket_and_wrong_credentials(
    s3_env: S3Env, settings: EngineSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.model\.uri.*does not exist"):
        fetch_model("s3://kq-no-such-bucket/m", settings)
    from moto import settings as moto_settings

    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY + "-wrong")
    with pytest.raises(InvalidSpecError, match=r"spec\.output\.uri.*access denied") as info:
        OutputSink(f"s3://{s3_env.bucket}/x", settings, overwrite=False).check()
    assert S3_SECRET_KEY not in str(info.value)


def test_unreachable_s3_endpoint_is_retryable(
    settings: EngineSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.storage import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageUnavailableError, match=r"spec\.output\.uri.*s3://bucket-x/out"):
        OutputSink("s3://bucket-x/out", settings, overwrite=False).check()


def test_hf_uri_resolves_from_a_local_cache_offline(
    settings: EngineSettings, minilm_path: Path
) -> None:
    snapshot = make_hf_cache(settings.cache_dir, "sentence-transformers/mini", "main", minilm_path)
    assert fetch_model("hf://sentence-transformers/mini@main", settings) == snapshot
    assert fetch_model("hf://sentence-transformers/mini", settings) == snapshot
    with pytest.raises(InvalidSpecError, match=r"spec\.model\.uri.*not in the model cache"):
        fetch_model("hf://sentence-transformers/mini@v9", settings)
    probe = storage.probe_source("hf://sentence-transformers/mini@main", settings)
    assert probe["config"]["model_type"] == "bert"
