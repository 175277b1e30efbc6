"""Sources and sinks by URI, through one fsspec layer.

Schemes: ``file:///abs``, ``pvc://claim/path`` (mounted under ``KUBEQUANT_PVC_MOUNT_ROOT``),
``s3://bucket/prefix`` (s3fs; endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``),
``gs://bucket/prefix`` (gcsfs) and, for sources only, ``hf://repo[@revision]``
(huggingface_hub into the cache dir, only the files a run uses (:func:`hf_files_to_fetch`) of
the commit the revision resolves to; with ``HF_HUB_OFFLINE`` only the local cache is used). A
dry run reads a source's listing, config.json and the safetensors headers (range reads), never
weights.

Credentials come from the environment only and never appear in messages: URIs are redacted and
exception texts are scrubbed (both by :mod:`optimizer_job.redact`).

Output never destroys what kubequant did not write: it goes to an empty location or replaces
an artifact kubequant published there (its completion marker lists every file), never over,
into or around the model or data the run reads. The staged artifact is copied to a temporary
location first and swapped in (see :class:`OutputSink`); the completion marker is the last
file. A failure puts back what was there; a crash is recovered by the next run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import fsspec

from kubequant_api.constants import ARTIFACT_META_FILE, COMPLETE_MARKER, MODEL_FIELD, OUTPUT_FIELD
from kubequant_api.errors import InvalidSpecError, KubequantError
from optimizer_job.artifact import DIGEST_EXCLUDED, manifest_text
from optimizer_job.loading import TOKENIZER_FILES
from optimizer_job.redact import redact, scrub, strip_userinfo
from optimizer_job.settings import EngineSettings

if TYPE_CHECKING:
    from kubequant_api.models import ModelOptimizationSpec

log = logging.getLogger(__name__)

# The storage libraries log request headers at DEBUG (botocore: the Authorization header with
# the access key id; urllib3/aiohttp: URLs with signatures): they never log below INFO here,
# whatever the engine's log level.
QUIET_LIBRARY_LOGGERS: Final = (
    "botocore",
    "boto3",
    "s3transfer",
    "aiobotocore",
    "s3fs",
    "gcsfs",
    "fsspec",
    "urllib3",
    "aiohttp",
    "google.auth",
)
for _name in QUIET_LIBRARY_LOGGERS:
    logging.getLogger(_name).setLevel(logging.INFO)


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


# What a run reads of a hub repository: the config, the tokenizer and generation config, and
# the weights in one format (safetensors when the repository has them), all at its top level:
# never original/, onnx/, gguf or other formats' copies of the same weights.
HF_CONFIG_FILES: Final = ("config.json", "generation_config.json")
# the tokenizer files are the ones every artifact copies (optimizer_job.loading)
HF_TOKENIZER_FILES: Final = TOKENIZER_FILES
HF_SAFETENSORS_INDEX: Final = "model.safetensors.index.json"
HF_BIN_INDEX: Final = "pytorch_model.bin.index.json"


def hf_files_to_fetch(files: Sequence[str]) -> list[str]:
    """The files of a repository listing a run downloads (see HF_CONFIG_FILES and below):
    ``*.safetensors`` and their index when there are any, else ``pytorch_model*.bin`` and
    theirs; remote code (``*.py``) only as the model's own top-level modules."""
    top = [f for f in files if "/" not in f]
    wanted = set(HF_CONFIG_FILES) | set(HF_TOKENIZER_FILES)
    chosen = [f for f in top if f in wanted or f.endswith(".py")]
    safetensors = [f for f in top if f.endswith(".safetensors")]
    if safetensors:
        chosen += safetensors + [f for f in top if f == HF_SAFETENSORS_INDEX]
    else:
        chosen += [
            f
            for f in top
            if (f.startswith("pytorch_model") and f.endswith(".bin")) or f == HF_BIN_INDEX
        ]
    return sorted(set(chosen))


@dataclass(frozen=True)
class HfListing:
    """A hub repository at one commit: its files (relative path -> size in bytes)."""

    repo: str
    commit: str
    files: dict[str, int]


