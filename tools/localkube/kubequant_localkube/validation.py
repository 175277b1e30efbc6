"""Validation of built-in kinds, as the API server does it.

Two passes, both always on: the official OpenAPI-derived JSON schema of the Kubernetes version
(the kubernetes-validate package; the compiled validator is cached per kind, API version and
Kubernetes version), then the cross-field rules of the API server's own validation code
(``pkg/apis/core/validation``, ``pkg/apis/batch/validation``, ``pkg/apis/rbac/validation`` and
apimachinery's name and label checks) for the kinds this project creates: Pods, Jobs (their
pod template), ServiceAccounts, Roles, ClusterRoles, RoleBindings, ClusterRoleBindings, plus
the labels and annotations of every built-in object. Failures are one 422 Invalid whose causes
carry the real field paths, reasons (``FieldValueInvalid``...) and message wording.

Rules that check fields the API server defaults *before* validating (``dnsPolicy``,
``terminationGracePeriodSeconds``, a Job's selector...) are not applied here, because this
emulator defaults them after validation; a value that is present is still checked.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from kubequant_localkube import errors, resources

Obj = dict[str, Any]
Cause = dict[str, str]

INVALID = "FieldValueInvalid"
REQUIRED = "FieldValueRequired"
DUPLICATE = "FieldValueDuplicate"
NOT_SUPPORTED = "FieldValueNotSupported"
FORBIDDEN = "FieldValueForbidden"
NOT_FOUND = "FieldValueNotFound"

RBAC_GROUP = "rbac.authorization.k8s.io"
_MAX_INT32 = 2147483647


# ---------------------------------------------------------------------- value rendering
class Raw(str):
    """A value the API server prints without quotes (a type with a ``String()`` method, such as
    ``ResourceName``)."""


class _Omit:
    """``field.OmitValueType``: the message has no value part."""


OMIT = _Omit()


def go_quote(value: str) -> str:
    """``%q`` of a Go string (close enough: JSON escaping of quotes, backslashes, controls)."""
    return json.dumps(value, ensure_ascii=False)


def show(value: Any) -> str:
    """A bad value as ``field.Error.ErrorBody`` prints it."""
    if value is None:
        return "null"
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return "[]int32{" + ", ".join(str(v) for v in value) + "}"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[]string{" + ", ".join(go_quote(v) for v in value) + "}"
    return json.dumps(value, sort_keys=True)


class FieldErrors:
    """A ``field.ErrorList``: each helper appends one cause in the API server's wording."""

    def __init__(self) -> None:
        self.causes: list[Cause] = []

    def _add(self, path: str, reason: str, message: str) -> None:
        self.causes.append({"field": path, "reason": reason, "message": message})

    def invalid(self, path: str, value: Any, detail: str) -> None:
        head = "Invalid value" if value is OMIT else f"Invalid value: {show(value)}"
        self._add(path, INVALID, f"{head}: {detail}" if detail else head)

    def required(self, path: str, detail: str = "") -> None:
        self._add(path, REQUIRED, f"Required value: {detail}" if detail else "Required value")

    def duplicate(self, path: str, value: Any) -> None:
        self._add(path, DUPLICATE, f"Duplicate value: {show(value)}")

    def not_supported(self, path: str, value: Any, supported: list[str]) -> None:
        listed = ", ".join(go_quote(s) for s in supported)
        self._add(
            path, NOT_SUPPORTED, f"Unsupported value: {show(value)}: supported values: {listed}"
        )

    def forbidden(self, path: str, detail: str) -> None:
        self._add(path, FORBIDDEN, f"Forbidden: {detail}")

    def not_found(self, path: str, value: Any) -> None:
        self._add(path, NOT_FOUND, f"Not found: {show(value)}")


