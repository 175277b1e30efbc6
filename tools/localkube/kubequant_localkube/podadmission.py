"""The admission plugins a Job's pods meet on a real API server.

Run on create, in the real server's order (mutating plugins first, then validating ones):

* ServiceAccount (mutating): a pod naming a ServiceAccount that does not exist is refused
  (``default`` is taken to exist: on a real cluster a controller creates it in every
  namespace);
* Priority (mutating; plugin/pkg/admission/priority): ``spec.priorityClassName`` must name a
  PriorityClass (or a system class); ``spec.priority`` and ``spec.preemptionPolicy`` are
  resolved from it, or from the globalDefault class when no name is given. PriorityClasses
  themselves are validated (one globalDefault, reserved names, the highest user value);
* PodSecurity (validating; staging/src/k8s.io/pod-security-admission): the namespace labels
  ``pod-security.kubernetes.io/{enforce,warn,audit}`` (any ``-version`` is evaluated as
  latest) select privileged/baseline/restricted; a pod violating ``enforce`` is refused, a
  pod violating ``warn`` gets a warning; a workload resource (Job, CronJob, Deployment, ...)
  is never refused, only warned;
* ResourceQuota (validating, last; plugin/pkg/admission/resourcequota and
  pkg/quota/v1/evaluator/core/pods.go): a pod whose requests/limits would take a
  ResourceQuota of its namespace over ``spec.hard`` is refused. Usage is computed from the
  namespace's pods, so it is always current; :func:`sync_quota_status` writes it to
  ``status`` as the quota controller does.

Refusals are 403s worded as ``admission.NewForbidden`` words them: the object's name, or its
``generateName`` prefix for a mutating plugin (the name is generated after them).

:func:`check_owner_references` is OwnerReferencesPermissionEnforcement
(plugin/pkg/admission/gc), which needs the requesting user and so runs in the HTTP handler.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from kubequant_localkube import errors
from kubequant_localkube import resources as res_mod
from kubequant_localkube.objects import Obj

if TYPE_CHECKING:
    from kubequant_localkube.store import Store

PODS_KEY = ("", "pods")
QUOTAS_KEY = ("", "resourcequotas")
PRIORITY_CLASSES_KEY = ("scheduling.k8s.io", "priorityclasses")

# ------------------------------------------------------------------------------ quantities
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {e: s for s, e in _DECIMAL.items()}
_BINARY_SUFFIX = {e: s for s, e in _BINARY.items()}
_QUANTITY = re.compile(
    r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$"
)


@dataclasses.dataclass(frozen=True)
class Quantity:
    """A resource quantity: its exact value, printed the way resource.Quantity prints it."""

    value: Fraction
    binary: bool = False

    @classmethod
    def parse(cls, text: Any) -> Quantity:
        m = _QUANTITY.match(str(text).strip())
        if not m:
            raise errors.ApiError(
                400, f"quantities must match the regular expression '{_QUANTITY.pattern}'"
            )
        number, exponent, suffix = m.groups()
        value = Fraction(number)
        if exponent:
            value *= Fraction(10) ** int(exponent[1:])
        elif suffix in _BINARY:
            return cls(value * 1024 ** _BINARY[suffix], binary=True)
        elif suffix:
            value *= Fraction(10) ** _DECIMAL[suffix]
        return cls(value)

    def __add__(self, other: Quantity) -> Quantity:
        # resource.Quantity.Add keeps the receiver's format, unless the receiver is zero.
        binary = other.binary if self.value == 0 else self.binary
        return Quantity(self.value + other.value, binary)

    def __str__(self) -> str:
        if self.value == 0:
            return "0"
        sign = "-" if self.value < 0 else ""
        value = abs(self.value)
        if self.binary and value >= 1024 and value.denominator == 1:
            n, exp = int(value), 0
            while n % 1024 == 0 and exp < 6:
                n, exp = n // 1024, exp + 1
            return f"{sign}{n}{_BINARY_SUFFIX.get(exp, '')}"
        # DecimalSI: rounded up to nano units, the exponent a multiple of 3.
        nanos = -((-value * 10**9) // 1)
        mantissa, exp = int(nanos), -9
        while mantissa % 10 == 0:
            mantissa, exp = mantissa // 10, exp + 1
        exp3 = min((exp // 3) * 3, 18)
        mantissa *= 10 ** (exp - exp3)
        return f"{sign}{mantissa}{_DECIMAL_SUFFIX[exp3]}"


ResourceList = dict[str, Quantity]


def _add_lists(a: ResourceList, b: Mapping[str, Quantity]) -> ResourceList:
    out = dict(a)
    for key, q in b.items():
        out[key] = out[key] + q if key in out else q
    return out


def _pretty(items: Mapping[str, Quantity]) -> str:
    return ",".join(f"{k}={items[k]}" for k in sorted(items))


# ------------------------------------------------------------------------------ helpers
def _qualified(res: res_mod.Resource) -> str:
    return f"{res.plural}.{res.group}" if res.group else res.plural


def forbidden(res: res_mod.Resource, name: str, message: str) -> errors.ApiError:
    """``admission.NewForbidden``: 403 ``<resource> "<name>" is forbidden: <message>``."""
    return errors.ApiError(
        403,
        f'{_qualified(res)} "{name}" is forbidden: {message}',
        reason="Forbidden",
        details={"name": name, "group": res.group, "kind": res.plural},
    )


def _containers(spec: Mapping[str, Any]) -> list[Obj]:
    """visitContainers' order: init containers, containers, ephemeral containers."""
    out: list[Obj] = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        out += [c for c in spec.get(key) or [] if isinstance(c, dict)]
    return out


