"""Sources and sinks by URI, through one fsspec layer.

Schemes: ``file:///abs``, ``pvc://claim/path`` (mounted under ``KUBEQUANT_PVC_MOUNT_ROOT``),
``s3://bucket/prefix`` (s3fs; endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``),
``gs://bucket/prefix`` (gcsfs) and, for sources only, ``hf://repo[@revision]``
(huggingface_hub into the cache dir; with ``HF_HUB_OFFLINE`` only the local cache is used).

Credentials come from the environment only and never appear in messages: URIs are redacted and
exception texts are scrubbed (both by :mod:`optimizer_job.redact`).

Output is published atomically: the staged artifact is written to a temporary location beside
the destination, then published (a rename on local filesystems, copy then marker on object
stores), and the completion marker is the last file. A failure removes what it wrote.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec

from kubequant_api.constants import ARTIFACT_META_FILE, COMPLETE_MARKER, MODEL_FIELD, OUTPUT_FIELD
from kubequant_api.errors import InvalidSpecError, KubequantError
from optimizer_job.redact import redact, scrub, strip_userinfo
from optimizer_job.settings import EngineSettings

log = logging.getLogger(__name__)


class StorageUnavailableError(KubequantError):
    """A storage endpoint could not be reached; retrying may help (exit code 1)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _describe(exc: BaseException) -> str:
    return scrub(f"{type(exc).__name__}: {exc}")[:300]


