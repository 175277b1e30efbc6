"""values.schema.json rejects wrong types and unknown keys, and says where."""

from __future__ import annotations

import json

import pytest

from tests.unit.chart.render import CHART, RELEASE, helm


def _template_with(set_json: list[str]) -> tuple[int, str]:
    args = ["template", RELEASE, str(CHART)]
    for s in set_json:
        args += ["--set-json", s]
    proc = helm(*args, check=False)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("replicaCount=2", "at '': additional properties 'replicaCount' not allowed"),
        (
            'operator={"logLevel":"INFO","metricPort":9000}',
            "at '/operator': additional properties 'metricPort' not allowed",
        ),
        ('operator.metricsPort="8080"', "at '/operator/metricsPort': got string, want integer"),
        (
            "operator.healthPort=70000",
            "at '/operator/healthPort': maximum: got 70,000, want 65,535",
        ),
        ('crds.install="yes"', "at '/crds/install': got string, want boolean"),
        ('watchNamespaces="team-a"', "at '/watchNamespaces': got string, want array"),
        (
            'watchNamespaces=["Team_A"]',
            "at '/watchNamespaces/0': 'Team_A' does not match pattern",
        ),
        (
            'engine.image.pullPolicy="Sometimes"',
            "at '/engine/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
        ('engine.defaultMemory="lots"', "at '/engine/defaultMemory': 'lots' does not match"),
        ("engine.pendingDeadlineSeconds=0", "at '/engine/pendingDeadlineSeconds': minimum"),
        ('engine.pushgatewayUrl="pushgateway:9091"', "at '/engine/pushgatewayUrl'"),
        ('imagePullSecrets=["regcred"]', "at '/imagePullSecrets/0': got string, want object"),
        (
            'metrics.prometheusRule.stalledFor="15 minutes"',
            "at '/metrics/prometheusRule/stalledFor': '15 minutes' does not match pattern",
        ),
        (
            'operator.resources={"limits":{"memory":"1Gi"},"request":{}}',
            "at '/operator/resources': additional properties 'request' not allowed",
        ),
        (
            'operator.logLevel="TRACE"',
            "at '/operator/logLevel': value must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR'",
        ),
    ],
)
def test_bad_values_are_rejected_with_a_message_naming_the_field(bad: str, expected: str) -> None:
    rc, stderr = _template_with([bad])
    assert rc != 0
    assert "values don't meet the specifications of the schema" in stderr
    assert expected in stderr, stderr


def test_good_non_default_values_pass() -> None:
    rc, stderr = _template_with(
        [
            'operator.resources={"limits":{"cpu":1.5,"memory":"1Gi"}}',
            "engine.defaultCpu=500e-3",
            'watchNamespaces=["team-a","team-b"]',
            'imagePullSecrets=[{"name":"regcred"}]',
        ]
    )
    assert rc == 0, stderr


def test_template_guards_explain_inconsistent_values() -> None:
    rc, stderr = _template_with(
        ["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"]
    )
    assert rc != 0 and "metrics.serviceMonitor.enabled needs metrics.service.enabled" in stderr
    rc, stderr = _template_with(["metrics.podMonitor.enabled=true", "engine.metricsPort=0"])
    assert rc != 0 and "metrics.podMonitor.enabled needs engine.metricsPort > 0" in stderr
    rc, stderr = _template_with(["serviceAccount.create=false"])
    assert rc != 0 and "serviceAccount.name is required" in stderr


def test_schema_closes_every_object() -> None:
    """Every object in the schema with properties refuses unknown keys."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(where or "/")
            for key, sub in node.items():
                walk(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}/{i}")

    walk(schema, "")
    # extraEnv items are Kubernetes EnvVar objects (value, valueFrom): left open on purpose.
    assert open_objects == ["/properties/operator/properties/extraEnv/items"]