def _plural(one: str, many: str, n: int) -> str:
    return one if n == 1 else many


def _join_quote(items: Iterable[str]) -> str:
    return ", ".join(f'"{i}"' for i in items)


def _namespace_labels(store: Store, namespace: str) -> dict[str, str]:
    ns = store.try_get(store.resource("", "v1", "namespaces"), None, namespace)
    return dict(((ns or {}).get("metadata") or {}).get("labels") or {})


# ------------------------------------------------------------------------------ entry point
def admit_create(store: Store, res: res_mod.Resource, obj: Obj, *, generated: bool) -> list[str]:
    """The plugins that apply to creating ``obj`` (lock held); mutates it; returns warnings.

    ``generated``: the name was generated from ``generateName`` (mutating plugins name the
    object by that prefix, as the real ones run before the name is generated)."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    validating_name = str(meta.get("name") or "")
    mutating_name = str(meta.get("generateName") or "") if generated else validating_name
    if res.key == PRIORITY_CLASSES_KEY:
        _validate_priority_class(store, res, obj)
        return []
    if res.key == PODS_KEY:
        spec = obj.setdefault("spec", {})
        _service_account(store, res, namespace, spec, mutating_name)
        _priority(store, res, spec, mutating_name)
        warnings = _pod_security_pod(store, res, namespace, obj, validating_name)
        _resource_quota(store, res, namespace, obj, validating_name)
        return warnings
    template = _pod_template(res, obj)
    if template is not None:
        return _pod_security_workload(store, namespace, template)
    return []


# ------------------------------------------------------------------------------ ServiceAccount
def _service_account(
    store: Store, res: res_mod.Resource, namespace: str, spec: Obj, name: str
) -> None:
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec.setdefault("serviceAccountName", sa)
    if sa == "default":
        return
    if store.try_get(store.resource("", "v1", "serviceaccounts"), namespace, sa) is None:
        raise forbidden(
            res,
            name,
            f"error looking up service account {namespace}/{sa}: "
            f'serviceaccount "{sa}" not found',
        )


# ------------------------------------------------------------------------------ Priority
SYSTEM_PRIORITY_CLASSES = {
    "system-node-critical": 2000001000,
    "system-cluster-critical": 2000000000,
}
HIGHEST_USER_DEFINABLE_PRIORITY = 1000000000


def _priority_classes(store: Store) -> list[Obj]:
    return store.list_objects(store.resource("scheduling.k8s.io", "v1", "priorityclasses"))[0]


def _default_class(store: Store) -> Obj | None:
    """The globalDefault class (the lowest value if several, as the real plugin picks)."""
    defaults = [pc for pc in _priority_classes(store) if pc.get("globalDefault")]
    return min(defaults, key=lambda pc: int(pc.get("value", 0))) if defaults else None


def _priority(store: Store, res: res_mod.Resource, spec: Obj, name: str) -> None:
    class_name = spec.get("priorityClassName") or ""
    policy = "PreemptLowerPriority"
    if not class_name:
        default = _default_class(store)
        priority = int(default.get("value", 0)) if default else 0
        if default is not None:
            class_name = default["metadata"]["name"]
            policy = default.get("preemptionPolicy") or policy
    elif class_name in SYSTEM_PRIORITY_CLASSES:
        priority = SYSTEM_PRIORITY_CLASSES[class_name]
    else:
        pc = next(
            (p for p in _priority_classes(store) if p["metadata"]["name"] == class_name), None
        )
        if pc is None:
            raise forbidden(res, name, f"no PriorityClass with name {class_name} was found")
        priority = int(pc.get("value", 0))
        policy = pc.get("preemptionPolicy") or policy
    if spec.get("priority") is not None and int(spec["priority"]) != priority:
        raise forbidden(
            res,
            name,
            f"the integer value of priority ({spec['priority']}) must not be provided in pod "
            f"spec; priority admission controller computed {priority} from the given "
            "PriorityClass name",
        )
    if class_name:
        spec["priorityClassName"] = class_name
    spec["priority"] = priority
    spec.setdefault("preemptionPolicy", policy)


def _validate_priority_class(store: Store, res: res_mod.Resource, pc: Obj) -> None:
    name = str((pc.get("metadata") or {}).get("name") or "")
    if int(pc.get("value", 0)) > HIGHEST_USER_DEFINABLE_PRIORITY:
        raise forbidden(
            res,
            name,
            "maximum allowed value of a user defined priority is "
            f"{HIGHEST_USER_DEFINABLE_PRIORITY}",
        )
    if name in SYSTEM_PRIORITY_CLASSES:
        raise forbidden(
            res,
            name,
            f"the name of the priority class is a reserved name for system use only: {name}",
        )
    default = _default_class(store)
    if pc.get("globalDefault") and default is not None:
        raise forbidden(
            res,
            name,
            f"PriorityClass {default['metadata']['name']} is already marked as default. "
            "Only one default can exist",
        )


# ------------------------------------------------------------------------------ PodSecurity
LEVELS = ("privileged", "baseline", "restricted")
_LABEL = "pod-security.kubernetes.io/"
_BASELINE_CAPABILITIES = frozenset(
    [
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    ]
)
_RESTRICTED_VOLUME_OK = (
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
)
_VOLUME_SOURCES = (
    "hostPath",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "gitRepo",
    "nfs",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "vsphereVolume",
    "quobyte",
    "azureDisk",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
)
Check = Callable[[Obj], "tuple[str, str] | None"]  # pod spec -> (reason, detail) if forbidden


def _sc(obj: Mapping[str, Any]) -> Obj:
    sc = obj.get("securityContext")
    return sc if isinstance(sc, dict) else {}


def _check_capabilities_baseline(spec: Obj) -> tuple[str, str] | None:
    bad: list[str] = []
    caps: set[str] = set()
    for c in _containers(spec):
        added = [a for a in (_sc(c).get("capabilities") or {}).get("add") or []]
        extra = [a for a in added if a not in _BASELINE_CAPABILITIES]
        if extra:
            bad.append(c.get("name", ""))
            caps.update(extra)
    if not bad:
        return None
    return "non-default capabilities", (
        f"{_plural('container', 'containers', len(bad))} {_join_quote(bad)} must not include "
        f"{_join_quote(sorted(caps))} in securityContext.capabilities.add"
    )


def _check_host_namespaces(spec: Obj) -> tuple[str, str] | None:
    used = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    return ("host namespaces", ", ".join(used)) if used else None


def _check_host_path_volumes(spec: Obj) -> tuple[str, str] | None:
    bad = [v.get("name", "") for v in spec.get("volumes") or [] if v.get("hostPath") is not None]
    if not bad:
        return None
    return "hostPath volumes", f"{_plural('volume', 'volumes', len(bad))} {_join_quote(bad)}"


def _check_host_ports(spec: Obj) -> tuple[str, str] | None:
    bad: list[str] = []
    ports: set[str] = set()
    for c in _containers(spec):
        used = [str(p["hostPort"]) for p in c.get("ports") or [] if p.get("hostPort")]
        if used:
            bad.append(c.get("name", ""))
            ports.update(used)
    if not bad:
        return None
    return "hostPort", (
        f"{_plural('container', 'containers', len(bad))} {_join_quote(bad)} "
        f"{_plural('uses', 'use', len(bad))} {_plural('hostPort', 'hostPorts', len(ports))} "
        + ", ".join(sorted(ports))
    )


def _check_privileged(spec: Obj) -> tuple[str, str] | None:
    bad = [c.get("name", "") for c in _containers(spec) if _sc(c).get("privileged") is True]
    if not bad:
        return None
    return "privileged", (
        f"{_plural('container', 'containers', len(bad))} {_join_quote(bad)} must not set "
        "securityContext.privileged=true"
    )


def _setters(pod_bad: bool, containers: list[str]) -> str:
    parts = ["pod"] if pod_bad else []
    if containers:
        parts.append(
            f"{_plural('container', 'containers', len(containers))} {_join_quote(containers)}"
        )
    return " and ".join(parts)


def _check_seccomp_baseline(spec: Obj) -> tuple[str, str] | None:
    def bad(sc: Obj) -> bool:
        return (sc.get("seccompProfile") or {}).get("type") == "Unconfined"

    containers = [c.get("name", "") for c in _containers(spec) if bad(_sc(c))]
    if not bad(_sc(spec)) and not containers:
        return None
    who = _setters(bad(_sc(spec)), containers)
    return (
        "seccompProfile",
        f'{who} must not set securityContext.seccompProfile.type to "Unconfined"',
    )


def _check_allow_privilege_escalation(spec: Obj) -> tuple[str, str] | None:
    bad = [
        c.get("name", "")
        for c in _containers(spec)
        if _sc(c).get("allowPrivilegeEscalation") is not False
    ]
    if not bad:
        return None
    return "allowPrivilegeEscalation != false", (
        f"{_plural('container', 'containers', len(bad))} {_join_quote(bad)} must set "
        "securityContext.allowPrivilegeEscalation=false"
    )


def _check_capabilities_restricted(spec: Obj) -> tuple[str, str] | None:
    missing_drop: list[str] = []
    adding: list[str] = []
    caps: set[str] = set()
    for c in _containers(spec):
        capabilities = _sc(c).get("capabilities")
        if not isinstance(capabilities, dict):
            missing_drop.append(c.get("name", ""))
            continue
        if "ALL" not in (capabilities.get("drop") or []):
            missing_drop.append(c.get("name", ""))
        extra = [a for a in capabilities.get("add") or [] if a != "NET_BIND_SERVICE"]
        if extra:
            adding.append(c.get("name", ""))
            caps.update(extra)
    details: list[str] = []
    if missing_drop:
        details.append(
            f"{_plural('container', 'containers', len(missing_drop))} {_join_quote(missing_drop)}"
            ' must set securityContext.capabilities.drop=["ALL"]'
        )
    if adding:
        details.append(
            f"{_plural('container', 'containers', len(adding))} {_join_quote(adding)} must not "
            f"include {_join_quote(sorted(caps))} in securityContext.capabilities.add"
        )
    return ("unrestricted capabilities", "; ".join(details)) if details else None


def _check_restricted_volumes(spec: Obj) -> tuple[str, str] | None:
    bad: list[str] = []
    kinds: set[str] = set()
    for v in spec.get("volumes") or []:
        if any(v.get(k) is not None for k in _RESTRICTED_VOLUME_OK):
            continue
        bad.append(v.get("name", ""))
        kinds.add(next((k for k in _VOLUME_SOURCES if v.get(k) is not None), "unknown"))
    if not bad:
        return None
    return "restricted volume types", (
        f"{_plural('volume', 'volumes', len(bad))} {_join_quote(bad)} "
        f"{_plural('uses', 'use', len(bad))} "
        f"{_plural('restricted volume type', 'restricted volume types', len(kinds))} "
        f"{_join_quote(sorted(kinds))}"
    )


def _explicit_or_implicit(
    spec: Obj, good: Callable[[Any], bool], field: str
) -> tuple[bool, bool, list[str], list[str]]:
    """(pod set it badly, pod set it well, containers setting it badly, containers relying on
    a pod-level value that is not good)."""
    pod_value = _sc(spec).get(field)
    pod_bad = pod_value is not None and not good(pod_value)
    pod_good = pod_value is not None and good(pod_value)
    explicit: list[str] = []
    implicit: list[str] = []
    for c in _containers(spec):
        value = _sc(c).get(field)
        if value is not None:
            if not good(value):
                explicit.append(c.get("name", ""))
        elif not pod_good:
            implicit.append(c.get("name", ""))
    return pod_bad, pod_good, explicit, implicit


def _check_run_as_non_root(spec: Obj) -> tuple[str, str] | None:
    pod_bad, _, explicit, implicit = _explicit_or_implicit(
        spec, lambda v: v is True, "runAsNonRoot"
    )
    reason = "runAsNonRoot != true"
    if pod_bad or explicit:
        return (
            reason,
            f"{_setters(pod_bad, explicit)} must not set securityContext.runAsNonRoot=false",
        )
    if implicit:
        return reason, (
            f"pod or {_plural('container', 'containers', len(implicit))} {_join_quote(implicit)} "
            "must set securityContext.runAsNonRoot=true"
        )
    return None


def _check_run_as_user(spec: Obj) -> tuple[str, str] | None:
    pod_bad = _sc(spec).get("runAsUser") == 0
    bad = [c.get("name", "") for c in _containers(spec) if _sc(c).get("runAsUser") == 0]
    if not pod_bad and not bad:
        return None
    return "runAsUser=0", f"{_setters(pod_bad, bad)} must not set runAsUser=0"


def _check_seccomp_restricted(spec: Obj) -> tuple[str, str] | None:
    def good(profile: Any) -> bool:
        return isinstance(profile, dict) and profile.get("type") in ("RuntimeDefault", "Localhost")

    pod_bad, _, explicit, implicit = _explicit_or_implicit(spec, good, "seccompProfile")
    if pod_bad or explicit:
        values = {str((_sc(spec).get("seccompProfile") or {}).get("type"))} if pod_bad else set()
        for c in _containers(spec):
            if c.get("name", "") in explicit:
                values.add(str((_sc(c).get("seccompProfile") or {}).get("type")))
        return "seccompProfile", (
            f"{_setters(pod_bad, explicit)} must not set securityContext.seccompProfile.type to "
            f"{_join_quote(sorted(values))}"
        )
    if implicit:
        return "seccompProfile", (
            f"pod or {_plural('container', 'containers', len(implicit))} {_join_quote(implicit)} "
            'must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost"'
        )
    return None


# Check IDs sorted as the real registry sorts them (byte order), baseline first.
_BASELINE_CHECKS: list[tuple[str, Check]] = [
    ("capabilities_baseline", _check_capabilities_baseline),
    ("hostNamespaces", _check_host_namespaces),
    ("hostPathVolumes", _check_host_path_volumes),
    ("hostPorts", _check_host_ports),
    ("privileged", _check_privileged),
    ("seccompProfile_baseline", _check_seccomp_baseline),
]
_RESTRICTED_CHECKS: list[tuple[str, Check]] = [
    ("allowPrivilegeEscalation", _check_allow_privilege_escalation),
    ("capabilities_restricted", _check_capabilities_restricted),
    ("restrictedVolumes", _check_restricted_volumes),
    ("runAsNonRoot", _check_run_as_non_root),
    ("runAsUser", _check_run_as_user),
    ("seccompProfile_restricted", _check_seccomp_restricted),
]
_OVERRIDDEN_BY_RESTRICTED = {"hostPathVolumes"}  # restrictedVolumes covers hostPath


def evaluate(level: str, pod_spec: Obj) -> list[tuple[str, str]]:
    """The (reason, detail) of every check ``pod_spec`` fails at ``level``, in the real order."""
    if level == "privileged":
        return []
    checks = list(_BASELINE_CHECKS)
    if level == "restricted":
        checks = [c for c in checks if c[0] not in _OVERRIDDEN_BY_RESTRICTED] + _RESTRICTED_CHECKS
    return [r for _, check in checks if (r := check(pod_spec)) is not None]


def _describe(failures: list[tuple[str, str]]) -> str:
    return ", ".join(f"{reason} ({detail})" if detail else reason for reason, detail in failures)


@dataclasses.dataclass(frozen=True)
class LevelVersion:
    level: str
    version: str

    def __str__(self) -> str:
        return f"{self.level}:{self.version}"


def namespace_policy(labels: Mapping[str, str]) -> dict[str, LevelVersion]:
    """enforce/warn/audit from the namespace labels (api.PolicyToEvaluate): no label is
    privileged; an unparsable level is restricted; warn defaults to a stricter enforce."""
    policy: dict[str, LevelVersion] = {}
    for mode in ("enforce", "warn", "audit"):
        level = labels.get(_LABEL + mode)
        version = labels.get(f"{_LABEL}{mode}-version") or "latest"
        if level is None:
            policy[mode] = LevelVersion("privileged", version)
        else:
            policy[mode] = LevelVersion(level if level in LEVELS else "restricted", version)
    enforce, warn = policy["enforce"], policy["warn"]
    if (
        _LABEL + "warn" not in labels
        and labels.get(_LABEL + "enforce") in LEVELS
        and LEVELS.index(enforce.level) > LEVELS.index(warn.level)
    ):
        version = labels.get(_LABEL + "warn-version") or enforce.version
        policy["warn"] = LevelVersion(enforce.level, version)
    return policy


def _pod_security_pod(
    store: Store, res: res_mod.Resource, namespace: str, pod: Obj, name: str
) -> list[str]:
    policy = namespace_policy(_namespace_labels(store, namespace))
    spec = pod.get("spec") or {}
    enforce = policy["enforce"]
    failed = evaluate(enforce.level, spec)
    if failed:
        raise forbidden(res, name, f'violates PodSecurity "{enforce}": {_describe(failed)}')
    warn = policy["warn"]
    if warn == enforce:
        return []
    failed = evaluate(warn.level, spec)
    return [f'would violate PodSecurity "{warn}": {_describe(failed)}'] if failed else []


_WORKLOADS: dict[tuple[str, str], tuple[str, ...]] = {
    ("batch", "jobs"): ("spec", "template"),
    ("batch", "cronjobs"): ("spec", "jobTemplate", "spec", "template"),
    ("apps", "deployments"): ("spec", "template"),
    ("apps", "replicasets"): ("spec", "template"),
    ("apps", "statefulsets"): ("spec", "template"),
    ("apps", "daemonsets"): ("spec", "template"),
    ("", "replicationcontrollers"): ("spec", "template"),
    ("", "podtemplates"): ("template",),
}


def _pod_template(res: res_mod.Resource, obj: Obj) -> Obj | None:
    path = _WORKLOADS.get(res.key)
    if path is None:
        return None
    cur: Any = obj
    for part in path:
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur if isinstance(cur, dict) else None


def _pod_security_workload(store: Store, namespace: str, template: Obj) -> list[str]:
    """A workload resource is never refused: enforce and warn violations are warnings."""
    policy = namespace_policy(_namespace_labels(store, namespace))
    spec = template.get("spec") or {}
    warnings: list[str] = []
    for mode in ("enforce", "warn"):
        lv = policy[mode]
        if mode == "warn" and lv == policy["enforce"]:
            break
        failed = evaluate(lv.level, spec)
        if failed:
            warnings.append(f'would violate PodSecurity "{lv}": {_describe(failed)}')
    return warnings


# ------------------------------------------------------------------------------ ResourceQuota
_CPU_MEMORY = ("requests.cpu", "requests.memory", "limits.cpu", "limits.memory", "cpu", "memory")
_STANDARD = frozenset(("cpu", "memory", "ephemeral-storage", "pods"))


def _extended(name: str) -> bool:
    """helper.IsExtendedResourceName: a domain-prefixed name outside kubernetes.io."""
    return (
        "/" in name
        and not name.startswith("requests.")
        and "kubernetes.io/" not in name
        and not name.startswith("hugepages-")
    )


def _usage_of(requests: Mapping[str, Any], limits: Mapping[str, Any]) -> ResourceList:
    """podComputeUsageHelper for one requests/limits pair."""
    out: ResourceList = {"pods": Quantity(Fraction(1))}
    for res in ("cpu", "memory", "ephemeral-storage"):
        if res in requests:
            out[res] = out[f"requests.{res}"] = Quantity.parse(requests[res])
        if res in limits:
            out[f"limits.{res}"] = Quantity.parse(limits[res])
    for res, value in requests.items():
        if res.startswith("hugepages-"):
            out[res] = out[f"requests.{res}"] = Quantity.parse(value)
        elif _extended(res):
            out[f"requests.{res}"] = Quantity.parse(value)
    return out


def _container_resources(c: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    resources = c.get("resources") or {}
    limits = dict(resources.get("limits") or {})
    requests = dict(resources.get("requests") or {})
    for key, value in limits.items():  # the API server defaults requests to limits
        requests.setdefault(key, value)
    return requests, limits


def _terminal(pod: Obj) -> bool:
    """Not QuotaV1Pod: Succeeded/Failed, or being deleted."""
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed") or bool(pod["metadata"].get("deletionTimestamp"))


def pod_usage(pod: Obj) -> ResourceList:
    """What a pod counts against a quota (PodUsageFunc): ``count/pods`` always; ``pods`` and
    the compute resources (containers summed, init containers as a maximum, plus overhead)
    while it is not terminal."""
    one = Quantity(Fraction(1))
    if _terminal(pod):
        return {"count/pods": one}
    spec = pod.get("spec") or {}
    requests: dict[str, Quantity] = {}
    limits: dict[str, Quantity] = {}
    for c in spec.get("containers") or []:
        req, lim = _container_resources(c)
        requests = _add_lists(requests, {k: Quantity.parse(v) for k, v in req.items()})
        limits = _add_lists(limits, {k: Quantity.parse(v) for k, v in lim.items()})
    for c in spec.get("initContainers") or []:
        req, lim = _container_resources(c)
        for target, values in ((requests, req), (limits, lim)):
            for k, v in values.items():
                q = Quantity.parse(v)
                if k not in target or q.value > target[k].value:
                    target[k] = q
    overhead = {k: Quantity.parse(v) for k, v in (spec.get("overhead") or {}).items()}
    requests = _add_lists(requests, overhead)
    limits = _add_lists(limits, {k: q for k, q in overhead.items() if k in limits})
    out = _usage_of(requests, limits)
    out["count/pods"] = one
    return out


def _tracked(name: str) -> bool:
    """Whether the pod evaluator tracks the quota resource ``name`` (MatchingResources)."""
    if name in _STANDARD or name == "count/pods":
        return True
    if name.startswith("requests.") or name.startswith("hugepages-"):
        return True
    return name in ("limits.cpu", "limits.memory", "limits.ephemeral-storage")


def _scope_matches(quota: Obj, pod: Obj) -> bool:
    """Quota scopes (Terminating, NotTerminating, BestEffort, NotBestEffort, PriorityClass)."""
    spec = quota.get("spec") or {}
    selectors: list[Obj] = [
        {"scopeName": s, "operator": "Exists"} for s in spec.get("scopes") or []
    ]
    selectors += (spec.get("scopeSelector") or {}).get("matchExpressions") or []
    pod_spec = pod.get("spec") or {}
    for sel in selectors:
        scope = sel.get("scopeName")
        terminating = pod_spec.get("activeDeadlineSeconds") is not None
        best_effort = not any(
            (c.get("resources") or {}).get(k)
            for c in _containers(pod_spec)
            for k in ("requests", "limits")
        )
        if scope == "Terminating" and not terminating:
            return False
        if scope == "NotTerminating" and terminating:
            return False
        if scope == "BestEffort" and not best_effort:
            return False
        if scope == "NotBestEffort" and best_effort:
            return False
        if scope == "PriorityClass":
            name = pod_spec.get("priorityClassName") or ""
            op, values = sel.get("operator"), sel.get("values") or []
            ok = {
                "In": name in values,
                "NotIn": name not in values,
                "Exists": bool(name),
                "DoesNotExist": not name,
            }.get(str(op), False)
            if not ok:
                return False
    return True


def _quotas(store: Store, namespace: str) -> list[Obj]:
    return store.list_objects(store.resource("", "v1", "resourcequotas"), namespace)[0]


def quota_usage(store: Store, quota: Obj) -> ResourceList:
    """The usage of every resource in the quota's ``spec.hard`` (0 when nothing uses it)."""
    hard = (quota.get("spec") or {}).get("hard") or {}
    namespace = quota["metadata"]["namespace"]
    pods = store.list_objects(store.resource("", "v1", "pods"), namespace)[0]
    used: ResourceList = {}
    for pod in pods:
        if not _scope_matches(quota, pod):
            continue
        used = _add_lists(used, pod_usage(pod))
    out: ResourceList = {}
    for key in hard:
        zero = Quantity(Fraction(0), Quantity.parse(hard[key]).binary)
        out[key] = used.get(key, zero)
    return out


