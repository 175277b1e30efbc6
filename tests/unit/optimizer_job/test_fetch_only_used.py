"""Fetch only what is used: an ``hf://`` source downloads the config, tokenizer and one
weight format from a (local, fake) hub, and a dry run reads config.json and the
safetensors headers only, from the hub and from a real S3 server, counted by the servers.

The hub is a small HTTP server speaking the few endpoints huggingface_hub uses (model info,
``resolve`` with HEAD, GET and Range); the engine runs in a subprocess with ``HF_ENDPOINT``
pointed at it, so nothing in the engine or the library is patched. The S3 server is moto's
WSGI application behind a byte-counting middleware.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from optimizer_job.storage import hf_files_to_fetch
from tests.fixtures.models import save_bf16_copy
from tests.fixtures.storage import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, free_port

REPO = "kq-org/tiny-bf16"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ROOT = Path(__file__).resolve().parents[3]
JUNK = {  # files a real repository carries beside the weights a run uses
    "original/consolidated.00.pth": 300_000,
    "onnx/model.onnx": 200_000,
    "model-q4.gguf": 150_000,
    "pytorch_model.bin": 250_000,
    "README.md": 100,
    ".gitattributes": 50,
}


@dataclass
class HubLog:
    """What the fake hub served: (method, path, range header, body bytes) per request."""

    requests: list[tuple[str, str, str | None, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def files_downloaded(self) -> dict[str, int]:
        """Body bytes served per repository file (GETs of resolve/)."""
        out: dict[str, int] = {}
        for method, path, _rng, sent in self.requests:
            m = re.match(rf"/{REPO}/resolve/[^/]+/(.+)$", path)
            if method == "GET" and m:
                out[m.group(1)] = out.get(m.group(1), 0) + sent
        return out


def _hub_server(files: dict[str, bytes], log: HubLog) -> ThreadingHTTPServer:
    def etag(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _record(self, sent: int) -> None:
            with log.lock:
                log.requests.append(
                    (self.command, self.path.split("?")[0], self.headers.get("Range"), sent)
                )

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self._record(0 if self.command == "HEAD" else len(body))

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            info = re.match(rf"/api/models/{REPO}(?:/revision/([^/]+))?$", path)
            if info:
                siblings = [
                    {"rfilename": name, "size": len(data), "blobId": etag(data)[:40]}
                    for name, data in sorted(files.items())
                ]
                body = json.dumps(
                    {"id": REPO, "modelId": REPO, "sha": COMMIT, "siblings": siblings}
                ).encode()
                self._send(200, body, {"Content-Type": "application/json"})
                return
            if re.match(rf"/api/models/{REPO}/tree/[^/]+/?$", path):
                tree = [
                    {"type": "file", "path": name, "size": len(data), "oid": etag(data)[:40]}
                    for name, data in sorted(files.items())
                ]
                self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
                return
            resolve = re.match(rf"/{REPO}/resolve/([^/]+)/(.+)$", path)
            if not resolve or resolve.group(2) not in files:
                self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"})
                return
            data = files[resolve.group(2)]
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag(data)}"'}
            rng = self.headers.get("Range")
            if rng and self.command == "GET":
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
                assert m is not None
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                part = data[start : end + 1]
                headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
                self._send(206, part, headers)
                return
            self._send(200, data, headers)

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def tiny_bf16(tiny_lm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny LM in bf16, its weights split into two safetensors shards with an index."""
    target = save_bf16_copy(
        tiny_lm_path, tmp_path_factory.mktemp("hub") / "tiny-bf16", max_shard_size="3MB"
    )
    assert len(list(target.glob("*.safetensors"))) >= 2
    return target


@pytest.fixture
def hub(tiny_bf16: Path) -> Iterator[tuple[str, HubLog, dict[str, bytes]]]:
    files = {p.name: p.read_bytes() for p in tiny_bf16.iterdir() if p.is_file()}
    files.pop("training.json", None)
    for name, size in JUNK.items():
        files[name] = os.urandom(size)
    log = HubLog()
    server = _hub_server(files, log)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log, files
    finally:
        server.shutdown()


def _engine_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AWS_", "TRANSFORMERS_"))
    }
    env.update(
        KUBEQUANT_WORK_DIR=str(tmp_path / "work"),
        KUBEQUANT_CACHE_DIR=str(tmp_path / "hf-cache"),
        KUBEQUANT_TERMINATION_LOG=str(tmp_path / "termination-log"),
        KUBEQUANT_ENGINE_METRICS_PORT="0",
        KUBEQUANT_DEVICE="cpu",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    env.update(extra)
    return env


def _python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _dry_run(uri: str, tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    import yaml

    manifest = tmp_path / "mo.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubequant.io/v1alpha1",
                "kind": "ModelOptimization",
                "metadata": {"name": "dry", "namespace": "default", "generation": 1},
                "spec": {
                    "model": {"uri": uri},
                    "method": "torchao-int8-weight",
                    "dryRun": True,
                    "output": {"uri": f"file://{tmp_path / 'out'}"},
                },
            }
        )
    )
    results = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "optimizer_job",
            "run",
            "-f",
            str(manifest),
            "--results",
            str(results),
        ],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document: dict[str, Any] = json.loads(results.read_text())
    return document


