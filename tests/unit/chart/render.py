"""Render the chart with the real helm binary, and the value sets every test runs over."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.tools import REPO_ROOT, ensure_tool

CHART = REPO_ROOT / "charts" / "kubequant"
CRD_FILE = REPO_ROOT / "crds" / "modeloptimization.yaml"
RELEASE = "kq"
NAMESPACE = "kubequant-system"

# name -> values files (relative to the chart) and --set-string/--set pairs.
VALUE_SETS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "namespaced": (("ci/namespaced-values.yaml",), ()),
    "minimal": (("ci/minimal-values.yaml",), ()),
    "clusterwide-monitoring": (("ci/clusterwide-monitoring-values.yaml",), ()),
}

Manifest = dict[str, Any]


class HelmError(AssertionError):
    """helm exited non-zero; the message carries its stderr."""


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(ensure_tool("helm")), *args], capture_output=True, text=True, check=False, timeout=120
    )
    if check and proc.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def template_args(values_files: tuple[str, ...], sets: tuple[str, ...]) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in values_files:
        args += ["-f", str(CHART / f)]
    for s in sets:
        args += ["--set", s]
    return args


@functools.cache
def render_text(values_files: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> str:
    return helm(*template_args(values_files, sets)).stdout


def render(values_files: tuple[str, ...] = (), sets: tuple[str, ...] = ()) -> list[Manifest]:
    """The rendered documents (empty ones dropped), freshly parsed for each caller."""
    return [d for d in yaml.safe_load_all(render_text(values_files, sets)) if d]


def render_set(name: str) -> list[Manifest]:
    files, sets = VALUE_SETS[name]
    return render(files, sets)


def by_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[Manifest], kind: str) -> Manifest:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[Manifest]) -> list[tuple[str, Manifest]]:
    """(kind/name, pod spec) of every workload in ``docs``."""
    out: list[tuple[str, Manifest]] = []
    for d in docs:
        kind = d.get("kind")
        name = f"{kind}/{d['metadata']['name']}"
        if kind == "Pod":
            out.append((name, d["spec"]))
        elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
            out.append((name, d["spec"]["template"]["spec"]))
        elif kind == "CronJob":
            out.append((name, d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return out


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
