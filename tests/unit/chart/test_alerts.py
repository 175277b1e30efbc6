"""The PrometheusRule's alerts pass promtool, and every metric they (and the dashboard) use
is one the operator really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.chart.render import CHART, one, render

FIXTURES = Path(__file__).parent / "fixtures"
METRIC = re.compile(r"\bkubequant_[a-z0-9_]+")


def _rules(sets: tuple[str, ...] = ()) -> dict[str, Any]:
    rule = one(render(sets=("metrics.prometheusRule.enabled=true", *sets)), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def _promtool(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=60
    )


def test_promtool_check_rules(promtool_bin: Path, tmp_path: Path) -> None:
    for sets in [(), ("metrics.prometheusRule.alertLabels.team=ml",)]:
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rules(sets)))
        proc = _promtool(promtool_bin, "check", "rules", "rules.yaml", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS: 3 rules found" in proc.stdout


def test_promtool_test_rules(promtool_bin: Path, tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(_rules()))
    shutil.copy(FIXTURES / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    proc = _promtool(promtool_bin, "test", "rules", "alerts-test.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_test_rules_catches_a_broken_alert(promtool_bin: Path, tmp_path: Path) -> None:
    """The fixtures are sharp: a rule with a wrong threshold fails them."""
    rules = _rules(("metrics.prometheusRule.failedRunsThreshold=4",))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(FIXTURES / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    proc = _promtool(promtool_bin, "test", "rules", "alerts-test.yaml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "KubequantRunsFailing" in proc.stdout + proc.stderr


def _exported_metric_names() -> set[str]:
    metrics_mod = pytest.importorskip("kubequant_operator.metrics")
    from prometheus_client import generate_latest

    m = metrics_mod.Metrics()
    m.index.update(
        {
            "metadata": {"namespace": "ml", "name": "x", "generation": 1},
            "spec": {"method": "gptq"},
            "status": {
                "phase": "Succeeded",
                "conditions": [{"type": "Ready", "status": "True"}],
                "result": {"generation": 1, "compressionRatio": 2.0, "speedup": 1.1},
            },
        }
    )
    m.runs.labels(result="failed").inc()
    m.run_duration.observe(12.0)
    m.reconcile_errors.inc()
    text = generate_latest(m.registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def test_alert_and_dashboard_metrics_exist_in_the_operator() -> None:
    exported = _exported_metric_names()
    rules_text = json.dumps(_rules())
    dashboard_text = (CHART / "files" / "dashboard.json").read_text()
    used = set(METRIC.findall(rules_text)) | set(METRIC.findall(dashboard_text))
    assert used, "the rules use kubequant metrics"
    missing = sorted(used - exported)
    assert not missing, f"used by alerts/dashboard but not exported by the operator: {missing}"


def test_dashboard_is_valid_grafana_json() -> None:
    dash = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dash["uid"] == "kubequant"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
    cm = one(render(sets=("metrics.grafanaDashboard.enabled=true",)), "ConfigMap")
    assert json.loads(cm["data"]["kubequant.json"]) == dash
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
