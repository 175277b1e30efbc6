"""RBAC as a real API server enforces it: escalation prevention, bind/escalate, impersonation
and the authorizer's matching, driven through the real kubectl (``--as``/``--as-group``)."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from typing import Any

import pytest

from kubequant_localkube import rbac
from kubequant_localkube.calls import ApiCall
from kubequant_localkube.cluster import LocalCluster
from tests.fixtures.cluster import Kubectl

DEV = "system:serviceaccount:default:dev"
GROUPS = '["system:serviceaccounts" "system:serviceaccounts:default" "system:authenticated"]'
NOT_HELD = "is attempting to grant RBAC permissions not currently held"

SETUP = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: dev, namespace: default}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: dev, namespace: default}
rules:
- apiGroups: [""]
  resources: [pods, configmaps]
  verbs: [get, list, create]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, update, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dev, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: dev}
subjects: [{kind: ServiceAccount, name: dev, namespace: default}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: secret-reader}
rules: [{apiGroups: [""], resources: [secrets], verbs: [get]}]
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: default}
stringData: {key: value}
"""


def _role(name: str, rules: str) -> str:
    return (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\n"
        f"metadata: {{name: {name}, namespace: default}}\nrules: {rules}\n"
    )


def _binding(name: str, kind: str, role: str) -> str:
    return (
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        f"roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: {kind}, name: {role}}}\n"
        f"subjects: [{{kind: ServiceAccount, name: dev, namespace: default}}]\n"
    )


TOO_MUCH = _role("too-much", '[{apiGroups: [""], resources: [pods, secrets], verbs: [get, list]}]')


def _grant(
    kubectl: Kubectl, name: str, rule: str, *, subject: str = "", cluster: bool = False
) -> None:
    """As the admin: a (Cluster)Role ``name`` with ``rule``, bound to ``subject`` (default: dev).
    (YAML, to set any rule in one apply; ``kubectl create role`` is in test_protobuf_rbac.py.)"""
    subject = subject or "{kind: ServiceAccount, name: dev, namespace: default}"
    kind, meta = (
        ("ClusterRole", f"{{name: {name}}}")
        if cluster
        else ("Role", f"{{name: {name}, namespace: default}}")
    )
    binding = "ClusterRoleBinding" if cluster else "RoleBinding"
    manifest = (
        f"apiVersion: rbac.authorization.k8s.io/v1\nkind: {kind}\nmetadata: {meta}\n"
        f"rules: [{rule}]\n---\n"
        f"apiVersion: rbac.authorization.k8s.io/v1\nkind: {binding}\nmetadata: {meta}\n"
        f"roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: {kind}, name: {name}}}\n"
        f"subjects: [{subject}]\n"
    )
    kubectl("apply", "-f", "-", input=manifest, check=True)


WITHIN = _role("within", '[{apiGroups: [""], resources: [pods], verbs: [get, list]}]')


def _raw_get(cluster: LocalCluster, path: str, headers: dict[str, str]) -> dict[str, Any]:
    request = urllib.request.Request(cluster.url + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body: dict[str, Any] = json.load(response)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    return body


@pytest.fixture
def dev(local_cluster: LocalCluster, kubectl: Kubectl) -> Kubectl:
    """kubectl acting as the ServiceAccount ``default/dev`` (impersonated by the admin)."""
    kubectl("apply", "-f", "-", input=SETUP, check=True)

    def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return kubectl(f"--as={DEV}", *args, input=input)

    return run


def test_role_escalation_refused_and_within_rights_created(dev: Kubectl, kubectl: Kubectl) -> None:
    refused = dev("create", "-f", "-", input=TOO_MUCH)
    assert refused.returncode != 0
    assert "(Forbidden)" in refused.stderr, refused.stderr
    assert (
        f'roles.rbac.authorization.k8s.io "too-much" is forbidden: user "{DEV}" '
        f"(groups={GROUPS}) {NOT_HELD}:\n"
        '{APIGroups:[""], Resources:["secrets"], Verbs:["get" "list"]}'
    ) in refused.stderr
    assert kubectl("get", "role", "too-much").returncode != 0  # nothing stored

    created = dev("create", "-f", "-", input=WITHIN)
    assert created.returncode == 0, created.stderr
    # an update (patch) that adds what dev does not hold is refused the same way
    add = '[{"op": "add", "path": "/rules/-", "value": {"apiGroups": [""], '
    add += '"resources": ["secrets"], "verbs": ["get"]}}]'
    patched = dev("patch", "role", "within", "--type=json", "-p", add)
    assert patched.returncode != 0 and NOT_HELD in patched.stderr, patched.stderr
    rules = json.loads(kubectl("get", "role", "within", "-o", "json", check=True).stdout)["rules"]
    assert rules == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]


