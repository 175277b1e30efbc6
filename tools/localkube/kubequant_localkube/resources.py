"""The resources the local API server serves: built-in kinds and those registered by CRDs."""

from __future__ import annotations

import dataclasses
from typing import Any

ALL_VERBS: tuple[str, ...] = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)


@dataclasses.dataclass
class Resource:
    """One served group/version/resource with its names and (for CRDs) its schema."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    list_kind: str = ""
    # Only for resources defined by a CustomResourceDefinition.
    crd_name: str | None = None
    schema: dict[str, Any] | None = None
    printer_columns: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.singular:
            self.singular = self.kind.lower()
        if not self.list_kind:
            self.list_kind = f"{self.kind}List"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def key(self) -> tuple[str, str]:
        """Storage key: objects are shared by all versions of a group/resource."""
        return (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def is_custom(self) -> bool:
        return self.crd_name is not None

    def discovery(self) -> list[dict[str, Any]]:
        """Entries of an APIResourceList for this resource and its subresources."""
        main: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(self.verbs),
        }
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        if self.categories:
            main["categories"] = list(self.categories)
        out = [main]
        for sub in self.subresources:
            verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
            kind = self.kind
            if sub == "log":
                kind = "Pod"
            if sub == "eviction":
                kind, verbs = "Eviction", ["create"]
            out.append(
                {
                    "name": f"{self.plural}/{sub}",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": kind,
                    "verbs": verbs,
                }
            )
        return out


def _r(  # noqa: PLR0917 - a compact table of the built-in kinds
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool = True,
    short: tuple[str, ...] = (),
    sub: tuple[str, ...] = (),
    cats: tuple[str, ...] = (),
    verbs: tuple[str, ...] = ALL_VERBS,
) -> Resource:
    return Resource(
        group=group,
        version=version,
        plural=plural,
        kind=kind,
        namespaced=namespaced,
        short_names=short,
        subresources=sub,
        categories=cats,
        verbs=verbs,
    )


def builtin_resources() -> list[Resource]:
    """The built-in kinds kubequant, kopf, kubectl and the Helm chart use."""
    rbac = "rbac.authorization.k8s.io"
    return [
        _r("", "v1", "namespaces", "Namespace", False, ("ns",), ("status", "finalize")),
        _r("", "v1", "pods", "Pod", True, ("po",), ("status", "log"), ("all",)),
        _r("", "v1", "services", "Service", True, ("svc",), ("status",), ("all",)),
        _r("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
        _r("", "v1", "secrets", "Secret", True),
        _r("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
        _r("", "v1", "events", "Event", True, ("ev",)),
        _r(
            "", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",), ("status",)
        ),
        _r("", "v1", "persistentvolumes", "PersistentVolume", False, ("pv",), ("status",)),
        _r("", "v1", "nodes", "Node", False, ("no",), ("status",)),
        _r("", "v1", "endpoints", "Endpoints", True, ("ep",)),
        _r("", "v1", "limitranges", "LimitRange", True, ("limits",)),
        _r("", "v1", "resourcequotas", "ResourceQuota", True, ("quota",), ("status",)),
        _r("apps", "v1", "deployments", "Deployment", True, ("deploy",), ("status",), ("all",)),
        _r("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",), ("status",), ("all",)),
        _r("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",), ("status",), ("all",)),
        _r("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",), ("status",), ("all",)),
        _r("batch", "v1", "jobs", "Job", True, (), ("status",), ("all",)),
        _r("batch", "v1", "cronjobs", "CronJob", True, ("cj",), ("status",), ("all",)),
        _r(rbac, "v1", "roles", "Role", True),
        _r(rbac, "v1", "rolebindings", "RoleBinding", True),
        _r(rbac, "v1", "clusterroles", "ClusterRole", False),
        _r(rbac, "v1", "clusterrolebindings", "ClusterRoleBinding", False),
        _r("events.k8s.io", "v1", "events", "Event", True, ("ev",)),
        _r("coordination.k8s.io", "v1", "leases", "Lease", True),
        _r(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            False,
            ("crd", "crds"),
            ("status",),
        ),
        _r(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            True,
            ("pdb",),
            ("status",),
        ),
        _r("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
        _r("networking.k8s.io", "v1", "ingresses", "Ingress", True, ("ing",), ("status",)),
        _r("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False, ("pc",)),
        _r("storage.k8s.io", "v1", "storageclasses", "StorageClass", False, ("sc",)),
        _r(
            "autoscaling",
            "v2",
            "horizontalpodautoscalers",
            "HorizontalPodAutoscaler",
            True,
            ("hpa",),
        ),
        _r(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            False,
            verbs=("create",),
        ),
    ]


def resources_from_crd(crd: dict[str, Any]) -> list[Resource]:
    """One Resource per served version of a CustomResourceDefinition."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    out: list[Resource] = []
    for ver in spec.get("versions", []):
        if not ver.get("served", True):
            continue
        subs = ver.get("subresources") or {}
        out.append(
            Resource(
                group=spec["group"],
                version=ver["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                singular=names.get("singular", "") or names["kind"].lower(),
                short_names=tuple(names.get("shortNames", []) or []),
                categories=tuple(names.get("categories", []) or []),
                subresources=tuple(s for s in ("status", "scale") if s in subs),
                list_kind=names.get("listKind", "") or f"{names['kind']}List",
                crd_name=crd["metadata"]["name"],
                schema=(ver.get("schema") or {}).get("openAPIV3Schema"),
                printer_columns=list(ver.get("additionalPrinterColumns") or []),
            )
        )
    return out
