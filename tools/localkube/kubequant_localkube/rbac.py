"""Identity and RBAC for pods: a pod's process gets a token naming its ServiceAccount, and
the emulator authorizes that token's requests with the namespace's Roles/RoleBindings and the
ClusterRoles/ClusterRoleBindings, as the API server's RBAC authorizer does (any identity
not in ``system:masters``: see :mod:`.authz`). Other clients (tests, kubectl, the operator)
use the admin token (``system:masters``) and are not restricted, unless they impersonate.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import yaml

from kubequant_localkube.store import Store

# Not secrets: the emulator has no authentication; the token only names the caller.
ADMIN_TOKEN = "localkube"  # noqa: S105
SA_TOKEN_PREFIX = "localkube-sa:"  # noqa: S105
Rule = dict[str, Any]


def kubeconfig_for(
    url: str, namespace: str = "default", token: str = ADMIN_TOKEN
) -> dict[str, Any]:
    """A kubeconfig for an emulator at ``url`` (no TLS)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "localkube", "cluster": {"server": url}}],
        "users": [{"name": "localkube", "user": {"token": token}}],
        "contexts": [
            {
                "name": "localkube",
                "context": {"cluster": "localkube", "user": "localkube", "namespace": namespace},
            }
        ],
        "current-context": "localkube",
        "preferences": {},
    }


def kubeconfig_text(url: str, namespace: str = "default", token: str = ADMIN_TOKEN) -> str:
    return yaml.safe_dump(kubeconfig_for(url, namespace, token), sort_keys=False)


def service_account_token(namespace: str, name: str) -> str:
    return f"{SA_TOKEN_PREFIX}{namespace}:{name}"


def service_account_of(authorization: str | None) -> tuple[str, str] | None:
    """(namespace, name) when the bearer token is a pod's service-account token."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization[len("Bearer ") :].strip()
    if not token.startswith(SA_TOKEN_PREFIX):
        return None
    ns, _, name = token[len(SA_TOKEN_PREFIX) :].partition(":")
    return (ns, name) if ns and name else None


IDENTITY_PATH_PREFIX = "/localkube/sa/"


def identity_url(api_url: str, namespace: str, name: str) -> str:
    """The API URL a pod running as ServiceAccount ``namespace/name`` talks to."""
    return f"{api_url.rstrip('/')}{IDENTITY_PATH_PREFIX}{namespace}/{name}"


def split_identity_path(path: str) -> tuple[str, tuple[str, str] | None]:
    """``/localkube/sa/<ns>/<name>/api/v1/...`` -> (``/api/v1/...``, (ns, name))."""
    if not path.startswith(IDENTITY_PATH_PREFIX):
        return path, None
    ns, _, rest = path[len(IDENTITY_PATH_PREFIX) :].partition("/")
    name, _, rest = rest.partition("/")
    if not ns or not name:
        return path, None
    return "/" + rest, (ns, name)


SA_USER_PREFIX = "system:serviceaccount:"


def service_account_groups(namespace: str) -> tuple[str, ...]:
    """The groups a ServiceAccount's user has (serviceaccount.MakeGroupNames + authenticated)."""
    return ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated")


def _applies(
    subject: dict[str, Any], binding_ns: str | None, user: str, groups: Iterable[str]
) -> bool:
    """Whether a binding's subject names ``user`` (the real authorizer's appliesToUser)."""
    kind = subject.get("kind")
    if kind == "User":
        return bool(subject.get("name") == user)
    if kind == "Group":
        return subject.get("name") in set(groups)
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_ns
        return user == f"{SA_USER_PREFIX}{ns}:{subject.get('name')}"
    return False