# ---------------------------------------------------------------------- names and labels
_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(f"^{_DNS1123_LABEL_FMT}$")
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + "(\\." + _DNS1123_LABEL_FMT + ")*"
_DNS1123_SUBDOMAIN = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}$")
_LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_KEY = re.compile(f"^{_LABEL_KEY_FMT}$")
_LABEL_VALUE_FMT = f"({_LABEL_KEY_FMT})?"
_LABEL_VALUE = re.compile(f"^{_LABEL_VALUE_FMT}$")
_ENV_NAME_FMT = "[-._a-zA-Z][-._a-zA-Z0-9]*"
_ENV_NAME = re.compile(f"^{_ENV_NAME_FMT}$")


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    """apimachinery's ``RegexError`` (its odd double space before ``or`` included)."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def is_dns1123_label(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append(max_len_error(63))
    if not _DNS1123_LABEL.match(value):
        if _DNS1123_SUBDOMAIN.match(value):
            errs.append("must not contain dots")
        else:
            errs.append(
                regex_error(
                    "a lowercase RFC 1123 label must consist of lower case alphanumeric "
                    "characters or '-', and must start and end with an alphanumeric character",
                    _DNS1123_LABEL_FMT,
                    "my-name",
                    "123-abc",
                )
            )
    return errs


def is_dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append(max_len_error(253))
    if not _DNS1123_SUBDOMAIN.match(value):
        errs.append(
            regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character",
                _DNS1123_SUBDOMAIN_FMT,
                "example.com",
            )
        )
    return errs


_LABEL_KEY_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character"
)


def is_qualified_name(value: str) -> list[str]:
    """A label key / qualified name: an optional DNS-subdomain prefix and ``/``, then a name."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in is_dns1123_subdomain(prefix))
    else:
        return [
            "a valid label key "
            + regex_error(_LABEL_KEY_MSG, _LABEL_KEY_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + max_len_error(63))
    if not _LABEL_KEY.match(name):
        errs.append(
            "name part "
            + regex_error(_LABEL_KEY_MSG, _LABEL_KEY_FMT, "MyName", "my.name", "123-abc")
        )
    return errs


def is_label_value(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append(max_len_error(63))
    if not _LABEL_VALUE.match(value):
        errs.append(
            regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character",
                _LABEL_VALUE_FMT,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return errs


def is_env_var_name(value: str) -> list[str]:
    errs = []
    if not _ENV_NAME.match(value):
        errs.append(
            regex_error(
                "a valid environment variable name must consist of alphabetic characters, "
                "digits, '_', '-', or '.', and must not start with a digit",
                _ENV_NAME_FMT,
                "my.env-name",
                "MY_ENV.NAME",
                "MyEnvName1",
            )
        )
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def is_relaxed_env_var_name(value: str) -> list[str]:
    """``RelaxedEnvironmentVariableValidation`` (beta and on from Kubernetes 1.32)."""
    errs = []
    if not value:
        errs.append("environment variable name must be non-empty")
    if any(not (" " <= ch <= "~") or ch == "=" for ch in value):
        errs.append(
            "a valid environment variable name must consist only of printable ASCII "
            "characters other than '='"
        )
    return errs


def is_valid_path_segment_name(value: str) -> list[str]:
    """RBAC object names: not ``.``/``..``, no ``/`` or ``%``."""
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{c}'" for c in ("/", "%") if c in value]


def _check_each(errs: FieldErrors, path: str, value: str, msgs: list[str]) -> None:
    for msg in msgs:
        errs.invalid(path, value, msg)


def validate_labels(errs: FieldErrors, labels: Any, path: str) -> None:
    """``ValidateLabels``: a bad key or value is reported on the map's path itself."""
    if not isinstance(labels, dict):
        return
    for key, value in labels.items():
        _check_each(errs, path, key, is_qualified_name(key))
        if isinstance(value, str):
            _check_each(errs, path, value, is_label_value(value))


def validate_annotations(errs: FieldErrors, annotations: Any, path: str) -> None:
    if not isinstance(annotations, dict):
        return
    total = 0
    for key, value in annotations.items():
        _check_each(errs, path, key, is_qualified_name(key.lower()))
        total += len(key) + len(value if isinstance(value, str) else "")
    if total > 256 * 1024:
        errs._add(path, "FieldValueTooLong", f"Too long: may not be more than {256 * 1024} bytes")


def validate_object_meta(errs: FieldErrors, obj: Obj) -> None:
    meta = obj.get("metadata") or {}
    validate_labels(errs, meta.get("labels"), "metadata.labels")
    validate_annotations(errs, meta.get("annotations"), "metadata.annotations")


# ---------------------------------------------------------------------- quantities
QUANTITY_FORMAT_ERROR = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
_QUANTITY = re.compile(r"^([+-]?)([0-9]*)(\.([0-9]*))?(.*)$")
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {exp: suffix for suffix, exp in _DECIMAL.items()}
_BINARY_SUFFIX = {exp: suffix for suffix, exp in _BINARY.items()}
_NANO = Fraction(1, 10**9)


class QuantityError(ValueError):
    """Not a resource.Quantity."""


class Quantity:
    """A ``resource.Quantity``: an exact value (rounded up to nano units, as the API server
    does) and its format (``BinarySI``, ``DecimalSI`` or ``DecimalExponent``)."""

    def __init__(self, value: Fraction, fmt: str) -> None:
        self.value = value
        self.format = fmt

    @classmethod
    def parse(cls, text: Any) -> Quantity:
        if isinstance(text, bool) or not isinstance(text, (str, int, float)):
            raise QuantityError(QUANTITY_FORMAT_ERROR)
        raw = str(text) if not isinstance(text, float) else repr(text)
        match = _QUANTITY.match(raw.strip()) if raw == raw.strip() else None
        if not match:
            raise QuantityError(QUANTITY_FORMAT_ERROR)
        sign, whole, _, frac, suffix = match.groups()
        frac = frac or ""
        if not whole and not frac:
            raise QuantityError(QUANTITY_FORMAT_ERROR)
        digits = Fraction(int(whole or "0")) + (
            Fraction(int(frac), 10 ** len(frac)) if frac else Fraction(0)
        )
        if suffix in _BINARY:
            fmt, amount = "BinarySI", digits * 2 ** _BINARY[suffix]
        elif suffix in _DECIMAL:
            fmt, amount = "DecimalSI", digits * Fraction(10) ** _DECIMAL[suffix]
        elif re.fullmatch(r"[eE][-+]?[0-9]+", suffix):
            fmt, amount = "DecimalExponent", digits * Fraction(10) ** int(suffix[1:])
        elif re.fullmatch(r"[eEinumkKMGTP]*[-+]?[0-9]*", suffix):
            raise QuantityError("unable to parse quantity's suffix")
        else:
            raise QuantityError(QUANTITY_FORMAT_ERROR)
        if sign == "-":
            amount = -amount
        nanos = amount / _NANO
        if nanos.denominator != 1:  # rounded up to the nearest nano unit
            amount = Fraction(-((-nanos.numerator) // nanos.denominator)) * _NANO
        return cls(amount, fmt)

    def __str__(self) -> str:
        """The canonical form (``Quantity.String()``): ``1000`` is ``1k``, ``0.5`` is ``500m``,
        ``2048Mi`` is ``2Gi``."""
        value, fmt = self.value, self.format
        if value == 0:
            return "0"
        if fmt == "BinarySI" and (abs(value) < 1024 or value.denominator != 1):
            fmt = "DecimalSI"
        if fmt == "BinarySI":
            amount, exp = int(value), 0
            while amount % 1024 == 0 and exp < 60:
                amount //= 1024
                exp += 10
            return f"{amount}{_BINARY_SUFFIX.get(exp, '')}"
        exp = -9
        while exp < 18 and (value / Fraction(10) ** (exp + 3)).denominator == 1:
            exp += 3
        mantissa = int(value / Fraction(10) ** exp)
        if fmt == "DecimalExponent":
            return f"{mantissa}e{exp}" if exp else str(mantissa)
        return f"{mantissa}{_DECIMAL_SUFFIX[exp]}"


def parse_quantity(text: Any) -> Quantity:
    return Quantity.parse(text)


# ---------------------------------------------------------------------- resources
_STANDARD_CONTAINER = {"cpu", "memory", "ephemeral-storage"}
_STANDARD = _STANDARD_CONTAINER | {
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "persistentvolumeclaims",
    "configmaps",
    "storage",
    "services.nodeports",
    "services.loadbalancers",
}
_INTEGER_RESOURCES = {
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services.nodeports",
    "services.loadbalancers",
}


def _is_hugepages(name: str) -> bool:
    return name.startswith("hugepages-")


def _is_native(name: str) -> bool:
    return "/" not in name or "kubernetes.io/" in name


def _is_extended(name: str) -> bool:
    if _is_native(name) or name.startswith("requests."):
        return False
    return not is_qualified_name("requests." + name)


def _overcommit_allowed(name: str) -> bool:
    return _is_native(name) and not _is_hugepages(name)


def validate_container_resource_name(errs: FieldErrors, name: str, path: str) -> None:
    shown = Raw(name)
    msgs = is_qualified_name(name)
    _check_each(errs, path, shown, msgs)
    if not msgs and "/" not in name and name not in _STANDARD and not _is_hugepages(name):
        errs.invalid(path, shown, "must be a standard resource type or fully qualified")
    if "/" not in name:
        if name not in _STANDARD_CONTAINER and not _is_hugepages(name):
            errs.invalid(path, shown, "must be a standard resource for containers")
    elif not _is_native(name) and not _is_extended(name):
        errs.invalid(path, shown, "doesn't follow extended resource name standard")


def _quantities(errs: FieldErrors, section: Any, path: str, bad: list[str]) -> dict[str, Quantity]:
    out: dict[str, Quantity] = {}
    if not isinstance(section, dict):
        return out
    for name, raw in section.items():
        fld = f"{path}[{name}]"
        validate_container_resource_name(errs, name, fld)
        try:
            qty = parse_quantity(raw)
        except QuantityError as exc:
            bad.append(str(exc))
            continue
        if qty.value < 0:
            errs.invalid(fld, str(qty), "must be greater than or equal to 0")
        if name in _INTEGER_RESOURCES and qty.value.denominator != 1:
            errs.invalid(fld, str(qty), "must be an integer")
        out[name] = qty
    return out


def validate_resource_requirements(errs: FieldErrors, reqs: Any, path: str, bad: list[str]) -> None:
    """``ValidateContainerResourceRequirements``: names, quantities, requests <= limits (and
    requests == limits for resources that cannot be overcommitted, such as GPUs)."""
    if not isinstance(reqs, dict):
        return
    lim_path, req_path = f"{path}.limits", f"{path}.requests"
    limits = _quantities(errs, reqs.get("limits"), lim_path, bad)
    requests = _quantities(errs, reqs.get("requests"), req_path, bad)
    for name, qty in requests.items():
        limit = limits.get(name)
        if limit is not None:
            if qty.value != limit.value and not _overcommit_allowed(name):
                errs.invalid(req_path, str(qty), f"must be equal to {name} limit of {limit}")
            elif qty.value > limit.value:
                errs.invalid(
                    req_path, str(qty), f"must be less than or equal to {name} limit of {limit}"
                )
        elif not _overcommit_allowed(name):
            errs.required(lim_path, "Limit must be set for non overcommitable resources")


# ---------------------------------------------------------------------- pod spec
_TOLERATION_OPS = ["Equal", "Exists"]
_TAINT_EFFECTS = ["NoSchedule", "PreferNoSchedule", "NoExecute"]
_RESTART_POLICIES = ["Always", "OnFailure", "Never"]
_DNS_POLICIES = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"]
_PULL_POLICIES = ["Always", "IfNotPresent", "Never"]
_TERMINATION_MESSAGE_POLICIES = ["File", "FallbackToLogsOnError"]
_PROTOCOLS = ["SCTP", "TCP", "UDP"]
_VOLUME_META_KEYS = {"name"}


def validate_tolerations(errs: FieldErrors, tolerations: Any, path: str) -> None:
    for i, tol in enumerate(tolerations if isinstance(tolerations, list) else []):
        if not isinstance(tol, dict):
            continue
        idx = f"{path}[{i}]"
        key, op = tol.get("key") or "", tol.get("operator") or ""
        value, effect = tol.get("value") or "", tol.get("effect") or ""
        if key:
            _check_each(errs, f"{idx}.key", key, is_qualified_name(key))
        if not key and op != "Exists":
            errs.invalid(
                f"{idx}.operator",
                op,
                'operator must be Exists when `key` is empty, which means "match all values '
                'and all keys"',
            )
        if tol.get("tolerationSeconds") is not None and effect != "NoExecute":
            errs.invalid(
                f"{idx}.effect",
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            )
        if op in ("Equal", ""):
            msgs = is_label_value(value)
            if msgs:
                errs.invalid(f"{idx}.operator", value, ";".join(msgs))
        elif op == "Exists":
            if value:
                errs.invalid(
                    f"{idx}.operator", value, "value must be empty when `operator` is 'Exists'"
                )
        else:
            errs.not_supported(f"{idx}.operator", op, _TOLERATION_OPS)
        if effect and effect not in _TAINT_EFFECTS:
            errs.not_supported(f"{idx}.effect", effect, _TAINT_EFFECTS)


def _validate_env(errs: FieldErrors, env: Any, path: str, relaxed: bool) -> None:
    check = is_relaxed_env_var_name if relaxed else is_env_var_name
    for i, var in enumerate(env if isinstance(env, list) else []):
        if not isinstance(var, dict):
            continue
        idx = f"{path}[{i}]"
        name = var.get("name") or ""
        if not name:
            errs.required(f"{idx}.name")
        else:
            _check_each(errs, f"{idx}.name", name, check(name))
        source = var.get("valueFrom")
        if not isinstance(source, dict):
            continue
        kinds = [k for k in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")]
        count = sum(1 for k in kinds if source.get(k) is not None)
        vpath = f"{idx}.valueFrom"
        for ref in ("configMapKeyRef", "secretKeyRef"):
            sel = source.get(ref)
            if isinstance(sel, dict):
                _check_each(
                    errs, f"{vpath}.{ref}.name", sel.get("name") or "", _subdomain_msgs(sel)
                )
                if not sel.get("key"):
                    errs.required(f"{vpath}.{ref}.key")
        if count == 0:
            errs.invalid(
                vpath,
                "",
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or "
                "`secretKeyRef`",
            )
        elif var.get("value"):
            errs.invalid(vpath, "", "may not be specified when `value` is not empty")
        elif count > 1:
            errs.invalid(vpath, "", "may not have more than one field specified at a time")


def _subdomain_msgs(sel: Obj) -> list[str]:
    return is_dns1123_subdomain(sel.get("name") or "")


def _validate_env_from(errs: FieldErrors, env_from: Any, path: str, relaxed: bool) -> None:
    check = is_relaxed_env_var_name if relaxed else is_env_var_name
    for i, src in enumerate(env_from if isinstance(env_from, list) else []):
        if not isinstance(src, dict):
            continue
        idx = f"{path}[{i}]"
        if src.get("prefix"):
            _check_each(errs, f"{idx}.prefix", src["prefix"], check(src["prefix"]))
        count = 0
        for ref in ("configMapRef", "secretRef"):
            sel = src.get(ref)
            if isinstance(sel, dict):
                count += 1
                if not sel.get("name"):
                    errs.required(f"{idx}.{ref}.name")
                else:
                    _check_each(errs, f"{idx}.{ref}.name", sel["name"], _subdomain_msgs(sel))
        if count == 0:
            errs.invalid(path, "", "must specify one of: `configMapRef` or `secretRef`")
        elif count > 1:
            errs.invalid(path, "", "may not have more than one field specified at a time")


def _validate_ports(errs: FieldErrors, ports: Any, path: str) -> None:
    names: set[str] = set()
    for i, port in enumerate(ports if isinstance(ports, list) else []):
        if not isinstance(port, dict):
            continue
        idx = f"{path}[{i}]"
        name = port.get("name") or ""
        if name:
            msgs = []
            if len(name) > 15:
                msgs.append(max_len_error(15))
            if not re.fullmatch(r"[-a-z0-9]+", name):
                msgs.append(
                    "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
                )
            if not re.search(r"[a-z]", name):
                msgs.append("must contain at least one letter (a-z)")
            if "--" in name:
                msgs.append("must not contain consecutive hyphens")
            if name[0] == "-" or name[-1] == "-":
                msgs.append("must not begin or end with a hyphen")
            if msgs:
                _check_each(errs, f"{idx}.name", name, msgs)
            elif name in names:
                errs.duplicate(f"{idx}.name", name)
            names.add(name)
        for key in ("containerPort", "hostPort"):
            num = port.get(key)
            if key == "containerPort" and not num:
                errs.required(f"{idx}.containerPort")
            elif isinstance(num, int) and num and not 1 <= num <= 65535:
                errs.invalid(f"{idx}.{key}", num, "must be between 1 and 65535, inclusive")
        proto = port.get("protocol")
        if proto and proto not in _PROTOCOLS:
            errs.not_supported(f"{idx}.protocol", proto, _PROTOCOLS)


def _validate_mounts(errs: FieldErrors, mounts: Any, path: str, volumes: set[str]) -> None:
    seen: set[str] = set()
    for i, mount in enumerate(mounts if isinstance(mounts, list) else []):
        if not isinstance(mount, dict):
            continue
        idx = f"{path}[{i}]"
        name, mount_path = mount.get("name") or "", mount.get("mountPath") or ""
        if not name:
            errs.required(f"{idx}.name")
        if name not in volumes:
            errs.not_found(f"{idx}.name", name)
        if not mount_path:
            errs.required(f"{idx}.mountPath")
        if mount_path in seen:
            errs.invalid(f"{idx}.mountPath", mount_path, "must be unique")
        seen.add(mount_path)


class _PodSpecCheck:
    """``ValidatePodSpec`` for one pod spec at ``path`` (``spec`` or ``spec.template.spec``)."""

    def __init__(self, errs: FieldErrors, bad: list[str], relaxed_env: bool, is_pod: bool):
        self.errs, self.bad, self.relaxed_env, self.is_pod = errs, bad, relaxed_env, is_pod

    def run(self, spec: Any, path: str) -> None:
        if not isinstance(spec, dict):
            return
        errs = self.errs
        volumes = self._volumes(spec.get("volumes"), f"{path}.volumes")
        containers = spec.get("containers")
        if not containers:
            errs.required(f"{path}.containers")
        names: set[str] = set()
        for key, init in (("containers", False), ("initContainers", True)):
            items = spec.get(key)
            for i, ctr in enumerate(items if isinstance(items, list) else []):
                if isinstance(ctr, dict):
                    self._container(ctr, f"{path}.{key}[{i}]", volumes, names, init)
        policy = spec.get("restartPolicy")
        if policy and policy not in _RESTART_POLICIES:
            errs.not_supported(f"{path}.restartPolicy", policy, _RESTART_POLICIES)
        dns = spec.get("dnsPolicy")
        if dns and dns not in _DNS_POLICIES:
            errs.not_supported(f"{path}.dnsPolicy", dns, _DNS_POLICIES)
        validate_labels(errs, spec.get("nodeSelector"), f"{path}.nodeSelector")
        for key in ("serviceAccountName", "nodeName", "priorityClassName"):
            value = spec.get(key)
            if isinstance(value, str) and value:
                _check_each(errs, f"{path}.{key}", value, is_dns1123_subdomain(value))
        deadline = spec.get("activeDeadlineSeconds")
        if isinstance(deadline, int) and not 1 <= deadline <= _MAX_INT32:
            errs.invalid(
                f"{path}.activeDeadlineSeconds",
                deadline,
                f"must be between 1 and {_MAX_INT32}, inclusive",
            )
        for key in ("hostname", "subdomain"):
            value = spec.get(key)
            if isinstance(value, str) and value:
                _check_each(errs, f"{path}.{key}", value, is_dns1123_label(value))
        if spec.get("tolerations"):
            validate_tolerations(errs, spec["tolerations"], f"{path}.tolerations")

    def _volumes(self, volumes: Any, path: str) -> set[str]:
        names: set[str] = set()
        for i, vol in enumerate(volumes if isinstance(volumes, list) else []):
            if not isinstance(vol, dict):
                continue
            idx = f"{path}[{i}]"
            name = vol.get("name") or ""
            sources = [k for k in vol if k not in _VOLUME_META_KEYS and vol[k] is not None]
            if not sources:
                self.errs.required(idx, "must specify a volume type")
            elif len(sources) > 1:
                self.errs.forbidden(
                    f"{idx}.{sources[1]}", "may not specify more than 1 volume type"
                )
            if not name:
                self.errs.required(f"{idx}.name")
            else:
                _check_each(self.errs, f"{idx}.name", name, is_dns1123_label(name))
            if name in names:
                self.errs.duplicate(f"{idx}.name", name)
            elif name:
                names.add(name)
        return names

    def _container(
        self, ctr: Obj, path: str, volumes: set[str], names: set[str], init: bool
    ) -> None:
        errs = self.errs
        name = ctr.get("name") or ""
        if not name:
            errs.required(f"{path}.name")
        else:
            _check_each(errs, f"{path}.name", name, is_dns1123_label(name))
        if name in names:
            errs.duplicate(f"{path}.name", name)
        elif name:
            names.add(name)
        image = ctr.get("image")
        if not image:
            errs.required(f"{path}.image")
        elif self.is_pod and image != image.strip():
            errs.invalid(f"{path}.image", image, "must not have leading or trailing whitespace")
        tmp = ctr.get("terminationMessagePolicy")
        if tmp and tmp not in _TERMINATION_MESSAGE_POLICIES:
            errs.not_supported(
                f"{path}.terminationMessagePolicy", tmp, _TERMINATION_MESSAGE_POLICIES
            )
        _validate_ports(errs, ctr.get("ports"), f"{path}.ports")
        _validate_env(errs, ctr.get("env"), f"{path}.env", self.relaxed_env)
        _validate_env_from(errs, ctr.get("envFrom"), f"{path}.envFrom", self.relaxed_env)
        _validate_mounts(errs, ctr.get("volumeMounts"), f"{path}.volumeMounts", volumes)
        pull = ctr.get("imagePullPolicy")
        if pull and pull not in _PULL_POLICIES:
            errs.not_supported(f"{path}.imagePullPolicy", pull, _PULL_POLICIES)
        validate_resource_requirements(errs, ctr.get("resources"), f"{path}.resources", self.bad)
        if not init and ctr.get("restartPolicy") is not None:
            errs.forbidden(f"{path}.restartPolicy", "may not be set for non-init containers")


# ---------------------------------------------------------------------- kinds
def _relaxed_env(version: str) -> bool:
    major, _, minor = version.lstrip("v").partition(".")
    try:
        return (int(major), int(minor.split(".")[0])) >= (1, 32)
    except ValueError:
        return True


def _nonnegative(errs: FieldErrors, spec: Obj, path: str, *keys: str) -> None:
    for key in keys:
        value = spec.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            errs.invalid(f"{path}.{key}", value, "must be greater than or equal to 0")


def _validate_pod(errs: FieldErrors, obj: Obj, bad: list[str], version: str) -> None:
    _PodSpecCheck(errs, bad, _relaxed_env(version), is_pod=True).run(obj.get("spec"), "spec")


_JOB_ACTIONS = ["Count", "FailIndex", "FailJob", "Ignore"]
_EXIT_CODE_OPS = ["In", "NotIn"]
_CONDITION_STATUSES = ["False", "True", "Unknown"]


def _validate_pod_failure_policy(errs: FieldErrors, spec: Obj, path: str) -> None:
    policy = spec.get("podFailurePolicy")
    if not isinstance(policy, dict):
        return
    template_spec = (spec.get("template") or {}).get("spec") or {}
    names = {
        c.get("name")
        for key in ("containers", "initContainers")
        for c in template_spec.get(key) or []
        if isinstance(c, dict)
    }
    for i, rule in enumerate(policy.get("rules") or []):
        if not isinstance(rule, dict):
            continue
        rpath = f"{path}.rules[{i}]"
        action = rule.get("action") or ""
        if not action:
            errs.required(f"{rpath}.action", "valid values: " + _go_list(_JOB_ACTIONS))
        elif action == "FailIndex":
            if spec.get("backoffLimitPerIndex") is None:
                errs.invalid(
                    f"{rpath}.action", action, "requires the backoffLimitPerIndex to be set"
                )
        elif action not in _JOB_ACTIONS:
            errs.not_supported(f"{rpath}.action", action, _JOB_ACTIONS)
        on_codes, on_conds = rule.get("onExitCodes"), rule.get("onPodConditions")
        if isinstance(on_codes, dict):
            _validate_on_exit_codes(errs, on_codes, f"{rpath}.onExitCodes", names)
        for j, pattern in enumerate(on_conds if isinstance(on_conds, list) else []):
            ppath = f"{rpath}.onPodConditions[{j}]"
            ctype = pattern.get("type") or ""
            _check_each(errs, f"{ppath}.type", ctype, is_qualified_name(ctype))
            status = pattern.get("status") or ""
            if not status:
                errs.required(f"{ppath}.status", "valid values: " + _go_list(_CONDITION_STATUSES))
            elif status not in _CONDITION_STATUSES:
                errs.not_supported(f"{ppath}.status", status, _CONDITION_STATUSES)
        if on_codes is not None and on_conds:
            errs.invalid(
                rpath, OMIT, "specifying both OnExitCodes and OnPodConditions is not supported"
            )
        if on_codes is None and not on_conds:
            errs.invalid(
                rpath, OMIT, "specifying one of OnExitCodes and OnPodConditions is required"
            )


def _go_list(values: list[str]) -> str:
    """``fmt.Sprintf("%q", []string{...})``: ``["A" "B"]``."""
    return "[" + " ".join(go_quote(v) for v in values) + "]"


def _validate_on_exit_codes(errs: FieldErrors, req: Obj, path: str, names: set[Any]) -> None:
    op = req.get("operator") or ""
    if not op:
        errs.required(f"{path}.operator", "valid values: " + _go_list(_EXIT_CODE_OPS))
    elif op not in _EXIT_CODE_OPS:
        errs.not_supported(f"{path}.operator", op, _EXIT_CODE_OPS)
    container = req.get("containerName")
    if container is not None and container not in names:
        errs.invalid(
            f"{path}.containerName",
            container,
            "must be one of the container or initContainer names in the pod template",
        )
    values = [v for v in req.get("values") or [] if isinstance(v, int)]
    vpath = f"{path}.values"
    if not values:
        errs.invalid(vpath, values, "at least one value is required")
    seen: set[int] = set()
    for j, value in enumerate(values):
        if op == "In" and value == 0:
            errs.invalid(f"{vpath}[{j}]", value, "must not be 0 for the In operator")
        if value in seen:
            errs.duplicate(f"{vpath}[{j}]", value)
        seen.add(value)
    if any(a > b for a, b in itertools.pairwise(values)):
        errs.invalid(vpath, values, "must be ordered")


def _validate_job(errs: FieldErrors, obj: Obj, bad: list[str], version: str) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    _nonnegative(
        errs,
        spec,
        "spec",
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    )
    mode = spec.get("completionMode")
    if mode and mode not in ("NonIndexed", "Indexed"):
        errs.not_supported("spec.completionMode", mode, ["NonIndexed", "Indexed"])
    _validate_pod_failure_policy(errs, spec, "spec.podFailurePolicy")
    replacement = spec.get("podReplacementPolicy")
    if replacement:
        if spec.get("podFailurePolicy") is not None:
            if replacement != "Failed":
                errs.not_supported("spec.podReplacementPolicy", replacement, ["Failed"])
        elif replacement not in ("Failed", "TerminatingOrFailed"):
            errs.not_supported(
                "spec.podReplacementPolicy", replacement, ["Failed", "TerminatingOrFailed"]
            )
    raw_template = spec.get("template")
    template: Obj = raw_template if isinstance(raw_template, dict) else {}
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    if not spec.get("manualSelector"):
        # The API server adds the Job's name as a label of the template before validating.
        name = (obj.get("metadata") or {}).get("name") or ""
        labels.setdefault("batch.kubernetes.io/job-name", name)
        labels.setdefault("job-name", name)
    validate_labels(errs, labels, "spec.template.labels")
    validate_annotations(errs, tmeta.get("annotations"), "spec.template.annotations")
    tspec = template.get("spec")
    _PodSpecCheck(errs, bad, _relaxed_env(version), is_pod=False).run(tspec, "spec.template.spec")
    policy = (tspec or {}).get("restartPolicy") if isinstance(tspec, dict) else None
    rp_path = "spec.template.spec.restartPolicy"
    if policy in (None, "", "Always"):
        errs.required(rp_path, 'valid values: "OnFailure", "Never"')
    elif policy not in ("OnFailure", "Never"):
        errs.not_supported(rp_path, policy, ["OnFailure", "Never"])
    elif spec.get("podFailurePolicy") is not None and policy != "Never":
        errs.invalid(
            rp_path, policy, 'only "Never" is supported when podFailurePolicy is specified'
        )


def _validate_policy_rules(errs: FieldErrors, obj: Obj, namespaced: bool) -> None:
    for i, rule in enumerate(obj.get("rules") or []):
        if not isinstance(rule, dict):
            continue
        path = f"rules[{i}]"
        if not rule.get("verbs"):
            errs.required(f"{path}.verbs", "verbs must contain at least one value")
        urls = rule.get("nonResourceURLs") or []
        if urls:
            if namespaced:
                errs.invalid(
                    f"{path}.nonResourceURLs",
                    urls,
                    "namespaced rules cannot apply to non-resource URLs",
                )
            if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
                errs.invalid(
                    f"{path}.nonResourceURLs",
                    urls,
                    "rules cannot apply to both regular resources and non-resource URLs",
                )
            continue
        if not rule.get("apiGroups"):
            errs.required(f"{path}.apiGroups", "resource rules must supply at least one api group")
        if not rule.get("resources"):
            errs.required(f"{path}.resources", "resource rules must supply at least one resource")
        if rule.get("resourceNames") and len(rule.get("resources") or []) > 1:
            errs.required(
                f"{path}.resourceNames", "resource names cannot apply to multiple resources"
            )


def _validate_binding(errs: FieldErrors, obj: Obj, namespaced: bool) -> None:
    raw_ref = obj.get("roleRef")
    ref: Obj = raw_ref if isinstance(raw_ref, dict) else {}
    if ref.get("apiGroup") != RBAC_GROUP:
        errs.not_supported("roleRef.apiGroup", ref.get("apiGroup") or "", [RBAC_GROUP])
    kinds = ["Role", "ClusterRole"] if namespaced else ["ClusterRole"]
    if ref.get("kind") not in kinds:
        errs.not_supported("roleRef.kind", ref.get("kind") or "", kinds)
    name = ref.get("name") or ""
    if not name:
        errs.required("roleRef.name")
    else:
        _check_each(errs, "roleRef.name", name, is_valid_path_segment_name(name))
    for i, subject in enumerate(obj.get("subjects") or []):
        if not isinstance(subject, dict):
            continue
        path = f"subjects[{i}]"
        sname, kind = subject.get("name") or "", subject.get("kind") or ""
        group = subject.get("apiGroup") or ""
        if not sname:
            errs.required(f"{path}.name")
        if kind == "ServiceAccount":
            if sname:
                _check_each(errs, f"{path}.name", sname, is_dns1123_subdomain(sname))
            if group:
                errs.not_supported(f"{path}.apiGroup", group, [""])
            if not namespaced and not subject.get("namespace"):
                errs.required(f"{path}.namespace")
        elif kind in ("User", "Group"):
            # An empty apiGroup is defaulted to rbac.authorization.k8s.io for users and groups.
            if group and group != RBAC_GROUP:
                errs.not_supported(f"{path}.apiGroup", group, [RBAC_GROUP])
        else:
            errs.not_supported(f"{path}.kind", kind, ["ServiceAccount", "User", "Group"])


_Check = Callable[[FieldErrors, Obj, list[str], str], None]
_KIND_CHECKS: dict[tuple[str, str], _Check] = {
    ("", "pods"): _validate_pod,
    ("batch", "jobs"): _validate_job,
    (RBAC_GROUP, "roles"): lambda e, o, _b, _v: _validate_policy_rules(e, o, True),
    (RBAC_GROUP, "clusterroles"): lambda e, o, _b, _v: _validate_policy_rules(e, o, False),
    (RBAC_GROUP, "rolebindings"): lambda e, o, _b, _v: _validate_binding(e, o, True),
    (RBAC_GROUP, "clusterrolebindings"): lambda e, o, _b, _v: _validate_binding(e, o, False),
}


def cross_field_causes(res: resources.Resource, obj: Obj, version: str) -> list[Cause]:
    """The causes the API server's validation code gives for ``obj`` (empty: valid).

    A quantity that does not parse is the API server's decode error: a 400, raised here."""
    errs, bad = FieldErrors(), list[str]()
    validate_object_meta(errs, obj)
    check = _KIND_CHECKS.get(res.key)
    if check is not None:
        check(errs, obj, bad, version)
    if bad:
        raise errors.ApiError(
            400,
            f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: {bad[0]}',
        )
    return errs.causes


# ---------------------------------------------------------------------- schema
_SCHEMA_LOCK = threading.Lock()
_VALIDATORS: dict[tuple[str, str, str], Any] = {}
_DEFINITIONS: dict[str, Any] = {}


def _schema_validator(kind: str, api_version: str, version: str) -> Any:
    """The compiled JSON-schema validator for ``kind`` at ``api_version`` in Kubernetes
    ``version`` (None when the package has no schema for it); loaded once, then cached:
    kubernetes-validate itself re-reads the ~2 MB definitions file on every call."""
    key = (kind, api_version, version)
    with _SCHEMA_LOCK:
        if key in _VALIDATORS:
            return _VALIDATORS[key]
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    wanted = utils.major_minor(version.lstrip("v"))
    candidates = [v for v in utils.all_versions() if utils.major_minor(v) <= wanted]
    schema_dir = f"v{(candidates or utils.all_versions())[-1]}-local"
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(
            f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group_version}.json", version
        )
    except FileNotFoundError:
        validator = None
    else:
        with _SCHEMA_LOCK:
            definitions = _DEFINITIONS.get(schema_dir)
        if definitions is None:
            definitions = Resource.from_contents(
                utils.schema_contents(
                    f"kubernetes-json-schema/{schema_dir}/_definitions.json", version
                )
            )
        registry: Any = Resource.from_contents(schema) @ Registry()
        registry = definitions @ registry
        validator = utils.jsonschema.validators.Draft202012Validator(schema, registry=registry)
        with _SCHEMA_LOCK:
            _DEFINITIONS[schema_dir] = definitions
    with _SCHEMA_LOCK:
        _VALIDATORS[key] = validator
    return validator


def _schema_causes(obj: Obj, version: str) -> list[Cause]:
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return []
    validator = _schema_validator(kind, api_version, version)
    if validator is None:
        return []
    causes = []
    for exc in validator.iter_errors(obj):
        parts = list(exc.path)
        if exc.validator == "required" and isinstance(exc.instance, dict):
            parts.append(exc.message.split("'")[1] if "'" in exc.message else "")
            message = "Required value"
        else:
            message = f"Invalid value: {_schema_shown(exc.instance)}: {exc.message}"
        field = ""
        for part in parts:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        causes.append({"field": field, "reason": INVALID, "message": message})
    return causes


def _schema_shown(value: Any) -> str:
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    if value is None:
        return '"null"'
    return show(value)


# ---------------------------------------------------------------------- entry point
def validate_builtin(res: resources.Resource, obj: Obj, version: str) -> None:
    """Validate a built-in kind as the API server of Kubernetes ``version`` does: the official
    schema first, then the cross-field rules; any failure is one 422 naming every field."""
    name = (obj.get("metadata") or {}).get("name", "")
    causes = _schema_causes(obj, version)
    if causes:
        raise errors.invalid(res.kind, res.group, name, causes)
    causes = cross_field_causes(res, obj, version)
    if causes:
        raise errors.invalid(res.kind, res.group, name, causes)
