"""helm lint, helm template over several value sets, and validation of what it renders."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml

from kubequant_api import constants
from tests.unit.chart.monitoring_schemas import BY_KIND
from tests.unit.chart.render import (
    CHART,
    CRD_FILE,
    NAMESPACE,
    VALUE_SETS,
    by_kind,
    env_of,
    helm,
    one,
    render,
    render_set,
    template_args,
)

# kubernetes-validate bundles schemas up to this version; the chart supports 1.29 and later.
K8S_VERSIONS = [f"1.{minor}.0" for minor in range(29, 38)]
# Kinds kubernetes-validate has no schema for; validated by monitoring_schemas instead.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
# Names of the settings the operator reads (operator/kubequant_operator/settings.py).
OPERATOR_ENV = {
    "KUBEQUANT_NAMESPACES",
    "KUBEQUANT_ENGINE_IMAGE",
    "KUBEQUANT_ENGINE_IMAGE_PULL_POLICY",
    "KUBEQUANT_IMAGE_PULL_SECRETS",
    "KUBEQUANT_DEFAULT_CPU",
    "KUBEQUANT_DEFAULT_MEMORY",
    "KUBEQUANT_GPU_RESOURCE_NAME",
    "KUBEQUANT_PENDING_DEADLINE_SECONDS",
    "KUBEQUANT_RECONCILE_INTERVAL_SECONDS",
    "KUBEQUANT_HISTORY_LIMIT",
    "KUBEQUANT_METRICS_PORT",
    "KUBEQUANT_HEALTH_PORT",
    "KUBEQUANT_LOG_LEVEL",
    "KUBEQUANT_ENGINE_PUSHGATEWAY_URL",
    "KUBEQUANT_ENGINE_METRICS_PORT",
    "KUBEQUANT_ALLOWED_IMAGES",
    "KUBEQUANT_ALLOWED_PRIORITY_CLASSES",
    "KUBEQUANT_ALLOW_TOLERATE_ALL",
    "KUBEQUANT_ALLOW_CONTROL_PLANE",
}
# Set only with engine.pushgatewayUrl (the operator sweeps the Pushgateway only then).
PUSHGATEWAY_ENV = {"KUBEQUANT_ENGINE_PUSHGATEWAY_RETENTION_SECONDS"}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_strict(value_set: str) -> None:
    files, sets = VALUE_SETS[value_set]
    args = ["lint", "--strict", str(CHART)]
    for f in files:
        args += ["-f", str(CHART / f)]
    for s in sets:
        args += ["--set", s]
    out = helm(*args)
    assert "0 chart(s) failed" in out.stdout, out.stdout


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_objects_validate_strictly_on_every_kubernetes_version(value_set: str) -> None:
    docs = render_set(value_set)
    checked: dict[str, set[str]] = {}
    for version in K8S_VERSIONS:
        for doc in docs:
            kind = doc["kind"]
            if kind in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{value_set}: {kind}/{doc['metadata']['name']} on {version}: {exc}")
            checked.setdefault(version, set()).add(kind)
    assert set(checked) == set(K8S_VERSIONS)
    assert {"Deployment", "ServiceAccount", "ClusterRole"} <= checked["1.29.0"] or (
        value_set == "minimal" and {"Deployment", "ClusterRole"} <= checked["1.29.0"]
    )


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_monitoring_objects_match_the_prometheus_operator_schema(value_set: str) -> None:
    for doc in render_set(value_set):
        schema = BY_KIND.get(doc["kind"])
        if schema is not None:
            jsonschema.validate(doc, schema)


def test_strict_validation_can_fail() -> None:
    """The validator really rejects an unknown field (so the test above means something)."""
    deployment = one(render(), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)
    monitor = one(render_set("clusterwide-monitoring"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, BY_KIND["ServiceMonitor"])


# --------------------------------------------------------------------------- the CRD


def test_chart_crd_file_is_byte_identical_to_crds_folder() -> None:
    assert (CHART / "files" / "modeloptimization.yaml").read_bytes() == CRD_FILE.read_bytes(), (
        "charts/kubequant/files/modeloptimization.yaml differs from crds/: "
        "run hack/sync-crd.sh after `make crd`"
    )


def test_rendered_crd_equals_crds_folder_plus_labels_and_keep_policy() -> None:
    rendered = one(render(), "CustomResourceDefinition")
    source = yaml.safe_load(CRD_FILE.read_text())
    meta = rendered.pop("metadata")
    source_meta = source.pop("metadata")
    assert rendered == source
    assert meta["name"] == source_meta["name"] == constants.CRD_NAME
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
    for key, value in source_meta.get("labels", {}).items():
        assert meta["labels"][key] == value


def test_crd_rendering_is_switchable_and_keep_is_optional() -> None:
    assert not by_kind(render(sets=("crds.install=false",)), "CustomResourceDefinition")
    crd = one(render(sets=("crds.keep=false",)), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})
    crd = one(render_set("clusterwide-monitoring"), "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep",
        "argocd.argoproj.io/sync-options": "ServerSideApply=true",
    }


# --------------------------------------------------------------------------- the operator


def test_operator_deployment_shape() -> None:
    dep = one(render(), "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["serviceAccountName"] == one(render(), "ServiceAccount")["metadata"]["name"]
    assert container["image"] == "ghcr.io/kubequant/operator:0.1.0"


def test_operator_env_names_are_the_settings_the_operator_reads() -> None:
    settings = pytest.importorskip("kubequant_operator.settings")
    read = set(settings.Settings().env_names().values())
    env = env_of(one(render(), "Deployment")["spec"]["template"]["spec"]["containers"][0])
    kubequant_env = {k for k in env if k.startswith("KUBEQUANT_")}
    assert kubequant_env == OPERATOR_ENV
    assert kubequant_env <= read, f"set but never read: {sorted(kubequant_env - read)}"
    # Values the settings loader accepts.
    loaded = settings.Settings.load(env=env)
    assert loaded.engine_image == "ghcr.io/kubequant/engine:0.1.0"
    assert loaded.clusterwide


def test_pushgateway_retention_reaches_the_operator_only_with_a_pushgateway() -> None:
    settings = pytest.importorskip("kubequant_operator.settings")
    read = set(settings.Settings().env_names().values())
    assert read >= PUSHGATEWAY_ENV
    files = ("ci/namespaced-values.yaml",)
    for value, expected in (("90", 90.0), ("0", 0.0), ("86400", 86400.0)):
        docs = render(files, (f"engine.pushgatewayRetentionSeconds={value}",))
        env = env_of(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
        assert {k for k in env if k.startswith("KUBEQUANT_")} == OPERATOR_ENV | PUSHGATEWAY_ENV
        assert env["KUBEQUANT_ENGINE_PUSHGATEWAY_RETENTION_SECONDS"] == value
        loaded = settings.Settings.load(env=env)
        assert loaded.engine_pushgateway_retention_seconds == expected
        assert loaded.engine_pushgateway_url == "http://pushgateway.monitoring:9091"
    # Without a Pushgateway the value is not passed, whatever it is.
    docs = render((), ("engine.pushgatewayRetentionSeconds=90",))
    env = env_of(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    assert "KUBEQUANT_ENGINE_PUSHGATEWAY_RETENTION_SECONDS" not in env
    assert env["KUBEQUANT_ENGINE_PUSHGATEWAY_URL"] == ""
    # The schema refuses what the operator would refuse at startup.
    for bad, message in (
        ("-1", "at '/engine/pushgatewayRetentionSeconds': minimum: got -1, want 0"),
        ('"10m"', "at '/engine/pushgatewayRetentionSeconds': got string, want integer"),
    ):
        proc = helm(
            *template_args(files, ()),
            "--set-json",
            f"engine.pushgatewayRetentionSeconds={bad}",
            check=False,
        )
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_non_default_values_reach_the_operator_env() -> None:
    docs = render_set("namespaced")
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["KUBEQUANT_NAMESPACES"] == "ml-team-a,ml-team-b"
    assert env["KUBEQUANT_ENGINE_IMAGE"] == (
        "registry.example.com/kubequant/engine@sha256:" + "0123456789abcdef" * 4
    )
    assert env["KUBEQUANT_IMAGE_PULL_SECRETS"] == "regcred"
    assert env["KUBEQUANT_GPU_RESOURCE_NAME"] == "amd.com/gpu"
    assert env["KUBEQUANT_PENDING_DEADLINE_SECONDS"] == "300"
    assert env["KUBEQUANT_DEFAULT_MEMORY"] == "16Gi"
    assert env["KUBEQUANT_ENGINE_PUSHGATEWAY_URL"] == "http://pushgateway.monitoring:9091"
    assert env["KUBEQUANT_ENGINE_PUSHGATEWAY_RETENTION_SECONDS"] == "600"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["containers"][0]["image"] == "registry.example.com/kubequant/operator:0.1.0-rc1"
    minimal = one(render_set("minimal"), "Deployment")["spec"]["template"]["spec"]
    assert minimal["serviceAccountName"] == "kubequant-operator"
    assert env_of(minimal["containers"][0])["KUBEQUANT_API_WORKERS"] == "4"
    assert minimal["priorityClassName"] == "system-cluster-critical"


# --------------------------------------------------------------------------- RBAC


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_rbac_cluster_wide_by_default() -> None:
    docs = render()
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "kq-kubequant", "namespace": NAMESPACE}
    ]
    rules = _rules(role)
    assert ("kubequant.io", "modeloptimizations", "watch") in rules
    assert ("kubequant.io", "modeloptimizations/status", "patch") in rules


def test_rbac_per_watched_namespace() -> None:
    docs = render_set("namespaced")
    roles = by_kind(docs, "Role")
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-team-a", "ml-team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-team-a", "ml-team-b"]
    cluster = _rules(one(docs, "ClusterRole"))
    # Cluster-scoped: only the CRD and the namespaces; nothing namespaced cluster-wide.
    assert cluster == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    assert all(_rules(r) == _rules(roles[0]) for r in roles)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_no_secret_permission_at_all(value_set: str) -> None:
    for role in by_kind(render_set(value_set), "ClusterRole") + by_kind(
        render_set(value_set), "Role"
    ):
        for group, resource, verb in _rules(role):
            assert resource != "secrets", f"{role['metadata']['name']}: secrets {verb}"
            assert "*" not in (group, resource, verb), "no wildcards"


# --------------------------------------------------------------------------- values


def _leaf_paths(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        out: list[str] = []
        for k, v in value.items():
            out += _leaf_paths(v, f"{prefix}.{k}" if prefix else k)
        return out
    return [prefix]


def test_every_value_is_commented() -> None:
    """Each leaf value has a comment directly above its own line or an enclosing key's line."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: dict[str, bool] = {}
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z0-9_]+):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([p for _, p in stack] + [m.group(2)])
        parent = ".".join(p for _, p in stack)
        has_comment = i > 0 and lines[i - 1].strip().startswith("#")
        documented[path] = has_comment or documented.get(parent, False)
        stack.append((indent, m.group(2)))
    values = yaml.safe_load("\n".join(lines))
    missing = [p for p in _leaf_paths(values) if not documented.get(p)]
    assert not missing, f"values without a comment: {missing}"