def rules_for_user(
    store: Store, user: str, groups: Iterable[str], namespace: str | None
) -> list[Rule]:
    """The rules granted to ``user`` (with ``groups``) in ``namespace`` (cluster-wide when
    None): ClusterRoleBindings, plus that namespace's RoleBindings (to Roles or ClusterRoles)."""
    group = "rbac.authorization.k8s.io"
    roles = store.resource(group, "v1", "roles")
    croles = store.resource(group, "v1", "clusterroles")
    groups = tuple(groups)
    out: list[Rule] = []

    def role_rules(ref: dict[str, Any], ns: str | None) -> list[Rule]:
        if ref.get("kind") == "ClusterRole":
            role = store.try_get(croles, None, ref.get("name", ""))
        else:
            role = store.try_get(roles, ns, ref.get("name", "")) if ns else None
        return list((role or {}).get("rules") or [])

    def bound(binding: dict[str, Any]) -> bool:
        ns = binding["metadata"].get("namespace")
        return any(_applies(s, ns, user, groups) for s in binding.get("subjects") or [])

    for crb in store.list_objects(store.resource(group, "v1", "clusterrolebindings"))[0]:
        if bound(crb):
            out += role_rules(crb.get("roleRef") or {}, None)
    if namespace:
        rbs = store.list_objects(store.resource(group, "v1", "rolebindings"), namespace)[0]
        for rb in rbs:
            if bound(rb):
                out += role_rules(rb.get("roleRef") or {}, namespace)
    return out


def rules_for(store: Store, sa_ns: str, sa_name: str, namespace: str | None) -> list[Rule]:
    """The rules granted to a service account in ``namespace`` (cluster-wide when None)."""
    user = f"{SA_USER_PREFIX}{sa_ns}:{sa_name}"
    return rules_for_user(store, user, service_account_groups(sa_ns), namespace)


def allows(
    rules: Iterable[Rule], verb: str, group: str, resource: str, name: str | None = None
) -> bool:
    """Whether ``rules`` permit one request (the real authorizer's RuleAllows): ``resource`` is
    ``res`` or ``res/sub``; the same matching as :func:`covers` (one atomic rule): ``*``
    matches all, ``*/sub`` any resource's ``sub``, ``res/*`` only itself; a rule with
    resourceNames never allows a request without a name (list, watch, create)."""
    atom: Rule = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
    if name:
        atom["resourceNames"] = [name]
    return any(_rule_covers(rule, atom) for rule in rules)


def allows_url(rules: Iterable[Rule], verb: str, path: str) -> bool:
    """Whether ``rules`` permit a non-resource request (``/healthz``, ``/metrics``)."""
    atom: Rule = {"nonResourceURLs": [path], "verbs": [verb]}
    return any(rule.get("nonResourceURLs") and _rule_covers(rule, atom) for rule in rules)


def forbidden_message(
    user: str,
    verb: str,
    resource: str,
    *,
    subresource: str | None = None,
    group: str,
    name: str | None,
    ns: str | None,
) -> str:
    """The real server's 403 wording (responsewriters.Forbidden)."""
    qualified = f"{resource}.{group}" if group else resource
    what = f'{qualified} "{name}"' if name else qualified
    full = f"{resource}/{subresource}" if subresource else resource
    scope = f' in the namespace "{ns}"' if ns else " at the cluster scope"
    return (
        f'{what} is forbidden: User "{user}" cannot {verb} resource "{full}" '
        f'in API group "{group}"{scope}'
    )


# --------------------------------------------------------------------------- escalation check
# What a real API server checks before it stores a Role or ClusterRole (and a binding without
# `bind`): every permission it grants must be held by the requester. The semantics are those
# of Covers in k8s.io/component-helpers/auth/rbac/validation (policy_comparator.go):
# - each requested rule is broken down into atomic rules of one apiGroup, one resource, one
#   verb and at most one resourceName (nonResourceURLs: one URL and one verb);
# - an atomic rule is covered when a single owner rule covers it whole:
#   verbs, apiGroups: ``*`` or the very value;
#   resources: ``*``, the very value (``jobs`` does not cover ``jobs/status``: a subresource
#   is a resource of its own), or ``*/<sub>`` for any resource's ``<sub>``;
#   resourceNames: an owner rule without names covers any (and no) name, one with names only
#   requests naming one of them (never a request without names);
#   nonResourceURLs: the very path, or an owner path ending in ``*`` covering its prefix.