def test_escalate_verb_lets_a_role_through(dev: Kubectl, kubectl: Kubectl) -> None:
    _grant(
        kubectl,
        "escalator",
        "{apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [escalate]}",
    )
    created = dev("create", "-f", "-", input=TOO_MUCH)
    assert created.returncode == 0, created.stderr


def test_binding_needs_bind_or_every_rule(dev: Kubectl, kubectl: Kubectl) -> None:
    refused = dev("create", "-f", "-", input=_binding("read", "ClusterRole", "secret-reader"))
    assert refused.returncode != 0
    assert (
        f'rolebindings.rbac.authorization.k8s.io "read" is forbidden: user "{DEV}"'
    ) in refused.stderr and NOT_HELD in refused.stderr, refused.stderr
    # a role whose every rule dev holds can be bound without `bind`
    dev("create", "-f", "-", input=WITHIN)
    ok = dev("create", "-f", "-", input=_binding("within", "Role", "within"))
    assert ok.returncode == 0, ok.stderr
    # `bind` narrowed by resourceNames: only that ClusterRole
    _grant(
        kubectl,
        "binder",
        "{apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], verbs: [bind], "
        "resourceNames: [secret-reader]}",
    )
    ok = dev("create", "-f", "-", input=_binding("read", "ClusterRole", "secret-reader"))
    assert ok.returncode == 0, ok.stderr
    _grant(
        kubectl,
        "cm-writer",
        '{apiGroups: [""], resources: [configmaps], verbs: [delete]}',
        subject="{kind: User, name: nobody}",
        cluster=True,
    )
    other = dev("create", "-f", "-", input=_binding("cm", "ClusterRole", "cm-writer"))
    assert other.returncode != 0 and NOT_HELD in other.stderr, other.stderr
    # and the binding it could make grants the secret now
    assert dev("get", "secret", "creds").returncode == 0


def test_service_account_without_secret_rights_is_forbidden(dev: Kubectl) -> None:
    got = dev("get", "secret", "creds")
    assert got.returncode != 0
    assert (
        f'secrets "creds" is forbidden: User "{DEV}" cannot get resource "secrets" in API '
        'group "" in the namespace "default"'
    ) in got.stderr, got.stderr
    assert dev("get", "configmaps").returncode == 0
    assert "no" in dev("auth", "can-i", "get", "secrets").stdout
    assert "yes" in dev("auth", "can-i", "list", "pods").stdout


def test_impersonation_needs_the_impersonate_verb(
    dev: Kubectl, kubectl: Kubectl, local_cluster: LocalCluster
) -> None:
    _grant(
        kubectl,
        "readers",
        '{apiGroups: [""], resources: [secrets], verbs: [get, list]}',
        subject="{kind: Group, name: readers}",
    )
    assert kubectl("--as=jane", "get", "secret", "creds").returncode != 0
    assert kubectl("--as=jane", "--as-group=readers", "get", "secret", "creds").returncode == 0
    # system:masters is never refused, impersonated or not
    assert kubectl("--as=jane", "--as-group=system:masters", "get", "secrets").returncode == 0
    # dev may not impersonate anyone: its requests (its per-ServiceAccount URL, as a pod's
    # kubeconfig has it: kubectl sends no bearer token over plain HTTP) plus Impersonate-User
    # are a 403
    as_dev = f"--server={rbac.identity_url(local_cluster.url, 'default', 'dev')}"
    denied = kubectl(as_dev, "--as=jane", "get", "configmaps")
    assert denied.returncode != 0 and "(Forbidden)" in denied.stderr, denied.stderr
    status = _raw_get(
        local_cluster,
        "/localkube/sa/default/dev/api/v1/namespaces/default/pods",
        {"Impersonate-User": "jane"},
    )
    assert status["code"] == 403 and status["message"] == (
        f'users "jane" is forbidden: User "{DEV}" cannot impersonate resource "users" in API '
        'group "" at the cluster scope'
    )
    _grant(
        kubectl,
        "impersonator",
        '{apiGroups: [""], resources: [users], verbs: [impersonate], resourceNames: [jane]}',
        cluster=True,
    )
    headers = {"Impersonate-User": "jane", "Impersonate-Group": "readers"}
    status = _raw_get(local_cluster, "/localkube/sa/default/dev/api", headers)
    assert status["code"] == 403 and 'groups "readers" is forbidden' in status["message"]
    allowed = kubectl(as_dev, "--as=jane", "get", "secret", "creds")
    assert 'User "jane" cannot get resource "secrets"' in allowed.stderr, allowed.stderr


