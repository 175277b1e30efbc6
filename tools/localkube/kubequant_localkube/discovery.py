"""Discovery and OpenAPI: what kubectl and the clients ask before they ask for objects."""

from __future__ import annotations

import re
from typing import Any

import aiohttp.web

from kubequant_localkube import errors, openapi
from kubequant_localkube.store import Store

JSON = "application/json"


def version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes' version order: GA > beta > alpha, higher numbers first."""
    m = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    if not m:
        return (3, 0, 0)
    major = int(m.group(1))
    stage = {"alpha": 2, "beta": 1, None: 0}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (stage, -major, -minor)


def groups(store: Store) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for res in store.all_resources():
        versions = out.setdefault(res.group, [])
        if res.version not in versions:
            versions.append(res.version)
    return out


def api_group(store: Store, group: str) -> dict[str, Any] | None:
    versions = groups(store).get(group)
    if not versions or not group:
        return None
    versions = sorted(versions, key=version_priority)
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [{"groupVersion": f"{group}/{v}", "version": v} for v in versions],
        "preferredVersion": {"groupVersion": f"{group}/{versions[0]}", "version": versions[0]},
    }


def api_groups(store: Store) -> dict[str, Any]:
    found = [api_group(store, g) for g in sorted(groups(store)) if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [g for g in found if g]}


def resource_list(store: Store, group: str, version: str) -> dict[str, Any]:
    res_list = [r for r in store.all_resources() if r.group == group and r.version == version]
    if not res_list:
        raise errors.ApiError(404, "the server could not find the requested resource")
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": [entry for r in res_list for entry in r.discovery()],
    }


def root_paths(store: Store) -> list[str]:
    paths = {"/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version"}
    paths |= {"/openapi/v2", "/openapi/v3"}
    for g, versions in groups(store).items():
        if g:
            paths.add(f"/apis/{g}")
            paths |= {f"/apis/{g}/{v}" for v in versions}
    return sorted(paths)


def openapi_response(
    store: Store, raw: aiohttp.web.BaseRequest, path: str
) -> aiohttp.web.StreamResponse:
    resources = store.all_resources()
    if path == "/openapi/v2":
        accept = raw.headers.get("Accept", "")
        if "protobuf" in accept and JSON not in accept:
            raise errors.ApiError(406, "only application/json is served", reason="NotAcceptable")
        return aiohttp.web.json_response(openapi.v2_document(resources))
    if path == "/openapi/v3":
        return aiohttp.web.json_response(openapi.v3_root(resources))
    gv = path[len("/openapi/v3/") :]
    doc = openapi.v3_group_version(resources, gv)
    if doc is None:
        raise errors.ApiError(404, "the server could not find the requested resource")
    return aiohttp.web.json_response(doc)


def serve(
    store: Store, raw: aiohttp.web.BaseRequest, path: str
) -> aiohttp.web.StreamResponse | None:
    """The answer to a health, version, discovery or OpenAPI request (None: not one)."""
    if path in ("/healthz", "/livez", "/readyz") or path.startswith(
        ("/healthz/", "/livez/", "/readyz/")
    ):
        return aiohttp.web.Response(text="ok")
    if path == "/version":
        return aiohttp.web.json_response(openapi.VERSION_INFO)
    if path == "/api":
        return aiohttp.web.json_response(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": raw.host}
                ],
            }
        )
    if path == "/apis":
        return aiohttp.web.json_response(api_groups(store))
    if path.startswith("/openapi/"):
        return openapi_response(store, raw, path)
    if path == "/":
        return aiohttp.web.json_response({"paths": root_paths(store)})
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) == 2:
        return aiohttp.web.json_response(resource_list(store, "", parts[1]))
    if parts[0] == "apis" and len(parts) == 2:
        group = api_group(store, parts[1])
        if group is None:
            raise errors.ApiError(404, "the server could not find the requested resource")
        return aiohttp.web.json_response(group)
    if parts[0] == "apis" and len(parts) == 3:
        return aiohttp.web.json_response(resource_list(store, parts[1], parts[2]))
    return None