def _hf_errors(uri: str, settings: EngineSettings, field: str, revision: str | None) -> Any:
    """A context manager turning huggingface_hub's errors into the engine's."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    @contextmanager
    def mapped() -> Iterator[None]:
        try:
            yield
        except LocalEntryNotFoundError as exc:
            raise InvalidSpecError(
                field,
                f"{uri} is not in the model cache {settings.cache_dir} and downloads are "
                "disabled (HF_HUB_OFFLINE) or the hub is unreachable",
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

    return mapped()


def _hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hf_listing(repo: str, revision: str | None) -> HfListing:
    """The repository's files and sizes at ``revision``, and the commit it resolved to."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    files = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    return HfListing(repo, str(info.sha), files)


def _cached_files(repo: str, revision: str | None, settings: EngineSettings) -> list[str]:
    """The repository's listing as the cache recorded it when it was fetched (empty when it
    did not): offline, the snapshot is complete when the files a run uses are there."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        tree = get_cached_repo_tree(repo, revision=revision, cache_dir=settings.cache_dir)
    except (CachedRepoTreeNotFoundError, OSError, ValueError):
        return []
    return [str(entry.path) for entry in tree]


def _fetch_hf(uri: str, settings: EngineSettings, field: str) -> Path:
    """The repository's snapshot in the hub cache (``settings.cache_dir``, the cache PVC in
    the Job, reused by every run), holding only :func:`hf_files_to_fetch`'s files of the
    commit the revision resolved to; offline, the cached snapshot as it is."""
    from huggingface_hub import snapshot_download

    repo, revision = _parse_hf(uri)
    with _hf_errors(uri, settings, field, revision):
        if _hf_offline():
            cached = _cached_files(repo, revision, settings)
            patterns = hf_files_to_fetch(cached) if cached else None
            return Path(
                snapshot_download(
                    repo, revision=revision, cache_dir=settings.cache_dir, allow_patterns=patterns
                )
            )
        listing = _hf_listing(repo, revision)
        wanted = hf_files_to_fetch(list(listing.files))
        if "config.json" not in wanted:
            raise InvalidSpecError(field, f"{uri} has no config.json")
        # By the revision asked for (not the listed commit), so the cache records the ref
        # (refs/<branch>) and a later offline run resolves it; the snapshot folder is named by
        # the commit it resolved to, which the reproducibility record reads.
        path = snapshot_download(
            repo, revision=revision, cache_dir=settings.cache_dir, allow_patterns=wanted
        )
    log.info(
        "downloaded model",
        extra={
            "uri": redact(uri),
            "commit": listing.commit,
            "files": len(wanted),
            "bytes": sum(listing.files.get(f, 0) for f in wanted),
        },
    )
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
    """A safetensors file's JSON header, by two range reads (its 8-byte length, then the
    header): no weight bytes are read, from an object store either (an ``open`` would read
    ahead a whole block)."""
    size = int.from_bytes(fs.cat_file(path, start=0, end=8), "little")
    if size <= 0 or size > 100_000_000:
        return {}
    header: dict[str, Any] = json.loads(fs.cat_file(path, start=8, end=8 + size))
    return header


def _probe_hf(uri: str, settings: EngineSettings, field: str) -> dict[str, Any]:
    """A dry run's look at a hub repository: its listing, config.json and the safetensors
    headers (two HTTP range reads per shard), no weights; offline, the cached snapshot."""
    from huggingface_hub import hf_hub_download

    repo, revision = _parse_hf(uri)
    if _hf_offline():
        return _probe_local_snapshot(uri, settings, field)
    with _hf_errors(uri, settings, field, revision):
        listing = _hf_listing(repo, revision)
        wanted = hf_files_to_fetch(list(listing.files))
        if "config.json" not in wanted:
            raise InvalidSpecError(field, f"{uri} has no config.json")
        config_path = hf_hub_download(
            repo, "config.json", revision=listing.commit, cache_dir=settings.cache_dir
        )
        headers = {
            rel: _hf_safetensors_header(repo, listing.commit, rel)
            for rel in wanted
            if rel.endswith(".safetensors")
        }
    try:
        config = json.loads(Path(config_path).read_text())
    except json.JSONDecodeError as exc:
        raise InvalidSpecError(field, f"{uri}: config.json is not JSON: {exc}") from exc
    files = {rel: listing.files[rel] for rel in wanted}
    return {"files": files, "config": config, "safetensors": headers, "commit": listing.commit}


def _hf_range(repo: str, commit: str, rel: str, start: int, length: int) -> bytes:
    from huggingface_hub import get_session, hf_hub_url, hf_raise_for_status
    from huggingface_hub import utils as hf_utils

    url = hf_hub_url(repo, rel, revision=commit)
    auth: dict[str, str] = hf_utils.build_hf_headers()  # type: ignore[attr-defined]
    headers = {**auth, "Range": f"bytes={start}-{start + length - 1}"}
    response = get_session().get(url, headers=headers, follow_redirects=True)
    hf_raise_for_status(response)
    data: bytes = response.content[:length]
    return data


def _hf_safetensors_header(repo: str, commit: str, rel: str) -> dict[str, Any]:
    size = int.from_bytes(_hf_range(repo, commit, rel, 0, 8), "little")
    if size <= 0 or size > 100_000_000:
        return {}
    header: dict[str, Any] = json.loads(_hf_range(repo, commit, rel, 8, size))
    return header


def _probe_local_snapshot(uri: str, settings: EngineSettings, field: str) -> dict[str, Any]:
    local = _fetch_hf(uri, settings, field)
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


# --------------------------------------------------------------------------- sinks

# Scratch entries a publish writes beside the output (or inside it, when the output is a mount
# point or a bucket root): the new artifact while it is copied, the previous one while it is
# swapped out. Only entries older than this are taken for leftovers of a crashed run; a younger
# one may belong to a run still publishing to the same output.
SCRATCH_TAGS: Final = ("kubequant-tmp-", "kubequant-old-")
SCRATCH_STALE_AFTER_S: Final = 3600.0
FILE_MODE: Final = 0o644
DIR_MODE: Final = 0o755
CALIBRATION_DATA_FIELD: Final = "spec.calibration.datasetUri"
EVALUATION_DATA_FIELD: Final = "spec.evaluation.datasetUri"


def _marker_payload(digest: str | None, files: dict[str, int]) -> bytes:
    """The completion marker: the digest and every file of the artifact with its size (the
    manifest a later run checks before it replaces the folder)."""
    return json.dumps(
        {
            "digest": digest,
            "completedAt": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": dict(sorted(files.items())),
        }
    ).encode()


def _is_scratch(rel: str) -> bool:
    first = rel.split("/", 1)[0]
    return first.startswith(".") and any(
        tag in first for tag in (*SCRATCH_TAGS, "kubequant-probe-")
    )


def _normalise_modes(root: Path) -> dict[str, int]:
    """Every file 0644 and every folder 0755 whatever the libraries wrote (consumers in other
    pods run as other users); returns each file's relative path and size."""
    files: dict[str, int] = {}
    root.chmod(DIR_MODE)
    for folder, dirs, names in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(folder, d), DIR_MODE)
        for n in names:
            path = Path(folder, n)
            path.chmod(FILE_MODE)
            files[path.relative_to(root).as_posix()] = path.stat().st_size
    return files