def breakdown_rule(rule: Rule) -> list[Rule]:
    """``rule`` as the atomic rules it grants (the real server's BreakdownRule)."""
    verbs = list(rule.get("verbs") or [])
    names = list(rule.get("resourceNames") or [])
    out: list[Rule] = []
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in verbs:
                base: Rule = {"apiGroups": [group], "resources": [resource], "verbs": [verb]}
                if names:
                    out += [{**base, "resourceNames": [n]} for n in names]
                else:
                    out.append(base)
    for url in rule.get("nonResourceURLs") or []:
        out += [{"nonResourceURLs": [url], "verbs": [verb]} for verb in verbs]
    return out


def _holds(owned: list[str], wanted: list[str]) -> bool:
    return "*" in owned or set(wanted) <= set(owned)


def _resources_held(owned: list[str], wanted: list[str]) -> bool:
    if _holds(owned, wanted):
        return True
    for resource in wanted:
        if resource in owned:
            continue
        if "/" not in resource:
            return False
        if "*/" + resource.split("/", 1)[1] not in owned:
            return False
    return True


def _url_held(owner: str, path: str) -> bool:
    return owner == path or (owner.endswith("*") and path.startswith(owner.rstrip("*")))


def _rule_covers(owner: Rule, atom: Rule) -> bool:
    owner_names = list(owner.get("resourceNames") or [])
    atom_names = list(atom.get("resourceNames") or [])
    names_ok = not owner_names or (bool(atom_names) and set(atom_names) <= set(owner_names))
    urls = list(owner.get("nonResourceURLs") or [])
    return (
        _holds(list(owner.get("verbs") or []), list(atom.get("verbs") or []))
        and _holds(list(owner.get("apiGroups") or []), list(atom.get("apiGroups") or []))
        and _resources_held(list(owner.get("resources") or []), list(atom.get("resources") or []))
        and names_ok
        and all(any(_url_held(o, p) for o in urls) for p in atom.get("nonResourceURLs") or [])
    )


def covers(owner_rules: Iterable[Rule], requested_rules: Iterable[Rule]) -> list[Rule]:
    """The atomic rules of ``requested_rules`` that ``owner_rules`` do not cover (none: all
    covered); a real API server refuses to store a Role granting any of them (403)."""
    owners = list(owner_rules)
    return [
        atom
        for rule in requested_rules
        for atom in breakdown_rule(rule)
        if not any(_rule_covers(owner, atom) for owner in owners)
    ]


def compact_rule(rule: Rule) -> str:
    """A rule as the real server's messages print it (rbacv1helpers.CompactString)."""
    parts = []
    for field, label in (
        ("apiGroups", "APIGroups"),
        ("resources", "Resources"),
        ("nonResourceURLs", "NonResourceURLs"),
        ("resourceNames", "ResourceNames"),
        ("verbs", "Verbs"),
    ):
        values = rule.get(field) or []
        if values:
            parts.append(f"{label}:[{' '.join(json.dumps(v) for v in values)}]")
    return "{" + ", ".join(parts) + "}"


def compact_missing(atoms: Iterable[Rule]) -> list[str]:
    """Missing atomic rules as the real server lists them (CompactRules: rules of one group,
    one resource and at most one name merge their verbs; then sorted CompactStrings)."""
    simple: dict[tuple[str, str, str | None], Rule] = {}
    other: list[Rule] = []
    for atom in atoms:
        groups, resources = atom.get("apiGroups") or [], atom.get("resources") or []
        names = atom.get("resourceNames") or []
        if len(groups) == 1 and len(resources) == 1 and len(names) <= 1:
            key = (groups[0], resources[0], names[0] if names else None)
            if key in simple:
                simple[key]["verbs"] = [*simple[key]["verbs"], *atom.get("verbs", [])]
            else:
                simple[key] = {**atom, "verbs": list(atom.get("verbs") or [])}
        else:
            other.append(atom)
    return sorted({compact_rule(rule) for rule in [*other, *simple.values()]})
