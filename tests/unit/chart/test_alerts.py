"""The PrometheusRule's alerts pass promtool's unit tests (each fires when it should and stays
silent otherwise), the dashboard's queries parse, and every metric the alerts and the
dashboard use is one the operator's real /metrics or the engine's real push exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.observability import Pushgateway, http_get
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


def test_the_old_phase_based_stalled_rule_fails_the_silent_cases(
    promtool_bin: Path, tmp_path: Path
) -> None:
    """A Failed-and-done, a queued and a suspended object must not page: the rule that
    matched phase Pending|Failed did, and the fixtures catch it."""
    rules = _rules()
    for rule in rules["groups"][0]["rules"]:
        if rule["alert"] == "KubequantObjectStalled":
            rule["expr"] = (
                "max by (namespace, name, reason) (label_replace("
                'kubequant_optimization_phase{job="kq-kubequant-metrics", phase=~"Pending|Failed"},'
                ' "reason", "Unschedulable", "", "")) == 1'
            )
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(FIXTURES / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    proc = _promtool(promtool_bin, "test", "rules", "alerts-test.yaml", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "KubequantObjectStalled" in out
    for silent in ("bad", "queued", "paused"):
        assert f'name="{silent}"' in out, out


def test_promtool_test_rules_catches_a_broken_alert(promtool_bin: Path, tmp_path: Path) -> None:
    """The fixtures are sharp: a rule with a wrong threshold fails them."""
    rules = _rules(("metrics.prometheusRule.failedRunsThreshold=4",))
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    shutil.copy(FIXTURES / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    proc = _promtool(promtool_bin, "test", "rules", "alerts-test.yaml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "KubequantRunsFailing" in proc.stdout + proc.stderr


def _operator_exposition() -> str:
    """The operator's real /metrics, served over HTTP, with every kind of series present:
    a finished object with a result, a run in progress, a stalled object, ended runs."""
    from kubequant_operator.metrics import Metrics, run_outcome

    m = Metrics()
    m.index.update(
        {
            "metadata": {"namespace": "ml", "name": "x", "generation": 1},
            "spec": {"method": "auto"},
            "status": {
                "phase": "Succeeded",
                "observedGeneration": 1,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}],
                "result": {
                    "generation": 1,
                    "method": "gptq",
                    "originalSizeBytes": 100,
                    "optimizedSizeBytes": 30,
                    "compressionRatio": 3.3,
                    "speedup": 1.1,
                    "perplexityIncreasePercent": 2.0,
                    "cosineSimilarity": 0.99,
                    "top1Agreement": 0.97,
                },
            },
        }
    )
    m.index.update(
        {
            "metadata": {"namespace": "ml", "name": "y", "generation": 1},
            "spec": {"method": "gptq"},
            "status": {
                "phase": "Running",
                "observedGeneration": 1,
                "progress": {"stage": "Quantizing", "percent": 40, "generation": 1},
            },
        }
    )
    m.index.update(
        {
            "metadata": {"namespace": "ml", "name": "z", "generation": 1},
            "spec": {"method": "gptq"},
            "status": {
                "phase": "Pending",
                "observedGeneration": 1,
                "conditions": [{"type": "Stalled", "status": "True", "reason": "Unschedulable"}],
            },
        }
    )
    status = {"phase": "Failed", "conditions": [{"type": "Ready", "reason": "OOMKilled"}]}
    m.runs.labels(result="failed").inc()
    m.outcomes.labels(**run_outcome({"spec": {"method": "gptq"}}, status, None)).inc()
    m.run_duration.observe(12.0)
    m.reconcile_errors.inc()
    m.pushgateway_deletes.labels(cause="harvested").inc()
    m.serve(0, "127.0.0.1")
    try:
        return http_get(f"http://127.0.0.1:{m.port}/metrics")
    finally:
        m.stop()


def _engine_exposition(pushgateway: Pushgateway) -> str:
    """The engine's metrics as pushed at the end of a run, read back from the Pushgateway."""
    from kubequant_api.constants import ExitCode, GateVerdict, Stage
    from kubequant_api.models import Measurements, Result
    from optimizer_job.report import MetricsReporter, RunContext
    from optimizer_job.report.metrics import PUSH_JOB

    ctx = RunContext(name="dash", namespace="dashboard-check", method="auto")
    r = MetricsReporter(ctx, pushgateway_url=pushgateway.url)
    r.stage(Stage.QUANTIZING, 40, candidate="gptq")
    m = Measurements(latency_ms=10.0, peak_memory_bytes=1 << 30)
    r.result(
        Result(
            method="gptq",
            original_size_bytes=100,
            optimized_size_bytes=30,
            compression_ratio=3.3,
            speedup=1.1,
            baseline=m,
            optimized=m,
            perplexity_increase_percent=2.0,
            cosine_similarity=0.99,
            top1_agreement=0.97,
            quality_gate=GateVerdict.PASSED,
            candidates=[],
        )
    )
    r.finish(ExitCode.SUCCESS, {})
    r.close()
    text = pushgateway.metrics_text()
    pushgateway.delete_group(PUSH_JOB, namespace="dashboard-check", name="dash")
    return "\n".join(line for line in text.splitlines() if 'namespace="dashboard-check"' in line)