def classify(exc: BaseException, field: str, uri: str, action: str) -> KubequantError:
    """Turn a filesystem/transport error into a domain error naming ``field``."""
    shown = redact(uri)
    if isinstance(exc, KubequantError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return InvalidSpecError(field, f"cannot {action} {shown}: it does not exist")
    if isinstance(exc, PermissionError):
        return InvalidSpecError(
            field,
            f"cannot {action} {shown}: access denied; check the credentials given to the engine "
            f"(credentialsSecret / environment) and their permissions ({type(exc).__name__})",
        )
    if isinstance(exc, NotADirectoryError | FileExistsError | IsADirectoryError):
        return InvalidSpecError(field, f"cannot {action} {shown}: {_describe(exc)}")
    return StorageUnavailableError(field, f"cannot {action} {shown}: {_describe(exc)}")


@dataclass(frozen=True)
class Location:
    """A URI resolved to a filesystem and a path in it."""

    uri: str
    scheme: str
    fs: Any  # fsspec.AbstractFileSystem
    path: str  # path inside ``fs`` (no trailing slash)

    @property
    def is_local(self) -> bool:
        return self.scheme in ("file", "pvc")

    def child(self, rel: str) -> str:
        return f"{self.path}/{rel}" if self.path else rel


def filesystem(scheme: str) -> Any:
    """An fsspec filesystem for ``scheme``, configured from the environment only."""
    if scheme in ("file", "pvc"):
        return fsspec.filesystem("file")
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs: dict[str, Any] = {"endpoint_url": endpoint} if endpoint else {}
        if os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"):
            client_kwargs["region_name"] = os.environ.get("AWS_REGION") or os.environ.get(
                "AWS_DEFAULT_REGION"
            )
        return fsspec.filesystem(
            "s3", skip_instance_cache=True, use_listings_cache=False, client_kwargs=client_kwargs
        )
    if scheme == "gs":
        return fsspec.filesystem("gcs", skip_instance_cache=True)
    raise KubequantError(f"no filesystem for scheme {scheme!r}")


def locate(uri: str, settings: EngineSettings, field: str) -> Location:
    """Resolve a file://, pvc://, s3:// or gs:// URI."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise InvalidSpecError(field, f"{redact(uri)} is not a URI (scheme://...)")
    rest = rest.split("?", 1)[0]
    if scheme == "file":
        if not rest.startswith("/"):
            raise InvalidSpecError(field, f"{redact(uri)}: file:// URIs need an absolute path")
        return Location(uri, scheme, filesystem(scheme), rest.rstrip("/") or "/")
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        if not claim:
            raise InvalidSpecError(field, f"{uri}: pvc:// URIs look like pvc://claim/path")
        path = settings.pvc_mount_root / claim / sub
        if ".." in Path(sub).parts:
            raise InvalidSpecError(field, f"{uri}: '..' is not allowed in pvc:// paths")
        return Location(uri, scheme, filesystem(scheme), str(path).rstrip("/"))
    if scheme in ("s3", "gs"):
        rest = strip_userinfo(f"x://{rest}")[4:]
        if not rest.split("/", 1)[0]:
            raise InvalidSpecError(field, f"{redact(uri)}: missing bucket name")
        return Location(uri, scheme, filesystem(scheme), rest.rstrip("/"))
    raise InvalidSpecError(field, f"{redact(uri)}: scheme {scheme!r} is not supported here")


# --------------------------------------------------------------------------- sources


def _list_files(loc: Location) -> list[str]:
    """Relative paths of every file below ``loc`` (empty when it does not exist)."""
    found = loc.fs.find(loc.path, withdirs=False)
    prefix = loc.path.rstrip("/") + "/"
    return sorted(p[len(prefix) :] for p in found if p.startswith(prefix))


def _parse_hf(uri: str) -> tuple[str, str | None]:
    rest = uri[len("hf://") :]
    repo, _, revision = rest.partition("@")
    return repo, (revision or None)


def fetch_model(uri: str, settings: EngineSettings, field: str = MODEL_FIELD) -> Path:
    """A local directory holding the model at ``uri`` (downloaded when remote)."""
    if uri.startswith("hf://"):
        return _fetch_hf(uri, settings, field)
    loc = locate(uri, settings, field)
    if loc.is_local:
        path = Path(loc.path)
        if not path.exists():
            raise InvalidSpecError(field, f"{redact(uri)} does not exist ({path})")
        if not path.is_dir():
            raise InvalidSpecError(field, f"{redact(uri)} is not a directory ({path})")
        return path
    try:
        files = _list_files(loc)
    except Exception as exc:
        raise classify(exc, field, uri, "list") from exc
    if not files:
        raise InvalidSpecError(field, f"{redact(uri)} holds no files")
    target = settings.work_dir / "source" / uuid.uuid4().hex[:12]
    target.mkdir(parents=True, exist_ok=True)
    try:
        for rel in files:
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            loc.fs.get_file(loc.child(rel), str(target / rel))
    except Exception as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise classify(exc, field, uri, "download") from exc
    log.info("downloaded model", extra={"uri": redact(uri), "files": len(files)})
    return target


def _fetch_hf(uri: str, settings: EngineSettings, field: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision = _parse_hf(uri)
    try:
        path = snapshot_download(repo, revision=revision, cache_dir=str(settings.cache_dir))
    except LocalEntryNotFoundError as exc:
        raise InvalidSpecError(
            field,
            f"{uri} is not in the model cache {settings.cache_dir} and downloads are disabled "
            "(HF_HUB_OFFLINE) or the hub is unreachable",
        ) from exc
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise InvalidSpecError(
            field, f"{uri}: repository not found or access denied (check HF_TOKEN)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise InvalidSpecError(field, f"{uri}: revision {revision!r} not found") from exc
    except HfHubHTTPError as exc:
        raise StorageUnavailableError(field, f"{uri}: hub error {_describe(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise classify(exc, field, uri, "read") from exc
    return Path(path)


def read_bytes(uri: str, settings: EngineSettings, field: str) -> bytes:
    """The content of a single file (datasets)."""
    if uri.startswith("hf://"):
        raise InvalidSpecError(field, f"{uri}: hf:// is supported for models only")
    loc = locate(uri, settings, field)
    try:
        data: bytes = loc.fs.cat_file(loc.path)
    except IsADirectoryError as exc:
        raise InvalidSpecError(field, f"{redact(uri)} is a directory, not a file") from exc
    except Exception as exc:
        raise classify(exc, field, uri, "read") from exc
    return data


def probe_source(uri: str, settings: EngineSettings, field: str = MODEL_FIELD) -> dict[str, Any]:
    """Check a model source without downloading weights: list files, read config.json."""
    if uri.startswith("hf://"):
        return _probe_hf(uri, settings, field)
    loc = locate(uri, settings, field)
    try:
        if loc.is_local and not Path(loc.path).exists():
            raise FileNotFoundError(loc.path)
        files = _list_files(loc)
        if not files:
            raise InvalidSpecError(field, f"{redact(uri)} holds no files")
        sizes = {rel: int(loc.fs.size(loc.child(rel))) for rel in files}
        if "config.json" not in sizes:
            raise InvalidSpecError(field, f"{redact(uri)} has no config.json")
        config = json.loads(loc.fs.cat_file(loc.child("config.json")))
        headers = {
            rel: _safetensors_header(loc.fs, loc.child(rel))
            for rel in files
            if rel.endswith(".safetensors")
        }
    except json.JSONDecodeError as exc:
        raise InvalidSpecError(field, f"{redact(uri)}: config.json is not JSON: {exc}") from exc
    except Exception as exc:
        raise classify(exc, field, uri, "read") from exc
    return {"files": sizes, "config": config, "safetensors": headers}


def _safetensors_header(fs: Any, path: str) -> dict[str, Any]:
    with fs.open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if size <= 0 or size > 100_000_000:
            return {}
        header: dict[str, Any] = json.loads(fh.read(size))
    return header


def _probe_hf(uri: str, settings: EngineSettings, field: str) -> dict[str, Any]:
    local = _fetch_config_only(uri, settings, field)
    files: dict[str, int] = {}
    headers: dict[str, Any] = {}
    for p in sorted(local.rglob("*")):
        if p.is_file():
            rel = p.relative_to(local).as_posix()
            files[rel] = p.stat().st_size
            if rel.endswith(".safetensors"):
                headers[rel] = _safetensors_header(fsspec.filesystem("file"), str(p))
    if "config.json" not in files:
        raise InvalidSpecError(field, f"{uri} has no config.json")
    try:
        config = json.loads((local / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise InvalidSpecError(field, f"{uri}: config.json is not JSON: {exc}") from exc
    return {"files": files, "config": config, "safetensors": headers}


def _fetch_config_only(uri: str, settings: EngineSettings, field: str) -> Path:
    # Preflight resolves the snapshot (from the cache when offline) without extra downloads
    # beyond what snapshot_download needs; for a cached repo this touches nothing remote.
    return _fetch_hf(uri, settings, field)


# --------------------------------------------------------------------------- sinks


def _marker_payload(digest: str | None) -> bytes:
    return json.dumps(
        {"digest": digest, "completedAt": datetime.now(UTC).isoformat(timespec="seconds")}
    ).encode()


class OutputSink:
    """Where the artifact goes; publishes atomically and never leaves half-written files."""

    def __init__(self, uri: str, settings: EngineSettings, overwrite: bool) -> None:
        self.uri = uri
        self.settings = settings
        self.overwrite = overwrite
        self.loc = locate(uri, settings, OUTPUT_FIELD)

    # -- inspection

    def _exists(self, path: str) -> bool:
        return bool(self.loc.fs.exists(path))

    def is_complete(self) -> bool:
        try:
            return self._exists(self.loc.child(COMPLETE_MARKER))
        except Exception as exc:
            raise classify(exc, OUTPUT_FIELD, self.uri, "read") from exc

    def _existing_files(self) -> list[str]:
        if self.loc.is_local:
            path = Path(self.loc.path)
            if path.exists() and not path.is_dir():
                raise InvalidSpecError(OUTPUT_FIELD, f"{redact(self.uri)} is a file")
            if not path.exists():
                return []
        return [f for f in _list_files(self.loc) if ".kubequant-tmp-" not in f]

    def check(self) -> dict[str, Any]:
        """Reachable, writable and not already complete (unless overwrite). Writes a probe."""
        try:
            existing = self._existing_files()
            complete = COMPLETE_MARKER in existing
            if existing and not self.overwrite:
                if complete:
                    raise InvalidSpecError(
                        OUTPUT_FIELD,
                        f"{redact(self.uri)} already holds a complete artifact; set "
                        "spec.output.overwrite: true to replace it",
                    )
                if ARTIFACT_META_FILE not in existing:
                    raise InvalidSpecError(
                        OUTPUT_FIELD,
                        f"{redact(self.uri)} is not empty ({len(existing)} files) and holds no "
                        "kubequant artifact; choose an empty location or set "
                        "spec.output.overwrite: true",
                    )
            self._probe()
        except Exception as exc:
            raise classify(exc, OUTPUT_FIELD, self.uri, "write to") from exc
        return {"existingFiles": len(existing), "existingComplete": complete, "writable": True}

    def _probe(self) -> None:
        name = f".kubequant-probe-{uuid.uuid4().hex[:8]}"
        if self.loc.is_local:
            base = Path(self.loc.path)
            while not base.exists():
                base = base.parent
            if not base.is_dir():
                raise NotADirectoryError(str(base))
            probe = base / name
            try:
                probe.write_bytes(b"probe")
                probe.unlink()
            except OSError as exc:
                raise InvalidSpecError(
                    OUTPUT_FIELD,
                    f"{redact(self.uri)} is not writable: cannot create files in {base} "
                    f"({exc.strerror or type(exc).__name__})",
                ) from exc
            return
        path = self.loc.child(name)
        self.loc.fs.pipe_file(path, b"probe")
        self.loc.fs.rm_file(path)

    # -- publishing

    def publish(self, staged: Path, digest: str | None) -> None:
        """Publish the complete artifact directory ``staged``; the marker is written last."""
        self.check()
        try:
            if self.loc.is_local:
                self._publish_local(staged, digest)
            else:
                self._publish_remote(staged, digest)
        except Exception as exc:
            raise classify(exc, OUTPUT_FIELD, self.uri, "write to") from exc
        log.info("published artifact", extra={"uri": redact(self.uri)})

    def _publish_local(self, staged: Path, digest: str | None) -> None:
        dest = Path(self.loc.path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex[:8]
        tmp = dest.parent / f".{dest.name}.kubequant-tmp-{token}"
        old = dest.parent / f".{dest.name}.kubequant-old-{token}"
        try:
            shutil.copytree(staged, tmp)
            (tmp / COMPLETE_MARKER).write_bytes(_marker_payload(digest))
            moved_old = False
            if dest.exists() and any(dest.iterdir()):
                dest.rename(old)
                moved_old = True
            try:
                tmp.rename(dest)  # replaces an empty directory atomically
            except OSError:
                if moved_old:
                    old.rename(dest)
                raise
            if moved_old:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            if tmp.exists() and dest.is_mount():
                # A mount point cannot be replaced: move the entries in, marker last.
                self._fill_in_place(tmp, dest)
                return
            raise exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _fill_in_place(self, tmp: Path, dest: Path) -> None:
        marker = dest / COMPLETE_MARKER
        marker.unlink(missing_ok=True)
        for entry in list(dest.iterdir()):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        moved: list[Path] = []
        try:
            for entry in sorted(tmp.iterdir(), key=lambda p: p.name == COMPLETE_MARKER):
                shutil.move(str(entry), str(dest / entry.name))
                moved.append(dest / entry.name)
        except OSError:
            for p in moved:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            raise

    def _publish_remote(self, staged: Path, digest: str | None) -> None:
        fs, dest = self.loc.fs, self.loc.path
        parent, _, name = dest.rpartition("/")
        token = uuid.uuid4().hex[:8]
        tmp = (
            f"{parent}/.{name}.kubequant-tmp-{token}"
            if parent
            else f"{dest}/.kubequant-tmp-{token}"
        )
        files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        copied: list[str] = []
        try:
            for rel in files:
                fs.put_file(str(staged / rel), f"{tmp}/{rel}")
            existing = self._existing_files()
            if COMPLETE_MARKER in existing:
                fs.rm_file(self.loc.child(COMPLETE_MARKER))  # no longer complete from here on
            for rel in existing:
                if rel != COMPLETE_MARKER:
                    fs.rm_file(self.loc.child(rel))
            for rel in files:
                fs.copy(f"{tmp}/{rel}", self.loc.child(rel))
                copied.append(rel)
            fs.pipe_file(self.loc.child(COMPLETE_MARKER), _marker_payload(digest))
        except Exception:
            for rel in copied:
                try:
                    fs.rm_file(self.loc.child(rel))
                except Exception:  # noqa: BLE001 - best effort cleanup
                    log.warning("could not remove partial output file", extra={"file": rel})
            raise
        finally:
            try:
                if fs.exists(tmp):
                    fs.rm(tmp, recursive=True)
            except Exception:  # noqa: BLE001
                log.warning("could not remove temporary output prefix")
