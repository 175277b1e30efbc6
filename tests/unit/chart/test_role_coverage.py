"""RBAC escalation prevention, computed: every Role the operator creates for a run must be
covered by what the chart grants the operator's ServiceAccount, or a real API server refuses
it ("is attempting to grant RBAC permissions not currently held", 403) and no Job is made.

The coverage rules are the real server's (kubequant_localkube.rbac.covers, after Covers in
k8s.io/component-helpers/auth/rbac/validation), tested first on their own.
"""

from __future__ import annotations

from typing import Any

import pytest

from kubequant_api.models import parse_spec
from kubequant_localkube.rbac import Rule, breakdown_rule, compact_rule, covers
from kubequant_operator import builders
from kubequant_operator.settings import Settings
from tests.fixtures.operator import make_object
from tests.unit.chart.render import NAMESPACE, VALUE_SETS, Manifest, env_of, one, render

MOPT = "modeloptimizations"
GROUP = "kubequant.io"


def _rule(
    resources: list[str],
    verbs: list[str],
    groups: tuple[str, ...] = (GROUP,),
    names: list[str] | None = None,
) -> Rule:
    rule: Rule = {"apiGroups": list(groups), "resources": resources, "verbs": verbs}
    if names is not None:
        rule["resourceNames"] = names
    return rule


# --------------------------------------------------------------------------- covers()


def test_a_rule_on_the_resource_does_not_cover_its_subresource() -> None:
    owner = [_rule([MOPT], ["get", "patch"])]
    assert covers(owner, [_rule([f"{MOPT}/status"], ["get"])]) == [
        _rule([f"{MOPT}/status"], ["get"])
    ]
    # nor the other way round
    assert covers([_rule([f"{MOPT}/status"], ["get"])], [_rule([MOPT], ["get"])]) == [
        _rule([MOPT], ["get"])
    ]
    assert covers([_rule([f"{MOPT}/status"], ["get"])], [_rule([f"{MOPT}/status"], ["get"])]) == []


def test_star_slash_subresource_covers_any_resources_subresource_only() -> None:
    owner = [_rule(["*/status"], ["patch"], groups=("*",))]
    assert covers(owner, [_rule([f"{MOPT}/status", "jobs/status"], ["patch"])]) == []
    assert covers(owner, [_rule([MOPT], ["patch"])]) == [_rule([MOPT], ["patch"])]
    assert covers(owner, [_rule([f"{MOPT}/scale"], ["patch"])]) == [
        _rule([f"{MOPT}/scale"], ["patch"])
    ]
    # ``<resource>/*`` is not a wildcard for the covering check: only an exact match.
    assert covers([_rule([f"{MOPT}/*"], ["patch"])], [_rule([f"{MOPT}/status"], ["patch"])])


def test_resource_names_narrow_a_rule() -> None:
    named = [_rule([MOPT], ["get"], names=["a", "b"])]
    assert covers(named, [_rule([MOPT], ["get"], names=["a"])]) == []
    assert covers(named, [_rule([MOPT], ["get"], names=["a", "c"])]) == [
        _rule([MOPT], ["get"], names=["c"])
    ]
    # a request without names asks for every object: names in the owner rule do not cover it
    assert covers(named, [_rule([MOPT], ["get"])]) == [_rule([MOPT], ["get"])]
    # an owner rule without names covers any name
    assert covers([_rule([MOPT], ["get"])], [_rule([MOPT], ["get"], names=["z"])]) == []


def test_wildcards_and_verbs() -> None:
    assert covers([_rule(["*"], ["*"], groups=("*",))], [_rule(["jobs/status"], ["delete"])]) == []
    # every verb must be held; each missing one is reported on its own
    assert covers([_rule([MOPT], ["get"])], [_rule([MOPT], ["get", "patch", "delete"])]) == [
        _rule([MOPT], ["patch"]),
        _rule([MOPT], ["delete"]),
    ]
    # apiGroups must match ("" is the core group, not a wildcard)
    assert covers([_rule(["pods"], ["get"], groups=("",))], [_rule(["pods"], ["get"])]) == [
        _rule(["pods"], ["get"])
    ]
    assert covers([_rule(["pods"], ["*"], groups=("*",))], [_rule(["pods"], ["list"])]) == []
    # resources: "*" covers every resource and subresource
    assert covers([_rule(["*"], ["get"])], [_rule([MOPT, f"{MOPT}/status"], ["get"])]) == []