def _sample_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def _dashboard() -> dict[str, Any]:
    return dict(json.loads((CHART / "files" / "dashboard.json").read_text()))


def _dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard query: panel targets and variable queries."""
    dash = _dashboard()
    exprs = [
        (f"panel {p['id']} {t['refId']}", str(t["expr"]))
        for p in dash["panels"]
        for t in p.get("targets") or []
    ]
    for var in dash["templating"]["list"]:
        query = str(var.get("query") or "")
        m = re.fullmatch(r"label_values\((.+), *\w+\)", query)
        if m:  # Grafana's label_values(<series selector>, <label>)
            exprs.append((f"variable {var['name']}", m.group(1)))
    return exprs


def _as_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables as Prometheus would receive it."""
    for var, value in (("$__rate_interval", "2m"), ("$__range", "24h"), ("$__interval", "1m")):
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def test_dashboard_queries_are_valid_promql(promtool_bin: Path, tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule, since it has no
    offline way to parse a lone expression)."""
    exprs = _dashboard_exprs()
    rules = [
        {"record": f"kubequant:dashboard:q{i}", "expr": _as_promql(e)}
        for i, (_, e) in enumerate(exprs)
    ]
    (tmp_path / "dash.yaml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    proc = _promtool(promtool_bin, "check", "rules", "dash.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout
    # and the check is sharp: a broken query fails it
    rules.append(
        {"record": "kubequant:dashboard:broken", "expr": "sum by (x (kubequant_runs_total)"}
    )
    (tmp_path / "dash.yaml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    assert _promtool(promtool_bin, "check", "rules", "dash.yaml", cwd=tmp_path).returncode != 0


def test_alert_and_dashboard_metrics_exist_in_the_operator_and_the_engine(
    pushgateway: Pushgateway, promtool_check: Callable[[str], tuple[int, str]]
) -> None:
    operator_text = _operator_exposition()
    engine_text = _engine_exposition(pushgateway)
    rc, problems = promtool_check(operator_text)
    assert rc == 0, problems
    operator = _sample_names(operator_text)
    # the group also holds the Pushgateway's push_time_seconds / push_failure_time_seconds
    engine = {n for n in _sample_names(engine_text) if n.startswith("kubequant_engine_")}
    assert "kubequant_engine_finished" in engine
    rule_exprs = [(r["alert"], r["expr"]) for g in _rules()["groups"] for r in g["rules"]]
    used: dict[str, set[str]] = {}
    for where, expr in [*rule_exprs, *_dashboard_exprs()]:
        for name in METRIC.findall(expr):
            used.setdefault(name, set()).add(where)
    assert any(n.startswith("kubequant_engine_") for n in used), "the dashboard shows the engine"
    missing = {
        name: sorted(where)
        for name, where in used.items()
        if name not in (engine if name.startswith("kubequant_engine_") else operator)
    }
    assert not missing, f"queried but not exported: {missing}"
    # the panels the issue asks for, by the metrics they show
    dashboard_metrics = {n for _, e in _dashboard_exprs() for n in METRIC.findall(e)}
    for needed in (
        "kubequant_optimization_progress_percent",
        "kubequant_run_outcomes_total",
        "kubequant_engine_run_duration_seconds",
        "kubequant_engine_peak_rss_bytes",
        "kubequant_optimization_optimized_size_bytes",
        "kubequant_optimization_perplexity_increase_percent",
    ):
        assert needed in dashboard_metrics, needed


def test_dashboard_is_valid_grafana_json() -> None:
    dash = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dash["uid"] == "kubequant"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] == "row":
            assert "targets" not in panel
            continue
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])
    cm = one(render(sets=("metrics.grafanaDashboard.enabled=true",)), "ConfigMap")
    assert json.loads(cm["data"]["kubequant.json"]) == dash
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