def test_the_files_a_run_fetches_from_a_listing() -> None:
    listing = [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "original/consolidated.00.pth",
        "original/model.safetensors",
        "onnx/model.onnx",
        "model.gguf",
        "README.md",
    ]
    assert hf_files_to_fetch(listing) == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    bin_only = ["config.json", "pytorch_model.bin", "flax_model.msgpack", "tf_model.h5"]
    assert hf_files_to_fetch(bin_only) == ["config.json", "pytorch_model.bin"]


def test_an_hf_source_downloads_only_the_files_a_run_uses(
    hub: tuple[str, HubLog, dict[str, bytes]], tmp_path: Path
) -> None:
    endpoint, log, files = hub
    env = _engine_env(tmp_path, HF_ENDPOINT=endpoint)
    code = (
        "from optimizer_job.storage import fetch_model\n"
        "from optimizer_job.settings import load_settings\n"
        "from optimizer_job.artifact import source_revision\n"
        f"p = fetch_model('hf://{REPO}', load_settings())\n"
        f"print(p); print(source_revision('hf://{REPO}', p))\n"
    )
    path_line, revision = _python(code, env).strip().splitlines()[-2:]
    snapshot = Path(path_line)
    expected = set(hf_files_to_fetch(list(files)))
    assert {p.name for p in snapshot.iterdir()} == expected
    assert revision == COMMIT
    downloaded = log.files_downloaded()
    assert set(downloaded) == expected
    assert not any(name in downloaded for name in JUNK)
    for name in expected:
        assert downloaded[name] == len(files[name])
    # the cache records the ref: an offline run later resolves hf://repo from it alone
    offline = _engine_env(tmp_path, HF_HUB_OFFLINE="1")
    assert _python(code, offline).strip().splitlines()[-2:] == [path_line, revision]
    # the model loads from what was fetched, in its own dtype
    code = (
        "from pathlib import Path\n"
        "from optimizer_job import modeling\n"
        f"m = modeling.load_original(Path('{snapshot}'), 'causal-lm')\n"
        "print(next(m.module.parameters()).dtype)\n"
    )
    assert _python(code, env).strip().splitlines()[-1] == "torch.bfloat16"


def test_an_hf_dry_run_reads_config_and_safetensors_headers_only(
    hub: tuple[str, HubLog, dict[str, bytes]], tmp_path: Path
) -> None:
    endpoint, log, files = hub
    document = _dry_run(f"hf://{REPO}", tmp_path, _engine_env(tmp_path, HF_ENDPOINT=endpoint))
    plan = document["result"]["plan"]
    assert plan["model"]["parameters"] > 1_000_000
    assert plan["model"]["dtype"] == "bfloat16"
    downloaded = log.files_downloaded()
    shards = sorted(n for n in files if n.endswith(".safetensors"))
    assert set(downloaded) == {"config.json", *shards}
    assert downloaded["config.json"] == len(files["config.json"])
    for shard in shards:
        header = 8 + int.from_bytes(files[shard][:8], "little")
        assert downloaded[shard] == header < len(files[shard]) / 10


# --------------------------------------------------------------------------- S3


@dataclass
class S3Log:
    sent: dict[str, int] = field(default_factory=dict)  # object key -> body bytes served
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def counted_s3(tmp_path: Path) -> Iterator[tuple[str, S3Log]]:
    """moto's S3 application behind a WSGI middleware that counts the body bytes served per
    object GET, on its own port."""
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    log = S3Log()

    def counting(environ: dict[str, Any], start_response: Any) -> Any:
        body = app(environ, start_response)
        key = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") != "GET" or "list-type" in environ.get("QUERY_STRING", ""):
            return body
        chunks = list(body)
        with log.lock:
            log.sent[key] = log.sent.get(key, 0) + sum(len(c) for c in chunks)
        return chunks

    server = make_server("127.0.0.1", free_port(), counting, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", log
    finally:
        server.shutdown()


def test_an_s3_dry_run_reads_no_weight_bytes(
    counted_s3: tuple[str, S3Log], tiny_bf16: Path, tmp_path: Path
) -> None:
    import boto3

    endpoint, log = counted_s3
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name=S3_REGION,
    )
    client.create_bucket(Bucket="models")
    for p in sorted(tiny_bf16.iterdir()):
        client.upload_file(str(p), "models", f"tiny/{p.name}")
    with log.lock:
        log.sent.clear()
    env = _engine_env(
        tmp_path,
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=S3_ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY,
        AWS_DEFAULT_REGION=S3_REGION,
        AWS_EC2_METADATA_DISABLED="true",
        HF_HUB_OFFLINE="1",
    )
    document = _dry_run("s3://models/tiny", tmp_path, env)
    plan = document["result"]["plan"]
    assert plan["model"]["dtype"] == "bfloat16"
    # the run will download every file into the work directory, beside its artifact: the
    # Job's ephemeral storage is sized from this
    downloaded = sum(p.stat().st_size for p in tiny_bf16.iterdir())
    (row,) = plan["candidates"]
    assert plan["disk"]["sourceBytes"] == plan["source"]["sizeBytes"] == downloaded
    assert plan["disk"]["needsBytes"] == downloaded + row["estimatedDiskBytes"]
    assert row["estimatedDiskBytes"] == row["expectedSizeBytes"]
    shards = sorted(p.name for p in tiny_bf16.glob("*.safetensors"))
    read = {k.rsplit("/", 1)[-1]: v for k, v in log.sent.items() if v}
    assert set(read) == {"config.json", *shards}, read
    for shard in shards:
        data = (tiny_bf16 / shard).read_bytes()
        assert read[shard] == 8 + int.from_bytes(data[:8], "little")
