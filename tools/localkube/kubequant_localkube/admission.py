"""Admission for custom resources, as the API server does it.

For objects of a CRD-defined resource: unknown fields are pruned (or rejected with
``fieldValidation=Strict``), defaults are applied, the structural schema is validated (types,
enums, required, patterns, string formats, bounds, lengths, item counts, unique items of
list types ``set`` and ``map``: :mod:`kubequant_localkube.schemaformats`) and every
``x-kubernetes-validations`` CEL rule is evaluated with cel-python. Failures are a 422 Invalid
whose message names the field and carries the rule's message, in the API server's wording.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Callable
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

from kubequant_localkube import errors, resources, schemaformats

# celpy logs every short-circuited evaluation error at DEBUG: far too much for test logs.
logging.getLogger("celpy").setLevel(logging.INFO)

INVALID = "FieldValueInvalid"
BAD_TYPE = "FieldValueTypeInvalid"
_Add = Callable[..., None]

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
}


RBAC_GROUP = "rbac.authorization.k8s.io"


def _path_segment_problems(name: str) -> list[str]:
    """``path.IsValidPathSegmentName``: what RBAC names are held to (``system:kube-x`` is fine)."""
    if name in (".", ".."):
        return [f"may not be '{name}'"]
    return [f"may not contain '{bad}'" for bad in ("/", "%") if bad in name]


def validate_name(res: resources.Resource, name: str) -> None:
    """metadata.name must be a DNS subdomain (253 characters at most); RBAC objects only a
    valid path segment (``ValidateRBACName``)."""
    if res.group == RBAC_GROUP:
        problems = _path_segment_problems(name)
        if problems:
            raise errors.invalid(
                res.kind,
                res.group,
                name,
                [
                    {
                        "field": "metadata.name",
                        "reason": "FieldValueInvalid",
                        "message": f'Invalid value: "{name}": {problem}',
                    }
                    for problem in problems
                ],
            )
        return
    if len(name) > 253 or not _NAME_RE.match(name):
        raise errors.invalid(
            res.kind,
            res.group,
            name,
            [
                {
                    "field": "metadata.name",
                    "reason": "FieldValueInvalid",
                    "message": f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                    "consist of lower case alphanumeric characters, '-' or '.', and must start "
                    "and end with an alphanumeric character",
                }
            ],
        )


class CelRuleError(errors.LocalKubeError):
    """A CEL rule of a CRD does not compile."""


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return '"null"'
    return str(value)


def to_cel(value: Any, schema: dict[str, Any] | None) -> Any:
    """A JSON value as a CEL value, typed by its schema (``number`` is a double even when the
    JSON has an integer, as in the API server)."""
    schema = schema or {}
    typ = schema.get("type")
    if value is None:
        return None
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        addl = schema.get("additionalProperties")
        out = celtypes.MapType()
        for k, v in value.items():
            sub = props.get(k) or (addl if isinstance(addl, dict) else None)
            out[celtypes.StringType(k)] = to_cel(v, sub)
        return out
    if isinstance(value, list):
        return celtypes.ListType([to_cel(v, schema.get("items")) for v in value])
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if typ == "number" and isinstance(value, (int, float)):
        return celtypes.DoubleType(float(value))
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    return json_to_cel(value)


class Admission:
    """Schema validation, pruning, defaulting and CEL rules for CRD-defined resources."""

    def __init__(self) -> None:
        self._env = celpy.Environment()
        self._programs: dict[str, Any] = {}

    # ------------------------------------------------------------------ CEL
    def program(self, rule: str) -> Any:
        prog = self._programs.get(rule)
        if prog is None:
            try:
                ast = self._env.compile(rule)
                prog = self._env.program(ast)
            except Exception as exc:  # celpy raises its own parse errors
                raise CelRuleError(f"CEL rule does not compile: {rule!r}: {exc}") from exc
            self._programs[rule] = prog
        return prog

    def compile(self, res: resources.Resource) -> None:
        """Compile every rule in a resource's schema; a broken rule is a 422 on the CRD."""
        failures: list[dict[str, str]] = []
        for path, rule in _walk_rules(res.schema or {}, "spec.versions[].schema.openAPIV3Schema"):
            try:
                self.program(rule["rule"])
            except CelRuleError as exc:
                failures.append(
                    {
                        "field": f"{path}.x-kubernetes-validations",
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {rule['rule']!r}: compilation failed: {exc}",
                    }
                )
        if failures:
            raise errors.invalid(
                "CustomResourceDefinition", "apiextensions.k8s.io", res.crd_name or "", failures
            )

    # ------------------------------------------------------------------ entry point
    def admit(
        self,
        res: resources.Resource,
        obj: dict[str, Any],
        old: dict[str, Any] | None,
        field_validation: str | None,
        subresource: str | None,
    ) -> list[str]:
        """Mutate ``obj`` (prune, default) and validate it; return warnings; raise 422."""
        if not res.is_custom or not res.schema:
            return []
        schema = res.schema
        unknown: list[str] = []
        body = {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}
        body = self._prune_default(schema, body, "", unknown, root=True)
        mode = (field_validation or "Warn").capitalize()
        warnings: list[str] = []
        if unknown and mode == "Strict":
            listed = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise errors.ApiError(
                400,
                f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                f"strict decoding error: {listed}",
                reason="BadRequest",
            )
        if unknown and mode == "Warn":
            warnings = [f'unknown field "{u}"' for u in unknown]
        for k in [k for k in obj if k not in ("metadata", "apiVersion", "kind")]:
            del obj[k]
        obj.update(body)
        causes: list[dict[str, str]] = []
        props = schema.get("properties") or {}
        for field in schema.get("required") or []:
            if field not in obj and field != "metadata":
                causes.append(
                    {"field": field, "reason": "FieldValueRequired", "message": "Required value"}
                )
        for key, value in obj.items():
            if key in ("metadata", "apiVersion", "kind"):
                continue
            sub = props.get(key)
            if sub is not None:
                old_v = old.get(key) if old else None
                self._validate(sub, value, old_v, key, causes)
        root_rules = schema.get("x-kubernetes-validations") or []
        if root_rules and not causes:
            self._run_rules(root_rules, schema, obj, old=old, path="", causes=causes)
        if causes:
            raise errors.invalid(
                res.kind, res.group, obj.get("metadata", {}).get("name", ""), causes
            )
        return warnings

    # ------------------------------------------------------------------ pruning & defaults
    def _prune_default(
        self, schema: dict[str, Any], value: Any, path: str, unknown: list[str], root: bool = False
    ) -> Any:
        if isinstance(value, dict) and (
            schema.get("type") == "object" or "properties" in schema or root
        ):
            props = schema.get("properties") or {}
            addl = schema.get("additionalProperties")
            preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
            out: dict[str, Any] = {}
            for key, sub_val in value.items():
                sub_path = f"{path}.{key}" if path else key
                if key in props:
                    out[key] = self._prune_default(props[key], sub_val, sub_path, unknown)
                elif isinstance(addl, dict):
                    out[key] = self._prune_default(addl, sub_val, sub_path, unknown)
                elif preserve or addl is True:
                    out[key] = sub_val
                else:
                    unknown.append(sub_path)
            for key, sub in props.items():
                if key not in out and "default" in sub:
                    sub_path = f"{path}.{key}" if path else key
                    out[key] = self._prune_default(sub, copy.deepcopy(sub["default"]), sub_path, [])
            return out
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [
                self._prune_default(schema["items"], v, f"{path}[{i}]", unknown)
                for i, v in enumerate(value)
            ]
        return value

    # ------------------------------------------------------------------ structural validation
    def _validate(
        self,
        schema: dict[str, Any],
        value: Any,
        old: Any,
        path: str,
        causes: list[dict[str, str]],
    ) -> None:
        if old is not None and value == old:
            return  # ratcheting, as the API server does: an unchanged field is not re-checked
        before = len(causes)

        def add(reason: str, message: str, field: str = path) -> None:
            causes.append({"field": field, "reason": reason, "message": message})

        typ = schema.get("type")
        shown = _shown(value)
        if value is None:
            if not schema.get("nullable"):
                want = typ or "object"
                add(
                    BAD_TYPE,
                    f'Invalid value: "null": {path} in body must be of type {want}: "null"',
                )
            return
        if schema.get("x-kubernetes-int-or-string"):
            if not isinstance(value, (int, str)) or isinstance(value, bool):
                add(
                    BAD_TYPE,
                    f"Invalid value: {shown}: {path} in body must be of type int-or-string",
                )
                return
        elif typ and not _type_ok(typ, value):
            have = _type_of(value)
            add(
                BAD_TYPE, f'Invalid value: "{have}": {path} in body must be of type {typ}: "{have}"'
            )
            return
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(_shown(v) for v in schema["enum"])
            add(
                "FieldValueNotSupported", f"Unsupported value: {shown}: supported values: {allowed}"
            )
        if isinstance(value, str):
            self._check_string(schema, value, path, add)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            self._check_number(schema, value, path, add)
        if isinstance(value, list):
            self._check_list(schema, value, old=old, path=path, causes=causes, add=add)
        if isinstance(value, dict):
            self._check_object(schema, value, old=old, path=path, causes=causes, add=add)
        for sub in schema.get("allOf") or []:
            self._validate(sub, value, old, path, causes)
        if schema.get("anyOf") and not any(_quiet_ok(self, s, value) for s in schema["anyOf"]):
            add(INVALID, f"Invalid value: {shown}: {path} in body must match a schema in anyOf")
        if schema.get("oneOf") and sum(_quiet_ok(self, s, value) for s in schema["oneOf"]) != 1:
            add(INVALID, f"Invalid value: {shown}: {path} in body must match one schema in oneOf")
        rules = schema.get("x-kubernetes-validations") or []
        if rules and len(causes) == before:
            self._run_rules(rules, schema, value, old=old, path=path, causes=causes)

    @staticmethod
    def _check_string(schema: dict[str, Any], value: str, path: str, add: _Add) -> None:
        shown = _shown(value)
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            add("FieldValueTooLong", f"Too long: may not be more than {schema['maxLength']} bytes")
        if "minLength" in schema and len(value) < schema["minLength"]:
            want = schema["minLength"]
            add(
                INVALID,
                f"Invalid value: {shown}: {path} in body should be at least {want} chars long",
            )
        if "pattern" in schema and not re.search(schema["pattern"], value):
            add(
                INVALID,
                f"Invalid value: {shown}: {path} in body should match '{schema['pattern']}'",
            )
        bad_format = schemaformats.format_problem(schema, value, path)
        if bad_format:
            add(BAD_TYPE, bad_format)

    @staticmethod
    def _check_number(schema: dict[str, Any], value: float, path: str, add: _Add) -> None:
        if "minimum" in schema:
            lo, excl = schema["minimum"], schema.get("exclusiveMinimum") is True
            if value < lo or (excl and value == lo):
                rel = "greater than" if excl else "greater than or equal to"
                add(INVALID, f"Invalid value: {value}: {path} in body should be {rel} {lo}")
        if "maximum" in schema:
            hi, excl = schema["maximum"], schema.get("exclusiveMaximum") is True
            if value > hi or (excl and value == hi):
                rel = "less than" if excl else "less than or equal to"
                add(INVALID, f"Invalid value: {value}: {path} in body should be {rel} {hi}")
        step = schema.get("multipleOf")
        if step and (value / step) % 1:
            add(INVALID, f"Invalid value: {value}: {path} in body should be a multiple of {step}")

    def _check_list(
        self,
        schema: dict[str, Any],
        value: list[Any],
        *,
        old: Any,
        path: str,
        causes: list[dict[str, str]],
        add: _Add,
    ) -> None:
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            add(
                "FieldValueTooMany",
                f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
            )
        if "minItems" in schema and len(value) < schema["minItems"]:
            want = schema["minItems"]
            add(
                INVALID,
                f"Invalid value: {len(value)}: {path} in body should have at least {want} items",
            )
        items = schema.get("items")
        if isinstance(items, dict):
            olds = old if isinstance(old, list) else []
            for i, item in enumerate(value):
                prev = olds[i] if i < len(olds) else None
                self._validate(items, item, prev, f"{path}[{i}]", causes)
        for i, message in schemaformats.list_type_problems(schema, value):
            add("FieldValueDuplicate", message, f"{path}[{i}]")

    def _check_object(
        self,
        schema: dict[str, Any],
        value: dict[str, Any],
        *,
        old: Any,
        path: str,
        causes: list[dict[str, str]],
        add: _Add,
    ) -> None:
        props = schema.get("properties") or {}
        for field in schema.get("required") or []:
            if field not in value:
                add("FieldValueRequired", "Required value", f"{path}.{field}")
        size = len(value)
        if "maxProperties" in schema and size > schema["maxProperties"]:
            add(
                "FieldValueTooMany",
                f"Too many: {size}: must have at most {schema['maxProperties']} items",
            )
        if "minProperties" in schema and size < schema["minProperties"]:
            want = schema["minProperties"]
            add(
                INVALID,
                f"Invalid value: {size}: {path} in body should have at least {want} properties",
            )
        addl = schema.get("additionalProperties")
        olds = old if isinstance(old, dict) else {}
        for key, sub_val in value.items():
            sub = props.get(key) or (addl if isinstance(addl, dict) else None)
            if sub is not None:
                self._validate(sub, sub_val, olds.get(key), f"{path}.{key}", causes)

    def _run_rules(
        self,
        rules: list[dict[str, Any]],
        schema: dict[str, Any],
        value: Any,
        *,
        old: Any,
        path: str,
        causes: list[dict[str, str]],
    ) -> None:
        self_val = to_cel(value, schema)
        shown = _shown(value)
        for rule in rules:
            text = rule["rule"]
            uses_old = re.search(r"\boldSelf\b", text) is not None
            if uses_old and old is None:
                continue  # a transition rule: only on updates that had a value before
            activation: dict[str, Any] = {"self": self_val}
            if uses_old:
                activation["oldSelf"] = to_cel(old, schema)
            prog = self.program(text)
            field_path = rule.get("fieldPath") or ""
            field = path + field_path if path else field_path.lstrip(".")
            try:
                ok = prog.evaluate(activation)
            except CELEvalError as exc:  # an evaluation error rejects the object
                ok = exc
            if isinstance(ok, CELEvalError):
                message = f"Invalid value: {shown}: evaluating rule: {text}: {ok}"
                causes.append({"field": field, "reason": INVALID, "message": message})
                continue
            if bool(ok):
                continue
            message = rule.get("message") or f"failed rule: {text}"
            if rule.get("messageExpression"):
                with contextlib.suppress(CELEvalError, CelRuleError):
                    message = str(self.program(rule["messageExpression"]).evaluate(activation))
            reason = rule.get("reason") or INVALID
            prefix = {
                "FieldValueForbidden": "Forbidden: ",
                "FieldValueRequired": "Required value: ",
                "FieldValueDuplicate": "Duplicate value: ",
            }.get(reason, f"Invalid value: {shown}: ")
            causes.append({"field": field, "reason": reason, "message": prefix + message})


def _quiet_ok(adm: Admission, schema: dict[str, Any], value: Any) -> bool:
    probe: list[dict[str, str]] = []
    adm._validate(schema, value, None, "x", probe)
    return not probe


def _type_ok(typ: str, value: Any) -> bool:
    if typ == "object":
        return isinstance(value, dict)
    if typ == "array":
        return isinstance(value, list)
    if typ == "string":
        return isinstance(value, str)
    if typ == "boolean":
        return isinstance(value, bool)
    if typ == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer()
        )
    if typ == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def _walk_rules(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, r) for r in schema.get("x-kubernetes-validations") or []]
    for key, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, dict):
            out += _walk_rules(sub, f"{path}.properties[{key}]")
    if isinstance(schema.get("items"), dict):
        out += _walk_rules(schema["items"], f"{path}.items")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk_rules(schema["additionalProperties"], f"{path}.additionalProperties")
    return out


def all_rules(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every (schema path, rule) of a CRD version's schema, for tests and tooling."""
    return _walk_rules(schema, "")