def _resolved(uri: str, settings: EngineSettings, field: str) -> tuple[str, str]:
    """(where, path) of a URI with ``pvc://``, symlinks and ``..`` resolved: ``where`` is
    ``local`` for file:// and pvc:// (one filesystem namespace) or the object store's scheme."""
    if uri.startswith("hf://"):
        return "local", os.path.realpath(settings.cache_dir)
    loc = locate(uri, settings, field)
    if loc.is_local:
        return "local", os.path.realpath(loc.path)
    return loc.scheme, posixpath.normpath(loc.path)


def _nested(a: str, b: str) -> bool:
    """``a`` and ``b`` are the same path or one lies inside the other."""
    a, b = a.rstrip("/") or "/", b.rstrip("/") or "/"
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _digest_of(fs: Any, root: str, rels: list[str]) -> str:
    entries = []
    for rel in sorted(rels):
        h, size = hashlib.sha256(), 0
        with fs.open(f"{root}/{rel}", "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        entries.append((rel, size, h.hexdigest()))
    return "sha256:" + hashlib.sha256(manifest_text(entries).encode()).hexdigest()


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("LastModified") or info.get("mtime") or info.get("updated")
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return 0.0


class OutputSink:
    """Where the artifact goes. It publishes only into an empty location or over an artifact
    kubequant published there itself (recognised by its completion marker's manifest), never
    over or inside the data the run reads, and swaps artifacts so that a reader that waits for
    the marker never sees a mix and a crash never loses the previous artifact.

    Layout while publishing to ``<parent>/<name>``: the new artifact is copied to
    ``<parent>/.<name>.kubequant-tmp-<token>`` with its marker; on a local filesystem the folder
    is then swapped in by rename (the previous one renamed to ``.<name>.kubequant-old-<token>``
    first, removed last). Where the output cannot be renamed (a mount point such as a
    ``pvc://claim`` root, an object store) the scratch folders are ``.kubequant-tmp-<token>``
    inside the output (at a mount point or bucket root) or beside it, and the swap moves file by
    file: the previous marker first, then the previous files into the backup, then the new
    files, the new marker last. The next run to the same output restores the backup when a crash
    interrupted the swap and removes the leftovers.
    """

    def __init__(
        self,
        uri: str,
        settings: EngineSettings,
        overwrite: bool,
        protected: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.uri = uri
        self.settings = settings
        self.overwrite = overwrite
        self.protected = tuple(protected)
        self.loc = locate(uri, settings, OUTPUT_FIELD)

    @classmethod
    def for_spec(cls, spec: ModelOptimizationSpec, settings: EngineSettings) -> OutputSink:
        """The sink of ``spec.output``, protecting the model and the data the run reads."""
        protected = [(MODEL_FIELD, spec.model.uri)]
        if spec.calibration.dataset_uri:
            protected.append((CALIBRATION_DATA_FIELD, spec.calibration.dataset_uri))
        if spec.evaluation.dataset_uri:
            protected.append((EVALUATION_DATA_FIELD, spec.evaluation.dataset_uri))
        return cls(spec.output.uri, settings, spec.output.overwrite, protected)

    # -- inspection

    def _exists(self, path: str) -> bool:
        return bool(self.loc.fs.exists(path))

    def is_complete(self) -> bool:
        try:
            return self._exists(self.loc.child(COMPLETE_MARKER))
        except Exception as exc:
            raise classify(exc, OUTPUT_FIELD, self.uri, "read") from exc

    def _existing_files(self) -> list[str]:
        """Every file at the output except publish scratch entries."""
        if self.loc.is_local:
            path = Path(self.loc.path)
            if path.exists() and not path.is_dir():
                raise InvalidSpecError(OUTPUT_FIELD, f"{redact(self.uri)} is a file")
            if not path.exists():
                return []
        return [f for f in _list_files(self.loc) if not _is_scratch(f)]

    def _previous_artifact(self, existing: list[str]) -> dict[str, Any] | None:
        """The marker of the kubequant artifact at the output when the output holds exactly
        that artifact (every file listed by its marker, same sizes); None otherwise."""
        if COMPLETE_MARKER not in existing or ARTIFACT_META_FILE not in existing:
            return None
        try:
            marker = json.loads(self.loc.fs.cat_file(self.loc.child(COMPLETE_MARKER)))
        except (OSError, ValueError):
            return None
        if not isinstance(marker, dict):
            return None
        present = sorted(set(existing) - {COMPLETE_MARKER})
        files = marker.get("files")
        if isinstance(files, dict):
            if set(files) != set(present):
                return None
            for rel, size in files.items():
                if int(self.loc.fs.size(self.loc.child(rel))) != size:
                    return None
            return marker
        # A marker written before markers listed their files: the digest must match.
        digested = [rel for rel in present if rel not in DIGEST_EXCLUDED]
        if marker.get("digest") == _digest_of(self.loc.fs, self.loc.path, digested):
            return marker
        return None

    def _check_location(self) -> None:
        """Not a symbolic link; not the same as, inside or around a source the run reads."""
        if self.loc.is_local and os.path.islink(self.loc.path):
            raise InvalidSpecError(
                OUTPUT_FIELD,
                f"{redact(self.uri)} is a symbolic link (to {os.readlink(self.loc.path)}); "
                "give the directory itself",
            )
        where, out = _resolved(self.uri, self.settings, OUTPUT_FIELD)
        for field, uri in self.protected:
            try:
                src_where, src = _resolved(uri, self.settings, field)
            except InvalidSpecError:
                continue  # the source's own check reports it
            if src_where == where and _nested(out, src):
                raise InvalidSpecError(
                    OUTPUT_FIELD,
                    f"{redact(self.uri)} overlaps {field} {redact(uri)} ({out} and {src}): the "
                    "output may not be, contain or lie inside the model or data the run reads; "
                    "choose a separate location",
                )

    def check(self) -> dict[str, Any]:
        """Safe, reachable, writable, and empty or holding kubequant's own artifact (replaced
        only with overwrite). Cleans leftovers of crashed runs; writes a probe."""
        try:
            self._check_location()
            self._recover()
            existing = self._existing_files()
            previous = self._previous_artifact(existing) if existing else None
            if existing and previous is None:
                shown = ", ".join(existing[:3]) + (", ..." if len(existing) > 3 else "")
                raise InvalidSpecError(
                    OUTPUT_FIELD,
                    f"{redact(self.uri)} is not empty and holds {len(existing)} file(s) that are "
                    f"not a kubequant artifact ({shown}); kubequant writes only to an empty "
                    "location or over an artifact it published there itself, and never deletes "
                    "other data: choose an empty location",
                )
            if previous is not None and not self.overwrite:
                raise InvalidSpecError(
                    OUTPUT_FIELD,
                    f"{redact(self.uri)} already holds a complete artifact; set "
                    "spec.output.overwrite: true to replace it",
                )
            self._probe()
        except Exception as exc:
            raise classify(exc, OUTPUT_FIELD, self.uri, "write to") from exc
        return {
            "existingFiles": len(existing),
            "existingComplete": previous is not None,
            "writable": True,
        }

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

    # -- scratch entries and crash recovery

    def _inside(self) -> bool:
        """Scratch goes inside the output: it is a mount point (a pvc:// claim root is always
        one in the Job) or a bucket root, so it cannot be renamed and has no parent to use."""
        if self.loc.is_local:
            dest = Path(self.loc.path)
            return dest.parent == self.settings.pvc_mount_root or os.path.ismount(dest)
        return "/" not in self.loc.path

    def _scratch_base(self) -> tuple[str, str]:
        """(folder, name prefix) of this output's scratch entries."""
        if self._inside():
            return self.loc.path, "."
        parent, _, name = self.loc.path.rpartition("/")
        return parent or "/", f".{name}."

    def _scratch(self, tag: str) -> str:
        base, prefix = self._scratch_base()
        return f"{base.rstrip('/')}/{prefix}{tag}{uuid.uuid4().hex[:8]}"

    def _leftovers(self) -> list[str]:
        base, prefix = self._scratch_base()
        try:
            entries = self.loc.fs.ls(base, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            name = str(entry).rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(prefix) and name[len(prefix) :].startswith(SCRATCH_TAGS):
                found.append(str(entry).rstrip("/"))
        # backups first: restoring one needs to know what the interrupted swap moved
        return sorted(found, key=lambda p: "kubequant-old-" not in p)

    def _age(self, path: str) -> float:
        """Seconds since anything in ``path`` last changed."""
        newest = 0.0
        if self.loc.is_local:
            newest = os.lstat(path).st_mtime
            for folder, dirs, names in os.walk(path):
                for n in dirs + names:
                    newest = max(newest, os.lstat(os.path.join(folder, n)).st_mtime)
        else:
            found = self.loc.fs.find(path, withdirs=False, detail=True)
            newest = max((_mtime(info) for info in found.values()), default=0.0)
        return time.time() - newest

    def _recover(self) -> None:
        """Finish what a crashed earlier publish to this output left behind: restore the
        previous artifact when the swap did not complete, then remove the scratch entries."""
        for path in self._leftovers():
            age = self._age(path)
            swapping = (
                "kubequant-old-" in path
                and not self._exists(self.loc.child(COMPLETE_MARKER))
                and self._exists(f"{path}/{COMPLETE_MARKER}")
            )
            if age < SCRATCH_STALE_AFTER_S and swapping:
                raise InvalidSpecError(
                    OUTPUT_FIELD,
                    f"another publish to {redact(self.uri)} is swapping artifacts or was "
                    f"interrupted {round(age)}s ago (its backup of the previous artifact is "
                    f"{path}); the next run after {round(SCRATCH_STALE_AFTER_S)}s restores it",
                )
            if age < SCRATCH_STALE_AFTER_S:
                log.warning(
                    "leaving a recent publish scratch entry alone (another run may be "
                    "publishing to this output)",
                    extra={"path": path, "ageSeconds": round(age)},
                )
                continue
            if swapping:
                self._restore(path)
                log.warning(
                    "restored the previous artifact after an interrupted publish",
                    extra={"uri": redact(self.uri)},
                )
            self._remove(path)
            log.info("removed the leftover of an interrupted publish", extra={"path": path})

    def _restore(self, old: str) -> None:
        """Put the artifact saved in ``old`` back at the output (marker last)."""
        fs, dest = self.loc.fs, self.loc.path
        if self.loc.is_local and not os.path.exists(dest):
            os.rename(old, dest)  # the crash fell between the two renames of a folder swap
            return
        listed = json.loads(fs.cat_file(f"{old}/{COMPLETE_MARKER}")).get("files") or {}
        backed_up = [rel for rel in listed if self._exists(f"{old}/{rel}")]
        if len(backed_up) == len(listed):
            # every previous file was in the backup, so what the output holds came from the
            # interrupted run (the check before it found nothing but the previous artifact)
            for rel in self._existing_files():
                fs.rm_file(self.loc.child(rel))
        for rel in sorted(backed_up):
            self._move(f"{old}/{rel}", self.loc.child(rel))
        self._move(f"{old}/{COMPLETE_MARKER}", self.loc.child(COMPLETE_MARKER))

    def _move(self, src: str, dst: str) -> None:
        if self.loc.is_local:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.replace(src, dst)
        else:
            self.loc.fs.copy(src, dst)
            self.loc.fs.rm_file(src)

    def _remove(self, path: str) -> None:
        if self.loc.is_local:
            shutil.rmtree(path, ignore_errors=True)
        elif self.loc.fs.exists(path):
            self.loc.fs.rm(path, recursive=True)

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
        tmp = Path(self._scratch("kubequant-tmp-"))
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(staged, tmp)
            files = _normalise_modes(tmp)
            marker = tmp / COMPLETE_MARKER
            marker.write_bytes(_marker_payload(digest, files))
            marker.chmod(FILE_MODE)
            if self._inside():
                self._swap_in_place(str(tmp), files)
            else:
                self._swap_folder(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _swap_folder(self, tmp: Path, dest: Path) -> None:
        """Rename the new folder into place; a previous artifact is renamed aside first and
        removed last (a crash in between leaves it for the next run to restore)."""
        if dest.is_dir() and not any(dest.iterdir()):
            dest.rmdir()
        if not dest.exists():
            tmp.rename(dest)
            return
        old = Path(self._scratch("kubequant-old-"))
        dest.rename(old)
        try:
            tmp.rename(dest)
        except OSError:
            old.rename(dest)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def _swap_in_place(self, tmp: str, files: dict[str, int]) -> None:
        """Swap file by file where the output cannot be renamed (marker-guarded, see class)."""
        old = self._scratch("kubequant-old-")
        previous = self._existing_files()
        try:
            if previous:
                self._move(self.loc.child(COMPLETE_MARKER), f"{old}/{COMPLETE_MARKER}")
                for rel in previous:
                    if rel != COMPLETE_MARKER:
                        self._move(self.loc.child(rel), f"{old}/{rel}")
            for rel in sorted(files):
                self._move(f"{tmp}/{rel}", self.loc.child(rel))
            self._move(f"{tmp}/{COMPLETE_MARKER}", self.loc.child(COMPLETE_MARKER))
        except Exception:
            self._roll_back(old, files)
            raise
        if previous:
            self._remove(old)
        self._prune_empty_folders()

    def _roll_back(self, old: str, files: dict[str, int]) -> None:
        try:
            if self._exists(f"{old}/{COMPLETE_MARKER}"):
                self._restore(old)
                self._remove(old)
            else:
                for rel in files:
                    if self._exists(self.loc.child(rel)):
                        self.loc.fs.rm_file(self.loc.child(rel))
            self._prune_empty_folders()
        except Exception:  # noqa: BLE001 - the next run to this output recovers
            log.warning("could not roll back the interrupted publish; the next run will")

    def _prune_empty_folders(self) -> None:
        if not self.loc.is_local:
            return  # object stores have no folders
        for folder, _dirs, _names in os.walk(self.loc.path, topdown=False):
            rel = os.path.relpath(folder, self.loc.path)
            if rel != "." and not _is_scratch(rel) and not os.listdir(folder):
                os.rmdir(folder)

    def _publish_remote(self, staged: Path, digest: str | None) -> None:
        fs = self.loc.fs
        tmp = self._scratch("kubequant-tmp-")
        files = {
            p.relative_to(staged).as_posix(): p.stat().st_size
            for p in sorted(staged.rglob("*"))
            if p.is_file()
        }
        try:
            for rel in files:
                fs.put_file(str(staged / rel), f"{tmp}/{rel}")
            fs.pipe_file(f"{tmp}/{COMPLETE_MARKER}", _marker_payload(digest, files))
            self._swap_in_place(tmp, files)
        finally:
            try:
                self._remove(tmp)
            except Exception:  # noqa: BLE001
                log.warning("could not remove temporary output prefix")