# (rule resources, rule resourceNames, verb, resource[/sub], name, allowed)
Case = tuple[list[str], list[str], str, str, str | None, bool]


@pytest.mark.parametrize(
    "case",
    [
        (["pods/*"], [], "get", "pods/log", "p", False),  # resource/* is not a wildcard
        (["pods/*"], [], "get", "pods/*", "p", True),
        (["*/status"], [], "patch", "jobs/status", "j", True),
        (["*/status"], [], "patch", "jobs", "j", False),
        (["*"], [], "get", "pods/log", "p", True),
        (["pods"], [], "get", "pods/log", "p", False),  # a subresource is its own resource
        (["pods"], ["p"], "get", "pods", "p", True),
        (["pods"], ["p"], "get", "pods", "q", False),
        (["pods"], ["p"], "list", "pods", None, False),  # names never allow list/create
        (["pods"], ["p"], "create", "pods", None, False),
    ],
)
def test_authorizer_matching(case: Case) -> None:
    rule_resources, names, verb, resource, name, allowed = case
    rule: rbac.Rule = {"apiGroups": ["*"], "resources": rule_resources, "verbs": ["*"]}
    if names:
        rule["resourceNames"] = names
    base, _, sub = resource.partition("/")
    call = ApiCall(verb, "", "v1", base, sub or None, "default", name)
    assert call.allowed_by([rule]) is allowed
    assert rbac.allows([rule], verb, "", resource, name) is allowed


def test_subresource_wildcard_through_kubectl(dev: Kubectl, kubectl: Kubectl) -> None:
    _grant(kubectl, "logs", '{apiGroups: [""], resources: ["pods/*", "*/status"], verbs: [get]}')
    assert dev("auth", "can-i", "get", "pods", "--subresource=log").stdout.strip() == "no"
    assert dev("auth", "can-i", "get", "pods", "--subresource=status").stdout.strip() == "yes"


def test_update_checks_the_whole_role_unless_only_gc_fields_change(
    dev: Kubectl, kubectl: Kubectl
) -> None:
    # a Role the admin made, granting Secrets dev does not hold
    kubectl(
        "apply",
        "-f",
        "-",
        input=_role("big", '[{apiGroups: [""], resources: [secrets], verbs: [get]}]'),
        check=True,
    )
    # any other change is checked against every rule (a label too), PUT as PATCH
    labelled = dev("label", "role", "big", "team=ml")
    assert labelled.returncode != 0 and NOT_HELD in labelled.stderr, labelled.stderr
    got = json.loads(kubectl("get", "role", "big", "-o", "json", check=True).stdout)
    got["metadata"]["labels"] = {"team": "ml"}
    replaced = dev("replace", "-f", "-", input=json.dumps(got))
    assert replaced.returncode != 0 and NOT_HELD in replaced.stderr, replaced.stderr
    # only finalizers/ownerReferences: not an escalation (IsOnlyMutatingGCFields)
    gc_only = dev(
        "patch", "role", "big", "--type=merge", "-p", '{"metadata":{"finalizers":["x/y"]}}'
    )
    assert gc_only.returncode == 0, gc_only.stderr
