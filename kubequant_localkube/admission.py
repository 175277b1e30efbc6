"""Admission for custom resources, as the API server does it.

For objects of a CRD-defined resource: unknown fields are pruned (or rejected with
``fieldValidation=Strict``), defaults are applied, the structural schema is validated (types,
enums, required, patterns, bounds, lengths, item counts) and every ``x-kubernetes-validations``
CEL rule is evaluated with cel-python. Failures are a 422 Invalid whose message names the field
and carries the rule's message, in the API server's wording.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import celpy
from celpy import celtypes

from kubequant_localkube import errors, resources

# celpy logs every short-circuited evaluation error at DEBUG: far too much for test logs.
logging.getLogger("celpy").setLevel(logging.INFO)

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
}


def validate_name(res: resources.Resource, name: str) -> None:
    """metadata.name must be a DNS subdomain (253 characters at most)."""
    if len(name) > 253 or not _NAME_RE.match(name):
        raise errors.invalid(
            res.kind,
            res.group,
            name,
            [
                {
                    "field": "metadata.name",
                    "reason": "FieldValueInvalid",
                    "message": f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                    "of lower case alphanumeric characters, '-' or '.', and must start and end "
                    "with an alphanumeric character",
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
    return celpy.json_to_cel(value)


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
            self._run_rules(root_rules, schema, obj, old, "", causes)
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
        before = len(causes)
        typ = schema.get("type")
        if value is None:
            if not schema.get("nullable"):
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueTypeInvalid",
                        "message": f'Invalid value: "null": {path} in body must be of type {typ or "object"}: "null"',
                    }
                )
            return
        if schema.get("x-kubernetes-int-or-string"):
            if not isinstance(value, (int, str)) or isinstance(value, bool):
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueTypeInvalid",
                        "message": f"Invalid value: {_shown(value)}: {path} in body must be of type integer or string",
                    }
                )
                return
        elif typ and not _type_ok(typ, value):
            causes.append(
                {
                    "field": path,
                    "reason": "FieldValueTypeInvalid",
                    "message": f'Invalid value: "{_type_of(value)}": {path} in body must be of type {typ}: "{_type_of(value)}"',
                }
            )
            return
        if "enum" in schema and value not in schema["enum"]:
            allowed = ", ".join(_shown(v) for v in schema["enum"])
            causes.append(
                {
                    "field": path,
                    "reason": "FieldValueNotSupported",
                    "message": f"Unsupported value: {_shown(value)}: supported values: {allowed}",
                }
            )
        if isinstance(value, str):
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueTooLong",
                        "message": f"Too long: may not be more than {schema['maxLength']} bytes",
                    }
                )
            if "minLength" in schema and len(value) < schema["minLength"]:
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {_shown(value)}: {path} in body should be at least {schema['minLength']} chars long",
                    }
                )
            if "pattern" in schema and not re.search(schema["pattern"], value):
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {_shown(value)}: {path} in body should match '{schema['pattern']}'",
                    }
                )
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema:
                lo = schema["minimum"]
                if value < lo or (schema.get("exclusiveMinimum") is True and value == lo):
                    rel = (
                        "greater than"
                        if schema.get("exclusiveMinimum") is True
                        else "greater than or equal to"
                    )
                    causes.append(
                        {
                            "field": path,
                            "reason": "FieldValueInvalid",
                            "message": f"Invalid value: {value}: {path} in body should be {rel} {lo}",
                        }
                    )
            if "maximum" in schema:
                hi = schema["maximum"]
                if value > hi or (schema.get("exclusiveMaximum") is True and value == hi):
                    rel = (
                        "less than"
                        if schema.get("exclusiveMaximum") is True
                        else "less than or equal to"
                    )
                    causes.append(
                        {
                            "field": path,
                            "reason": "FieldValueInvalid",
                            "message": f"Invalid value: {value}: {path} in body should be {rel} {hi}",
                        }
                    )
            if (
                "multipleOf" in schema
                and schema["multipleOf"]
                and (value / schema["multipleOf"]) % 1
            ):
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {value}: {path} in body should be a multiple of {schema['multipleOf']}",
                    }
                )
        if isinstance(value, list):
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueTooMany",
                        "message": f"Too many: {len(value)}: must have at most {schema['maxItems']} items",
                    }
                )
            if "minItems" in schema and len(value) < schema["minItems"]:
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {len(value)}: {path} in body should have at least {schema['minItems']} items",
                    }
                )
            items = schema.get("items")
            if isinstance(items, dict):
                old_list = old if isinstance(old, list) else []
                for i, item in enumerate(value):
                    self._validate(
                        items,
                        item,
                        old_list[i] if i < len(old_list) else None,
                        f"{path}[{i}]",
                        causes,
                    )
            if schema.get("x-kubernetes-list-type") == "set" and len(
                {repr(v) for v in value}
            ) != len(value):
                causes.append(
                    {"field": path, "reason": "FieldValueDuplicate", "message": "Duplicate value"}
                )
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            for field in schema.get("required") or []:
                if field not in value:
                    causes.append(
                        {
                            "field": f"{path}.{field}",
                            "reason": "FieldValueRequired",
                            "message": "Required value",
                        }
                    )
            if "maxProperties" in schema and len(value) > schema["maxProperties"]:
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueTooMany",
                        "message": f"Too many: {len(value)}: must have at most {schema['maxProperties']} items",
                    }
                )
            if "minProperties" in schema and len(value) < schema["minProperties"]:
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {len(value)}: {path} in body should have at least {schema['minProperties']} properties",
                    }
                )
            addl = schema.get("additionalProperties")
            old_map = old if isinstance(old, dict) else {}
            for key, sub_val in value.items():
                sub = props.get(key) or (addl if isinstance(addl, dict) else None)
                if sub is not None:
                    self._validate(sub, sub_val, old_map.get(key), f"{path}.{key}", causes)
        for sub in schema.get("allOf") or []:
            self._validate(sub, value, old, path, causes)
        if schema.get("anyOf"):
            if not any(_quiet_ok(self, s, value) for s in schema["anyOf"]):
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {_shown(value)}: {path} in body must match at least one schema in anyOf",
                    }
                )
        if schema.get("oneOf"):
            if sum(_quiet_ok(self, s, value) for s in schema["oneOf"]) != 1:
                causes.append(
                    {
                        "field": path,
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {_shown(value)}: {path} in body must match exactly one schema in oneOf",
                    }
                )
        rules = schema.get("x-kubernetes-validations") or []
        if rules and len(causes) == before:
            self._run_rules(rules, schema, value, old, path, causes)

    def _run_rules(
        self,
        rules: list[dict[str, Any]],
        schema: dict[str, Any],
        value: Any,
        old: Any,
        path: str,
        causes: list[dict[str, str]],
    ) -> None:
        self_val = to_cel(value, schema)
        for rule in rules:
            text = rule["rule"]
            uses_old = re.search(r"\boldSelf\b", text) is not None
            if uses_old and (old is None or rule.get("optionalOldSelf")):
                if old is None:
                    continue
            activation: dict[str, Any] = {"self": self_val}
            if uses_old:
                activation["oldSelf"] = to_cel(old, schema)
            prog = self.program(text)
            field = (
                path + (rule.get("fieldPath") or "")
                if path
                else (rule.get("fieldPath") or "").lstrip(".")
            )
            try:
                ok = prog.evaluate(activation)
            except Exception as exc:  # an evaluation error rejects the object, as in the API server
                causes.append(
                    {
                        "field": field,
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {_shown(value)}: evaluating rule: {text}: {exc}",
                    }
                )
                continue
            if isinstance(ok, celpy.CELEvalError):
                causes.append(
                    {
                        "field": field,
                        "reason": "FieldValueInvalid",
                        "message": f"Invalid value: {_shown(value)}: evaluating rule: {text}: {ok}",
                    }
                )
                continue
            if bool(ok):
                continue
            message = rule.get("message") or f"failed rule: {text}"
            if rule.get("messageExpression"):
                try:
                    message = str(self.program(rule["messageExpression"]).evaluate(activation))
                except Exception:  # noqa: BLE001, S110 - fall back to the static message
                    pass
            reason = rule.get("reason") or "FieldValueInvalid"
            prefix = {
                "FieldValueForbidden": "Forbidden: ",
                "FieldValueRequired": "Required value: ",
                "FieldValueDuplicate": "Duplicate value: ",
            }.get(reason, f"Invalid value: {_shown(value)}: ")
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
