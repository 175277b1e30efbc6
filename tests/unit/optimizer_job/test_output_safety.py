"""Outputs never destroy what kubequant did not write (issue 12, finding 1).

``overwrite: true`` replaces only kubequant's own earlier artifact (its completion marker lists
every file), the output may not be, contain or lie inside the model or the data the run reads,
replacement is a swap that a crash cannot turn into data loss, and the next run to the same
output restores or removes what a crashed run left.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kubequant_api.constants import ARTIFACT_META_FILE, COMPLETE_MARKER
from kubequant_api.errors import InvalidSpecError
from optimizer_job import artifact
from optimizer_job.settings import EngineSettings, load_settings
from optimizer_job.storage import SCRATCH_STALE_AFTER_S, OutputSink
from tests.fixtures.storage import EngineEnv, S3Env, run_engine, write_manifest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EngineSettings:
    monkeypatch.setenv("KUBEQUANT_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("KUBEQUANT_CACHE_DIR", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("KUBEQUANT_PVC_MOUNT_ROOT", str(tmp_path / "pvc"))
    return load_settings()


def staged_artifact(root: Path, weights: bytes = b"old-weights") -> Path:
    root.mkdir(parents=True)
    (root / "model.safetensors").write_bytes(weights)
    (root / "model.safetensors").chmod(0o600)  # what safetensors' writer leaves
    (root / ARTIFACT_META_FILE).write_text(json.dumps({"method": "x"}))
    (root / "sub").mkdir(mode=0o700)
    (root / "sub" / "extra.json").write_text("{}")
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def age(path: Path, seconds: float) -> None:
    """Make ``path`` and everything in it look ``seconds`` old (a crash long ago)."""
    when = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (when, when), follow_symlinks=False)


def scratch(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if "kubequant-tmp-" in p.name or "kubequant-old-" in p.name
    )


def manifest_for(tmp_path: Path, model: str, out: str, overwrite: bool) -> Path:
    spec = {
        "model": {"uri": model},
        "method": "torchao-int8-weight",
        "evaluation": {"samples": 4},
        "output": {"uri": out, "overwrite": overwrite},
    }
    return write_manifest(tmp_path / "run.yaml", spec)


# --------------------------------------------------------------------------- overlap with sources


def test_overwrite_never_deletes_the_source_model_or_foreign_files_on_its_pvc(
    tmp_path: Path,
    minilm_path: Path,
    engine_env: EngineEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pvc = tmp_path / "pvc"
    monkeypatch.setenv("KUBEQUANT_PVC_MOUNT_ROOT", str(pvc))
    shutil.copytree(minilm_path, pvc / "models" / "minilm")
    (pvc / "models" / "team-notes.txt").write_text("not kubequant's")
    before = tree(pvc)
    for out in ("pvc://models/", "pvc://models/minilm", "pvc://models/minilm/q"):
        code, text = run_engine(
            ["run", "-f", str(manifest_for(tmp_path, "pvc://models/minilm", out, True))], capsys
        )
        assert code == 2, text
        assert "spec.output.uri" in text and "spec.model.uri" in text and "overlaps" in text
        assert tree(pvc) == before
    # '..' and symlinks are resolved before comparing
    (tmp_path / "alias").symlink_to(pvc / "models")
    for out in (f"file://{pvc}/models/x/../minilm", f"file://{tmp_path}/alias/minilm/q"):
        code, text = run_engine(
            ["run", "-f", str(manifest_for(tmp_path, "pvc://models/minilm", out, True))], capsys
        )
        assert code == 2 and "overlaps" in text, text
    assert tree(pvc) == before


def test_output_overlapping_calibration_or_evaluation_data_is_refused(
    settings: EngineSettings, tmp_path: Path
) -> None:
    data = tmp_path / "data" / "texts.jsonl"
    data.parent.mkdir()
    data.write_text('{"text": "a"}\n')
    sink = OutputSink(
        f"file://{tmp_path}/data",
        settings,
        overwrite=True,
        protected=[("spec.evaluation.datasetUri", f"file://{data}")],
    )
    with pytest.raises(InvalidSpecError, match=r"spec\.output\.uri.*spec\.evaluation\.datasetUri"):
        sink.check()
    assert data.read_text() == '{"text": "a"}\n'


def test_output_given_as_a_symlink_is_refused_at_the_check(
    settings: EngineSettings, tmp_path: Path
) -> None:
    real = tmp_path / "real-out"
    real.mkdir()
    (tmp_path / "out-link").symlink_to(real)
    with pytest.raises(InvalidSpecError, match=r"spec\.output\.uri.*symbolic link"):
        OutputSink(f"file://{tmp_path}/out-link", settings, overwrite=False).check()


# --------------------------------------------------------------------------- only our own artifact


def test_a_foreign_directory_is_refused_even_with_overwrite_and_overwrite_is_not_suggested(
    tmp_path: Path,
    minilm_path: Path,
    engine_env: EngineEnv,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pvc = tmp_path / "pvc"
    monkeypatch.setenv("KUBEQUANT_PVC_MOUNT_ROOT", str(pvc))
    shared = pvc / "shared" / "models"
    shared.mkdir(parents=True)
    (shared / "someone-elses-model.bin").write_bytes(b"x" * 10)
    code, text = run_engine(
        [
            "run",
            "-f",
            str(manifest_for(tmp_path, f"file://{minilm_path}", "pvc://shared/models", True)),
        ],
        capsys,
    )
    assert code == 2, text
    assert "spec.output.uri" in text and "not a kubequant artifact" in text
    assert "spec.output.overwrite" not in text and "overwrite: true" not in text
    assert (shared / "someone-elses-model.bin").read_bytes() == b"x" * 10


def test_overwrite_replaces_only_an_artifact_whose_marker_lists_exactly_its_files(
    settings: EngineSettings, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "model"
    OutputSink(f"file://{dest}", settings, overwrite=False).publish(
        staged_artifact(tmp_path / "s1"), "sha256:old"
    )
    listed = json.loads((dest / COMPLETE_MARKER).read_text())["files"]
    assert set(listed) == {"model.safetensors", ARTIFACT_META_FILE, "sub/extra.json"}
    # someone put their own file into the artifact folder: it is no longer only ours
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(InvalidSpecError, match="not a kubequant artifact") as info:
        OutputSink(f"file://{dest}", settings, overwrite=True).check()
    assert "spec.output.overwrite" not in str(info.value)
    (dest / "mine.txt").unlink()
    # a file of the artifact changed size: not what kubequant wrote either
    (dest / "model.safetensors").write_bytes(b"edited by hand, longer than before")
    with pytest.raises(InvalidSpecError, match="not a kubequant artifact"):
        OutputSink(f"file://{dest}", settings, overwrite=True).check()


def test_an_artifact_from_before_markers_listed_files_is_recognised_by_its_digest(
    settings: EngineSettings, tmp_path: Path
) -> None:
    dest = staged_artifact(tmp_path / "legacy")
    (dest / COMPLETE_MARKER).write_text(json.dumps({"digest": artifact.digest(dest)}))
    OutputSink(f"file://{dest}", settings, overwrite=True).publish(
        staged_artifact(tmp_path / "s2", b"new"), "sha256:new"
    )
    assert (dest / "model.safetensors").read_bytes() == b"new"
    (dest / COMPLETE_MARKER).write_text(json.dumps({"digest": "sha256:" + "0" * 64}))
    with pytest.raises(InvalidSpecError, match="not a kubequant artifact"):
        OutputSink(f"file://{dest}", settings, overwrite=True).check()


def test_published_files_are_world_readable_whatever_the_library_wrote(
    settings: EngineSettings, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "model"
    OutputSink(f"file://{dest}", settings, overwrite=False).publish(
        staged_artifact(tmp_path / "s"), "sha256:x"
    )
    for p in [dest, *dest.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


# --------------------------------------------------------------------------- swap and crash


def test_a_pvc_claim_root_is_filled_and_replaced_in_place_without_leftovers(
    settings: EngineSettings, tmp_path: Path
) -> None:
    root = settings.pvc_mount_root / "out-claim"
    root.mkdir(parents=True)  # the claim root is the volume's mount point in the Job
    OutputSink("pvc://out-claim/", settings, overwrite=False).publish(
        staged_artifact(tmp_path / "s1"), "sha256:old"
    )
    assert set(tree(root)) == {
        "model.safetensors",
        ARTIFACT_META_FILE,
        "sub/extra.json",
        COMPLETE_MARKER,
    }
    new = staged_artifact(tmp_path / "s2", b"new")
    shutil.rmtree(new / "sub")
    OutputSink("pvc://out-claim/", settings, overwrite=True).publish(new, "sha256:new")
    assert set(tree(root)) == {"model.safetensors", ARTIFACT_META_FILE, COMPLETE_MARKER}
    assert (root / "model.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["model.safetensors", ARTIFACT_META_FILE, COMPLETE_MARKER]
    )
    assert not scratch(settings.pvc_mount_root)


CRASH_DURING_PUBLISH = """
import os, sys
from pathlib import Path
from optimizer_job.settings import load_settings
from optimizer_job.storage import OutputSink

