"""What the product's wheel holds: the operator, the engine and their API, and not the local
control plane (a development tool in tools/localkube, a distribution of its own)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from setuptools import find_namespace_packages  # type: ignore[import-untyped]

from tests.fixtures.tools import REPO_ROOT, top_level_imports

LOCALKUBE = REPO_ROOT / "tools" / "localkube"


def _packages(project: Path) -> set[str]:
    """The packages setuptools puts in ``project``'s wheel (its packages.find settings)."""
    config: dict[str, Any] = tomllib.loads((project / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    found: set[str] = set()
    for where in find.get("where", ["."]):
        found.update(
            find_namespace_packages(
                where=str(project / where),
                include=find.get("include", ["*"]),
                exclude=find.get("exclude", []),
            )
        )
    return found


def test_product_wheel_has_no_local_control_plane() -> None:
    packages = _packages(REPO_ROOT)
    assert {"kubequant_api", "kubequant_operator", "optimizer_job", "kubequant_kubectl"} <= packages
    assert not {p for p in packages if p.split(".")[0] == "kubequant_localkube"}, packages
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    scripts = config["project"]["scripts"]
    assert not [s for s in scripts.values() if s.startswith("kubequant_localkube")], scripts
    # kubectl runs `kubectl kubequant` as the program kubectl-kubequant on PATH.
    assert scripts["kubectl-kubequant"] == "kubequant_kubectl.cli:main"
    assert not (REPO_ROOT / "kubequant_localkube").exists()


def test_local_control_plane_is_its_own_distribution() -> None:
    packages = _packages(LOCALKUBE)
    assert "kubequant_localkube" in packages
    assert packages <= {"kubequant_localkube"} | {
        p for p in packages if p.startswith("kubequant_localkube.")
    }
    config = tomllib.loads((LOCALKUBE / "pyproject.toml").read_text())
    assert config["project"]["scripts"]["kubequant-localkube"] == "kubequant_localkube.cli:main"
    # make install installs it (editable) with the product.
    assert "-e ./tools/localkube" in (REPO_ROOT / "Makefile").read_text()


def test_local_control_plane_imports_neither_the_operator_nor_the_engine() -> None:
    used = top_level_imports(LOCALKUBE / "kubequant_localkube")
    assert "aiohttp" in used
    assert not used & {"kopf", "kubequant_operator", "optimizer_job", "torch", "kmock"}, used
