"""The Argo CD and Flux examples under deploy/: well-formed, consistent with the chart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.tools import REPO_ROOT
from tests.unit.chart.render import one, render
from tests.unit.gitops.luahealth import HEALTH_LUA, run_health

DEPLOY = REPO_ROOT / "deploy"
# yamllint's default rules with room for comments that explain.
YAMLLINT_CONFIG = (
    "{extends: default, rules: {line-length: {max: 120}, document-start: disable,"
    " comments: {min-spaces-from-content: 1}, truthy: {check-keys: false}}}"
)
HEALTH_KEY = "resource.customizations.health.kubequant.io_ModelOptimization"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def yamllint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yamllint", "-f", "parsable", "-d", YAMLLINT_CONFIG]
        + [str(p) for p in paths],
        capture_output=True,
        text=True,
        check=False,
    )


def test_deploy_yaml_passes_yamllint() -> None:
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 5
    proc = yamllint(*files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_config_is_sharp(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\n")
    assert yamllint(bad).returncode != 0


def test_argocd_cm_carries_health_lua_verbatim() -> None:
    (cm,) = _docs(DEPLOY / "argocd" / "argocd-cm.yaml")
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    assert cm["data"][HEALTH_KEY] == HEALTH_LUA.read_text()


def test_health_script_from_the_configmap_runs(tmp_path: Path) -> None:
    (cm,) = _docs(DEPLOY / "argocd" / "argocd-cm.yaml")
    script = tmp_path / "health.lua"
    script.write_text(cm["data"][HEALTH_KEY])
    obj = {
        "metadata": {"generation": 2},
        "status": {
            "observedGeneration": 2,
            "conditions": [{"type": "Ready", "status": "True", "observedGeneration": 2}],
        },
    }
    assert run_health(obj, script)["status"] == "Healthy"


def _values_render(values: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    f = tmp_path / "values.yaml"
    f.write_text(yaml.safe_dump(values))
    from tests.unit.chart.render import helm, template_args

    out = helm(*template_args((), ()), "-f", str(f)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_argocd_application_values_are_valid_chart_values(tmp_path: Path) -> None:
    apps = {
        d["metadata"]["name"]: d
        for p in (DEPLOY / "argocd").glob("application-*.yaml")
        for d in _docs(p)
    }
    app = apps["kubequant"]
    assert app["spec"]["source"]["path"] == "charts/kubequant"
    docs = _values_render(app["spec"]["source"]["helm"]["valuesObject"], tmp_path)
    crd = one(docs, "CustomResourceDefinition")
    assert "Prune=false" in crd["metadata"]["annotations"]["argocd.argoproj.io/sync-options"]
    assert one(docs, "ServiceMonitor") and one(docs, "PrometheusRule")
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_flux_helmrelease_values_are_valid_chart_values(tmp_path: Path) -> None:
    docs = _docs(DEPLOY / "flux" / "helmrelease.yaml")
    kinds = {d["kind"]: d for d in docs}
    release = kinds["HelmRelease"]
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2"
    assert release["spec"]["chart"]["spec"]["chart"] == "charts/kubequant"
    assert (
        release["spec"]["chart"]["spec"]["sourceRef"]["name"]
        == kinds["GitRepository"]["metadata"]["name"]
    )
    rendered = _values_render(release["spec"]["values"], tmp_path)
    assert one(rendered, "CustomResourceDefinition")["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"
    }


def test_flux_kustomization_waits_for_objects() -> None:
    (ks,) = _docs(DEPLOY / "flux" / "kustomization.yaml")
    assert ks["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    assert ks["spec"]["wait"] is True
    assert ks["spec"]["dependsOn"]


@pytest.mark.parametrize("doc", ["docs/gitops.md", "docs/install.md"])
def test_docs_exist_and_name_the_commands(doc: str) -> None:
    text = (REPO_ROOT / doc).read_text()
    if doc.endswith("gitops.md"):
        for words in (
            "observedGeneration",
            "Stalled",
            "kubectl wait --for=condition=Ready",
            "argocd app wait",
            "flux",
            HEALTH_KEY,
        ):
            assert words in text, words
    else:
        for words in ("helm install", "helm upgrade", "crds.install", "resource-policy"):
            assert words in text, words
    # Commands the docs show for the chart use values the chart accepts.
    assert render() is not None


def test_builtin_kinds_in_deploy_validate_strictly() -> None:
    """ConfigMaps and other built-in kinds in deploy/ pass kubernetes-validate (CRs skipped)."""
    import kubernetes_validate

    from tests.unit.chart.test_chart import K8S_VERSIONS

    checked = 0
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in _docs(path):
            for version in (K8S_VERSIONS[0], K8S_VERSIONS[-1]):
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    assert "." in doc["apiVersion"].split("/")[0], doc["kind"]  # a CR
                    continue
                checked += 1
    assert checked >= 2  # argocd-cm on both versions