uri, staged, target, nth = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
calls = {"n": 0}

def crash_on_nth(real):
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            os._exit(137)  # the pod is killed: no cleanup, no finally
        return real(*args, **kwargs)
    return wrapper

if target == "os.replace":
    os.replace = crash_on_nth(os.replace)
else:
    Path.rename = crash_on_nth(Path.rename)
OutputSink(uri, load_settings(), overwrite=True).publish(Path(staged), "sha256:new")
"""


def crash_publish(uri: str, staged: Path, target: str, nth: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_DURING_PUBLISH, uri, str(staged), target, str(nth)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 137, proc.stderr


@pytest.mark.parametrize("nth", [1, 2, 3, 4, 5, 6, 7, 8])
def test_a_crash_during_an_in_place_swap_never_loses_the_previous_artifact(
    settings: EngineSettings, tmp_path: Path, nth: int
) -> None:
    root = settings.pvc_mount_root / "claim"
    root.mkdir(parents=True)
    OutputSink("pvc://claim/", settings, overwrite=False).publish(
        staged_artifact(tmp_path / "s1"), "sha256:old"
    )
    old = tree(root)
    # moves: marker, 3 old files out, 3 new files in, new marker (8): crash before each of them
    crash_publish("pvc://claim/", staged_artifact(tmp_path / "s2", b"new"), "os.replace", nth)
    assert scratch(root)  # the crash left its scratch folders
    if nth > 1:  # the marker is gone: readers see no artifact, never a mix
        assert not (root / COMPLETE_MARKER).exists()
        with pytest.raises(InvalidSpecError):  # a recent leftover may be a live run's
            OutputSink("pvc://claim/", settings, overwrite=True).check()
    for p in root.iterdir():
        if p.name in scratch(root):
            age(p, SCRATCH_STALE_AFTER_S + 60)
    OutputSink("pvc://claim/", settings, overwrite=True).check()
    assert tree(root) == old
    assert not scratch(root)


def test_a_crash_between_the_two_renames_of_a_folder_swap_is_restored(
    settings: EngineSettings, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "model"
    OutputSink(f"file://{dest}", settings, overwrite=False).publish(
        staged_artifact(tmp_path / "s1"), "sha256:old"
    )
    old = tree(dest)
    crash_publish(f"file://{dest}", staged_artifact(tmp_path / "s2", b"new"), "Path.rename", 2)
    assert not dest.exists()
    assert len(scratch(dest.parent)) == 2  # .model.kubequant-old-*, .model.kubequant-tmp-*
    for p in dest.parent.iterdir():
        age(p, SCRATCH_STALE_AFTER_S + 60)
    OutputSink(f"file://{dest}", settings, overwrite=True).check()
    assert tree(dest) == old
    assert not scratch(dest.parent)


def test_leftover_temporary_folders_are_cleaned_by_the_next_run(
    settings: EngineSettings, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "model"
    leftover = dest.parent / ".model.kubequant-tmp-deadbeef"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    age(leftover, SCRATCH_STALE_AFTER_S + 60)
    other = dest.parent / ".other.kubequant-tmp-deadbeef"  # another output's: not ours
    other.mkdir()
    age(other, SCRATCH_STALE_AFTER_S + 60)
    OutputSink(f"file://{dest}", settings, overwrite=False).publish(
        staged_artifact(tmp_path / "s"), None
    )
    assert scratch(dest.parent) == [other.name]


# --------------------------------------------------------------------------- object store


def test_s3_foreign_prefix_is_refused_with_overwrite_and_a_replacement_keeps_nothing_stale(
    s3_env: S3Env, settings: EngineSettings, tmp_path: Path
) -> None:
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="shared/theirs.bin", Body=b"x")
    with pytest.raises(InvalidSpecError, match="not a kubequant artifact"):
        OutputSink(f"s3://{s3_env.bucket}/shared", settings, overwrite=True).check()
    assert s3_env.list_keys() == ["shared/theirs.bin"]
    uri = f"s3://{s3_env.bucket}/models/m"
    OutputSink(uri, settings, overwrite=False).publish(staged_artifact(tmp_path / "a"), "sha256:1")
    new = staged_artifact(tmp_path / "b", b"new")
    (new / "sub" / "extra.json").unlink()
    OutputSink(uri, settings, overwrite=True).publish(new, "sha256:2")
    assert s3_env.list_keys("models/") == sorted(
        f"models/m/{k}" for k in (COMPLETE_MARKER, "model.safetensors", ARTIFACT_META_FILE)
    )
    marker = json.loads(
        s3_env.client.get_object(Bucket=s3_env.bucket, Key=f"models/m/{COMPLETE_MARKER}")[
            "Body"
        ].read()
    )
    assert marker["digest"] == "sha256:2"
    assert set(marker["files"]) == {"model.safetensors", ARTIFACT_META_FILE}
