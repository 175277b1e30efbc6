"""Identity and RBAC for pods: a pod's process gets a token naming its ServiceAccount, and
the emulator authorizes that token's requests with the namespace's Roles/RoleBindings and the
ClusterRoles/ClusterRoleBindings, as the API server's RBAC authorizer does. Other clients
(tests, kubectl, the operator) use the admin token and are not restricted.
"""

from __future__ import annotations

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


def _bound(binding: dict[str, Any], sa_ns: str, sa_name: str) -> bool:
    for subject in binding.get("subjects") or []:
        kind = subject.get("kind")
        if kind == "ServiceAccount":
            ns = subject.get("namespace") or binding["metadata"].get("namespace")
            if subject.get("name") == sa_name and ns == sa_ns:
                return True
        if kind == "Group" and subject.get("name") in (
            "system:serviceaccounts",
            f"system:serviceaccounts:{sa_ns}",
            "system:authenticated",
        ):
            return True
        if kind == "User" and subject.get("name") == f"system:serviceaccount:{sa_ns}:{sa_name}":
            return True
    return False


def rules_for(store: Store, sa_ns: str, sa_name: str, namespace: str | None) -> list[Rule]:
    """The rules granted to a service account in ``namespace`` (cluster-wide when None)."""
    group = "rbac.authorization.k8s.io"
    roles = store.resource(group, "v1", "roles")
    croles = store.resource(group, "v1", "clusterroles")
    out: list[Rule] = []

    def role_rules(ref: dict[str, Any], ns: str | None) -> list[Rule]:
        if ref.get("kind") == "ClusterRole":
            role = store.try_get(croles, None, ref.get("name", ""))
        else:
            role = store.try_get(roles, ns, ref.get("name", "")) if ns else None
        return list((role or {}).get("rules") or [])

    for crb in store.list_objects(store.resource(group, "v1", "clusterrolebindings"))[0]:
        if _bound(crb, sa_ns, sa_name):
            out += role_rules(crb.get("roleRef") or {}, None)
    if namespace:
        rbs = store.list_objects(store.resource(group, "v1", "rolebindings"), namespace)[0]
        for rb in rbs:
            if _bound(rb, sa_ns, sa_name):
                out += role_rules(rb.get("roleRef") or {}, namespace)
    return out


def forbidden_message(
    sa_ns: str,
    sa_name: str,
    verb: str,
    resource: str,
    *,
    group: str,
    name: str | None,
    ns: str | None,
) -> str:
    what = (
        f'{resource}.{group} "{name}"' if name else (f"{resource}.{group}" if group else resource)
    )
    scope = f' in the namespace "{ns}"' if ns else " at the cluster scope"
    return (
        f'{what} is forbidden: User "system:serviceaccount:{sa_ns}:{sa_name}" cannot {verb} '
        f'resource "{resource}" in API group "{group}"{scope}'
    )
