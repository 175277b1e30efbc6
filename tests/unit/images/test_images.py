"""Dockerfiles (hadolint-clean, non-root, consistent with the operator's pod layout), the kind
end-to-end script and the CI workflow. Neither images nor kind can run here; these checks are
what can be verified without a Docker daemon."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.tools import REPO_ROOT, top_level_imports
from tests.unit.chart.render import CHART, helm
from tests.unit.gitops.test_examples import yamllint

DOCKERFILES = {
    "operator": REPO_ROOT / "operator" / "Dockerfile",
    "engine": REPO_ROOT / "optimizer_job" / "Dockerfile",
}
E2E = REPO_ROOT / "hack" / "e2e-kind.sh"
SCRIPTS = sorted((REPO_ROOT / "hack").glob("*.sh"))
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "ci.yaml"


def _hadolint(hadolint: Path, dockerfile: Path) -> list[dict[str, object]]:
    proc = subprocess.run(
        [str(hadolint), "--format", "json", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings: list[dict[str, object]] = json.loads(proc.stdout or "[]")
    assert (proc.returncode == 0) == (not findings), proc.stderr
    return findings


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_clean(name: str, hadolint_bin: Path) -> None:
    assert _hadolint(hadolint_bin, DOCKERFILES[name]) == []


def test_hadolint_catches_problems(hadolint_bin: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n")
    codes = {f["code"] for f in _hadolint(hadolint_bin, bad)}
    assert {"DL3007", "DL3008"} <= codes


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        out.append((op.upper(), args.strip()))
    return out


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ins = _instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage_runs_as_uid_65532(name: str) -> None:
    users = [a for op, a in _final_stage(DOCKERFILES[name]) if op == "USER"]
    assert users == ["65532:65532"]


def test_operator_image_has_no_torch_and_runs_the_operator() -> None:
    ins = _instructions(DOCKERFILES["operator"])
    runs = " ".join(a for op, a in ins if op == "RUN")
    assert '".[operator]"' in runs and "-c constraints.txt" in runs
    assert "engine" not in runs
    assert '! /opt/kubequant/bin/python -c "import torch"' in runs  # the build proves it
    assert ("ENTRYPOINT", '["kubequant-operator"]') in ins
    froms = [a for op, a in ins if op == "FROM"]
    arg = next(a for op, a in ins if op == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert arg == "PYTHON_IMAGE=python:3.11-slim-bookworm"
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)


def test_engine_image_matches_the_pod_the_operator_builds() -> None:
    ins = _instructions(DOCKERFILES["engine"])
    final = _final_stage(DOCKERFILES["engine"])
    entry = json.loads(next(a for op, a in final if op == "ENTRYPOINT"))
    cmd = json.loads(next(a for op, a in final if op == "CMD"))
    builders = pytest.importorskip("kubequant_operator.builders")
    # The operator sets `command`, which replaces ENTRYPOINT; both must run the same thing.
    assert entry + cmd == list(builders.ENGINE_COMMAND)
    assert builders.ENGINE_UID == 65532
    volumes = json.loads(next(a for op, a in final if op == "VOLUME"))
    assert set(volumes) == {"/cache", "/scratch"}
    env = " ".join(a for op, a in final if op == "ENV")
    for setting in ("HF_HOME=/cache/hf", "KUBEQUANT_WORK_DIR=/scratch", "TMPDIR=/tmp"):
        assert setting in env
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for op, a in ins if op == "ARG" and "=" in a}
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    assert args["TORCH_VERSION"] == _constraint("torch").split("+")[0]
    runs = " ".join(a for op, a in ins if op == "RUN")
    assert "grep -v '^torch==' constraints.txt" in runs and '".[engine]"' in runs


def _constraint(package: str) -> str:
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(f"{package}=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{package} is not pinned in constraints.txt")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copied_paths_exist_and_are_not_dockerignored(name: str) -> None:
    ignored = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for op, args in _instructions(DOCKERFILES[name]):
        if op != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (REPO_ROOT / src).exists(), f"{name}: COPY {src} does not exist"
            top = src.split("/")[0]
            assert top not in ignored, f"{name}: COPY {src} but .dockerignore drops {top}"


# --------------------------------------------------------------------------- scripts


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_parse_and_pass_shellcheck(script: Path, shellcheck_bin: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    proc = subprocess.run(
        [str(shellcheck_bin), "-x", str(script)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout


def test_shellcheck_is_sharp(shellcheck_bin: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $DIR/*\n")
    proc = subprocess.run(
        [str(shellcheck_bin), str(bad)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0 and "SC2086" in proc.stdout


def test_e2e_cleans_up_and_waits_for_ready() -> None:
    text = E2E.read_text()
    assert "trap cleanup EXIT" in text
    assert 'kind delete cluster --name "$CLUSTER"' in text
    assert 'kubectl -n "$WORK_NS" wait --for=condition=Ready' in text
    assert "pod-security.kubernetes.io/enforce=restricted" in text


def test_e2e_example_is_a_valid_modeloptimization() -> None:
    from kubequant_api.models import parse_manifest

    block = E2E.read_text().split("<<'YAML'\n", 1)[1].split("\nYAML\n", 1)[0]
    docs = [d for d in yaml.safe_load_all(block) if d]
    (mopt,) = [d for d in docs if d["kind"] == "ModelOptimization"]
    spec = parse_manifest(mopt)
    assert spec.gpu_count() == 0
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert mopt["spec"]["output"]["uri"].startswith(f"pvc://{pvc['metadata']['name']}/")


def test_e2e_helm_flags_render() -> None:
    """The --set flags the script passes are accepted by the chart's schema."""
    text = re.sub(r"\\\n\s*", " ", E2E.read_text())
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("helm install"))
    argv = shlex.split(line.replace('"$TAG"', "e2e").replace("$WORK_NS", "kubequant-e2e"))
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert len(sets) >= 8
    args = ["template", "kubequant", str(CHART), "--namespace", "kubequant-system"]
    for s in sets:
        args += ["--set", s]
    out = helm(*args).stdout
    assert "kubequant/engine:e2e" in out and "imagePullPolicy: Never" in out


