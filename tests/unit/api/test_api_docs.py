"""docs/api.md is generated from the models, covers every field and follows the method table."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import Field

from kubequant_api import crd as crdgen
from kubequant_api import docs
from kubequant_api.base import ApiModel
from kubequant_api.constants import Task
from kubequant_api.methods import MethodSpec, register_method, unregister_method
from kubequant_api.models import ModelOptimizationSpec, ModelOptimizationStatus


def test_committed_api_docs_are_generated_from_models() -> None:
    assert (
        docs.DOCS_PATH.read_text() == docs.render()
    ), "docs/api.md is stale: run `python -m kubequant_api.docs --write`"


def _rows() -> list[docs.Row]:
    patterns = docs.Patterns()
    return [
        *docs.field_rows(ModelOptimizationSpec, "spec", patterns),
        *docs.field_rows(ModelOptimizationStatus, "status", patterns),
    ]


def test_every_field_says_what_it_means() -> None:
    missing = [r.path for r in _rows() if not r.description.strip()]
    assert missing == [], f"fields without a description in kubequant_api/models.py: {missing}"


def _crd_paths(schema: dict[str, Any], path: str) -> Iterator[str]:
    for name, child in schema.get("properties", {}).items():
        child_path = f"{path}.{name}"
        yield child_path
        items = child.get("items")
        if isinstance(items, dict):
            yield from _crd_paths(items, f"{child_path}[]")
        else:
            yield from _crd_paths(child, child_path)


def test_every_field_of_the_crd_is_documented() -> None:
    """An independent walk over the generated CRD finds no field the page leaves out."""
    crd = yaml.safe_load(crdgen.CRD_PATH.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    rows = _rows()
    documented = {r.path for r in rows}
    # A model documented once: `spec.candidates[].params` points at `spec.params`.
    same_as = {
        r.path: m.group(1)
        for r in rows
        if (m := re.search(r"Fields as under `([^`]+)`", r.description))
    }
    undocumented = []
    for top in ("spec", "status"):
        for path in _crd_paths(root[top], top):
            resolved, before = path, ""
            while resolved != before:  # aliases chain: a selector inside a term inside a term
                before = resolved
                for alias, target in same_as.items():
                    if resolved.startswith(alias + "."):
                        resolved = target + resolved[len(alias) :]
            if resolved not in documented:
                undocumented.append(path)
    assert undocumented == []


def test_the_page_lists_each_method_of_the_table_with_its_params() -> None:
    class ThrowawayParams(ApiModel):
        knob: int = Field(7, ge=1, le=9, description="A throwaway knob.")

    spec = MethodSpec(
        "throwaway-int8",
        ThrowawayParams,
        "tests.throwaway",
        supported_tasks=frozenset({Task.FEATURE_EXTRACTION}),
        needs_calibration=True,
    )
    assert "throwaway-int8" not in docs.render()
    register_method(spec)
    try:
        page = docs.render()
    finally:
        unregister_method("throwaway-int8")
    assert (
        "| `throwaway-int8` | `knob` | `feature-extraction` | yes | CPU or GPU | 0 |" in page
    ), page
    assert "| `throwaway-int8` | `knob` | `integer` from 1 to 9 | `7` | A throwaway knob. |" in page
