"""Who a request is, and what the real API server lets it do beyond plain RBAC.

- Authentication: the admin token (and a request without a known token) is ``admin`` in
  ``system:masters``; a pod's token (or its per-ServiceAccount URL) is that ServiceAccount.
- Impersonation (the apiserver's impersonation filter): ``Impersonate-User``,
  ``Impersonate-Group`` (repeatable), ``Impersonate-Uid`` and ``Impersonate-Extra-*`` need the
  ``impersonate`` verb on users/serviceaccounts, groups, uids and userextras; the request is
  then authorized as that identity (``kubectl --as``/``--as-group``).
- Authorization: every identity outside ``system:masters`` is authorized by RBAC.
- Escalation prevention (pkg/registry/rbac/*/policybased): a Role/ClusterRole is stored only if
  the requester holds every rule it grants or has ``escalate`` on it; a (Cluster)RoleBinding
  only with ``bind`` on the referenced role or holding every rule of that role.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from kubequant_localkube import errors, rbac
from kubequant_localkube.store import Store

RBAC_GROUP = "rbac.authorization.k8s.io"
AUTHN_GROUP = "authentication.k8s.io"
MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
_FULL_AUTHORITY: list[rbac.Rule] = [
    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
    {"nonResourceURLs": ["*"], "verbs": ["*"]},
]


# What every authenticated user holds on a real cluster without any binding of ours: the
# bootstrap ClusterRoles system:basic-user and system:discovery, bound to system:authenticated
# (the emulator stores no bootstrap policy, so they are built in here).
_AUTHENTICATED_RULES: list[rbac.Rule] = [
    {
        "apiGroups": ["authorization.k8s.io"],
        "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
        "verbs": ["create"],
    },
    {"apiGroups": [AUTHN_GROUP], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
    {
        "nonResourceURLs": [
            "/api",
            "/api/*",
            "/apis",
            "/apis/*",
            "/healthz",
            "/livez",
            "/readyz",
            "/version",
            "/version/",
            "/openapi",
            "/openapi/*",
        ],
        "verbs": ["get"],
    },
]


@dataclasses.dataclass(frozen=True)
class UserInfo:
    """An authenticated (or impersonated) identity."""

    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""

    @property
    def privileged(self) -> bool:
        """``system:masters``: never refused (the real server's EscalationAllowed)."""
        return MASTERS in self.groups

    def describe(self) -> str:
        """As ConfirmNoEscalation prints it: ``user "NAME" (groups=["a" "b"])``."""
        groups = " ".join(json.dumps(g) for g in self.groups)
        return f"user {json.dumps(self.name)} (groups=[{groups}])"


ADMIN = UserInfo("admin", (MASTERS, AUTHENTICATED))


def service_account_user(namespace: str, name: str) -> UserInfo:
    return UserInfo(
        f"{rbac.SA_USER_PREFIX}{namespace}:{name}", rbac.service_account_groups(namespace)
    )


def held_rules(store: Store, user: UserInfo, namespace: str | None) -> list[rbac.Rule]:
    """Every rule ``user`` holds in ``namespace`` (its bindings', plus the bootstrap rules of
    system:authenticated)."""
    rules = rbac.rules_for_user(store, user.name, user.groups, namespace)
    return rules + (_AUTHENTICATED_RULES if AUTHENTICATED in user.groups else [])


def authorized(
    store: Store,
    user: UserInfo,
    verb: str,
    group: str,
    resource: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
) -> bool:
    """The RBAC authorizer's decision (``resource``: ``res`` or ``res/sub``)."""
    if user.privileged:
        return True
    return rbac.allows(held_rules(store, user, namespace), verb, group, resource, name)


def forbid(
    user: UserInfo, verb: str, group: str, resource: str, *, namespace: str | None, name: str | None
) -> errors.ApiError:
    base, _, sub = resource.partition("/")
    message = rbac.forbidden_message(
        user.name, verb, base, subresource=sub or None, group=group, name=name, ns=namespace
    )
    details: dict[str, Any] = {"group": group, "kind": base}
    if name:
        details["name"] = name
    return errors.ApiError(403, message, reason="Forbidden", details=details)


# --------------------------------------------------------------------------- impersonation
def impersonate(
    store: Store, requester: UserInfo, headers: Mapping[str, str], *, enforce: bool = True
) -> UserInfo:
    """The identity a request acts as: ``requester`` unless it carries Impersonate-* headers
    (each one authorized for ``requester`` with the ``impersonate`` verb, else 403)."""
    getall = getattr(headers, "getall", None)
    groups = list(getall("Impersonate-Group", [])) if getall else []
    user = headers.get("Impersonate-User", "")
    uid = headers.get("Impersonate-Uid", "")
    extras = {
        k[len("Impersonate-Extra-") :].lower(): v
        for k, v in headers.items()
        if k.lower().startswith("impersonate-extra-")
    }
    if not user:
        if groups or uid or extras:
            raise errors.ApiError(500, "requested impersonation without impersonating a user")
        return requester
    checks: list[tuple[str, str, str | None, str]] = []  # group, resource, namespace, name
    sa_ns, _, sa_name = user[len(rbac.SA_USER_PREFIX) :].partition(":")
    if user.startswith(rbac.SA_USER_PREFIX) and sa_ns and sa_name and ":" not in sa_name:
        checks.append(("", "serviceaccounts", sa_ns, sa_name))
        if not groups:
            groups = list(rbac.service_account_groups(sa_ns))
    else:
        checks.append(("", "users", None, user))
    checks += [("", "groups", None, g) for g in groups]
    if uid:
        checks.append((AUTHN_GROUP, "uids", None, uid))
    checks += [(AUTHN_GROUP, f"userextras/{key}", None, value) for key, value in extras.items()]
    if enforce:
        for group, resource, ns, name in checks:
            if not authorized(
                store, requester, "impersonate", group, resource, namespace=ns, name=name
            ):
                raise forbid(requester, "impersonate", group, resource, namespace=ns, name=name)
    unauthenticated = "system:unauthenticated" in groups or user == "system:anonymous"
    if AUTHENTICATED not in groups and not unauthenticated:
        groups.append(AUTHENTICATED)
    return UserInfo(user, tuple(dict.fromkeys(groups)), uid)


# --------------------------------------------------------------------------- escalation
def _only_gc_fields(new: rbac.Rule, old: rbac.Rule | None) -> bool:
    """Only ownerReferences/finalizers change (IsOnlyMutatingGCFields): not checked."""
    if old is None:
        return False
    probe = copy.deepcopy(old)
    meta, new_meta = probe.setdefault("metadata", {}), new.get("metadata") or {}
    for key in ("ownerReferences", "finalizers", "resourceVersion", "managedFields"):
        meta.pop(key, None)
        if key in new_meta:
            meta[key] = new_meta[key]
    new_cmp = copy.deepcopy(new)
    for obj in (probe, new_cmp):
        obj.get("metadata", {}).pop("resourceVersion", None)
        obj.get("metadata", {}).pop("managedFields", None)
    return probe == new_cmp


def _not_held(
    user: UserInfo, kind: str, name: str, missing: Iterable[rbac.Rule]
) -> errors.ApiError:
    lines = "\n".join(rbac.compact_missing(missing))
    message = (
        f'{kind}.{RBAC_GROUP} "{name}" is forbidden: {user.describe()} is attempting to grant '
        f"RBAC permissions not currently held:\n{lines}"
    )
    return errors.ApiError(
        403, message, reason="Forbidden", details={"name": name, "group": RBAC_GROUP, "kind": kind}
    )


def check_escalation(
    store: Store,
    user: UserInfo,
    plural: str,
    namespace: str | None,
    new: rbac.Rule,
    *,
    old: rbac.Rule | None,
) -> None:
    """Refuse (403) storing ``new`` in ``plural`` (roles, clusterroles, rolebindings,
    clusterrolebindings) when it grants what ``user`` does not hold, as a real server does."""
    if user.privileged or _only_gc_fields(new, old):
        return
    name = str((new.get("metadata") or {}).get("name") or "")
    if plural in ("roles", "clusterroles"):
        if authorized(store, user, "escalate", RBAC_GROUP, plural, namespace=namespace, name=name):
            return
        held = held_rules(store, user, namespace)
        missing = rbac.covers(held, new.get("rules") or [])
        if missing:
            raise _not_held(user, plural, name, missing)
        if (
            plural == "clusterroles"
            and new.get("aggregationRule")
            and rbac.covers(held, _FULL_AUTHORITY)
        ):
            raise errors.ApiError(
                403,
                f'{plural}.{RBAC_GROUP} "{name}" is forbidden: must have cluster-admin '
                "privileges to use the aggregationRule",
                reason="Forbidden",
            )
        return
    ref = new.get("roleRef") or {}
    kind, ref_name = ref.get("kind"), str(ref.get("name") or "")
    if kind not in ("Role", "ClusterRole"):
        raise errors.ApiError(400, f"unsupported role reference kind: {json.dumps(kind)}")
    role_plural = "roles" if kind == "Role" else "clusterroles"
    if authorized(store, user, "bind", RBAC_GROUP, role_plural, namespace=namespace, name=ref_name):
        return
    role = store.try_get(
        store.resource(RBAC_GROUP, "v1", role_plural),
        namespace if kind == "Role" else None,
        ref_name,
    )
    if role is None:
        raise errors.ApiError(400, f'{role_plural}.{RBAC_GROUP} "{ref_name}" not found')
    held = held_rules(store, user, namespace)
    missing = rbac.covers(held, role.get("rules") or [])
    if missing:
        raise _not_held(user, plural, name, missing)


def access_review(store: Store, user: UserInfo, spec: dict[str, Any]) -> dict[str, Any]:
    """The status of a SelfSubjectAccessReview for ``user`` (``kubectl auth can-i``)."""
    attrs = spec.get("resourceAttributes")
    if user.privileged:
        return {"allowed": True}
    if isinstance(attrs, dict):
        resource = str(attrs.get("resource") or "")
        if attrs.get("subresource"):
            resource += f"/{attrs['subresource']}"
        ok = authorized(
            store,
            user,
            str(attrs.get("verb") or ""),
            str(attrs.get("group") or ""),
            resource,
            namespace=attrs.get("namespace") or None,
            name=attrs.get("name") or None,
        )
    else:
        url = spec.get("nonResourceAttributes") or {}
        rules = held_rules(store, user, None)
        ok = rbac.allows_url(rules, str(url.get("verb") or ""), str(url.get("path") or ""))
    return {"allowed": ok} if ok else {"allowed": False, "reason": ""}
