"""Generate the ModelOptimization CRD from the pydantic models.

``python -m kubequant_api.crd`` prints the CRD; ``--write`` updates ``crds/``. A unit test
regenerates it and fails when the committed file differs, so the CRD and the models the
operator and the engine use cannot drift. The method enum and the per-method params rules
come from the method table (:mod:`kubequant_api.methods`).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kubequant_api.constants import (
    CATEGORIES,
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
)
from kubequant_api.methods import method_names, method_spec
from kubequant_api.models import ModelOptimizationSpec, ModelOptimizationStatus, Params

CRD_PATH = Path(__file__).resolve().parent.parent / "crds" / "modeloptimization.yaml"

# Keys of JSON Schema that a structural OpenAPI v3 schema in a CRD does not take.
_DROP = {"title", "$defs", "additionalProperties", "discriminator"}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """Resolve $ref, fold Optional into nullable, keep only what a CRD schema accepts."""
    if isinstance(schema, list):
        return [_inline(s, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        target = copy.deepcopy(defs[schema["$ref"].split("/")[-1]])
        extra = {k: v for k, v in schema.items() if k != "$ref"}
        target.update(extra)
        return _inline(target, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        nullable = len(options) != len(schema["anyOf"])
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if len(options) == 1:
            merged = _inline(options[0], defs)
            merged.update(_inline(rest, defs))
            if rest.get("default", "x") is None:
                merged.pop("default", None)
            if nullable:
                merged.pop("nullable", None)
            return merged
        raise ValueError(f"cannot express a union in a structural schema: {schema}")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP:
            if key == "additionalProperties" and isinstance(value, dict) and value:
                out[key] = _inline(value, defs)
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "properties":
            out[key] = {k: _inline(v, defs) for k, v in value.items()}
        elif key in {"items"}:
            out[key] = _inline(value, defs)
        elif key == "default" and value is None:
            continue
        else:
            out[key] = _inline(value, defs)
    if "enum" in out and "type" not in out:
        sample = out["enum"][0]
        out["type"] = (
            "boolean"
            if isinstance(sample, bool)
            else (
                "integer"
                if isinstance(sample, int)
                else "number" if isinstance(sample, float) else "string"
            )
        )
    return out


def _schema_of(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return dict(_inline(raw, defs))


def _free_form(node: dict[str, Any]) -> None:
    """dict[str, Any] fields (affinity, plan, params echo) keep unknown fields."""
    if node.get("type") == "object" and "properties" not in node:
        ap = node.get("additionalProperties")
        if not ap or ap == {}:
            node.pop("additionalProperties", None)
            node["x-kubernetes-preserve-unknown-fields"] = True
    for key in ("properties",):
        for child in node.get(key, {}).values():
            _free_form(child)
    if isinstance(node.get("items"), dict):
        _free_form(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        _free_form(node["additionalProperties"])


def _params_rules(prefix: str) -> list[dict[str, str]]:
    """CEL rules, one per method of the method table, allowing only its params and values."""
    rules: list[dict[str, str]] = []
    all_params = {f.alias or n for n, f in Params.model_fields.items()}
    for method in method_names():
        model = method_spec(method).params
        accepted = {f.alias or n for n, f in model.model_fields.items()}
        forbidden = sorted(all_params - accepted)
        checks = [f"!has(self.params.{p})" for p in forbidden]
        for name, field in model.model_fields.items():
            alias = field.alias or name
            schema = model.model_json_schema(by_alias=True)["properties"][alias]
            enum = schema.get("enum") or ([schema["const"]] if "const" in schema else None)
            if (
                enum is not None
                and schema.get("type") != "boolean"
                and not all(isinstance(v, bool) for v in enum)
            ):
                values = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in enum)
                checks.append(f"(!has(self.params.{alias}) || self.params.{alias} in [{values}])")
            if "minimum" in schema or "maximum" in schema:
                lo, hi = schema.get("minimum"), schema.get("maximum")
                parts = []
                if lo is not None:
                    parts.append(f"self.params.{alias} >= {float(lo)}")
                if hi is not None:
                    parts.append(f"self.params.{alias} <= {float(hi)}")
                checks.append(f"(!has(self.params.{alias}) || ({' && '.join(parts)}))")
        if not checks:
            continue
        shown = ", ".join(sorted(accepted)) or "none"
        rules.append(
            {
                "rule": f"self.method != '{method}' || !has(self.params) || ("
                + " && ".join(checks)
                + ")",
                "message": f"{prefix}params: method {method} accepts only: {shown}"
                + _ranges_text(model),
                "fieldPath": ".params",
            }
        )
    return rules


def _ranges_text(model: type[Any]) -> str:
    parts = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        schema = model.model_json_schema(by_alias=True)["properties"][alias]
        if "enum" in schema and schema.get("type") != "boolean":
            parts.append(f"{alias} in {schema['enum']}")
        elif "const" in schema:
            parts.append(f"{alias} = {schema['const']}")
        elif "minimum" in schema or "maximum" in schema:
            parts.append(f"{alias} in [{schema.get('minimum')}, {schema.get('maximum')}]")
    return f" ({'; '.join(parts)})" if parts else ""


def spec_rules() -> list[dict[str, str]]:
    return [
        {
            "rule": "self.method == 'auto' ? (has(self.candidates) && size(self.candidates) > 0)"
            " : !has(self.candidates)",
            "message": "spec.candidates: required (non-empty) with method auto, and only allowed "
            "with method auto",
            "fieldPath": ".candidates",
        },
        {
            "rule": "self.method != 'auto' || !has(self.params)",
            "message": "spec.params: method auto takes no params; set them per candidate",
            "fieldPath": ".params",
        },
        *_params_rules("spec."),
        {
            "rule": "!has(self.resources) || !has(self.resources.gpu) || self.resources.gpu == 0 "
            "|| size(self.resources.gpuResourceName) > 0",
            "message": "spec.resources.gpuResourceName: required when spec.resources.gpu > 0",
            "fieldPath": ".resources.gpuResourceName",
        },
    ]


def build_crd() -> dict[str, Any]:
    spec_schema = _schema_of(ModelOptimizationSpec)
    status_schema = _schema_of(ModelOptimizationStatus)
    _free_form(spec_schema)
    _free_form(status_schema)
    spec_schema["description"] = (
        "What to optimize, how, how to judge it and where to put it (see docs/api.md)."
    )
    spec_schema["x-kubernetes-validations"] = spec_rules()
    candidate = spec_schema["properties"]["candidates"]["items"]
    candidate["x-kubernetes-validations"] = [
        {**r, "message": r["message"].replace("spec.", "spec.candidates[*].")}
        for r in _params_rules("")
    ]
    for r in candidate["x-kubernetes-validations"]:
        r["message"] = "spec.candidates[*]." + r["message"]
    status_schema["description"] = "Observed state; written by the operator (and the engine's "
    status_schema["description"] += "progress and result)."
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Method", "type": "string", "jsonPath": ".spec.method"},
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.uri", "priority": 0},
        # The current run only: cleared when a run starts (lastSuccessful keeps the last one).
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
        {"name": "Ratio", "type": "number", "jsonPath": ".status.result.compressionRatio"},
        {"name": "Quality", "type": "string", "jsonPath": ".status.result.qualityGate"},
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {
            "name": "Reason",
            "type": "string",
            "priority": 1,
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        },
        {"name": "Run", "type": "integer", "priority": 1, "jsonPath": ".status.run"},
        {
            "name": "Last-Ratio",
            "type": "number",
            "priority": 1,
            "jsonPath": ".status.lastSuccessful.compressionRatio",
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {
                "app.kubernetes.io/name": "kubequant",
                "app.kubernetes.io/part-of": "kubequant",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": list(CATEGORIES),
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "ModelOptimization turns a model into an optimized "
                            "(quantized), measured artifact by running kubequant's engine as a "
                            "Job.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


HEADER = (
    "# Generated by `python -m kubequant_api.crd --write` from kubequant_api/models.py.\n"
    "# Do not edit by hand: a test fails when this file and the models disagree.\n"
)


def render() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def generator_main(
    path: Path, render: Callable[[], str], argv: list[str] | None, description: str | None
) -> int:
    """The command line of a generated file: print it, or ``--write`` it to ``path``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--write", action="store_true", help=f"write {path}")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return generator_main(CRD_PATH, render, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
