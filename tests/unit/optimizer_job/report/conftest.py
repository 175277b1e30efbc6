"""A Kubernetes API for the status-reporting tests: a minimal API server over real HTTP.

It serves GET and PATCH (a JSON merge patch, of the object or its status subresource) of
ModelOptimizations, with the two API-server behaviours the engine relies on: a write whose
body carries ``metadata.uid`` or ``metadata.resourceVersion`` different from the stored
object's is refused with 409 Conflict, and every write bumps ``metadata.resourceVersion``.
It can also simulate a concurrent writer (the operator) that changes the object between the
engine's GET and its PATCH. Objects are put in place as the test wants them (any uid,
generation or resourceVersion), which the full local control plane does not allow.

The server runs in its own thread and event loop, since the kubernetes client is
synchronous; the engine finds it through a kubeconfig file in ``$KUBECONFIG``.
"""

from __future__ import annotations

import asyncio
import copy
import json
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
            obj = copy.deepcopy(self.objects.get(key))
        if obj is None:
            return _status(404, "NotFound", f"{PLURAL} {key[1]!r} not found")
        return aiohttp.web.json_response(obj)

    async def _patch(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        data: dict[str, Any] = json.loads(await request.read())
        with self.lock:
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


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": server}}],
                "users": [{"name": "engine", "user": {"token": "not-a-real-token"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "engine"}}],
                "current-context": "emu",
            }
        )
    )
    return path


@pytest.fixture()
def kube_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeApi]:
    """A fresh emulator per test, with ``$KUBECONFIG`` pointing at it."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()

        async def main() -> None:
            emu = PreconditionEmulator()
            runner = aiohttp.web.AppRunner(emu.app(), access_log=None)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            try:
                port = runner.addresses[0][1]
                state.update(emu=emu, url=f"http://127.0.0.1:{port}", stop=asyncio.Event())
                state["loop"] = loop
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
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig.json", state["url"])
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield KubeApi(state["emu"], state["url"], kubeconfig)
    finally:
        state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(10)