def test_rules_split_across_owner_rules_are_covered_atom_by_atom() -> None:
    owner = [_rule([MOPT], ["get"]), _rule([f"{MOPT}/status"], ["patch"])]
    wanted = [_rule([MOPT, f"{MOPT}/status"], ["get", "patch"], names=["x"])]
    assert covers(owner, wanted) == [
        _rule([MOPT], ["patch"], names=["x"]),
        _rule([f"{MOPT}/status"], ["get"], names=["x"]),
    ]
    assert len(breakdown_rule(wanted[0])) == 4


def test_non_resource_urls() -> None:
    owner: list[Rule] = [{"nonResourceURLs": ["/healthz", "/metrics/*"], "verbs": ["get"]}]
    assert covers(owner, [{"nonResourceURLs": ["/healthz", "/metrics/x"], "verbs": ["get"]}]) == []
    assert covers(owner, [{"nonResourceURLs": ["/livez"], "verbs": ["get"]}]) == [
        {"nonResourceURLs": ["/livez"], "verbs": ["get"]}
    ]
    assert covers(owner, [{"nonResourceURLs": ["/healthz"], "verbs": ["post"]}])
    # a non-resource rule covers no resource, and the other way round
    assert covers(owner, [_rule(["pods"], ["get"], groups=("",))])
    everything = [_rule(["*"], ["*"], groups=("*",))]
    assert covers(everything, [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}])


def test_compact_rule_prints_like_the_real_server() -> None:
    rule = _rule([f"{MOPT}/status"], ["get"], names=["minilm"])
    assert compact_rule(rule) == (
        '{APIGroups:["kubequant.io"], Resources:["modeloptimizations/status"], '
        'ResourceNames:["minilm"], Verbs:["get"]}'
    )


# --------------------------------------------------------------------------- the chart


def _subject_is(subject: Manifest, sa_ns: str, sa_name: str, binding_ns: str | None) -> bool:
    if subject.get("kind") == "ServiceAccount":
        return bool(
            subject.get("name") == sa_name and (subject.get("namespace") or binding_ns) == sa_ns
        )
    if subject.get("kind") == "User":
        return bool(subject.get("name") == f"system:serviceaccount:{sa_ns}:{sa_name}")
    return subject.get("kind") == "Group" and subject.get("name") in (
        "system:serviceaccounts",
        f"system:serviceaccounts:{sa_ns}",
        "system:authenticated",
    )


def _rules_held(docs: list[Manifest], sa_ns: str, sa_name: str, namespace: str) -> list[Rule]:
    """What the chart's RBAC grants ServiceAccount ``sa_ns/sa_name`` in ``namespace``: the
    ClusterRoles of its ClusterRoleBindings, and the Roles (or ClusterRoles) of its
    RoleBindings in that namespace (what the real server's escalation check counts)."""

    def role_rules(ref: Manifest, ns: str | None) -> list[Rule]:
        for d in docs:
            meta = d.get("metadata") or {}
            if d.get("kind") != ref.get("kind") or meta.get("name") != ref.get("name"):
                continue
            if d["kind"] == "ClusterRole" or meta.get("namespace") == ns:
                return list(d.get("rules") or [])
        return []

    held: list[Rule] = []
    for d in docs:
        meta = d.get("metadata") or {}
        if d.get("kind") == "ClusterRoleBinding":
            binding_ns = None
        elif d.get("kind") == "RoleBinding" and meta.get("namespace") == namespace:
            binding_ns = namespace
        else:
            continue
        if any(_subject_is(s, sa_ns, sa_name, binding_ns) for s in d.get("subjects") or []):
            held += role_rules(d.get("roleRef") or {}, binding_ns)
    return held


def _operator(docs: list[Manifest]) -> tuple[str, Settings]:
    """The operator's ServiceAccount and settings, as the rendered Deployment gives them."""
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    return pod["serviceAccountName"], Settings.load(env=env_of(container))


SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "plain": ("minilm", {}),
    "auto-with-candidates": (
        "auto",
        {
            "method": "auto",
            "candidates": [{"method": "torchao-int8-weight"}, {"method": "gptq"}],
            "model": {"uri": "hf://sentence-transformers/all-MiniLM-L6-v2", "task": "auto"},
        },
    ),
    "queue-cache-credentials": (
        "queued",
        {
            "queueName": "gpu-queue",
            "cache": {"pvcName": "hf-cache"},
            "model": {
                "uri": "s3://bucket/minilm",
                "task": "feature-extraction",
                "credentialsSecret": "s3-creds",
            },
            "output": {"uri": "s3://bucket/out", "credentialsSecret": "s3-out"},
        },
    ),
    "long-name": ("a" * 40 + "-" + "b" * 40, {}),
}
# name -> (values files, --set pairs, the namespaces the operator watches; () = all)
MODES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "cluster-wide": ((), (), ()),
    "values:minimal": ((*VALUE_SETS["minimal"][0],), VALUE_SETS["minimal"][1], ()),
    "values:namespaced": (
        (*VALUE_SETS["namespaced"][0],),
        VALUE_SETS["namespaced"][1],
        ("ml-team-a", "ml-team-b"),
    ),
    "set-watch-namespaces": ((), ("watchNamespaces={team-a,team-b}",), ("team-a", "team-b")),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_role_the_operator_creates_is_covered_by_the_chart_rbac(mode: str) -> None:
    files, sets, watched = MODES[mode]
    docs = render(files, sets)
    sa_name, settings = _operator(docs)
    assert settings.namespaces == watched
    namespaces = list(watched) or ["team-a", "default"]
    checked = 0
    for namespace in namespaces:
        held = _rules_held(docs, NAMESPACE, sa_name, namespace)
        for spec_name, (name, overrides) in SPECS.items():
            obj = make_object(name, namespace=namespace, **overrides)
            children = builders.build_children(obj, parse_spec(obj["spec"]), settings)
            roles = [c for c in children if c["kind"] == "Role"]
            assert roles, f"{spec_name}: the operator creates no Role any more; update this test"
            for role in roles:
                uncovered = covers(held, role["rules"])
                assert not uncovered, (
                    f"{mode}, spec {spec_name!r}: a real API server refuses to create Role "
                    f"{namespace}/{role['metadata']['name']} (403): ServiceAccount "
                    f"{NAMESPACE}/{sa_name} is attempting to grant RBAC permissions not "
                    "currently held:\n" + "\n".join(compact_rule(r) for r in uncovered)
                )
                checked += 1
            # Binding a Role needs `bind` on it, or holding all it grants (checked above):
            # the operator's RoleBindings only ever reference its own Roles.
            role_names = {r["metadata"]["name"] for r in roles}
            for binding in (c for c in children if c["kind"] == "RoleBinding"):
                assert binding["roleRef"]["kind"] == "Role"
                assert binding["roleRef"]["name"] in role_names
    assert checked == len(namespaces) * len(SPECS)


def test_coverage_check_fails_on_a_chart_that_lacks_a_delegated_grant() -> None:
    """The check can fail: drop the status patch from the rendered ClusterRole."""
    docs = render()
    sa_name, settings = _operator(docs)
    for rule in one(docs, "ClusterRole")["rules"]:
        rule["resources"] = [r for r in rule["resources"] if r != f"{MOPT}/status"]
    obj = make_object()
    (role,) = [
        c
        for c in builders.build_children(obj, parse_spec(obj["spec"]), settings)
        if c["kind"] == "Role"
    ]
    uncovered = covers(_rules_held(docs, NAMESPACE, sa_name, "team-a"), role["rules"])
    assert _rule([f"{MOPT}/status"], ["patch"], names=["minilm"]) in uncovered


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_chart_grants_finalizers_update_and_events_list_in_every_mode(mode: str) -> None:
    """blockOwnerDeletion on the children's ownerReferences needs `update` on the owner's
    finalizers (OwnerReferencesPermissionEnforcement); a Job's FailedCreate events are listed."""
    files, sets, watched = MODES[mode]
    docs = render(files, sets)
    sa_name, _ = _operator(docs)
    for namespace in list(watched) or ["team-a", "default"]:
        held = _rules_held(docs, NAMESPACE, sa_name, namespace)
        assert covers(held, [_rule([f"{MOPT}/finalizers"], ["update"])]) == [], (mode, namespace)
        assert covers(held, [_rule(["events"], ["list", "create"], groups=("",))]) == []