def _resource_quota(
    store: Store, res: res_mod.Resource, namespace: str, pod: Obj, name: str
) -> None:
    for quota in _quotas(store, namespace):
        if not _scope_matches(quota, pod):
            continue
        qname = quota["metadata"]["name"]
        hard = {
            k: Quantity.parse(v) for k, v in ((quota.get("spec") or {}).get("hard") or {}).items()
        }
        tracked = {k for k in hard if _tracked(k)}
        required = tracked & set(_CPU_MEMORY)
        missing: dict[str, list[str]] = {}
        for c in _containers(
            {k: v for k, v in (pod.get("spec") or {}).items() if k != "ephemeralContainers"}
        ):
            have = _usage_of(*_container_resources(c))
            for r in sorted(required - set(have)):
                missing.setdefault(r, []).append(str(c.get("name", "")))
        if missing:
            listed = "; ".join(f"{r} for: {','.join(sorted(missing[r]))}" for r in sorted(missing))
            raise forbidden(res, name, f"failed quota: {qname}: must specify {listed}")
        requested = {k: q for k, q in pod_usage(pod).items() if k in tracked and q.value != 0}
        if not requested:
            continue
        used = quota_usage(store, quota)
        exceeded = [k for k, q in requested.items() if (used[k] + q).value > hard[k].value]
        if exceeded:
            raise forbidden(
                res,
                name,
                f"exceeded quota: {qname}, "
                f"requested: {_pretty({k: requested[k] for k in exceeded})}, "
                f"used: {_pretty({k: used[k] for k in exceeded})}, "
                f"limited: {_pretty({k: hard[k] for k in exceeded})}",
            )


