"""``make demo``'s last step on a real run's output, and how it finds kubectl.

``data/minilm-int8/`` holds the ``results.json`` and model card that ``make demo`` wrote for
the quickstart (``method: auto`` over onnx-int8, torchao-int8-weight and quanto-int8 on
all-MiniLM-L6-v2, on the 2-core development machine while other work ran: the baseline
latency is that noisy). The whole demo is not run here (minutes of CPU); the integration
tests run the same quickstart through the operator and the engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from kubequant_api.constants import ConditionType
from kubequant_api.models import parse_manifest

REPO = Path(__file__).resolve().parents[3]
DATA = Path(__file__).resolve().parent / "data" / "minilm-int8"


def _load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kubequant_demo", REPO / "hack" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


demo = _load_demo()


def real_result() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DATA / "results.json").read_text())
    return dict(document["result"])


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """The artifact's directory on the models claim, as the local cluster lays it out."""
    artifact = tmp_path / "pvc" / "kubequant-models" / "minilm-int8"
    shutil.copytree(DATA, artifact)
    return artifact


def _table_rows(text: str, header_start: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(header_start))
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        rows.append(line.strip())
    return rows


def test_quickstart_searches_cpu_int8_candidates_under_a_gate() -> None:
    spec = parse_manifest(yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text()))
    assert spec.method == "auto"
    methods = [c.method for c in spec.candidates]
    assert "onnx-int8" in methods and len(methods) <= 3
    assert spec.gpu_count() == 0
    assert spec.evaluation.quality_gate is not None
    assert spec.evaluation.quality_gate.min_cosine_similarity is not None


def test_report_of_a_real_auto_run(tmp_path: Path, published: Path) -> None:
    result = real_result()
    artifact = demo.local_path(result["outputUri"], lambda claim: tmp_path / "pvc" / claim)
    assert artifact == published

    text = demo.results_report(result, artifact)

    # The candidates table: one row per candidate in the order tried, the winner marked.
    header, *rows = _table_rows(text, "METHOD ")
    assert header.split() == [
        "METHOD",
        "PARAMS",
        "SIZE",
        "RATIO",
        "SPEEDUP",
        "COSINE",
        "GATE",
        "WINNER",
    ]
    assert [r.split()[0] for r in rows] == ["onnx-int8", "torchao-int8-weight", "quanto-int8"]
    assert [r.split()[-1] == "*" for r in rows] == [True, False, False]
    assert rows[0].split()[2:4] == ["23.4", "MB"]

    # Human units, 3 significant figures: no byte counts, no 4-decimal ratios.
    for shown in ("90.9 MB", "23.4 MB", "58.7 MB", "1.48 s", "99.8 ms", "ratio 3.88x"):
        assert shown in text, shown
    for raw in ("23408043", "23,408,043", "90868376", "3.8819", "1476.83", "0.99259"):
        assert raw not in text, raw

    # Where the files are: the artifact, its model card and results.json, and the plot
    # beside them (not inside: the artifact's digest covers its files).
    plot = published.parent / "minilm-int8.candidates.png"
    files = dict(
        re.match(r"\s*(.+?)\s{2,}(/\S+)$", line).groups()  # type: ignore[union-attr]
        for line in text.split("Files:", 1)[1].strip().splitlines()
    )
    assert files == {
        "artifact": str(published),
        "model card": str(published / "README.md"),
        "results.json": str(published / "results.json"),
        "size-vs-quality plot": str(plot),
    }
    assert "missing" not in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 10_000
    assert sorted(p.name for p in published.iterdir()) == ["README.md", "results.json"]


def test_report_of_a_single_method_run_has_no_candidates_or_plot(
    tmp_path: Path, published: Path
) -> None:
    result = real_result()
    del result["candidates"]
    text = demo.results_report(result, published)
    assert "Candidates" not in text and "WINNER" not in text
    assert "plot" not in text
    assert not list(published.parent.glob("*.png"))
    assert "23.4 MB" in text


def test_report_says_when_an_artifact_file_is_missing(published: Path) -> None:
    (published / "README.md").unlink()
    text = demo.results_report(real_result(), published)
    card = next(line for line in text.splitlines() if line.strip().startswith("model card"))
    assert card.endswith("(missing!)")


def test_local_path_maps_only_pvc_uris(tmp_path: Path) -> None:
    def pvc(claim: str) -> Path:
        return tmp_path / claim

    assert demo.local_path("pvc://models/a/b", pvc) == tmp_path / "models" / "a" / "b"
    assert demo.local_path("s3://bucket/x", pvc) is None
    assert demo.local_path(None, pvc) is None


def test_failure_report_says_why_and_where_the_logs_are(tmp_path: Path) -> None:
    pod = tmp_path / "pods" / "default" / "minilm-int8-g1-a762-74879"
    pod.mkdir(parents=True)
    log = [json.dumps({"level": "info", "msg": f"step {i}"}) for i in range(40)]
    log.append(json.dumps({"level": "error", "msg": "quality gate failed: cosine 0.97 < 0.99"}))
    (pod / "container.log").write_text("\n".join(log) + "\n")
    obj = {
        "metadata": {"name": "minilm-int8", "generation": 1},
        "status": {
            "phase": "Failed",
            "observedGeneration": 1,
            "failure": {
                "reason": "QualityGateFailed",
                "message": "no candidate passed the quality gate",
                "exitCode": 3,
            },
            "conditions": [
                {
                    "type": ConditionType.STALLED,
                    "status": "True",
                    "reason": "QualityGateFailed",
                    "message": "no candidate passed the quality gate",
                }
            ],
        },
    }
    text = demo.failure_report(obj, tmp_path)
    assert "QualityGateFailed (engine exit code 3): no candidate passed" in text
    assert "Stalled: QualityGateFailed" in text
    assert str(pod / "container.log") in text
    assert "quality gate failed: cosine 0.97 < 0.99" in text  # the log's last lines
    assert "step 39" in text and 'step 0"' not in text  # only its tail

    nothing = demo.failure_report(None, tmp_path / "empty")
    assert "no engine pod ran" in nothing


def test_find_kubectl_takes_kubectl_from_env_or_path(tmp_path: Path) -> None:
    missing = demo.find_kubectl({"KUBECTL": str(tmp_path / "nope")})
    assert missing.path is None and "is not an executable" in missing.notes[0]

    empty = tmp_path / "bin"
    empty.mkdir()
    none = demo.find_kubectl({"PATH": str(empty), "KUBEQUANT_TOOLS_DIR": str(tmp_path)})
    assert none.path is None and none.notes == ["no kubectl on PATH"]

    real = shutil.which("kubectl") or os.environ.get("KUBEQUANT_KUBECTL")
    if real is None:
        pytest.skip("no kubectl on this machine")
    version = demo.kubectl_version(real)
    assert version is not None and version[0] == 1
    os.symlink(real, empty / "kubectl")
    found = demo.find_kubectl({"PATH": str(empty), "KUBEQUANT_TOOLS_DIR": str(tmp_path)})
    if version >= demo.MIN_KUBECTL:
        assert found.path == str(empty / "kubectl") and found.version == version
    else:
        assert found.path is None and "older than" in found.notes[0]
