"""A Kubernetes API for the status-reporting tests: a minimal API server over real HTTP.

It serves GET and PATCH (a JSON merge patch, of the object or its status subresource) of
ModelOptimizations, with the two API-server behaviours the engine relies on: a write whose
body carries ``metadata.uid`` or ``metadata.resourceVersion`` different from the stored
object's is refused with 409 Conflict, and every write bumps ``metadata.resourceVersion``.
It can also simulate a concurrent writer (the operator) that changes the object between the
engine's GET and its PATCH. Objects are put in place as the test wants them (any uid,
generation or resourceVersion), which the full local control plane does not allow.

The server runs in its own thread and event loop, since the kubernetes client is
synchronous; the engine finds it through a kubeconfig file in ``$KUBECONFIG`` (``kube_api``)
or, as in a pod, through ``KUBERNETES_SERVICE_HOST``/``_PORT`` and a service-account token
over HTTPS (``in_cluster_api``). Every request's ``Authorization`` header is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import pytest

from kubequant_api.constants import API_VERSION, GROUP, KIND, PLURAL, VERSION

OBJECT_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}/{{name}}"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``None`` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
    body |= {"code": code, "reason": reason, "message": message}
    return aiohttp.web.json_response(body, status=code)


class PreconditionEmulator:
    """ModelOptimizations by (namespace, name), with uid/resourceVersion preconditions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.interfere: list[dict[str, Any]] = []  # merge patches applied before the next writes
        self.refused: list[dict[str, Any]] = []  # bodies refused with 409
        self.patches: list[dict[str, Any]] = []  # bodies accepted
        self.authorizations: list[str | None] = []  # each request's Authorization header

    def app(self) -> aiohttp.web.Application:
        app = aiohttp.web.Application()
        app.router.add_get(OBJECT_PATH, self._get)
        app.router.add_patch(OBJECT_PATH, self._patch)
        app.router.add_patch(OBJECT_PATH + "/status", self._patch)
        return app

    def change(self, key: tuple[str, str], change: dict[str, Any]) -> None:
        """Merge ``change`` into the stored object and bump its resourceVersion."""
        obj = merge_patch(self.objects[key], change)
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(int(meta.get("resourceVersion", 0)) + 1)
        self.objects[key] = obj

    async def _get(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        with self.lock:
            self.authorizations.append(request.headers.get("Authorization"))
            obj = copy.deepcopy(self.objects.get(key))
        if obj is None:
            return _status(404, "NotFound", f"{PLURAL} {key[1]!r} not found")
        return aiohttp.web.json_response(obj)

    async def _patch(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        data: dict[str, Any] = json.loads(await request.read())
        with self.lock:
            self.authorizations.append(request.headers.get("Authorization"))
            if key not in self.objects:
                return _status(404, "NotFound", f"{PLURAL} {key[1]!r} not found")
            if self.interfere:  # a concurrent writer got there first
                self.change(key, self.interfere.pop(0))
            stored = self.objects[key].get("metadata", {})
            given = data.get("metadata") or {}
            for field in ("uid", "resourceVersion"):
                if field in given and given[field] != stored.get(field):
                    self.refused.append(data)
                    return _status(
                        409,
                        "Conflict",
                        f"Precondition failed: {field} in precondition: "
                        f"{given[field]}, {field} in object meta: {stored.get(field)}",
                    )
            self.patches.append(data)
            self.change(key, data)
            return aiohttp.web.json_response(copy.deepcopy(self.objects[key]))


class KubeApi:
    """Handle on the running emulator for tests."""

    def __init__(self, emulator: PreconditionEmulator, url: str, kubeconfig: Path) -> None:
        self.emulator = emulator
        self.url = url
        self.kubeconfig = kubeconfig

    def create(self, namespace: str, name: str, *, uid: str, generation: int) -> None:
        self.emulator.objects[namespace, name] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": uid,
                "generation": generation,
                "resourceVersion": "1",
            },
            "spec": {"model": {"uri": "file:///m"}, "method": "torchao-int8-weight"},
        }

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        with self.emulator.lock:
            return copy.deepcopy(self.emulator.objects[namespace, name])

    def patch(self, namespace: str, name: str, change: dict[str, Any]) -> None:
        """Change the stored object as another writer would (bumps resourceVersion)."""
        with self.emulator.lock:
            self.emulator.change((namespace, name), change)


KUBECONFIG_TOKEN = "not-a-real-token"


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": server}}],
                "users": [{"name": "engine", "user": {"token": KUBECONFIG_TOKEN}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "engine"}}],
                "current-context": "emu",
            }
        )
    )
    return path


@contextlib.contextmanager
def serve_emulator(ssl_context: ssl.SSLContext | None = None) -> Iterator[dict[str, Any]]:
    """Run a PreconditionEmulator on 127.0.0.1 (HTTPS with ``ssl_context``) in a thread."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()

        async def main() -> None:
            emu = PreconditionEmulator()
            runner = aiohttp.web.AppRunner(emu.app(), access_log=None)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await site.start()
            try:
                port = runner.addresses[0][1]
                scheme = "https" if ssl_context else "http"
                state.update(emu=emu, port=port, stop=asyncio.Event())
                state.update(url=f"{scheme}://127.0.0.1:{port}", loop=loop)
                ready.set()
                await state["stop"].wait()
            finally:
                await runner.cleanup()

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surface start-up failures to the test
            state["error"] = exc
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="kube-emulator", daemon=True)
    thread.start()
    assert ready.wait(15), "emulator did not start"
    if "error" in state:
        raise state["error"]
    try:
        yield state
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)


@pytest.fixture()
def kube_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeApi]:
    """A fresh emulator per test, with ``$KUBECONFIG`` pointing at it."""
    with serve_emulator() as state:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig.json", state["url"])
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield KubeApi(state["emu"], state["url"], kubeconfig)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate for IP 127.0.0.1 and its key (PEM), as an API server's serving pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class InClusterApi(KubeApi):
    """The emulator as a pod sees it: no kubeconfig, a service-account directory."""

    def __init__(self, emulator: PreconditionEmulator, url: str, service_account: Path) -> None:
        super().__init__(emulator, url, service_account / "unused-kubeconfig")
        self.service_account = service_account


SERVICE_ACCOUNT_TOKEN = "eyJhbGciOiJSUzI1NiJ9.in-cluster-test-token.c2lnbmF0dXJl"


@pytest.fixture()
def in_cluster_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InClusterApi]:
    """The emulator over HTTPS, found as a pod finds its API server: the kubelet's
    ``KUBERNETES_SERVICE_HOST``/``_PORT`` and a service-account directory (token, ca.crt).

    The client reads that directory at a fixed path; the test points its module constants
    at a temporary one. No ``$KUBECONFIG``.
    """
    from kubernetes.config import incluster_config

    cert, key = self_signed_cert(tmp_path)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(SERVICE_ACCOUNT_TOKEN)
    (account / "ca.crt").write_bytes(cert.read_bytes())
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(account / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(account / "ca.crt"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with serve_emulator(context) as state:
        monkeypatch.delenv("KUBECONFIG", raising=False)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(state["port"]))
        yield InClusterApi(state["emu"], state["url"], account)