def test_ci_workflow() -> None:
    proc = yamllint(WORKFLOW)
    assert proc.returncode == 0, proc.stdout
    wf = yaml.safe_load(WORKFLOW.read_text())
    jobs = wf["jobs"]
    assert set(jobs) == {"test", "e2e-kind"}
    steps = " ".join(str(s.get("run", "")) for s in jobs["test"]["steps"])
    assert "make test" in steps and "hack/fetch-tools.sh" in steps
    e2e_steps = " ".join(str(s.get("run", "")) for s in jobs["e2e-kind"]["steps"])
    assert "make e2e-kind" in e2e_steps
    nodes = jobs["e2e-kind"]["strategy"]["matrix"]["node"]
    assert any(":v1.29." in n for n in nodes)


def test_operator_image_contains_everything_the_operator_imports() -> None:
    """The operator image installs only kubequant_api, kubequant_operator and the operator
    extras: an import of anything else (the engine, torch) would crash the image at start."""
    import sys

    allowed = set(sys.stdlib_module_names) | {
        "kubequant_api",
        "kubequant_operator",
        "kopf",
        "kubernetes",
        "prometheus_client",
        "aiohttp",
        "pydantic",
        "pydantic_core",  # installed with pydantic
        "pydantic_settings",  # a base dependency (the settings loader in kubequant_api)
        "shtab",  # a base dependency (shell completion of the command line)
        "yaml",
    }
    used = top_level_imports(REPO_ROOT / "operator" / "kubequant_operator")
    used |= top_level_imports(REPO_ROOT / "kubequant_api")
    assert "kopf" in used
    assert not used - allowed, f"not in the operator image: {sorted(used - allowed)}"


def test_engine_image_does_not_need_the_operator() -> None:
    used = top_level_imports(REPO_ROOT / "optimizer_job")
    assert not used & {"kopf", "kubequant_operator", "kubequant_localkube"}, sorted(used)
