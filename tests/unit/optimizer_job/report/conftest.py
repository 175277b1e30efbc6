"""A Kubernetes API for the status-reporting tests: kmock's KubernetesEmulator over real HTTP.

kmock 0.8 assigns no resourceVersion and checks no preconditions, which is exactly what
these tests are about, so ``PreconditionEmulator`` adds the two API-server behaviours the
engine relies on: a write whose body carries ``metadata.uid`` or ``metadata.resourceVersion``
different from the stored object's is refused with 409 Conflict, and every write bumps
``metadata.resourceVersion``. It can also simulate a concurrent writer (the operator) that
changes the object between the engine's GET and its PATCH.

The emulator runs in its own thread and event loop, since the kubernetes client is
synchronous; the engine finds it through a kubeconfig file in ``$KUBECONFIG``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import pytest
from kmock._internal import enums, rendering

from kubequant_api.constants import API_VERSION, GROUP, KIND, PLURAL, VERSION

RESOURCE = f"{GROUP}/{VERSION}/{PLURAL}"


class PreconditionEmulator(kmock.KubernetesEmulator):
    """KubernetesEmulator plus uid/resourceVersion preconditions on writes."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.interfere: list[dict[str, Any]] = []  # merge patches applied before the next writes
        self.refused: list[dict[str, Any]] = []  # bodies refused with 409
        self.patches: list[dict[str, Any]] = []  # bodies accepted

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if (
            request.resource is not None
            and request.action == enums.action.UPDATE
            and request.name is not None
        ):
            key = (request.resource, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                obj = self.objects[key]
                if self.interfere:  # a concurrent writer got there first
                    obj.patch(self.interfere.pop(0))
                    self._bump(obj)
                stored = dict(obj.get("metadata", {}))
                given = dict((request.data or {}).get("metadata") or {})
                for field in ("uid", "resourceVersion"):
                    if field in given and given[field] != stored.get(field):
                        self.refused.append(request.data)
                        raise kmock.KubernetesError(
                            status=409,
                            reason="Conflict",
                            message=f"Precondition failed: {field} in precondition: "
                            f"{given[field]}, {field} in object meta: {stored.get(field)}",
                        )
                self.patches.append(request.data)
                response: aiohttp.web.StreamResponse = await super()._handle(request)
                self._bump(obj)
                return response
        result: aiohttp.web.StreamResponse = await super()._handle(request)
        return result

    @staticmethod
    def _bump(obj: Any) -> None:
        meta = obj.get("metadata", {})
        obj.patch({"metadata": {"resourceVersion": str(int(meta.get("resourceVersion", 0)) + 1)}})


class KubeApi:
    """Handle on the running emulator for tests."""

    def __init__(self, emulator: PreconditionEmulator, url: str, kubeconfig: Path) -> None:
        self.emulator = emulator
        self.url = url
        self.kubeconfig = kubeconfig

    def create(self, namespace: str, name: str, *, uid: str, generation: int) -> None:
        self.emulator.objects[RESOURCE, namespace, name] = {
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
        obj = self.emulator.objects[RESOURCE, namespace, name]
        return json.loads(json.dumps(obj.raw))  # type: ignore[no-any-return]

    def patch(self, namespace: str, name: str, change: dict[str, Any]) -> None:
        """Change the stored object as another writer would (bumps resourceVersion)."""
        obj = self.emulator.objects[RESOURCE, namespace, name]
        obj.patch(change)
        PreconditionEmulator._bump(obj)


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
            async with PreconditionEmulator() as emu, kmock.Server(emu) as server:
                state.update(emu=emu, url=str(server.url).rstrip("/"), stop=asyncio.Event())
                state["loop"] = loop
                ready.set()
                await state["stop"].wait()

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
