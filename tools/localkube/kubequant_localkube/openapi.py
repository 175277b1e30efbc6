"""OpenAPI documents, just enough for kubectl.

kubectl (1.27+) reads ``/openapi/v3`` to learn whether the server validates fields itself
(a PATCH operation per kind with a ``fieldValidation`` query parameter): then it sends
``fieldValidation=Strict`` and skips client-side validation. ``kubectl explain`` reads a kind's
schema from ``components.schemas`` (by ``x-kubernetes-group-version-kind``): served for CRDs.
Built-in kinds get no component schema, so ``kubectl apply`` computes strategic merge patches
from its compiled-in types, as it does against a real server without OpenAPI.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from kubequant_localkube.resources import Resource

VERSION_INFO: dict[str, str] = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kubequant-localkube",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")


def _gv_path(res: Resource) -> str:
    return f"apis/{res.group}/{res.version}" if res.group else f"api/{res.version}"


def _schema_name(res: Resource) -> str:
    rev = ".".join(reversed(res.group.split("."))) if res.group else "io.k8s.api.core"
    return f"{rev}.{res.version}.{res.kind}"


def _gvk(res: Resource) -> list[dict[str, str]]:
    return [{"group": res.group, "version": res.version, "kind": res.kind}]


def _ops(res: Resource, item: bool) -> dict[str, Any]:
    params = [
        {"name": p, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
        for p in _QUERY_PARAMS
    ]
    ref = {"$ref": f"#/components/schemas/{_schema_name(res)}"} if res.is_custom else {}
    resp = {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}}
    ext = {"x-kubernetes-group-version-kind": _gvk(res)[0]}
    if item:
        return {
            "get": {"x-kubernetes-action": "get", "responses": resp, **ext},
            "put": {"x-kubernetes-action": "put", "parameters": params, "responses": resp, **ext},
            "patch": {
                "x-kubernetes-action": "patch",
                "parameters": params,
                "responses": resp,
                **ext,
            },
            "delete": {"x-kubernetes-action": "delete", "responses": resp, **ext},
        }
    return {
        "get": {"x-kubernetes-action": "list", "responses": resp, **ext},
        "post": {"x-kubernetes-action": "post", "parameters": params, "responses": resp, **ext},
    }


def _clean(schema: Any) -> Any:
    """A CRD schema as an OpenAPI v3 component (CEL rules stay, as the API server keeps them)."""
    return copy.deepcopy(schema)


def _component(res: Resource) -> dict[str, Any]:
    schema = _clean(res.schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True})
    schema.setdefault("type", "object")
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {
        "type": "string",
        "description": "The versioned schema of this representation of an object.",
    }
    props["kind"] = {
        "type": "string",
        "description": "The REST resource this object represents.",
    }
    props["metadata"] = {
        "type": "object",
        "description": "Standard object's metadata.",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    schema["x-kubernetes-group-version-kind"] = _gvk(res)
    return dict(schema)


def v3_group_version(resources: list[Resource], gv_path: str) -> dict[str, Any] | None:
    """The OpenAPI v3 document of one group/version (``apis/g/v`` or ``api/v1``)."""
    gv_path = gv_path.split("?", maxsplit=1)[0].strip("/")
    members = [r for r in resources if _gv_path(r) == gv_path]
    if not members:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for res in members:
        base = f"/{_gv_path(res)}"
        coll = (
            f"{base}/namespaces/{{namespace}}/{res.plural}"
            if res.namespaced
            else f"{base}/{res.plural}"
        )
        paths[coll] = _ops(res, item=False)
        paths[f"{coll}/{{name}}"] = _ops(res, item=True)
        if res.has_status:
            paths[f"{coll}/{{name}}/status"] = _ops(res, item=True)
        if res.is_custom:
            schemas[_schema_name(res)] = _component(res)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def v3_root(resources: list[Resource]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for gv in sorted({_gv_path(r) for r in resources}):
        doc = v3_group_version(resources, gv)
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32].upper()
        out[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash={digest}"}
    return {"paths": out}


def v2_document(resources: list[Resource]) -> dict[str, Any]:
    """A Swagger 2.0 document with the CRD kinds' schemas (JSON only, no protobuf)."""
    definitions = {_schema_name(r): _component(r) for r in resources if r.is_custom}
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]},
        "paths": {},
        "definitions": definitions,
    }