def test_every_value_is_in_the_schema() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], sch: dict[str, Any], where: str) -> None:
        while "allOf" in sch:
            sch = sch["allOf"][0]
        if "$ref" in sch:
            sch = schema["definitions"][sch["$ref"].split("/")[-1]]
        props = sch.get("properties")
        if props is None:
            return
        for key, sub in node.items():
            assert key in props, f"{where}{key} is not in values.schema.json"
            if isinstance(sub, dict):
                walk(sub, props[key], f"{where}{key}.")

    walk(values, schema, "")


@pytest.mark.parametrize("sets", [(), ("watchNamespaces={ml}", "crds.install=false")])
def test_notes_render_and_their_example_is_a_valid_modeloptimization(
    sets: tuple[str, ...],
) -> None:
    from kubequant_api.models import parse_manifest

    args = ["install", "kq", str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    for s in sets:
        args += ["--set", s]
    notes = helm(*args).stdout.split("NOTES:\n", 1)[1]
    ns = "ml" if sets else "default"
    assert f"kubectl apply -n {ns} -f - <<'YAML'" in notes
    assert f"kubectl -n {ns} wait --for=condition=Ready mopt/minilm-int8" in notes
    assert "rollout status deployment/kq-kubequant" in notes
    assert ("apply the CRD yourself" in notes) == bool(sets)
    block = notes.split("<<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    spec = parse_manifest(yaml.safe_load(block))
    assert spec.gpu_count() == 0


def test_pod_monitor_port_is_the_one_engine_pods_expose() -> None:
    """The PodMonitor scrapes the port name the operator gives the engine container."""
    builders = pytest.importorskip("kubequant_operator.builders")
    settings = pytest.importorskip("kubequant_operator.settings")
    from kubequant_api.models import parse_spec

    docs = render_set("clusterwide-monitoring")
    monitor = one(docs, "PodMonitor")
    env = env_of(one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0])
    s = settings.Settings.load(env=env)
    assert s.engine_metrics_port == 9400
    spec = {
        "model": {"uri": "hf://sentence-transformers/all-MiniLM-L6-v2"},
        "method": "torchao-int8-weight",
        "output": {"uri": "s3://bucket/out"},
    }
    obj = {"metadata": {"namespace": "ml", "name": "x", "uid": "u", "generation": 1}}
    job = builders.build_job(obj, parse_spec(spec), s)
    container = job["spec"]["template"]["spec"]["containers"][0]
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": 9400, "protocol": "TCP"}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == port["name"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    for key, value in monitor["spec"]["selector"]["matchLabels"].items():
        assert labels[key] == value


def test_helm_package_ships_the_crd_and_not_the_ci_values(tmp_path: Path) -> None:
    import tarfile

    helm("package", str(CHART), "--destination", str(tmp_path))
    (tgz,) = tmp_path.glob("kubequant-*.tgz")
    with tarfile.open(tgz) as tar:
        names = set(tar.getnames())
    assert "kubequant/files/modeloptimization.yaml" in names
    assert "kubequant/values.schema.json" in names
    assert not any(n.startswith("kubequant/ci/") for n in names)