def sync_quota_status(store: Store, namespace: str) -> None:
    """The quota controller: write ``status.hard``/``status.used`` of the namespace's
    ResourceQuotas when they differ from ``spec.hard`` and the pods' usage."""
    res = store.resource("", "v1", "resourcequotas")
    for quota in _quotas(store, namespace):
        hard = (quota.get("spec") or {}).get("hard") or {}
        try:
            status = {
                "hard": {k: str(Quantity.parse(v)) for k, v in hard.items()},
                "used": {k: str(q) for k, q in quota_usage(store, quota).items()},
            }
        except errors.ApiError:
            continue  # an unparsable quantity: the real server refuses it on write
        if (quota.get("status") or {}) == status:
            continue
        try:
            store.patch(
                res,
                namespace,
                quota["metadata"]["name"],
                "merge",
                {"metadata": {"uid": quota["metadata"]["uid"]}, "status": status},
                subresource="status",
            )
        except errors.ApiError:
            continue  # deleted or replaced meanwhile: the next event syncs again


# ------------------------------------------------------------------------------ owner references
Authorizer = Callable[[str, str, str, "str | None"], bool]  # verb, group, resource, name


def _blocking_new(new: Obj, old: Obj | None) -> list[Obj]:
    """ownerReferences that newly block owner deletion (newBlockingOwnerDeletionRefs)."""
    refs = [
        r
        for r in (new.get("metadata") or {}).get("ownerReferences") or []
        if r.get("blockOwnerDeletion") is True
    ]
    if old is None:
        return refs
    before = {r.get("uid"): r for r in (old.get("metadata") or {}).get("ownerReferences") or []}
    return [
        r
        for r in refs
        if r.get("uid") not in before or before[r["uid"]].get("blockOwnerDeletion") is not True
    ]


def check_owner_references(
    store: Store,
    res: res_mod.Resource,
    new: Obj,
    old: Obj | None,
    allowed: Authorizer,
) -> None:
    """OwnerReferencesPermissionEnforcement: changing ``ownerReferences`` needs ``delete`` on
    the object; a new ``blockOwnerDeletion: true`` reference needs ``update`` on the owner's
    ``finalizers`` subresource. ``allowed`` is the RBAC decision for the requesting user."""
    meta = new.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    old_refs = ((old or {}).get("metadata") or {}).get("ownerReferences") or []
    if (old is None and not refs) or (old is not None and refs == old_refs):
        return
    name = str(meta.get("name") or "")
    shown = name or str(meta.get("generateName") or "Unknown")
    # The RBAC authorizer gives no reason when it denies; the union authorizer's error is nil.
    if not allowed("delete", res.group, res.plural, name or None):
        raise forbidden(
            res, shown, "cannot set an ownerRef on a resource you can't delete: , <nil>"
        )
    for ref in _blocking_new(new, old):
        api_version = str(ref.get("apiVersion") or "")
        group = api_version.rpartition("/")[0] if "/" in api_version else ""
        version = api_version.rpartition("/")[2]
        kind = str(ref.get("kind") or "")
        owners = [
            r
            for r in store.all_resources()
            if r.group == group and r.kind == kind and r.version == version
        ]
        if not owners:
            raise forbidden(
                res,
                shown,
                f"cannot set blockOwnerDeletion in this case because cannot find RESTMapping for "
                f'APIVersion {api_version} Kind {kind}: , no matches for kind "{kind}" in '
                f'version "{api_version}"',
            )
        for owner in owners:
            if not allowed("update", group, f"{owner.plural}/finalizers", ref.get("name") or None):
                raise forbidden(
                    res,
                    shown,
                    "cannot set blockOwnerDeletion if an ownerReference refers to a resource you "
                    "can't set finalizers on: , <nil>",
                )
